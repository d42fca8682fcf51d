//! [`Client`]: the client library of the cluster, one request at a time on
//! tokio-uring. It follows `NotLeader` answers to the leader, retries what
//! is safe to retry (a read; a write in its session with the same sequence)
//! until its deadline, and runs exactly-once sessions ([`crate::session`]):
//! open, write, close. The CLI and the tests use it; the load generator
//! pipelines on [`crate::ClientConnection`] directly with the same
//! [`Session`] bookkeeping.
//!
//! How it reaches a node is a [`Connector`]: [`TcpConnector`] over the
//! client protocol, or an embedding application's own (the node library
//! reaches the nodes of an in-process cluster through channels).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{AdminRequest, ClientRequest, ReadConsistency, RequestBody, ResponseStatus};
use crate::client_conn::{ClientConfig, ClientConnection};
use crate::session::{OpenedSession, Session};

/// Pause after `Busy` or an unknown leader before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Pause after a failed connection before trying the next node.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// How often a client that keeps calling asks again who the members are: a
/// node answers with the members whose client addresses it knows, and right
/// after a start or a membership change that may be only itself, so one
/// question at the first answer is not enough to fail over later. One status
/// request a second per busy client.
const RELEARN_EVERY: Duration = Duration::from_secs(1);
/// The longest a client that knows other nodes waits for a connection (TCP,
/// TLS and the handshake) to one node before it tries the next: a node that
/// accepts but never answers (stopped, overloaded, cut off after the SYN)
/// would otherwise take the whole deadline, and a call the healthy leader
/// would answer in milliseconds failed (`node kv --addr A,B` with B
/// stopped). Loopback and LAN connections take milliseconds; 2 s leaves
/// room for a TLS connection over a long path (three round trips).
pub const CONNECT_PER_NODE: Duration = Duration::from_secs(2);
/// The least time one node gets to answer a request while another node is
/// known (see `Client::answer_limit`).
const ANSWER_PER_NODE_MIN: Duration = Duration::from_secs(1);

/// Why a call gave up or was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No node answered with an outcome within the deadline. For a write in
    /// a session the outcome is unknown: retry the same sequence
    /// ([`Client::write_again`]) or give it up ([`Session::finish`]).
    ///
    /// `refused`: every node tried refused this client's credentials or
    /// settings (a wrong token, cluster id or certificate, another protocol
    /// version): the call gave up without waiting out the deadline, since
    /// asking again cannot help, and says so instead of "no node answered".
    #[error("{}", unreachable_text(.timeout, .last, *.refused))]
    Unreachable { timeout: Duration, last: String, refused: bool },
    /// The session is unknown, expired or closed: the write was not applied
    /// by this attempt. Open a new session and send the command there.
    #[error("the session expired (or was closed); the write was not applied now")]
    SessionExpired,
    /// A definitive refusal (`BadRequest`, `SessionFull`): nothing applied.
    #[error("refused: {0}")]
    Refused(ResponseStatus),
    /// The answer did not have the expected form.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// How a [`Client`] reaches the nodes of a cluster.
#[allow(async_fn_in_trait)] // Single-threaded by design (tokio-uring).
pub trait Connector {
    /// How a node is named: an address, or an in-process node's id.
    type Address: Clone + Eq + std::fmt::Display;

    /// Sends `request` to shard `shard` of the node at `addr` and returns
    /// its answer, or why there is none (the client then tries another).
    async fn exchange(
        &mut self,
        addr: &Self::Address,
        shard: u32,
        request: &ClientRequest,
    ) -> Result<ResponseStatus, String>;

    /// Where a `NotLeader` answer says the leader is, if it says.
    fn leader(&self, status: &ResponseStatus) -> Option<Self::Address>;

    /// Forgets what it holds for `addr` (a connection that failed).
    fn forget(&mut self, addr: &Self::Address);

    /// Bounds the next connection it opens (if the next call needs one) to
    /// `limit`; a connection that takes longer fails, and the client tries
    /// another node. Connectors without connections ignore it.
    fn limit_connect(&mut self, limit: Duration) {
        let _ = limit;
    }

    /// The shard count of the node at `addr` (0 if it does not say).
    async fn shards(&mut self, addr: &Self::Address) -> Result<u32, String>;

