//! `node kv ...` and `node admin ...`, and [`BlockingClient`]: the cluster's
//! client library (`net::Client`) for callers that are not on an io_uring
//! runtime (the CLI, tests, an application's main thread).
//!
//! `node kv put`/`delete`/`cas` open an exactly-once session (its id is
//! assigned by the cluster, so no two commands can share one, whatever
//! process or container runs them), write once in it, and close it.

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use net::session::Session;
use net::{
    AdminRequest, CallError, Client, ClientConfig as NetClientConfig, ClientTls, Connector, ReadConsistency,
    RequestBody, ResponseStatus, TcpConnector,
};

use crate::config::{AdminCommand, ClientConfig, KvCommand};
use crate::kv::{KvOp, KvResponse};

/// `println!` to standard output that ignores a closed pipe: `node admin
/// status | head` or `node kv get k | head -c 3` is the reader's choice,
/// and `println!` panicked on it (fifth audit).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Why a command-line request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientCmdError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("io_uring is unavailable: {0}")]
    IoUring(String),
    #[error("TLS: {0}")]
    Tls(#[from] net::CredentialsError),
    /// A TLS file that could not be used, named by the option (or
    /// environment variable) that gave it: a path set in the environment
    /// and forgotten is otherwise hard to trace.
    #[error("TLS: {option}: {source}")]
    TlsFile { option: &'static str, source: net::CredentialsError },
    /// `get` of a key that holds no value (exit status 1: a script cannot
    /// tell an absent key from a stored "(absent)" otherwise; with and
    /// without `--raw`, as `git config` does).
    #[error("the key is absent")]
    Absent,
    /// `cas` whose condition did not hold (exit status 1, as `get --raw`
    /// of an absent key: a script tests the status, not the text).
    #[error("not swapped: the key's value was not what the command expected; nothing was written")]
    NotSwapped,
    /// A change sent to every shard that some did not take.
    #[error("{0}")]
    Shards(String),
}

fn resolve(client: &ClientConfig) -> Result<Vec<SocketAddr>, ClientCmdError> {
    let mut addrs = Vec::new();
    for host_port in &client.addrs {
        let text = host_port.to_string();
        let found = text.to_socket_addrs().map_err(|_| ClientCmdError::Resolve(text.clone()))?;
        addrs.extend(found);
    }
    if addrs.is_empty() {
        return Err(ClientCmdError::Resolve("no address given".into()));
    }
    Ok(addrs)
}

/// Names the option behind a TLS file the client could not use.
fn name_tls_option(files: &net::ClientTlsFiles, error: net::CredentialsError) -> ClientCmdError {
    match files.option_of(&error) {
        Some(option) => ClientCmdError::TlsFile { option, source: error },
        None => ClientCmdError::Tls(error),
    }
}

/// The cluster's client on a runtime of its own: every call blocks the
/// calling thread until it has an outcome or gives up. Over TCP by default;
/// an in-process cluster's client reaches its nodes through channels
/// (`crate::embed::LocalConnector`).
pub struct BlockingClient<C: Connector = TcpConnector> {
    runtime: tokio_uring::Runtime,
    client: Client<C>,
}

impl BlockingClient<TcpConnector> {
    /// A client of the shard and nodes `client` names, over TCP.
    pub fn new(client: &ClientConfig) -> Result<BlockingClient, ClientCmdError> {
        let addrs = resolve(client)?;
        let token = client.token.as_ref().map(|token| token.0.clone()).unwrap_or_default();
        let config = match &client.tls {
            Some(files) => {
                let tls = ClientTls::load(client.cluster_id, files).map_err(|error| name_tls_option(files, error))?;
                NetClientConfig::with_tls(client.cluster_id, tls, token)
            }
            None => NetClientConfig::new(client.cluster_id, token),
        };
        BlockingClient::with_connector(TcpConnector::new(config), addrs, client.shard, client.timeout)
    }
}

impl<C: Connector> BlockingClient<C> {
    /// A client of shard `shard` reaching the nodes `addrs` through
    /// `connector`, giving up on a call after `timeout`.
    pub fn with_connector(
        connector: C,
        addrs: Vec<C::Address>,
        shard: u32,
        timeout: std::time::Duration,
    ) -> Result<BlockingClient<C>, ClientCmdError> {
        wal::io_uring_available().map_err(|error| ClientCmdError::IoUring(error.to_string()))?;
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder())
            .map_err(|error| ClientCmdError::IoUring(error.to_string()))?;
        Ok(BlockingClient { runtime, client: Client::with_connector(connector, addrs, shard, timeout) })
    }

    /// Sends a request outside any session until a node answers with an
    /// outcome (see `net::Client::call`).
    pub fn call(&mut self, body: RequestBody) -> Result<ResponseStatus, CallError> {
        self.runtime.block_on(self.client.call(0, 0, 0, body))
    }

    /// Sends a request with explicit session fields (tests of the session
    /// layer: retries, stale sequences, acknowledgements).
    pub fn call_in_session(
        &mut self,
        client_id: u64,
        sequence: u64,
        ack: u64,
        body: RequestBody,
    ) -> Result<ResponseStatus, CallError> {
        self.runtime.block_on(self.client.call(client_id, sequence, ack, body))
    }

    /// Sends later calls to the shard that owns `key`; returns it.
    pub fn route_to_key(&mut self, key: &[u8]) -> Result<u32, CallError> {
        self.runtime.block_on(self.client.route_to_key(key))
    }

    /// Sends later calls to shard `shard`.
    pub fn set_shard(&mut self, shard: u32) {
        self.client.set_shard(shard);
    }

    /// The cluster's shard count.
    pub fn shards(&mut self) -> Result<u32, CallError> {
        self.runtime.block_on(self.client.shards())
    }

    pub fn open_session(&mut self) -> Result<Session, CallError> {
        self.runtime.block_on(self.client.open_session())
    }

    pub fn write(&mut self, session: &mut Session, command: Bytes) -> Result<Bytes, CallError> {
        self.runtime.block_on(self.client.write(session, command))
    }

    pub fn write_again(&mut self, session: &mut Session, sequence: u64, command: Bytes) -> Result<Bytes, CallError> {
        self.runtime.block_on(self.client.write_again(session, sequence, command))
    }

    pub fn write_at_least_once(&mut self, command: Bytes) -> Result<Bytes, CallError> {
        self.runtime.block_on(self.client.write_at_least_once(command))
    }

    pub fn close_session(&mut self, session: Session) -> Result<(), CallError> {
        self.runtime.block_on(self.client.close_session(session))
    }

    pub fn read(&mut self, query: Bytes, consistency: ReadConsistency) -> Result<Bytes, CallError> {
        self.runtime.block_on(self.client.read(query, consistency))
    }

    pub fn admin(&mut self, request: AdminRequest) -> Result<Bytes, CallError> {
        self.runtime.block_on(self.client.admin(request))
    }
}

