//! Sequential specifications of the services the project checks.
//!
//! An output that does not answer its input (a write answered with a read
//! value) is a bug in whatever recorded the history, not an observation about
//! the service, so the models panic on it rather than report a violation.

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use super::checker::{partition_by_key, Model};
use super::history::Operation;

/// A request to a single register, as in Jepsen's etcd test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Set the value.
    Write(i64),
    /// Set the value to `new` if it is `expected`.
    Cas {
        /// The value the register must hold for the swap to happen.
        expected: i64,
        /// The value it holds afterwards if it did.
        new: i64,
    },
}

/// A register's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// The value read; `None` if the register was never written.
    Read(Option<i64>),
    /// The write was applied.
    Written,
    /// Whether the compare-and-set applied. `false` is an observation too:
    /// the register did not hold the expected value at that moment.
    Cas {
        /// Whether the register held the expected value and was set.
        swapped: bool,
    },
}

/// A single register with read, write and compare-and-set, starting empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    /// The value; `None` before the first write.
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State> {
        match (*input, output) {
            (RegisterInput::Read, Some(&RegisterOutput::Read(value))) => (value == *state).then_some(*state),
            (RegisterInput::Read, None) => Some(*state),
            (RegisterInput::Write(value), Some(RegisterOutput::Written) | None) => Some(Some(value)),
            (RegisterInput::Cas { expected, new }, Some(&RegisterOutput::Cas { swapped })) => {
                let matches = *state == Some(expected);
                (matches == swapped).then_some(if swapped { Some(new) } else { *state })
            }
            (RegisterInput::Cas { expected, new }, None) => {
                Some(if *state == Some(expected) { Some(new) } else { *state })
            }
            (input, Some(output)) => panic!("register output {output:?} does not answer {input:?}"),
        }
    }

    fn describe_state(&self, state: &Self::State) -> String {
        state.map_or_else(|| "nil".to_string(), |value| value.to_string())
    }
}

/// A request to the key-value store of Porcupine's tests: every key a string
/// that starts empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the key.
    Get {
        /// The key read.
        key: String,
    },
    /// Set the key.
    Put {
        /// The key written.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Append to the key's value.
    Append {
        /// The key appended to.
        key: String,
        /// What is appended.
        value: String,
    },
}

impl KvInput {
    /// The key the request is about.
    pub fn key(&self) -> &String {
        match self {
            KvInput::Get { key } | KvInput::Put { key, .. } | KvInput::Append { key, .. } => key,
        }
    }
}

/// The key-value store's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The value a get read; empty for a missing key.
    Value(String),
    /// A put or append was applied.
    Done,
}

/// Get, put and append on independent string keys, partitioned by key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

impl Model for KvModel {
    /// The value of the one key of the partition being checked.
    type State = String;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        String::new()
    }

    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State> {
        match (input, output) {
            (KvInput::Get { .. }, Some(KvOutput::Value(value))) => (value == state).then(|| state.clone()),
            (KvInput::Get { .. }, None) => Some(state.clone()),
            (KvInput::Put { value, .. }, Some(KvOutput::Done) | None) => Some(value.clone()),
            (KvInput::Append { value, .. }, Some(KvOutput::Done) | None) => Some(format!("{state}{value}")),
            (input, Some(output)) => panic!("key-value output {output:?} does not answer {input:?}"),
        }
    }

    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        partition_by_key(history, KvInput::key)
    }

    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }
}

/// A request to the node's key-value state machine.
///
/// Generic over key and value types so the simulator can record `Bytes`,
/// `Vec<u8>` or plain integers, whatever is cheapest to compare.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKvInput<K, V> {
    /// Read the key.
    Get {
        /// The key read.
        key: K,
    },
    /// Set the key.
    Put {
        /// The key written.
        key: K,
        /// Its new value.
        value: V,
    },
    /// Remove the key.
    Delete {
        /// The key removed.
        key: K,
    },
    /// Set the key to `new` if its value is `expected`.
    Cas {
        /// The key compared and set.
        key: K,
        /// The value the key must hold; `None` means the key must be absent.
        expected: Option<V>,
        /// The value it holds afterwards if the swap happened.
        new: V,
    },
}

impl<K, V> NodeKvInput<K, V> {
    /// The key the request is about.
    pub fn key(&self) -> &K {
        match self {
            NodeKvInput::Get { key }
            | NodeKvInput::Put { key, .. }
            | NodeKvInput::Delete { key }
            | NodeKvInput::Cas { key, .. } => key,
        }
    }
}

/// The node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKvOutput<V> {
    /// The value a get read; `None` for a missing key.
    Value(Option<V>),
    /// A put or delete was applied.
    Done,
    /// Whether a compare-and-swap found the expected value and applied.
    Cas {
        /// `false` is an observation: the key did not hold the expected value.
        swapped: bool,
    },
}

/// The node's key-value store: get, put, delete and compare-and-swap on
/// independent keys, partitioned by key. Keys start absent.
#[derive(Debug, Clone, Copy)]
pub struct NodeKvModel<K, V> {
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> NodeKvModel<K, V> {
    /// The model; it has no configuration.
    pub fn new() -> Self {
        Self { types: PhantomData }
    }
}

impl<K, V> Default for NodeKvModel<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Model for NodeKvModel<K, V>
where
    K: Clone + Eq + Hash + Debug,
    V: Clone + Eq + Hash + Debug,
{
    /// The value of the one key of the partition being checked.
    type State = Option<V>;
    type Input = NodeKvInput<K, V>;
    type Output = NodeKvOutput<V>;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State> {
        match (input, output) {
            (NodeKvInput::Get { .. }, Some(NodeKvOutput::Value(value))) => (value == state).then(|| state.clone()),
            (NodeKvInput::Get { .. }, None) => Some(state.clone()),
            (NodeKvInput::Put { value, .. }, Some(NodeKvOutput::Done) | None) => Some(Some(value.clone())),
            (NodeKvInput::Delete { .. }, Some(NodeKvOutput::Done) | None) => Some(None),
            (NodeKvInput::Cas { expected, new, .. }, Some(&NodeKvOutput::Cas { swapped })) => {
                let matches = state == expected;
                (matches == swapped).then(|| if swapped { Some(new.clone()) } else { state.clone() })
            }
            (NodeKvInput::Cas { expected, new, .. }, None) => {
                Some(if state == expected { Some(new.clone()) } else { state.clone() })
            }
            (input, Some(output)) => panic!("node key-value output {output:?} does not answer {input:?}"),
        }
    }

    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        partition_by_key(history, NodeKvInput::key)
    }
}
