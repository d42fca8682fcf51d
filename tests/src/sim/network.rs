//! A simulated network: every packet gets a delivery time drawn from the
//! seed, so packets are delayed and reordered; some are dropped or
//! duplicated; directed links between nodes can be cut (asymmetric
//! partitions are one direction of a pair).

use std::collections::{BTreeMap, BTreeSet};

use engine::config::Rng;
use engine::{Message, NodeId};

use super::node::{Request, Response};

/// Where a packet goes: a node, or a client (its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Node(NodeId),
    Client(usize),
}

/// What travels.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A Raft message of a shard.
    Raft(u32, Message),
    Request(Request),
    Response(Response),
}

/// A packet in flight.
#[derive(Clone, Debug)]
pub struct Packet {
    pub from: Endpoint,
    pub to: Endpoint,
    pub payload: Payload,
}

/// How unreliable the network is; drawn per seed.
#[derive(Clone, Copy, Debug)]
pub struct NetworkFaults {
    /// Out of 1000 packets, how many are lost.
    pub drop_per_mille: u64,
    /// Out of 1000 packets, how many arrive twice.
    pub duplicate_per_mille: u64,
    /// Delivery delay in time units, uniform in `[1, delay_max]`.
    pub delay_max: u64,
    /// Out of 1000 packets, how many are held back up to `long_delay_max`
    /// (reordering across many rounds, a stale message arriving late).
    pub long_delay_per_mille: u64,
    pub long_delay_max: u64,
}

impl NetworkFaults {
    /// A perfect network with a small fixed latency, for the healed phase.
    pub fn calm() -> NetworkFaults {
        NetworkFaults {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_max: 2,
            long_delay_per_mille: 0,
            long_delay_max: 1,
        }
    }
}

/// The network. Invariant: every key's time is at least the time the packet
/// was sent plus one.
pub struct SimNetwork {
    /// Packets by (delivery time, send sequence): ties deliver in send order.
    in_flight: BTreeMap<(u64, u64), Packet>,
    sequence: u64,
    /// Directed node links that lose everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub faults: NetworkFaults,
}

impl SimNetwork {
    pub fn new(faults: NetworkFaults) -> SimNetwork {
        SimNetwork { in_flight: BTreeMap::new(), sequence: 0, cut: BTreeSet::new(), faults }
    }

    /// Sends a packet at `now`; it may be lost, duplicated or delayed.
    pub fn send(&mut self, rng: &mut Rng, now: u64, packet: Packet) {
        if let (Endpoint::Node(from), Endpoint::Node(to)) = (packet.from, packet.to) {
            if self.cut.contains(&(from, to)) {
                return;
            }
        }
        if rng.range(0, 1000) < self.faults.drop_per_mille {
            return;
        }
        let copies = if rng.range(0, 1000) < self.faults.duplicate_per_mille { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = rng.range(1, self.faults.delay_max + 1);
            if rng.range(0, 1000) < self.faults.long_delay_per_mille {
                delay += rng.range(0, self.faults.long_delay_max);
            }
            self.sequence += 1;
            self.in_flight.insert((now + delay, self.sequence), packet.clone());
        }
    }

    /// The next packet due at or before `now`. A link cut while the packet
    /// was in flight loses it too.
    pub fn next_due(&mut self, now: u64) -> Option<Packet> {
        loop {
            let (&(time, _), _) = self.in_flight.first_key_value()?;
            if time > now {
                return None;
            }
            let (_, packet) = self.in_flight.pop_first().expect("present");
            if let (Endpoint::Node(from), Endpoint::Node(to)) = (packet.from, packet.to) {
                if self.cut.contains(&(from, to)) {
                    continue;
                }
            }
            return Some(packet);
        }
    }

    /// Loses every packet to or from a crashed node.
    pub fn forget(&mut self, node: NodeId) {
        self.in_flight.retain(|_, packet| packet.from != Endpoint::Node(node) && packet.to != Endpoint::Node(node));
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}
