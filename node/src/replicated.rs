//! The node's own replicated state, wrapped around the application's state
//! machine: an address book (node id to peer and client addresses) that every
//! replica applies from the log, so a follower can tell a client where the
//! leader is and a member added at run time becomes reachable everywhere.
//!
//! A log entry whose first byte is [`NODE_COMMAND_FORMAT`] is a node command;
//! anything else is the application's (the key-value state machine's
//! envelopes start with 1). Node commands never reach the application.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use engine::{Entry, Index, NodeId, RestoreError, SnapshotImage, StateMachine};

use crate::fsm::QueryStateMachine;

/// The first byte of a node command entry.
pub const NODE_COMMAND_FORMAT: u8 = 0x80;
/// The longest address accepted in the address book.
pub const ADDRESS_LEN_MAX: usize = 255;
const SNAPSHOT_MAGIC: &[u8; 4] = b"NDSN";

/// A [`NodeStateMachine`] captured for a snapshot: the encoded address book
/// and the application's image.
struct NodeImage {
    head: Bytes,
    app: Box<dyn SnapshotImage>,
}

impl SnapshotImage for NodeImage {
    fn serialize_into(self: Box<Self>, out: &mut BytesMut) {
        out.extend_from_slice(&self.head);
        self.app.serialize_into(out);
    }
}

/// Where a member can be reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// The address other nodes connect to (Raft traffic), if known.
    pub peer: Option<String>,
    /// The address clients connect to, if known.
    pub client: Option<String>,
}

/// A node command: set a member's addresses (an absent one is left as is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAddresses {
    pub id: NodeId,
    pub peer: Option<String>,
    pub client: Option<String>,
}

impl SetAddresses {
    /// Encoding: format byte, u64 id, then two optional strings (u8 length,
    /// 0xFF for absent, then the bytes).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(NODE_COMMAND_FORMAT);
        out.put_u64_le(self.id);
        for value in [&self.peer, &self.client] {
            match value {
                Some(text) => {
                    let text = &text.as_bytes()[..text.len().min(ADDRESS_LEN_MAX - 1)];
                    out.put_u8(text.len() as u8);
                    out.put_slice(text);
                }
                None => out.put_u8(0xFF),
            }
        }
        out.freeze()
    }

    pub fn decode(mut data: &[u8]) -> Option<SetAddresses> {
        if data.len() < 9 || data.get_u8() != NODE_COMMAND_FORMAT {
            return None;
        }
        let id = data.get_u64_le();
        let read = |data: &mut &[u8]| -> Option<Option<String>> {
            let len = *data.first()?;
            data.advance(1);
            if len == 0xFF {
                return Some(None);
            }
            let len = len as usize;
            if data.len() < len {
                return None;
            }
            let text = std::str::from_utf8(&data[..len]).ok()?.to_string();
            data.advance(len);
            Some(Some(text))
        };
        let peer = read(&mut data)?;
        let client = read(&mut data)?;
        data.is_empty().then_some(SetAddresses { id, peer, client })
    }
}

/// The application's state machine plus the node's address book.
pub struct NodeStateMachine<S> {
    pub app: S,
    addresses: BTreeMap<NodeId, Addresses>,
    applied: Index,
}

impl<S: QueryStateMachine> NodeStateMachine<S> {
    pub fn new(app: S) -> NodeStateMachine<S> {
        NodeStateMachine { app, addresses: BTreeMap::new(), applied: 0 }
    }

    pub fn addresses(&self, id: NodeId) -> Option<&Addresses> {
        self.addresses.get(&id)
    }

    pub fn address_book(&self) -> &BTreeMap<NodeId, Addresses> {
        &self.addresses
    }

    /// The last index applied (application or node command).
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Records that `index` was applied without a command (a no-op or a
    /// configuration entry), so reads waiting for it can proceed.
    pub fn skip(&mut self, index: Index) {
        self.applied = self.applied.max(index);
    }

    pub fn query(&self, query: &Bytes) -> Bytes {
        self.app.query(query)
    }
}

impl<S: QueryStateMachine> StateMachine for NodeStateMachine<S> {
    fn apply(&mut self, index: Index, command: &Bytes) -> Bytes {
        self.applied = self.applied.max(index);
        if command.first() == Some(&NODE_COMMAND_FORMAT) {
            // A malformed node command is ignored identically on every node.
            if let Some(set) = SetAddresses::decode(command) {
                let entry = self.addresses.entry(set.id).or_default();
                if set.peer.is_some() {
                    entry.peer = set.peer;
                }
                if set.client.is_some() {
                    entry.client = set.client;
                }
            }
            return Bytes::new();
        }
        self.app.apply(index, command)
    }

    fn prefetch(&self, entries: &[Entry]) {
        self.app.prefetch(entries);
    }

    /// Layout: magic, u64 applied index, u32 address count, each address
    /// as a u64 id and two optional strings, then the application's snapshot
    /// (the rest). Deterministic: the address book is sorted.
    fn snapshot(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.snapshot_image().serialize_into(&mut out);
        out.freeze()
    }

    /// The address book is small and encoded at once; the application's
    /// image is serialized later with it.
    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        let mut head = BytesMut::new();
        head.put_slice(SNAPSHOT_MAGIC);
        head.put_u64_le(self.applied);
        head.put_u32_le(self.addresses.len() as u32);
        for (id, addresses) in &self.addresses {
            let set = SetAddresses { id: *id, peer: addresses.peer.clone(), client: addresses.client.clone() };
            let encoded = set.encode();
            head.put_u16_le(encoded.len() as u16);
            head.put_slice(&encoded);
        }
        Box::new(NodeImage { head: head.freeze(), app: self.app.snapshot_image() })
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let bad = |what: &str| RestoreError(format!("node snapshot: {what}"));
        let mut data = snapshot.clone();
        if data.len() < 16 || &data[..4] != SNAPSHOT_MAGIC {
            return Err(bad("missing header"));
        }
        data.advance(4);
        let applied = data.get_u64_le();
        let count = data.get_u32_le() as usize;
        let mut addresses = BTreeMap::new();
        for _ in 0..count {
            if data.len() < 2 {
                return Err(bad("truncated address book"));
            }
            let len = data.get_u16_le() as usize;
            if data.len() < len {
                return Err(bad("truncated address"));
            }
            let set = SetAddresses::decode(&data[..len]).ok_or_else(|| bad("malformed address"))?;
            data.advance(len);
            addresses.insert(set.id, Addresses { peer: set.peer, client: set.client });
        }
        self.app.restore(&data)?;
        self.addresses = addresses;
        self.applied = applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvStateMachine;

    #[test]
    fn address_book_is_replicated_state() {
        let mut fsm = NodeStateMachine::new(KvStateMachine::default());
        let set = SetAddresses { id: 4, peer: Some("127.0.0.1:7007".into()), client: None };
        assert_eq!(fsm.apply(1, &set.encode()), Bytes::new());
        let client = SetAddresses { id: 4, peer: None, client: Some("127.0.0.1:7008".into()) };
        fsm.apply(2, &client.encode());
        let snapshot = fsm.snapshot();
        let mut other = NodeStateMachine::new(KvStateMachine::default());
        other.restore(&snapshot).unwrap();
        assert_eq!(other.addresses(4), fsm.addresses(4));
        assert_eq!(other.addresses(4).unwrap().peer.as_deref(), Some("127.0.0.1:7007"));
        assert_eq!(other.applied(), 2);
        assert_eq!(other.snapshot(), snapshot, "snapshots are deterministic");
        assert!(other.restore(&Bytes::from_static(b"garbage")).is_err());
    }
}
