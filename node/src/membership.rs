//! Joining a cluster through any member (`node serve --join HOST:PORT,...`).
//!
//! Before the node starts, [`resolve_identity`] finds its id: from the
//! identity file in its data directory (a restart), or by asking the
//! cluster (a first start). The ask is an admin `Join` with id 0 sent to
//! any member given; a follower answers with the leader's address and the
//! client library follows it, so the leader proposes an id assignment
//! through shard 0's log. The replicated state machine hands out one more
//! than the highest id any configuration, address or earlier assignment
//! used (`crate::replicated`), so an id is never reused, even after its
//! node was removed. A nonce kept in the identity file before the ask makes
//! a retry after a crash get the same id.
//!
//! Once the node runs, [`spawn_driver`] makes it a member of every shard:
//! `Join` with its id (its addresses go through the log if they changed,
//! which is how a node that restarts with a new address announces it, and
//! it is added as a learner unless it is a member), then, unless it stays a
//! learner, `Promote` until the leader finds it caught up. A witness
//! (`--witness`) says so in its `Join`, and the leader adds it as a witness
//! at once (it needs no catching up before it counts: it holds metadata
//! only, and the durability rule of witnesses never lets it commit an entry
//! alone with the leader while a full follower is active). A removed node
//! is refused, and the node stops with that error.
//!
//! Membership news then spreads with Raft itself: addresses and members
//! are entries of the log, so every replica (and a node catching up from a
//! snapshot, which carries the address book) learns them in log order, and
//! a node that missed changes learns them when the leader catches it up.
//! A node that is not a member yet learns them by asking a member
//! (`node admin status` lists every member's addresses). So does a witness,
//! all the time ([`spawn_witness_watch`]): the address book is made of
//! ordinary entries, whose payloads a witness never receives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::NodeId;
use net::{refused_credentials, AdminRequest, CallError, JoinRequest, RequestBody, ResponseStatus};

use crate::config::{ClientConfig, JoinCredential, ServeConfig};
use crate::discovery::{HostPort, Peer};

/// Why the node cannot take its place in the cluster; the reason says what
/// to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinError(pub String);

/// The file in the data directory that holds the node's identity.
pub const IDENTITY_FILE: &str = "node-identity";
/// How long a joining node keeps asking for its id.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the credentials check at start waits for a member (a refusal
/// arrives in milliseconds; this bounds a loaded member's TLS handshake).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a restarting joined node asks the members where they are.
const RESTART_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between the driver's attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// What the data directory records of the node's place in its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    /// 0 while the id is being asked for.
    pub node_id: NodeId,
    /// Finds the assignment again when the ask is retried.
    pub nonce: u64,
}

impl Identity {
    fn encode(&self) -> String {
        format!("cluster_id={}\nnode_id={}\njoin_nonce={}\n", self.cluster_id, self.node_id, self.nonce)
    }

    fn decode(text: &str) -> Option<Identity> {
        let mut identity = Identity { cluster_id: 0, node_id: 0, nonce: 0 };
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let (key, value) = line.split_once('=')?;
            let value: u64 = value.trim().parse().ok()?;
            match key.trim() {
                "cluster_id" => identity.cluster_id = value,
                "node_id" => identity.node_id = value,
                "join_nonce" => identity.nonce = value,
                _ => return None,
            }
        }
        (identity.cluster_id != 0).then_some(identity)
    }
}

fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

pub(crate) fn data_dir_error(dir: &Path, reason: String) -> JoinError {
    JoinError(format!("data directory {}: {reason}", dir.display()))
}

