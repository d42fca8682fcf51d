//! DNS discovery that follows changes (`--discovery-dns` with
//! `--discovery-interval`, 30 s by default).
//!
//! # Who acts, and why
//!
//! DNS names give peer addresses only, and every node reads the same
//! records. So the running members act, not the newcomer:
//!
//! - **Every node** looks the names up again at each interval
//!   ([`spawn`]) and points its links at a member's new address when the
//!   answer for that id changed. The member itself, once reachable again,
//!   announces its addresses through the log (`Shard::announce_addresses`),
//!   so the replicated address book, and with it every client, follows.
//! - **The leader of each shard** adds every id the names list that is not
//!   a member as a learner (with the peer address DNS gives; the node
//!   announces its client address itself once it is a member) and promotes
//!   learners the names list once they have caught up, as a join through
//!   members does. Every name DNS lists is meant to be a voter: a read
//!   replica (`--learner`) must not be listed. An id the cluster removed is
//!   never added again (it says so once); a name that disappears from DNS
//!   is never removed: removal stays `node admin remove`.
//! - **A node started with an empty data directory** decides once whether
//!   to bootstrap a cluster or to join one ([`decide_start`]): if any other
//!   node the names list accepts a connection on its peer port, a cluster
//!   runs (or is starting), and this node starts as a non-member (no
//!   bootstrap voters) that waits to be added, recording that in its data
//!   directory (`node-identity`) so that restarts do the same. Otherwise it
//!   bootstraps with the members DNS lists, as before. In a new cluster the
//!   node that listens first finds no one and bootstraps; the others may
//!   find it and wait, which is safe: a node in the bootstrap membership
//!   learns it from the first leader's log (its first entry), and its
//!   empty log votes as a bootstrapping one does.
//!
//! The newcomer needs no member's client address and no admin credential
//! (with TLS its node certificate is enough), and a leader change never
//! strands a learner: whichever node leads next sees the same names.
//!
//! A failed lookup keeps every member and address as they are; it is
//! logged when lookups start failing and when they work again, not at every
//! interval.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::NodeId;
use net::{AdminRequest, ClientRequest, RequestBody, ResponseStatus};
use tokio::sync::mpsc;

use crate::config::ServeConfig;
use crate::discovery::{discover, DnsDiscovery, Peer, PeerSource};
use crate::local::NodeHandle;
use crate::membership::{read_identity, write_identity, Identity, JoinError};

/// Address changes queued to one core, at most (one per member and
/// lookup; beyond it a change waits for the next lookup that differs).
pub const MOVED_QUEUE_MAX: usize = 256;
/// How soon the leader tries again while a listed node is not yet a voter
/// (a learner catching up is refused promotion until it has).
const ADOPT_RETRY: Duration = Duration::from_secs(1);
/// How long a start waits for each listed node's peer port.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the watch waits for its own node's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the watch looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Decides, for a node that finds its members by DNS, whether it
/// bootstraps with them (the default) or waits as a non-member to be added
/// by the leader (see the module documentation); sets `config.join` for
/// the latter.
pub fn decide_start(config: &mut ServeConfig, members: &[Peer]) -> Result<(), JoinError> {
    if !matches!(config.peers, PeerSource::Dns(_)) || config.join {
        return Ok(());
    }
    let dir = config.data_dir.clone();
    if let Some(identity) = read_identity(&dir)? {
        if identity.cluster_id != config.cluster_id {
            return Err(JoinError(format!(
                "the data directory {} belongs to cluster {}, not to --cluster-id {}",
                dir.display(),
                identity.cluster_id,
                config.cluster_id
            )));
        }
        // It joined a running cluster on its first start.
        config.join = true;
        return Ok(());
    }
    if crate::membership::holds_a_log(&dir) {
        return Ok(());
    }
    let others: Vec<&Peer> = members.iter().filter(|member| member.id != config.node_id).collect();
    let Some(running) = others.iter().find(|member| listens(member.addr)) else {
        tracing::info!(members = ?members, "no listed node answers: bootstrapping a cluster with the members DNS lists");
        return Ok(());
    };
    tracing::info!(
        member = running.id,
        addr = %running.addr,
        "a listed node answers: joining the running cluster (its leader adds this node once it finds it in DNS)"
    );
    write_identity(&dir, &Identity { cluster_id: config.cluster_id, node_id: config.node_id, nonce: 0 })?;
    config.join = true;
    Ok(())
}

fn listens(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
}

/// What the watch passes to the cores: a member's new base peer address.
pub type Moved = mpsc::Sender<Peer>;

