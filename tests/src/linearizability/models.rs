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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_cas_applies_only_on_a_match_and_a_failure_needs_a_mismatch() {
        let model = RegisterModel;
        let cas = RegisterInput::Cas { expected: 1, new: 2 };
        let swapped = |swapped| Some(RegisterOutput::Cas { swapped });
        assert_eq!(model.step(&Some(1), &cas, swapped(true).as_ref()), Some(Some(2)));
        assert_eq!(model.step(&Some(3), &cas, swapped(true).as_ref()), None);
        assert_eq!(model.step(&Some(3), &cas, swapped(false).as_ref()), Some(Some(3)));
        assert_eq!(model.step(&Some(1), &cas, swapped(false).as_ref()), None);
        assert_eq!(model.step(&None, &cas, swapped(false).as_ref()), Some(None));
        assert_eq!(model.step(&Some(1), &cas, None), Some(Some(2)), "unknown outcome, value matches");
        assert_eq!(model.step(&Some(3), &cas, None), Some(Some(3)), "unknown outcome, value differs");
    }

    #[test]
    fn register_reads_must_see_the_state() {
        let model = RegisterModel;
        let read = |value| Some(RegisterOutput::Read(value));
        assert_eq!(model.step(&None, &RegisterInput::Read, read(None).as_ref()), Some(None));
        assert_eq!(model.step(&None, &RegisterInput::Read, read(Some(0)).as_ref()), None);
        assert_eq!(model.step(&Some(4), &RegisterInput::Read, read(Some(4)).as_ref()), Some(Some(4)));
    }

    #[test]
    #[should_panic(expected = "does not answer")]
    fn an_output_of_the_wrong_kind_is_a_recorder_bug() {
        RegisterModel.step(&None, &RegisterInput::Write(1), Some(&RegisterOutput::Read(None)));
    }

    #[test]
    fn kv_appends_concatenate_and_missing_keys_read_empty() {
        let model = KvModel;
        let key = "k".to_string();
        let get = KvInput::Get { key: key.clone() };
        let append = KvInput::Append { key: key.clone(), value: "x".to_string() };
        let put = KvInput::Put { key, value: "p".to_string() };
        assert_eq!(model.step(&model.init(), &get, Some(&KvOutput::Value(String::new()))), Some(String::new()));
        assert_eq!(model.step(&"ab".to_string(), &append, Some(&KvOutput::Done)), Some("abx".to_string()));
        assert_eq!(model.step(&"ab".to_string(), &put, None), Some("p".to_string()));
        assert_eq!(model.step(&"ab".to_string(), &get, Some(&KvOutput::Value("a".to_string()))), None);
    }

    #[test]
    fn node_kv_supports_delete_and_cas_on_absent_keys() {
        let model = NodeKvModel::<u8, u8>::new();
        let create = NodeKvInput::Cas { key: 1, expected: None, new: 5 };
        let swapped = |swapped| Some(NodeKvOutput::Cas { swapped });
        assert_eq!(model.step(&None, &create, swapped(true).as_ref()), Some(Some(5)));
        assert_eq!(model.step(&Some(5), &create, swapped(true).as_ref()), None);
        assert_eq!(model.step(&Some(5), &create, swapped(false).as_ref()), Some(Some(5)));
        let delete = NodeKvInput::Delete { key: 1 };
        assert_eq!(model.step(&Some(5), &delete, Some(&NodeKvOutput::Done)), Some(None));
        let get = NodeKvInput::Get { key: 1 };
        assert_eq!(model.step(&None, &get, Some(&NodeKvOutput::Value(None))), Some(None));
        assert_eq!(model.step(&None, &get, Some(&NodeKvOutput::Value(Some(5)))), None);
    }

    #[test]
    fn node_kv_partitions_by_key() {
        let history: Vec<Operation<NodeKvInput<u8, u8>, NodeKvOutput<u8>>> = vec![
            Operation::unknown(0, NodeKvInput::Put { key: 2, value: 1 }, 0),
            Operation::unknown(1, NodeKvInput::Get { key: 1 }, 1),
            Operation::unknown(2, NodeKvInput::Delete { key: 2 }, 2),
        ];
        assert_eq!(NodeKvModel::new().partition(&history), vec![vec![0, 2], vec![1]]);
    }
}