/// Sends `body` outside any session until a node other than a follower
/// answers, or time runs out.
pub fn call(client: &ClientConfig, body: RequestBody) -> Result<ResponseStatus, ClientCmdError> {
    Ok(BlockingClient::new(client)?.call(body)?)
}

/// Runs `node kv ...` and prints the outcome.
pub fn run_kv(command: KvCommand) -> Result<(), ClientCmdError> {
    let mut client = BlockingClient::new(&command.client)?;
    // The key's shard: the cluster says how many there are.
    client.route_to_key(command.op.key())?;
    let answer = if !command.op.is_write() {
        let consistency = command.consistency.unwrap_or(ReadConsistency::NodeDefault);
        client.read(command.op.encode(), consistency)?
    } else if command.at_least_once {
        client.write_at_least_once(command.op.encode())?
    } else {
        // A session of its own, opened through the log: nothing another
        // command does can answer this write in its place.
        let mut session = client.open_session()?;
        let answer = client.write(&mut session, command.op.encode())?;
        if let Err(error) = client.close_session(session) {
            // The write is done; an unclosed session expires on its own.
            eprintln!("warning: closing the session failed: {error}");
        }
        answer
    };
    if command.raw {
        return write_raw(&answer);
    }
    print_kv(&command.op, &answer);
    match KvResponse::decode(&answer) {
        Ok(KvResponse::CasFailed { .. }) => Err(ClientCmdError::NotSwapped),
        Ok(KvResponse::Value(None)) => Err(ClientCmdError::Absent),
        _ => Ok(()),
    }
}