    /// The cluster's members as the node at `addr` knows them (from the
    /// replicated membership), so that a client given one node can go on
    /// when that node fails. None by default.
    async fn members(&mut self, addr: &Self::Address) -> Result<Vec<Self::Address>, String> {
        let _ = addr;
        Ok(Vec::new())
    }
}

/// The members' client addresses in a status document's `members` list.
pub fn member_client_addrs(status: &[u8]) -> Vec<SocketAddr> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(status) else { return Vec::new() };
    value["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|member| member["client_addr"].as_str()?.parse().ok())
        .collect()
}

/// The client protocol over TCP: one connection at a time, to the node last
/// talked to.
pub struct TcpConnector {
    config: ClientConfig,
    connection: Option<(SocketAddr, ClientConnection)>,
    /// See [`Connector::limit_connect`].
    connect_limit: Duration,
}

impl TcpConnector {
    pub fn new(config: ClientConfig) -> TcpConnector {
        let connect_limit = config.connect_timeout;
        TcpConnector { config, connection: None, connect_limit }
    }

    /// The connection to `addr`, opened if there is none (within the
    /// connect limit).
    async fn connection(&mut self, addr: &SocketAddr) -> Result<&mut ClientConnection, String> {
        if self.connection.as_ref().is_none_or(|(connected, _)| connected != addr) {
            self.connection = None;
            let limit = self.connect_limit;
            let connection = tokio::time::timeout(limit, ClientConnection::connect(*addr, &self.config))
                .await
                .map_err(|_| format!("no connection within {limit:.1?}"))?
                .map_err(|error| error.to_string())?;
            self.connection = Some((*addr, connection));
        }
        Ok(&mut self.connection.as_mut().expect("connected above").1)
    }
}

impl Connector for TcpConnector {
    type Address = SocketAddr;

    async fn exchange(
        &mut self,
        addr: &SocketAddr,
        shard: u32,
        request: &ClientRequest,
    ) -> Result<ResponseStatus, String> {
        let connection = self.connection(addr).await?;
        let response = connection.call(shard, request).await.map_err(|error| error.to_string())?;
        if response.request_id != request.request_id {
            return Err(format!("answer to request {} instead of {}", response.request_id, request.request_id));
        }
        Ok(response.status)
    }

    fn leader(&self, status: &ResponseStatus) -> Option<SocketAddr> {
        match status {
            ResponseStatus::NotLeader { leader_addr: Some(leader), .. } => leader.parse().ok(),
            _ => None,
        }
    }

    fn forget(&mut self, addr: &SocketAddr) {
        if self.connection.as_ref().is_some_and(|(connected, _)| connected == addr) {
            self.connection = None;
        }
    }

    fn limit_connect(&mut self, limit: Duration) {
        self.connect_limit = limit.min(self.config.connect_timeout);
    }

    /// Told in the handshake's answer.
    async fn shards(&mut self, addr: &SocketAddr) -> Result<u32, String> {
        Ok(self.connection(addr).await?.server_shards())
    }

    /// Asked with a status request (shard 0, every node has one).
    async fn members(&mut self, addr: &SocketAddr) -> Result<Vec<SocketAddr>, String> {
        let request = ClientRequest::plain(u64::MAX, RequestBody::Status);
        match self.exchange(addr, 0, &request).await? {
            ResponseStatus::Ok(bytes) => Ok(member_client_addrs(&bytes)),
            other => Err(format!("status refused: {other}")),
        }
    }
}

/// What each node tried last said (or why it said nothing), in the order
/// first tried: a call that gives up names them all, not just the last one
/// (a refused connection to a down node hid that another had answered
/// "no leader").
#[derive(Default)]
struct Outcomes(Vec<(String, String)>);

impl Outcomes {
    fn note(&mut self, addr: &impl std::fmt::Display, what: impl std::fmt::Display) {
        let (addr, what) = (addr.to_string(), what.to_string());
        match self.0.iter_mut().find(|(known, _)| *known == addr) {
            Some(entry) => entry.1 = what,
            None => self.0.push((addr, what)),
        }
    }

    fn unreachable(self, timeout: Duration) -> CallError {
        let refused = !self.0.is_empty() && self.0.iter().all(|(_, what)| refused_credentials(what));
        let last = if self.0.is_empty() {
            String::from("no attempt")
        } else {
            self.0.iter().map(|(addr, what)| format!("{addr}: {what}")).collect::<Vec<_>>().join("; ")
        };
        CallError::Unreachable { timeout, last, refused }
    }