/// Runs the watch on a thread of its own until `shutdown` is set: looks
/// the names up every `dns.interval`, sends changed addresses to every
/// core (`moved`), and, on the shards this node leads, adds and promotes
/// the nodes the names list.
pub fn spawn(node_id: NodeId, dns: DnsDiscovery, handle: NodeHandle, moved: Vec<Moved>, shutdown: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name(format!("node-{node_id}-dns")).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the DNS watch: names are not looked up again");
                return;
            }
        };
        let mut watch = Watch { node_id, dns, handle, moved, state: WatchState::default() };
        runtime.block_on(watch.run(&shutdown));
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the DNS watch thread");
    }
}

struct Watch {
    node_id: NodeId,
    dns: DnsDiscovery,
    handle: NodeHandle,
    moved: Vec<Moved>,
    state: WatchState,
}

/// What the watch remembers between lookups.
#[derive(Default)]
struct WatchState {
    /// The last answer, by id; empty before the first.
    known: BTreeMap<NodeId, SocketAddr>,
    /// Whether the last lookup failed (to log transitions only).
    failing: bool,
    /// Ids already reported as removed yet listed.
    removed_reported: BTreeSet<NodeId>,
}

impl Watch {
    async fn run(&mut self, shutdown: &AtomicBool) {
        let mut next_lookup = Instant::now() + self.dns.interval;
        let mut next_adopt = next_lookup;
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_lookup {
                self.lookup().await;
                next_lookup = now + self.dns.interval;
                next_adopt = now;
            }
            if now >= next_adopt {
                let settled = self.adopt().await;
                next_adopt = if settled { next_lookup } else { now + ADOPT_RETRY };
            }
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
    }

    /// One lookup: a failure keeps what is known; a member's changed
    /// address goes to every core.
    async fn lookup(&mut self) {
        let found = match discover(&PeerSource::Dns(self.dns.clone())).await {
            Ok(found) => found,
            Err(error) => {
                if !self.state.failing {
                    tracing::warn!(%error, "DNS lookup failed: keeping the members and addresses known (logged again when lookups work)");
                    self.state.failing = true;
                }
                return;
            }
        };
        if self.state.failing {
            tracing::info!(members = found.len(), "DNS lookups work again");
            self.state.failing = false;
        }
        for peer in found.iter().filter(|peer| peer.id != self.node_id) {
            let before = self.state.known.insert(peer.id, peer.addr);
            if before == Some(peer.addr) {
                continue;
            }
            if let Some(before) = before {
                tracing::info!(member = peer.id, %before, now = %peer.addr, "DNS gives a new address: reconnecting");
            }
            for core in &self.moved {
                if core.try_send(*peer).is_err() {
                    tracing::warn!(member = peer.id, "address change not queued (the core is busy): next lookup");
                }
            }
        }
    }

    /// On every shard this node leads: adds the listed nodes that are not
    /// members as learners and promotes listed learners. True when there is
    /// nothing left to do (or nothing this node can do).
    async fn adopt(&mut self) -> bool {
        let mut settled = true;
        for shard in 0..self.handle.shards() {
            let Some(status) = self.call(shard, RequestBody::Status).await.and_then(json) else { continue };
            if status["role"] != "Leader" {
                continue;
            }
            let voters = ids(&status["voters"]);
            let learners = ids(&status["learners"]);
            let removed = ids(&status["removed"]);
            for (&id, &addr) in &self.state.known {
                if voters.contains(&id) {
                    continue;
                }
                if removed.contains(&id) {
                    if self.state.removed_reported.insert(id) {
                        tracing::warn!(node = id, "DNS lists node {id}, which was removed from the cluster: not added again (remove its record, or give the machine a new name)");
                    }
                    continue;
                }
                settled = false;
                let request = if learners.contains(&id) {
                    AdminRequest::Promote { id }
                } else {
                    tracing::info!(shard, node = id, %addr, "DNS lists a new node: adding it as a learner");
                    AdminRequest::AddLearner { id, addr: addr.to_string() }
                };
                if let Some(ResponseStatus::Ok(_)) = self.call(shard, RequestBody::Admin(request.clone())).await {
                    if matches!(request, AdminRequest::Promote { .. }) {
                        tracing::info!(shard, node = id, "node found by DNS promoted to voter");
                    }
                }
            }
        }
        settled
    }

    async fn call(&self, shard: u32, body: RequestBody) -> Option<ResponseStatus> {
        let answer = self.handle.call(shard, ClientRequest::plain(0, body));
        tokio::time::timeout(CALL_TIMEOUT, answer).await.ok()?.ok()
    }
}

fn json(status: ResponseStatus) -> Option<serde_json::Value> {
    match status {
        ResponseStatus::Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}

fn ids(value: &serde_json::Value) -> Vec<NodeId> {
    value.as_array().map(|list| list.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default()
}