/// `get --raw`: the value's bytes as they are, nothing added.
fn write_raw(answer: &Bytes) -> Result<(), ClientCmdError> {
    use std::io::Write;
    match KvResponse::decode(answer) {
        Ok(KvResponse::Value(Some(value))) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head -c 10`) is the reader's choice, no error.
            let _ = out.write_all(&value).and_then(|()| out.flush());
            Ok(())
        }
        Ok(KvResponse::Value(None)) => Err(ClientCmdError::Absent),
        other => Err(ClientCmdError::Call(CallError::Unexpected(format!("{other:?}")))),
    }
}

/// Whether `body` changes a shard's membership: every shard of a node has
/// the same members, so such a change goes to each (it went to shard 0
/// only, and printed OK: a node removed there stayed a voter, even the
/// leader, of the others, and could not be restarted, its id being
/// removed).
fn is_membership_change(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::Admin(
            AdminRequest::AddLearner { .. }
                | AdminRequest::AddWitness { .. }
                | AdminRequest::Promote { .. }
                | AdminRequest::Remove { .. }
        )
    )
}

/// Sends a membership change to every shard of a sharded cluster in turn
/// (each shard's own leader, through the client), printing each shard's
/// outcome; an error names the shards that did not take it, after every
/// shard was tried.
fn change_every_shard(client: &mut BlockingClient, body: RequestBody) -> Result<(), ClientCmdError> {
    let shards = client.shards()?;
    let mut failed = Vec::new();
    for shard in 0..shards {
        client.set_shard(shard);
        let outcome = match client.call(body.clone()) {
            Ok(ResponseStatus::Ok(_)) => Ok(()),
            Ok(other) => Err(other.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => out!("shard {shard}: OK"),
            Err(reason) => {
                out!("shard {shard}: {reason}");
                failed.push(shard);
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(ClientCmdError::Shards(format!(
        "shards {failed:?} of {shards} did not take it (the others did; run it again for those with --shard N)"
    )))
}

fn show(value: &Bytes) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

fn print_kv(op: &KvOp, bytes: &Bytes) {
    match KvResponse::decode(bytes) {
        Ok(KvResponse::Value(Some(value))) => out!("{}", show(&value)),
        Ok(KvResponse::Value(None)) => out!("(absent)"),
        Ok(KvResponse::Written) => out!("OK"),
        Ok(KvResponse::Deleted { existed }) => out!("{}", if existed { "deleted" } else { "(was absent)" }),
        Ok(KvResponse::CasSucceeded) => out!("swapped"),
        Ok(KvResponse::CasFailed { current }) => {
            out!("not swapped; current value: {}", current.as_ref().map_or("(absent)".to_string(), show))
        }
        // The CLI sends none of the RESP front door's ops; a newer node's
        // answer is still shown.
        Ok(other) => out!("{other:?}"),
        Err(error) => out!("{op:?}: undecodable answer: {error}"),
    }
}

/// Runs `node admin ...` and prints the JSON answer. `node admin status`
/// shows every shard (each its own Raft group with its own leader).
pub fn run_admin(command: AdminCommand) -> Result<(), ClientCmdError> {
    let mut client = BlockingClient::new(&command.client)?;
    if command.every_shard && is_membership_change(&command.body) && client.shards()? > 1 {
        return change_every_shard(&mut client, command.body);
    }
    if command.body == RequestBody::Status && command.every_shard {
        let shards = client.shards()?;
        if shards > 1 {
            let mut statuses = Vec::new();
            for shard in 0..shards {
                client.set_shard(shard);
                match client.call(RequestBody::Status)? {
                    ResponseStatus::Ok(bytes) => {
                        statuses.push(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
                    }
                    other => return Err(ClientCmdError::Call(CallError::Refused(other))),
                }
            }
            statuses.iter().for_each(warn_if_removed);
            out!("{}", serde_json::to_string_pretty(&statuses).unwrap_or_default());
            return Ok(());
        }
    }
    match client.call(command.body)? {
        ResponseStatus::Ok(bytes) if bytes.is_empty() => {
            out!("OK");
            Ok(())
        }
        ResponseStatus::Ok(bytes) => {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(value) => {
                    warn_if_removed(&value);
                    out!("{}", serde_json::to_string_pretty(&value).unwrap_or_default())
                }
                Err(_) => out!("{}", show(&bytes)),
            }
            Ok(())
        }
        other => Err(ClientCmdError::Call(CallError::Refused(other))),
    }
}

/// Says on standard error when a status came from a node that its peers
/// refuse as removed: a removed node that still runs answers with its own
/// stale view (`PreCandidate`, no leader), which read like the cluster's
/// (fifth audit, F3).
fn warn_if_removed(status: &serde_json::Value) {
    let refusing = status["refused_as_removed_by"].as_array().map_or(0, Vec::len);
    if refusing > 0 {
        eprintln!(
            "warning: node {} was removed from the cluster (peers {} refuse it): this status is its own stale view, \
             not the cluster's; ask a member (--addr)",
            status["node"], status["refused_as_removed_by"]
        );
    }
}