/// The identity the data directory holds, if any.
pub fn read_identity(dir: &Path) -> Result<Option<Identity>, JoinError> {
    let path = identity_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Identity::decode(&text)
            .map(Some)
            .ok_or_else(|| data_dir_error(dir, format!("{} is damaged: {text:?}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(data_dir_error(dir, format!("cannot read {}: {error}", path.display()))),
    }
}

/// Writes the identity durably (a temporary file, synced, renamed, and the
/// directory synced).
pub fn write_identity(dir: &Path, identity: &Identity) -> Result<(), JoinError> {
    write_durably(dir, IDENTITY_FILE, &identity.encode())
}

/// Writes `dir/name` durably: a temporary file, synced, renamed, and the
/// directory synced.
pub(crate) fn write_durably(dir: &Path, name: &str, contents: &str) -> Result<(), JoinError> {
    let fail = |error: std::io::Error| data_dir_error(dir, format!("cannot write {name}: {error}"));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let temporary = dir.join(format!("{name}.tmp"));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary).map_err(fail)?;
        file.write_all(contents.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&temporary, dir.join(name)).map_err(fail)?;
    std::fs::File::open(dir).and_then(|directory| directory.sync_all()).map_err(fail)?;
    Ok(())
}

/// The file in the data directory that names the history of the cluster
/// the node's data continues ([`net::History`]): written by `node restore`
/// (the backup's) and by a first join (the cluster's, when not the fresh
/// one); no file is the history of a cluster that started empty.
pub const HISTORY_FILE: &str = "history";

/// The history the data directory's data continues.
pub fn read_history(dir: &Path) -> Result<net::History, JoinError> {
    let path = dir.join(HISTORY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .strip_prefix("history=")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(net::History)
            .ok_or_else(|| data_dir_error(dir, format!("{} is damaged: {text:?}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(net::History::FRESH),
        Err(error) => Err(data_dir_error(dir, format!("cannot read {}: {error}", path.display()))),
    }
}

/// Records `history` durably (for the fresh one, no file: what no file
/// means, so data directories stay readable by versions before histories).
pub fn write_history(dir: &Path, history: net::History) -> Result<(), JoinError> {
    if history == net::History::FRESH {
        return match std::fs::remove_file(dir.join(HISTORY_FILE)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(data_dir_error(dir, format!("cannot remove {HISTORY_FILE}: {error}")))
            }
            _ => Ok(()),
        };
    }
    write_durably(dir, HISTORY_FILE, &format!("history={:016x}\n", history.0))
}

/// The file in the data directory that marks a witness's (see
/// [`check_replica_kind`]).
pub const WITNESS_FILE: &str = "witness";

/// Checks that `--witness` agrees with what the data directory is, before
/// the node opens its log, and records it on a witness's first start: a
/// witness's data directory holds entry metadata only, so it must never be
/// started as a full replica (it would serve an empty state machine and
/// vote as if it held payloads), and a full replica's data directory must
/// not become a witness's in place (the cluster counts it as a full voter).
/// Both are refused, with the node exiting; neither is ever changed
/// silently.
pub fn check_replica_kind(config: &ServeConfig) -> Result<(), JoinError> {
    let dir = &config.data_dir;
    let marker = dir.join(WITNESS_FILE);
    let marked = marker.exists();
    match (config.witness, marked) {
        (true, true) | (false, false) => Ok(()),
        (false, true) => Err(data_dir_error(
            dir,
            format!(
                "it belongs to a witness ({} exists): start it with --witness; a witness cannot become a full \
                 replica in place (remove it from the cluster, wipe the data directory, and add the node again)",
                marker.display()
            ),
        )),
        (true, false) if holds_a_log(dir) => Err(data_dir_error(
            dir,
            "it holds the log of a full replica, which cannot become a witness in place: remove the node from the \
             cluster, wipe its data directory, and start it with --witness (it then joins as a new witness)"
                .into(),
        )),
        (true, false) => {
            let fail = |error: std::io::Error| data_dir_error(dir, format!("cannot write {WITNESS_FILE}: {error}"));
            std::fs::create_dir_all(dir).map_err(fail)?;
            std::fs::write(&marker, "this data directory belongs to a witness: start the node with --witness\n")
                .map_err(fail)?;
            std::fs::File::open(&marker).and_then(|file| file.sync_all()).map_err(fail)?;
            std::fs::File::open(dir).and_then(|directory| directory.sync_all()).map_err(fail)?;
            Ok(())
        }
    }
}

/// Whether the data directory holds a log already (any shard directory with
/// files in it).
pub(crate) fn holds_a_log(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        entry.file_name().to_string_lossy().starts_with("shard-")
            && std::fs::read_dir(entry.path()).is_ok_and(|mut files| files.next().is_some())
    })
}

/// A client of the members given to `--join` (and, once the node runs,
/// the node itself).
fn client_config(config: &ServeConfig, via_self: bool, timeout: Duration) -> ClientConfig {
    let mut addrs = config.join_through.clone();
    if via_self {
        addrs.push(HostPort { host: config.client_addr.ip().to_string(), port: config.client_addr.port() });
    }
    ClientConfig {
        addrs,
        cluster_id: config.cluster_id,
        token: client_token(config),
        tls: client_tls(config),
        timeout,
        shard: 0,
    }
}

/// The token the node presents to the members: its `--join-token-file`
/// with TLS, else the shared token.
fn client_token(config: &ServeConfig) -> Option<crate::config::Token> {
    match &config.join_credential {
        Some(JoinCredential::Token(token)) => Some(token.clone()),
        _ => config.token.clone(),
    }
}

/// With TLS on, the members are called over TLS: the node CA verifies
/// them, and the node presents its admin client certificate
/// (`--join-tls-cert`), if it has one.
fn client_tls(config: &ServeConfig) -> Option<net::ClientTlsFiles> {
    let node_ca = config.security.tls.as_ref()?.node_ca.clone();
    let (certificate, private_key) = match &config.join_credential {
        Some(JoinCredential::Certificate { certificate, private_key }) => {
            (Some(certificate.clone()), Some(private_key.clone()))
        }
        _ => (None, None),
    };
    Some(net::ClientTlsFiles { node_ca, certificate, private_key })
}

/// Why asking the cluster failed, in words for the operator.
fn ask_error(config: &ServeConfig, error: impl std::fmt::Display) -> JoinError {
    let through: Vec<String> = config.join_through.iter().map(ToString::to_string).collect();
    let credential = if config.security.tls.is_some() {
        "that the node CA (--tls-ca or --tls-dir) signed the members' certificates, and that the members accept \
         --join-tls-cert (their client CA signed it), --join-token-file or the token"
    } else {
        "and that the token is the cluster's"
    };
    JoinError(format!(
        "cannot join through {}: {error} (check that these are members' client addresses, that --cluster-id {} is \
         the cluster's, {credential})",
        through.join(","),
        config.cluster_id
    ))
}

/// Finds this node's id before it starts: from the data directory, or by
/// asking the cluster (see the module documentation). Only for a node with
/// `join_through`; returns the members' peer addresses the cluster told
/// (to connect to at once; the log tells them too).
pub fn resolve_identity(config: &mut ServeConfig) -> Result<Vec<Peer>, JoinError> {
    if config.join_through.is_empty() {
        return Ok(Vec::new());
    }
    let dir = config.data_dir.clone();
    let mut identity = match read_identity(&dir)? {
        Some(identity) => {
            if identity.cluster_id != config.cluster_id {
                return Err(JoinError(format!(
                    "the data directory {} belongs to cluster {}, not to --cluster-id {}: this node is a member of \
                     another cluster (use another --data-dir to join this one)",
                    dir.display(),
                    identity.cluster_id,
                    config.cluster_id
                )));
            }
            if identity.node_id != 0 && config.node_id != 0 && identity.node_id != config.node_id {
                return Err(JoinError(format!(
                    "the data directory {} holds node {}, not --node-id {}",
                    dir.display(),
                    identity.node_id,
                    config.node_id
                )));
            }
            identity
        }
        None => {
            if holds_a_log(&dir) && config.node_id == 0 {
                return Err(JoinError(format!(
                    "the data directory {} holds a log but no {IDENTITY_FILE}: it belongs to a node started without \
                     --join; start it as it was, or join with an empty data directory",
                    dir.display()
                )));
            }
            let identity = Identity { cluster_id: config.cluster_id, node_id: config.node_id, nonce: nonzero_random() };
            write_identity(&dir, &identity)?;
            identity
        }
    };
    // Said before the calls: with no member answering they take up to
    // CHECK_TIMEOUT + ASK_TIMEOUT, and nothing was logged meanwhile.
    if identity.node_id == 0 && config.node_id == 0 {
        let through: Vec<String> = config.join_through.iter().map(ToString::to_string).collect();
        tracing::info!(
            through = %through.join(","),
            "joining: asking the members for an id (gives up after {} s if none answers)",
            (CHECK_TIMEOUT + ASK_TIMEOUT).as_secs()
        );
    }
    if identity.node_id != 0 && holds_a_log(&dir) {
        config.node_id = identity.node_id;
        return Ok(restart_members(config));
    }
    check_credentials(config)?;
    if identity.node_id == 0 {
        identity.node_id = if config.node_id != 0 { config.node_id } else { ask_for_id(config, identity.nonce)? };
        write_identity(&dir, &identity)?;
        tracing::info!(node = identity.node_id, "the cluster assigned this node its id");
    }
    config.node_id = identity.node_id;
    first_join_status(config)
}

/// A joined node's restart: the data directory holds the log and the
/// address book, so the members are asked only for where they are now,
/// briefly. (The credentials probe and this query took 5 s each when the
/// member given was down, before anything was logged.)
fn restart_members(config: &ServeConfig) -> Vec<Peer> {
    let through: Vec<String> = config.join_through.iter().map(ToString::to_string).collect();
    tracing::info!(
        node = config.node_id,
        through = %through.join(","),
        "restarting a joined node: asking the members where they are now (at most {} s)",
        RESTART_ASK_TIMEOUT.as_secs()
    );
    members_from(config, RESTART_ASK_TIMEOUT)
}

fn nonzero_random() -> u64 {
    rand::random::<u64>().max(1)
}

/// Calls the members once, so that a refused handshake (another cluster, a
/// wrong token) or a failed TLS negotiation (another CA, a certificate the
/// members do not accept) stops the node at once with the reason instead of
/// being retried until a deadline. Members that do not answer at all are
/// no error here: a restart needs none of them up. A member that answers
/// also tells the cluster's shard count, which must be this node's
/// ([`check_shard_count`]).
fn check_credentials(config: &ServeConfig) -> Result<(), JoinError> {
    let mut client = crate::client_cmd::BlockingClient::new(&client_config(config, false, CHECK_TIMEOUT))
        .map_err(|e| ask_error(config, e))?;
    match client.call(RequestBody::Status) {
        Err(CallError::Unreachable { last, .. }) if refused_credentials(&last) => Err(ask_error(config, last)),
        Ok(ResponseStatus::Forbidden(reason)) | Err(CallError::Refused(ResponseStatus::Forbidden(reason))) => {
            Err(JoinError(format!("the cluster refused this node's credentials: {reason}")))
        }
        Ok(_) => match client.shards() {
            Ok(shards) => check_shard_count(shards, config.shards),
            Err(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Every node of a cluster runs the same shard count: a key's shard is a
/// function of the count (`net::kv::shard_for_key`), so a node with
/// another count would send a key's writes to another group than the
/// members do, and the same key would hold two values depending on the
/// node asked. A joining node is told the count when it connects.
fn check_shard_count(cluster: u32, this_node: u32) -> Result<(), JoinError> {
    if cluster == this_node {
        return Ok(());
    }
    Err(JoinError(format!(
        "the cluster runs {cluster} shard(s) and this node was started with --shards {this_node}: every node of a \
         cluster runs the same count; start it with --shards {cluster}"
    )))
}

/// Asks the members for an id (admin `Join` with id 0 on shard 0).
fn ask_for_id(config: &ServeConfig, nonce: u64) -> Result<NodeId, JoinError> {
    let mut client = crate::client_cmd::BlockingClient::new(&client_config(config, false, ASK_TIMEOUT))
        .map_err(|e| ask_error(config, e))?;
    let request = JoinRequest {
        id: 0,
        nonce,
        peer_addr: config.peer_addr.to_string(),
        client_addr: config.client_addr.to_string(),
        witness: config.witness,
    };
    let answer = match client.admin(AdminRequest::Join(request)) {
        Ok(answer) => answer,
        Err(CallError::Refused(ResponseStatus::BadRequest(reason))) => {
            return Err(JoinError(format!("the cluster refused this node: {reason}")))
        }
        Err(CallError::Refused(ResponseStatus::Forbidden(reason))) => {
            return Err(JoinError(format!("the cluster refused this node's credentials: {reason}")))
        }
        Err(error) => return Err(ask_error(config, error)),
    };
    let value: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|error| ask_error(config, format!("unreadable answer: {error}")))?;
    value["node_id"]
        .as_u64()
        .filter(|&id| id != 0)
        .ok_or_else(|| ask_error(config, format!("answer without an id: {value}")))
}

/// The members' peer addresses as a member reports them (best effort: the
/// log tells them too).
fn members_from(config: &ServeConfig, timeout: Duration) -> Vec<Peer> {
    let Ok(mut client) = crate::client_cmd::BlockingClient::new(&client_config(config, false, timeout)) else {
        return Vec::new();
    };
    reported_members(&mut client, config.node_id).into_iter().map(|member| member.peer).collect()
}

/// A member as another member's status lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reported {
    peer: Peer,
    client: Option<HostPort>,
}

/// The members `client`'s node lists in its status, except `node_id`;
/// empty when it does not answer.
fn reported_members(client: &mut crate::client_cmd::BlockingClient, node_id: NodeId) -> Vec<Reported> {
    status_of(client).map(|status| members_in(&status, node_id)).unwrap_or_default()
}

/// The status of `client`'s node, or why there is none.
fn status_of(client: &mut crate::client_cmd::BlockingClient) -> Result<serde_json::Value, String> {
    match client.call(RequestBody::Status) {
        Ok(ResponseStatus::Ok(bytes)) => serde_json::from_slice(&bytes).map_err(|error| error.to_string()),
        Ok(other) => Err(format!("{other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// A first join: the members' peer addresses (as [`members_from`]) and the
/// history of the cluster, recorded in the data directory before the node
/// opens its log, so that its peers take it for theirs ([`net::History`]).
/// A member of a version before histories reports none: its cluster's is
/// the fresh one.
fn first_join_status(config: &ServeConfig) -> Result<Vec<Peer>, JoinError> {
    let learned = crate::client_cmd::BlockingClient::new(&client_config(config, false, Duration::from_secs(5)))
        .map_err(|error| error.to_string())
        .and_then(|mut client| status_of(&mut client));
    let status = learned.map_err(|error| {
        JoinError(format!("cannot learn from the members which history the cluster continues (its status): {error}"))
    })?;
    let history = match status["history"].as_str() {
        None => net::History::FRESH,
        Some(hex) => u64::from_str_radix(hex, 16)
            .map(net::History)
            .map_err(|_| JoinError(format!("a member reported history {hex:?}, which is not 16 hex digits")))?,
    };
    if history != net::History::FRESH {
        tracing::info!(%history, "joining a cluster restored from a backup");
    }
    write_history(&config.data_dir, history)?;
    Ok(members_in(&status, config.node_id).into_iter().map(|member| member.peer).collect())
}

/// The members a status lists, except `node_id`.
fn members_in(status: &serde_json::Value, node_id: NodeId) -> Vec<Reported> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|member| {
            let id = member["id"].as_u64()?;
            let addr: SocketAddr = member["peer_addr"].as_str()?.parse().ok()?;
            let client = member["client_addr"].as_str().and_then(|addr| addr.parse::<HostPort>().ok());
            (id != node_id).then_some(Reported { peer: Peer { id, addr }, client })
        })
        .collect()
}

/// How often a witness asks the members for their addresses.
const WITNESS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps a witness's links to the members current, on a thread of its own
/// until `shutdown`. A witness applies no ordinary entry (it never receives
/// their payloads), so the replicated address book, which is made of them,
/// never reaches it: without this it would know only the members it was
/// told at start, and could not answer (vote for, acknowledge) a full
/// member added later once that member leads. Every
/// `WITNESS_WATCH_INTERVAL` it asks a member (those given to `--join`,
/// then those the members reported) for its status and points every
/// core's links at the members' peer addresses (`moved`, as the DNS watch
/// does). The reported addresses also go to `learned`, so the witness's
/// shards can send a client to the leader and list the members in their
/// status. Cheap: one status call.
pub fn spawn_witness_watch(
    config: ServeConfig,
    moved: Vec<crate::dns_watch::Moved>,
    learned: crate::shard::LearnedAddresses,
    shutdown: Arc<AtomicBool>,
) {
    let name = format!("node-{}-witness-watch", config.node_id);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut known: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
        let mut asked = config.join_through.clone();
        let mut silent = false;
        while !shutdown.load(Ordering::Relaxed) {
            let mut client_config = client_config(&config, false, WITNESS_WATCH_INTERVAL);
            client_config.addrs = asked.clone();
            let reported = match crate::client_cmd::BlockingClient::new(&client_config) {
                Ok(mut client) => reported_members(&mut client, config.node_id),
                Err(_) => Vec::new(),
            };
            if reported.is_empty() != silent {
                silent = reported.is_empty();
                if silent {
                    tracing::warn!(asked = ?asked, "witness: no member answers with the members' addresses (asked again)");
                }
            }
            for member in &reported {
                if known.insert(member.peer.id, member.peer.addr) == Some(member.peer.addr) {
                    continue;
                }
                tracing::info!(member = member.peer.id, addr = %member.peer.addr, "witness: linking to the member");
                for core in &moved {
                    if core.try_send(member.peer).is_err() {
                        // Forgotten, so the next round sends it again.
                        known.remove(&member.peer.id);
                    }
                }
            }
            {
                let mut learned = learned.lock().expect("not poisoned");
                for member in &reported {
                    let addresses = crate::replicated::Addresses {
                        peer: Some(member.peer.addr.to_string()),
                        client: member.client.as_ref().map(ToString::to_string),
                    };
                    learned.insert(member.peer.id, addresses);
                }
            }
            for client in reported.into_iter().filter_map(|member| member.client) {
                if !asked.contains(&client) {
                    asked.push(client);
                }
            }
            std::thread::sleep(WITNESS_WATCH_INTERVAL);
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the witness's member watch: members added later stay unknown to it");
    }
}

/// A failure that stops the node (a removed node coming back).
pub type Fatal = Arc<Mutex<Option<String>>>;

/// Runs the membership driver on a thread of its own (see the module
/// documentation): every shard gets this node as a member, then as a voter
/// unless `config.learner`. Stops early when `shutdown` is set; a refusal
/// that retrying cannot cure is recorded in `fatal` and stops the node.
pub fn spawn_driver(config: ServeConfig, shutdown: Arc<AtomicBool>, fatal: Fatal) {
    let spawned = std::thread::Builder::new().name(format!("node-{}-membership", config.node_id)).spawn(move || {
        if let Err(reason) = drive(&config, &shutdown) {
            tracing::error!(%reason, "this node cannot be a member; stopping");
            *fatal.lock().expect("not poisoned") = Some(reason);
            shutdown.store(true, Ordering::SeqCst);
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the membership thread");
    }
}

fn drive(config: &ServeConfig, shutdown: &AtomicBool) -> Result<(), String> {
    let client_config = client_config(config, true, Duration::from_secs(5));
    let mut client = loop {
        match crate::client_cmd::BlockingClient::new(&client_config) {
            Ok(client) => break client,
            Err(error) => {
                tracing::warn!(%error, "membership: no client yet");
                if pause(shutdown) {
                    return Ok(());
                }
            }
        }
    };
    let id = config.node_id;
    let join = JoinRequest {
        id,
        nonce: 0,
        peer_addr: config.peer_addr.to_string(),
        client_addr: config.client_addr.to_string(),
        witness: config.witness,
    };
    let started = Instant::now();
    for shard in 0..config.shards {
        client.set_shard(shard);
        let request = AdminRequest::Join(join.clone());
        retry(&mut client, shutdown, &request, "joining")?;
        tracing::info!(shard, node = id, "member of the shard (its addresses are in the log)");
    }
    // A witness is added as one by its join (never as a learner to
    // promote): it is done.
    if config.learner || config.witness {
        return Ok(());
    }
    for shard in 0..config.shards {
        client.set_shard(shard);
        retry(&mut client, shutdown, &AdminRequest::Promote { id }, "promotion")?;
        tracing::info!(shard, node = id, after = ?started.elapsed(), "voter of the shard");
    }
    Ok(())
}

/// Sends `request` until it is done; a removed node's refusal is final,
/// other refusals (a change in progress, a learner still behind) are
/// retried.
fn retry(
    client: &mut crate::client_cmd::BlockingClient,
    shutdown: &AtomicBool,
    request: &AdminRequest,
    what: &str,
) -> Result<(), String> {
    let mut last_logged = Instant::now();
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        match client.admin(request.clone()) {
            Ok(_) => return Ok(()),
            Err(CallError::Refused(ResponseStatus::BadRequest(reason))) if reason.contains("was removed") => {
                return Err(reason)
            }
            Err(CallError::Refused(ResponseStatus::Forbidden(reason))) => {
                return Err(format!(
                    "the cluster refused this node's credentials: {reason} (the token, or with TLS \
                     --join-tls-cert, must carry the admin role)"
                ))
            }
            Err(CallError::Unreachable { last, .. }) if refused_credentials(&last) => {
                return Err(format!("the cluster refused this node's credentials: {last}"))
            }
            Err(error) => {
                if last_logged.elapsed() > Duration::from_secs(5) {
                    tracing::info!(%error, "membership: {what} not done yet; retrying");
                    last_logged = Instant::now();
                }
            }
        }
        if pause(shutdown) {
            return Ok(());
        }
    }
}

/// Sleeps a retry pause; true when the node is stopping.
fn pause(shutdown: &AtomicBool) -> bool {
    std::thread::sleep(RETRY_PAUSE);
    shutdown.load(Ordering::Relaxed)
}
