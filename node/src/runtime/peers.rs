//! The shard driver's transport over TCP: per-core peer links shared by the
//! shards of a core, and answers to clients on this core's connections or
//! to requests forwarded from another core.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use engine::{Message, NodeId};
use net::{Link, LinkConfig, NodeSecurity, ReplyTo, ResponseStatus};
use tokio::sync::oneshot;

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
    /// How many shards run on this core.
    shards: usize,
    /// How many shards the node runs: every peer must run as many
    /// ([`net::LinkConfig::shards`]).
    node_shards: u32,
    /// Per removed node, the shards of this core that applied its removal:
    /// once all have, its link is closed and never opened again (ids are
    /// never reused). Before, members dialled a removed node, and warned
    /// that they could not reach it, for as long as they ran.
    removals: RefCell<HashMap<NodeId, BTreeSet<u32>>>,
    /// The same nodes, once removed everywhere, for this core's listeners:
    /// they refuse their connections, so a removed node that still runs
    /// is told ([`net::RefusalReason::Removed`]).
    refused: net::RemovedPeers,
}

impl Peers {
    /// The links of core `core`, which runs `shards` of the node's
    /// `node_shards` shards; `refused` is shared with the core's listeners.
    pub fn new(
        security: NodeSecurity,
        core: u16,
        shards: usize,
        node_shards: u32,
        refused: net::RemovedPeers,
    ) -> Peers {
        Peers {
            node_id: security.node_id(),
            security,
            core,
            links: RefCell::new(HashMap::new()),
            shards,
            node_shards,
            removals: RefCell::new(HashMap::new()),
            refused,
        }
    }

    /// Whether every shard of this core removed node `id`.
    fn removed_everywhere(&self, id: NodeId) -> bool {
        self.removals.borrow().get(&id).is_some_and(|shards| shards.len() >= self.shards)
    }

    /// The peers that refused this node's handshake because it was
    /// removed from the cluster.
    pub fn refusing_as_removed(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> =
            self.links.borrow().iter().filter(|(_, (_, link))| link.told_removed()).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Each link's state, by peer id.
    pub fn links(&self) -> Vec<crate::shard::LinkReport> {
        let mut reports: Vec<crate::shard::LinkReport> = self
            .links
            .borrow()
            .iter()
            .map(|(&peer, (addr, link))| {
                let stats = link.stats();
                crate::shard::LinkReport {
                    peer,
                    addr: addr.to_string(),
                    connected: stats.connected,
                    problem: if stats.connected { None } else { link.problem() },
                    connects: stats.connects,
                    handshake_refusals: stats.handshake_refusals,
                    shard_count_mismatches: stats.shard_count_mismatches,
                }
            })
            .collect();
        reports.sort_unstable_by_key(|report| report.peer);
        reports
    }

    /// Shard `shard_id` (of this core) applied the removal of node `id`.
    pub fn removed(&self, shard_id: u32, id: NodeId) {
        if id == self.node_id || !self.removals.borrow_mut().entry(id).or_default().insert(shard_id) {
            return;
        }
        if self.removed_everywhere(id) {
            self.refused.insert(id);
            if let Some((addr, link)) = self.links.borrow_mut().remove(&id) {
                link.close();
                tracing::info!(peer = id, %addr, core = self.core, "node removed from the cluster: its link is closed");
            }
        }
    }

    /// Makes sure a link to `id` exists, given its base peer address (core 0).
    pub fn ensure(&self, id: NodeId, base: SocketAddr) {
        if id == self.node_id || self.removed_everywhere(id) {
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
        let mut config = LinkConfig::new(self.security.clone(), id, addr);
        config.shards = self.node_shards;
        let link = Link::spawn(config);
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
