//! The shard driver's transport over TCP: per-core peer links shared by the
//! shards of a core, and answers to clients on this core's connections or
//! to requests forwarded from another core.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use engine::{Message, NodeId};
use net::{Link, LinkConfig, NodeSecurity, ReplyTo, ResponseStatus};
use tokio::sync::oneshot;

use crate::replicated::Addresses;
use crate::shard::ShardTransport;

/// Where a response goes: a connection on this core, or a request forwarded
/// from another core (or from an in-process client handle).
pub enum Replier {
    Local(ReplyTo),
    Forwarded(oneshot::Sender<ResponseStatus>),
}

impl Replier {
    /// Answers. A connection reserved the answer's place in its queue when
    /// it read the request (it stops reading at its bound), so this never
    /// waits; an answer to a connection that closed is dropped.
    pub fn send(self, status: ResponseStatus) {
        match self {
            Replier::Local(reply) => {
                let _ = reply.send(status);
            }
            Replier::Forwarded(sender) => {
                let _ = sender.send(status);
            }
        }
    }
}

/// The peer links of one core, shared by the shards on it: core `k` of one
/// node talks to core `k` of the others.
pub struct Peers {
    node_id: NodeId,
    /// The node's credentials, shared by every link.
    security: NodeSecurity,
    core: u16,
    links: RefCell<HashMap<NodeId, (SocketAddr, Link)>>,
}

impl Peers {
    pub fn new(security: NodeSecurity, core: u16) -> Peers {
        Peers { node_id: security.node_id(), security, core, links: RefCell::new(HashMap::new()) }
    }

    /// Makes sure a link to `id` exists, given its base peer address (core 0).
    pub fn ensure(&self, id: NodeId, base: SocketAddr) {
        if id == self.node_id {
            return;
        }
        let Some(addr) = crate::topology::core_addr(base, self.core) else {
            tracing::warn!(peer = id, %base, core = self.core, "no port for this core at the peer");
            return;
        };
        let mut links = self.links.borrow_mut();
        if links.get(&id).is_some_and(|(known, _)| *known == addr) {
            return;
        }
        if let Some((_, old)) = links.remove(&id) {
            old.close();
        }
        let link = Link::spawn(LinkConfig::new(self.security.clone(), id, addr));
        links.insert(id, (addr, link));
    }

    pub fn send(&self, shard_id: u32, message: Message) {
        if let Some((_, link)) = self.links.borrow().get(&message.to) {
            // A full queue or a down link drops the message: Raft resends.
            let _ = link.send(shard_id, message);
        }
    }

    /// Node `id` was just heard from: see [`Link::peer_is_up`].
    pub fn peer_is_up(&self, id: NodeId) {
        if let Some((_, link)) = self.links.borrow().get(&id) {
            link.peer_is_up();
        }
    }

    pub fn close_all(&self) {
        for (_, (_, link)) in self.links.borrow_mut().drain() {
            link.close();
        }
    }
}

/// One shard's view of its core's [`Peers`].
pub struct TcpTransport {
    pub shard_id: u32,
    pub peers: Rc<Peers>,
}

impl ShardTransport for TcpTransport {
    type Reply = Replier;

    fn send(&mut self, message: Message) {
        self.peers.send(self.shard_id, message);
    }

    fn reply(&mut self, to: Replier, status: ResponseStatus) {
        to.send(status);
    }

    fn member_addresses(&mut self, id: NodeId, addresses: &Addresses) {
        if let Some(addr) = addresses.peer.as_deref().and_then(|addr| addr.parse::<SocketAddr>().ok()) {
            self.peers.ensure(id, addr);
        }
    }
}
