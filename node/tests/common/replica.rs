//! The node's replicated state machine around the key-value store, applied
//! entry by entry as a shard applies its log: what the state-machine tests
//! (sessions, member ids, groups of writes) share. Each uses a part of it.
#![allow(dead_code)]

use node::kv::KvStateMachine;
use node::replicated::{Applied, NodeCommand, NodeStateMachine};

/// A replica with its next log index.
pub struct Replica {
    pub machine: NodeStateMachine<KvStateMachine>,
    pub index: u64,
}

impl Replica {
    pub fn new() -> Replica {
        Replica { machine: NodeStateMachine::new(KvStateMachine::new()), index: 0 }
    }

    /// Applies `data` as the next entry (in a buffer of its own, as the
    /// shard's entries are).
    pub fn apply(&mut self, data: &[u8]) -> Applied {
        self.index += 1;
        self.machine.apply(self.index, &bytes::Bytes::copy_from_slice(data))
    }

    /// Applies a node command as the next entry.
    pub fn command(&mut self, command: NodeCommand) -> Applied {
        self.apply(&command.encode())
    }

    /// Opens a session without an owner (as older builds did); returns its
    /// client id.
    pub fn open(&mut self) -> u64 {
        self.open_for(None)
    }

    /// Opens a session owned by `owner` (`None`: anyone's); returns its
    /// client id.
    pub fn open_for(&mut self, owner: Option<&str>) -> u64 {
        let owner = owner.map(std::sync::Arc::from);
        match self.command(NodeCommand::OpenSession { proposer: 1, nonce: self.index, owner }) {
            Applied::SessionOpened { result: Ok(opened), .. } => opened.client_id,
            other => panic!("opening a session: {other:?}"),
        }
    }
}