    /// Whether every one of `addrs` refused this client's credentials at
    /// its last attempt: then no later attempt can do better.
    fn all_refused<A: std::fmt::Display>(&self, addrs: &[A]) -> bool {
        addrs.iter().all(|addr| {
            let addr = addr.to_string();
            self.0.iter().any(|(known, what)| *known == addr && refused_credentials(what))
        })
    }
}

fn unreachable_text(timeout: &Duration, last: &str, refused: bool) -> String {
    match refused {
        true => format!(
            "every node refused this client: {last} (check the token, --cluster-id, and with TLS the CA and the \
             client certificate)"
        ),
        false => format!("no node answered within {timeout:?}: {last}"),
    }
}

/// Whether a failed exchange was a node refusing this client's credentials
/// or settings (its handshake, or with TLS a certificate: an alert or an
/// invalid one), rather than no one listening or a broken connection. A
/// node at its connection bound (`Overloaded`) may take the next attempt,
/// so that refusal does not count.
pub fn refused_credentials(outcome: &str) -> bool {
    let outcome = outcome.to_ascii_lowercase();
    (outcome.contains("handshake refused") && !outcome.contains("(overloaded)"))
        || (outcome.contains("tls:") && (outcome.contains("alert") || outcome.contains("certificate")))
}

/// A client of one shard of a cluster.
pub struct Client<C: Connector = TcpConnector> {
    connector: C,
    /// Every node given, tried in turn when no leader is known.
    addrs: Vec<C::Address>,
    shard: u32,
    /// How long a call keeps retrying.
    timeout: Duration,
    /// Where to send next: the leader, once a node named it.
    target: Option<C::Address>,
    attempt: usize,
    next_request_id: u64,
    /// The cluster's shard count, once a node told it.
    shards: Option<u32>,
    /// When the members were last asked for; `None` after a failed
    /// connection (ask the next node that answers).
    learned_at: Option<Instant>,
    /// How long an answer to that question stays fresh ([`RELEARN_EVERY`]).
    relearn_every: Duration,
    /// How many of `addrs` were given; the rest were learned, and are tried
    /// once a connection failed (until then the client behaves as if it
    /// knew the given nodes only).
    given: usize,
    widened: bool,
}

impl Client<TcpConnector> {
    /// A client of shard `shard` over TCP, given any nodes' client addresses
    /// (at least one), that gives up on a call after `timeout`.
    pub fn new(addrs: Vec<SocketAddr>, config: ClientConfig, shard: u32, timeout: Duration) -> Client<TcpConnector> {
        Client::with_connector(TcpConnector::new(config), addrs, shard, timeout)
    }
}

impl<C: Connector> Client<C> {
    /// A client reaching the nodes `addrs` (at least one) through
    /// `connector`.
    pub fn with_connector(connector: C, addrs: Vec<C::Address>, shard: u32, timeout: Duration) -> Client<C> {
        assert!(!addrs.is_empty(), "a client needs at least one node");
        let addrs_len = addrs.len();
        Client {
            connector,
            addrs,
            shard,
            timeout,
            target: None,
            attempt: 0,
            next_request_id: 1,
            shards: None,
            learned_at: None,
            relearn_every: RELEARN_EVERY,
            given: addrs_len,
            widened: false,
        }
    }

    /// The shard later calls go to.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Sends later calls to shard `shard` (a session belongs to one shard:
    /// open it on the shard it will write to).
    pub fn set_shard(&mut self, shard: u32) {
        if shard != self.shard {
            self.shard = shard;
            self.target = None;
        }
    }

