//! The in-process network of an embedded cluster, and [`NodeHandle`]: how
//! code in the same process talks to a running node without sockets.
//!
//! A [`Hub`] connects the cores of the nodes of one process: core `k` of
//! each node registers a channel, and a Raft message for node `n` goes
//! straight into core `k` of `n`'s channel (bounded: a full channel drops
//! the message, and Raft resends, as over TCP). Client requests reach
//! a node through its [`NodeHandle`], the same path a request forwarded
//! from another core takes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine::{Message, NodeId};
use net::{ClientRequest, ResponseStatus};
use tokio::sync::{mpsc, oneshot};

/// A client request handed to a core from outside it: from another core of
/// the node, or from a [`NodeHandle`].
pub struct Forwarded {
    pub shard_id: u32,
    pub request: ClientRequest,
    /// The user of the connection it came on; `None` for the node's own
    /// callers (a [`NodeHandle`]), who are [`crate::session::LOCAL_CALLER`].
    pub caller: Option<Arc<str>>,
    pub reply: oneshot::Sender<ResponseStatus>,
    pub arrived: Instant,
}

/// A Raft message of a shard, as the hub carries it.
pub struct HubMessage {
    pub shard_id: u32,
    pub message: Message,
}

/// Raft messages a core's hub channel holds at most.
pub const HUB_QUEUE_MAX: usize = 16_384;

/// Each registered core's channel, by node and core.
type Cores = HashMap<(NodeId, u16), mpsc::Sender<HubMessage>>;

/// The in-process network: the registered cores of the nodes of one
/// process. Clones share it.
#[derive(Clone, Default)]
pub struct Hub {
    cores: Arc<Mutex<Cores>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    fn cores(&self) -> std::sync::MutexGuard<'_, Cores> {
        self.cores.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Core `core` of node `node` receives from now on through the returned
    /// channel.
    pub fn register(&self, node: NodeId, core: u16) -> mpsc::Receiver<HubMessage> {
        let (sender, receiver) = mpsc::channel(HUB_QUEUE_MAX);
        self.cores().insert((node, core), sender);
        receiver
    }

    /// Node `node`'s core `core` stopped: messages to it are dropped.
    pub fn unregister(&self, node: NodeId, core: u16) {
        self.cores().remove(&(node, core));
    }

    /// Delivers a Raft message of `shard_id` to core `core` of its
    /// destination, or drops it when that core is not running or is full.
    pub fn send(&self, core: u16, shard_id: u32, message: Message) {
        let target = self.cores().get(&(message.to, core)).cloned();
        if let Some(inbound) = target {
            let _ = inbound.try_send(HubMessage { shard_id, message });
        }
    }
}

/// How code in the same process sends client requests to a running node
/// (any shard, any core). Clones are cheap and may move between threads.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: NodeId,
    shards: u32,
    /// One per core: shard `s` lives on core `s % cores.len()`.
    cores: Vec<mpsc::Sender<Forwarded>>,
}

impl NodeHandle {
    pub(crate) fn new(node_id: NodeId, shards: u32, cores: Vec<mpsc::Sender<Forwarded>>) -> NodeHandle {
        NodeHandle { node_id, shards, cores }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Sends `request` to shard `shard_id` as the node's own caller
    /// ([`crate::session::LOCAL_CALLER`]: the sessions it opens are the
    /// node's, which no network client may use); the answer arrives on the
    /// returned channel (any runtime can await it). A node whose core's
    /// queue is full answers `Busy` at once; the channel closes unanswered
    /// when the node is stopped or stops before answering.
    pub fn call(&self, shard_id: u32, request: ClientRequest) -> oneshot::Receiver<ResponseStatus> {
        self.send(shard_id, request, None)
    }

    /// As [`NodeHandle::call`], on behalf of `user` (1 to 64 bytes): for an
    /// application's own front door that authenticated its callers. The
    /// sessions it opens belong to `user`, and a write or close in a
    /// session of another user (or of the node's own callers) is answered
    /// `Forbidden`, as for network clients (see `session`, "Owners").
    pub fn call_as(&self, shard_id: u32, request: ClientRequest, user: Arc<str>) -> oneshot::Receiver<ResponseStatus> {
        if user.is_empty() || user.len() > crate::session::OWNER_SIZE_MAX {
            let (reply, answer) = oneshot::channel();
            let _ = reply.send(ResponseStatus::BadRequest(format!("user name {user:?}: 1 to 64 bytes")));
            return answer;
        }
        self.send(shard_id, request, Some(user))
    }

    fn send(
        &self,
        shard_id: u32,
        request: ClientRequest,
        caller: Option<Arc<str>>,
    ) -> oneshot::Receiver<ResponseStatus> {
        let (reply, answer) = oneshot::channel();
        let core = &self.cores[shard_id as usize % self.cores.len()];
        let forwarded = Forwarded { shard_id, request, caller, reply, arrived: Instant::now() };
        if let Err(mpsc::error::TrySendError::Full(forwarded)) = core.try_send(forwarded) {
            let _ = forwarded.reply.send(ResponseStatus::Busy);
        }
        answer
    }

    /// Whether the node is still running (its cores take requests).
    pub fn is_running(&self) -> bool {
        self.cores.iter().all(|core| !core.is_closed())
    }
}