    /// The cluster's shard count, asked of the nodes once (a node tells it
    /// when a connection opens). Goes round the nodes until one tells or
    /// the deadline passes, as a call does: a node restarting refuses
    /// connections for a moment, and the command failed at once.
    pub async fn shards(&mut self) -> Result<u32, CallError> {
        if let Some(shards) = self.shards {
            return Ok(shards);
        }
        let deadline = Instant::now() + self.timeout;
        let mut outcomes = Outcomes::default();
        'rounds: loop {
            for addr in self.addrs.clone() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break 'rounds;
                }
                self.connector.limit_connect(self.connect_limit(remaining));
                match tokio::time::timeout(remaining, self.connector.shards(&addr)).await {
                    Ok(Ok(0)) => outcomes.note(&addr, "did not say how many shards it has"),
                    Ok(Ok(shards)) => {
                        self.shards = Some(shards);
                        return Ok(shards);
                    }
                    Ok(Err(error)) => {
                        self.connector.forget(&addr);
                        outcomes.note(&addr, error);
                        if outcomes.all_refused(&self.addrs) {
                            break 'rounds;
                        }
                    }
                    Err(_) => {
                        self.connector.forget(&addr);
                        outcomes.note(&addr, "no answer");
                    }
                }
            }
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            if pause.is_zero() {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        Err(outcomes.unreachable(self.timeout))
    }

    /// How long the node asked gets to answer: half of what is left (at
    /// least `ANSWER_PER_NODE_MIN`) while another node is known. A node that
    /// accepts a connection and never answers (a stopped or wedged process)
    /// took the whole deadline, and the call failed with healthy nodes
    /// listed (fifth audit, F2).
    ///
    /// Every request may be asked again of another node, as it already is
    /// after a lost connection: a read or a status; a write in a session,
    /// whose retried sequence is applied once (one outside any session may
    /// be applied twice on any retry, as documented); and every admin
    /// request, which a node answers without waiting on anything but a
    /// commit or a read barrier (a backup's start answers `pending` while
    /// its snapshot is taken). A membership change or a join sent twice is
    /// answered as done or in progress; a second snapshot is merely taken.
    fn answer_limit(&self, remaining: Duration) -> Duration {
        if self.addrs.len() > 1 {
            remaining.min((remaining / 2).max(ANSWER_PER_NODE_MIN))
        } else {
            remaining
        }
    }

    /// How long the next connection may take: [`CONNECT_PER_NODE`] while
    /// there are other nodes to try, else whatever is left of the deadline.
    fn connect_limit(&self, remaining: Duration) -> Duration {
        if self.addrs.len() > 1 {
            remaining.min(CONNECT_PER_NODE)
        } else {
            remaining
        }
    }

    /// Sends later calls to the shard that owns `key`
    /// ([`crate::kv::shard_for_key`]); returns it.
    pub async fn route_to_key(&mut self, key: &[u8]) -> Result<u32, CallError> {
        let shards = self.shards().await?;
        let shard = crate::kv::shard_for_key(key, shards);
        self.set_shard(shard);
        Ok(shard)
    }

    /// Sends `body` in `session` context (`client_id`, `sequence`, `ack` as
    /// given) until a node answers with an outcome: follows redirects, and
    /// retries `Busy`, `TimedOut`, an unknown leader and lost connections
    /// until the deadline.
    pub async fn call(
        &mut self,
        client_id: u64,
        sequence: u64,
        ack: u64,
        body: RequestBody,
    ) -> Result<ResponseStatus, CallError> {
        self.call_until(Instant::now() + self.timeout, client_id, sequence, ack, body).await
    }

    fn take_request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id - 1
    }

    /// `addr` could not be asked (`error`): its connection is forgotten,
    /// and the next node that answers is asked who the members are now (the
    /// learned ones are tried too). Whether to give up: every node refused
    /// this client's credentials.
    fn could_not_ask(&mut self, addr: &C::Address, error: String, outcomes: &mut Outcomes) -> bool {
        outcomes.note(addr, error);
        self.connector.forget(addr);
        self.target = None;
        self.learned_at = None;
        self.widened = true;
        outcomes.all_refused(&self.addrs)
    }

    async fn call_until(
        &mut self,
        deadline: Instant,
        client_id: u64,
        sequence: u64,
        ack: u64,
        body: RequestBody,
    ) -> Result<ResponseStatus, CallError> {
        let mut outcomes = Outcomes::default();
        while Instant::now() < deadline {
            let addr = self.next_addr();
            let request =
                ClientRequest { request_id: self.take_request_id(), client_id, sequence, ack, body: body.clone() };
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.connector.limit_connect(self.connect_limit(remaining));
            let limit = self.answer_limit(remaining);
            let answer = tokio::time::timeout(limit, self.connector.exchange(&addr, self.shard, &request)).await;
            let status = match answer {
                Ok(Ok(status)) => status,
                Ok(Err(error)) => {
                    if self.could_not_ask(&addr, error, &mut outcomes) {
                        break;
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
                Err(_) => {
                    self.connector.forget(&addr);
                    outcomes.note(&addr, "no answer");
                    // The next attempt, or the next call, starts from the
                    // given nodes, not from one that did not answer.
                    self.target = None;
                    if limit < remaining {
                        continue;
                    }
                    break;
                }
            };
            if self.learned_at.is_none_or(|at| at.elapsed() >= self.relearn_every) {
                self.learn_members(&addr).await;
            }
            if let Some(leader) = self.connector.leader(&status) {
                if !self.addrs.contains(&leader) {
                    self.addrs.push(leader.clone());
                }
                self.target = Some(leader);
                outcomes.note(&addr, &status);
                continue;
            }
            match status {
                ResponseStatus::NotLeader { .. } | ResponseStatus::Busy | ResponseStatus::TimedOut => {
                    // One without a leader may be cut off or removed: try the members it named too.
                    self.widened |= matches!(status, ResponseStatus::NotLeader { leader_id: None, .. });
                    outcomes.note(&addr, &status);
                    self.target = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                status => {
                    // The node that answered takes the next call too: going
                    // round the given nodes instead sent every other call
                    // to a stopped one.
                    self.target = Some(addr);
                    return Ok(status);
                }
            }
        }
        Err(outcomes.unreachable(self.timeout))
    }

    /// Adds the members the node at `addr` knows to the nodes this client
    /// tries, so that it goes on when the nodes it was given fail.
    async fn learn_members(&mut self, addr: &C::Address) {
        self.learned_at = Some(Instant::now());
        match self.connector.members(addr).await {
            Ok(members) => {
                for member in members {
                    if !self.addrs.contains(&member) {
                        self.addrs.push(member);
                    }
                }
            }
            Err(error) => tracing::debug!(%addr, %error, "members not learned"),
        }
    }

    /// The nodes this client tries: those it was given and those it learned.
    pub fn known_nodes(&self) -> &[C::Address] {
        &self.addrs
    }

    /// The leader if known, else the next given node in turn.
    fn next_addr(&mut self) -> C::Address {
        if let Some(target) = &self.target {
            return target.clone();
        }
        let pool = if self.widened { self.addrs.len() } else { self.given };
        let addr = self.addrs[self.attempt % pool].clone();
        self.attempt += 1;
        addr
    }

    /// Opens an exactly-once session (its id is assigned by the cluster).
    pub async fn open_session(&mut self) -> Result<Session, CallError> {
        match self.call(0, 0, 0, RequestBody::OpenSession).await? {
            ResponseStatus::Ok(bytes) => OpenedSession::decode(&bytes)
                .map(Session::new)
                .map_err(|error| CallError::Unexpected(format!("session opening answer: {error}"))),
            other => Err(CallError::Refused(other)),
        }
    }

    /// Writes `command` once in `session`: a new sequence, retried (the same
    /// sequence) until an outcome arrives or the deadline (at most the
    /// session's retry window) passes. On `Unreachable` the outcome is
    /// unknown and the sequence is given up (never sent again); a caller
    /// that wants to retry it later starts it itself ([`Session::start`])
    /// and sends it with [`Client::write_again`].
    pub async fn write(&mut self, session: &mut Session, command: Bytes) -> Result<Bytes, CallError> {
        let sequence = session.start();
        let result = self.write_again(session, sequence, command).await;
        session.finish(sequence);
        result
    }

    /// Sends write `sequence` of `session` (started with [`Session::start`])
    /// with `command`, again after an `Unreachable`: the same sequence and
    /// command, so it is applied at most once. On `Unreachable` the sequence
    /// stays awaited (the cluster keeps its answer) until the caller retries
    /// or gives it up with [`Session::finish`].
    pub async fn write_again(
        &mut self,
        session: &mut Session,
        sequence: u64,
        command: Bytes,
    ) -> Result<Bytes, CallError> {
        let deadline = Instant::now() + self.timeout.min(session.retry_window());
        let body = RequestBody::Write { command };
        let status = self.call_until(deadline, session.client_id(), sequence, session.ack(), body).await?;
        session.finish(sequence);
        match status {
            ResponseStatus::Ok(answer) => Ok(answer),
            ResponseStatus::SessionExpired => Err(CallError::SessionExpired),
            other => Err(CallError::Refused(other)),
        }
    }

    /// Writes `command` outside any session: a retry may apply it again.
    pub async fn write_at_least_once(&mut self, command: Bytes) -> Result<Bytes, CallError> {
        match self.call(0, 0, 0, RequestBody::Write { command }).await? {
            ResponseStatus::Ok(answer) => Ok(answer),
            other => Err(CallError::Refused(other)),
        }
    }

    /// Closes `session`: the cluster forgets it and its answers.
    pub async fn close_session(&mut self, session: Session) -> Result<(), CallError> {
        match self.call(session.client_id(), 0, 0, RequestBody::CloseSession).await? {
            ResponseStatus::Ok(_) => Ok(()),
            other => Err(CallError::Refused(other)),
        }
    }

    /// Reads with `query` at `consistency`.
    pub async fn read(&mut self, query: Bytes, consistency: ReadConsistency) -> Result<Bytes, CallError> {
        match self.call(0, 0, 0, RequestBody::Read { query, consistency }).await? {
            ResponseStatus::Ok(answer) => Ok(answer),
            other => Err(CallError::Refused(other)),
        }
    }

    /// An admin request; the answer's bytes (JSON or empty).
    pub async fn admin(&mut self, request: AdminRequest) -> Result<Bytes, CallError> {
        match self.call(0, 0, 0, RequestBody::Admin(request)).await? {
            ResponseStatus::Ok(answer) => Ok(answer),
            other => Err(CallError::Refused(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;

    /// Nodes named by number: each answers every request with `Ok` while it
    /// runs, and names the members it knows when asked.
    #[derive(Default)]
    struct Nodes {
        running: BTreeMap<u32, Vec<u32>>,
        /// Nodes that accept a connection and never answer (stopped).
        hung: Vec<u32>,
        /// Nodes connected that never answer a request (wedged).
        silent: Vec<u32>,
        /// Running nodes that know no leader (cut off, or removed).
        leaderless: Vec<u32>,
        /// Nodes that refuse this client's handshake (a wrong token).
        refusing: Vec<u32>,
        /// Calls that reached each node.
        calls: BTreeMap<u32, u32>,
    }

    /// Nodes 1 and 2, running, each knowing both.
    fn two_running_nodes() -> Rc<RefCell<Nodes>> {
        let nodes = Rc::new(RefCell::new(Nodes::default()));
        nodes.borrow_mut().running.insert(1, vec![1, 2]);
        nodes.borrow_mut().running.insert(2, vec![1, 2]);
        nodes
    }

    struct FakeConnector(Rc<RefCell<Nodes>>, Duration);

    impl FakeConnector {
        fn new(nodes: Rc<RefCell<Nodes>>) -> FakeConnector {
            FakeConnector(nodes, Duration::from_secs(3600))
        }
    }

    impl Connector for FakeConnector {
        type Address = u32;

        async fn exchange(&mut self, node: &u32, _: u32, _: &ClientRequest) -> Result<ResponseStatus, String> {
            *self.0.borrow_mut().calls.entry(*node).or_default() += 1;
            if self.0.borrow().hung.contains(node) {
                // As the TCP connector does: no connection within the limit.
                tokio::time::sleep(self.1).await;
                return Err(format!("no connection within {:?}", self.1));
            }
            if self.0.borrow().silent.contains(node) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if self.0.borrow().leaderless.contains(node) {
                return Ok(ResponseStatus::NotLeader { leader_id: None, leader_addr: None });
            }
            if self.0.borrow().refusing.contains(node) {
                return Err("handshake refused by the remote end (BadToken): no valid token".into());
            }
            match self.0.borrow().running.contains_key(node) {
                true => Ok(ResponseStatus::Ok(Bytes::from_static(b"done"))),
                false => Err(format!("node {node} is down")),
            }
        }

        fn limit_connect(&mut self, limit: Duration) {
            self.1 = limit;
        }

        fn leader(&self, _: &ResponseStatus) -> Option<u32> {
            None
        }

        fn forget(&mut self, _: &u32) {}

        async fn shards(&mut self, node: &u32) -> Result<u32, String> {
            *self.0.borrow_mut().calls.entry(*node).or_default() += 1;
            if self.0.borrow().refusing.contains(node) {
                return Err("handshake refused by the remote end (BadToken): no valid token".into());
            }
            match self.0.borrow().running.contains_key(node) {
                true => Ok(1),
                false => Err(format!("node {node} is down")),
            }
        }

        async fn members(&mut self, node: &u32) -> Result<Vec<u32>, String> {
            self.0.borrow().running.get(node).cloned().ok_or_else(|| format!("node {node} is down"))
        }
    }

    /// A node that accepts the connection and never answers (a stopped or
    /// wedged process) must not sink a call another node answers: it took
    /// the whole deadline, and the call failed (fifth audit, F2). Now it
    /// gets half of it, and the next node the rest.
    #[test]
    fn a_node_that_never_answers_costs_half_the_deadline_and_the_next_node_answers() {
        tokio_uring::start(async {
            let nodes = two_running_nodes();
            nodes.borrow_mut().silent.push(1);
            let timeout = Duration::from_secs(3);
            let mut client = Client::with_connector(FakeConnector::new(nodes.clone()), vec![1, 2], 0, timeout);
            let started = Instant::now();
            let answer = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await;
            assert_eq!(answer.expect("node 2 answers"), Bytes::from_static(b"done"));
            let took = started.elapsed();
            assert!(took < Duration::from_millis(2500), "the call took {took:?} of its {timeout:?}");
            assert_eq!(nodes.borrow().calls.get(&1), Some(&1), "node 1 was asked once");

            // An admin request as well: it kept the whole deadline.
            let mut client = Client::with_connector(FakeConnector::new(nodes.clone()), vec![1, 2], 0, timeout);
            let started = Instant::now();
            let answer = client.admin(AdminRequest::Stats).await;
            assert_eq!(answer.expect("node 2 answers"), Bytes::from_static(b"done"));
            let took = started.elapsed();
            assert!(took < Duration::from_millis(2500), "the admin call took {took:?} of its {timeout:?}");
            assert_eq!(nodes.borrow().calls.get(&1), Some(&2), "node 1 was asked once more");
        });
    }

    /// A node that knew only itself when the client first asked (it had not
    /// heard the others' client addresses yet) must not leave the client
    /// unable to fail over for the rest of its life: the client asks again
    /// while it keeps calling, and so reaches node 2 once node 1 is gone.
    #[test]
    fn a_client_asks_again_who_the_members_are_and_fails_over_to_one_learned_later() {
        tokio_uring::start(async {
            let nodes = Rc::new(RefCell::new(Nodes::default()));
            nodes.borrow_mut().running.insert(1, vec![1]);
            nodes.borrow_mut().running.insert(2, vec![1, 2]);
            let mut client =
                Client::with_connector(FakeConnector::new(nodes.clone()), vec![1], 0, Duration::from_secs(1));
            client.relearn_every = Duration::ZERO;
            client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await.expect("node 1 answers");
            assert_eq!(client.known_nodes(), &[1], "node 1 knew only itself at first");

            nodes.borrow_mut().running.insert(1, vec![1, 2]);
            client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await.expect("node 1 answers");
            assert_eq!(client.known_nodes(), &[1, 2], "asked again at the next answer");

            nodes.borrow_mut().running.remove(&1);
            let answer = client
                .read(Bytes::from_static(b"k"), ReadConsistency::Linearizable)
                .await
                .expect("node 2 answers once node 1 is gone");
            assert_eq!(answer, Bytes::from_static(b"done"));
        });
    }
    /// A stopped node (it accepts connections and never answers) must not
    /// sink calls a healthy node answers: the client went round the given
    /// nodes call by call, so every other call waited for the stopped one
    /// until its deadline (`node kv --addr A,B` failed after 5 s with B
    /// stopped), and one given it first waited on its connection as long.
    #[test]
    fn a_stopped_node_costs_at_most_a_connect_limit_and_the_answering_node_keeps_the_calls() {
        tokio_uring::start(async {
            let nodes = two_running_nodes();
            nodes.borrow_mut().hung.push(2);
            let timeout = Duration::from_secs(3);
            let mut client = Client::with_connector(FakeConnector::new(nodes.clone()), vec![1, 2], 0, timeout);
            for call in 0..4 {
                let answer = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await;
                assert!(answer.is_ok(), "call {call} failed with node 2 stopped: {:?}", answer.err());
            }
            assert_eq!(nodes.borrow().calls.get(&2), None, "node 1 answered, and kept the calls");

            // Given the stopped node first: it costs one connect limit.
            let mut client = Client::with_connector(FakeConnector::new(nodes.clone()), vec![2, 1], 0, timeout);
            let answer = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await;
            assert!(answer.is_ok(), "failed with the stopped node first: {:?}", answer.err());
            assert_eq!(nodes.borrow().calls.get(&2), Some(&1));

            // With every node down, the error names each one's outcome.
            nodes.borrow_mut().running.clear();
            let error = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await.unwrap_err();
            let text = error.to_string();
            assert!(text.contains("1: node 1 is down") && text.contains("2: no connection within"), "{text}");
        });
    }

    /// Given only a node that runs but knows no leader (removed, or cut
    /// off from the others), the client tries the members it named: it
    /// asked that node alone until the deadline (`node kv --addr` of a
    /// removed leader failed after 5 s with "no leader known").
    #[test]
    fn a_node_without_a_leader_sends_the_client_to_the_members_it_named() {
        tokio_uring::start(async {
            let nodes = two_running_nodes();
            nodes.borrow_mut().leaderless.push(1);
            let mut client =
                Client::with_connector(FakeConnector::new(nodes.clone()), vec![1], 0, Duration::from_secs(2));
            let answer = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await;
            assert_eq!(answer.expect("node 2 answers"), Bytes::from_static(b"done"));
            assert!(nodes.borrow().calls.contains_key(&2), "node 2 was tried");
        });
    }

    /// A node that refuses connections for a moment (it is restarting)
    /// must not fail a command at once: the shard count is asked again
    /// until the deadline, as a call would be (`node kv` failed at its
    /// first refused connection, saying no node answered "within 5s").
    #[test]
    fn the_shard_count_is_asked_again_until_the_deadline() {
        tokio_uring::start(async {
            let nodes = Rc::new(RefCell::new(Nodes::default()));
            let mut client =
                Client::with_connector(FakeConnector::new(nodes.clone()), vec![1], 0, Duration::from_secs(2));
            let restarted = nodes.clone();
            tokio_uring::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                restarted.borrow_mut().running.insert(1, vec![1]);
            });
            assert_eq!(client.shards().await.expect("node 1 tells once it is back"), 1);
            assert!(nodes.borrow().calls[&1] > 1, "asked more than once");

            // With no node ever back, the deadline ends it, naming why.
            let mut client =
                Client::with_connector(FakeConnector::new(nodes.clone()), vec![7], 0, Duration::from_millis(300));
            let started = std::time::Instant::now();
            let error = client.shards().await.unwrap_err().to_string();
            assert!(started.elapsed() >= Duration::from_millis(300), "gave up before the deadline");
            assert!(error.contains("7: node 7 is down"), "{error}");
        });
    }

    /// Nodes that all refuse the client's credentials answer at once: the
    /// call says they refused, without waiting out its deadline ("no node
    /// answered within 5s" after 5 s, found by an audit). A down node among
    /// them keeps the call going until the deadline, as before.
    #[test]
    fn nodes_that_all_refuse_the_credentials_end_the_call_at_once() {
        tokio_uring::start(async {
            let nodes = two_running_nodes();
            nodes.borrow_mut().refusing.extend([1, 2]);
            let mut client =
                Client::with_connector(FakeConnector::new(nodes.clone()), vec![1, 2], 0, Duration::from_secs(5));
            let started = std::time::Instant::now();
            let error = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
            assert!(matches!(error, CallError::Unreachable { refused: true, .. }), "{error:?}");
            let text = error.to_string();
            assert!(text.starts_with("every node refused this client: 1: handshake refused"), "{text}");
            assert!(client.shards().await.unwrap_err().to_string().starts_with("every node refused"));

            nodes.borrow_mut().running.remove(&2);
            nodes.borrow_mut().refusing.retain(|node| *node == 1);
            let mut client =
                Client::with_connector(FakeConnector::new(nodes.clone()), vec![1, 2], 0, Duration::from_millis(600));
            let error = client.read(Bytes::from_static(b"k"), ReadConsistency::Linearizable).await.unwrap_err();
            assert!(matches!(error, CallError::Unreachable { refused: false, .. }), "{error:?}");
            assert!(error.to_string().starts_with("no node answered within"), "{error}");
        });
    }
}
