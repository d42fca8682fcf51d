//! Simulated clients: each runs one operation at a time in its own
//! exactly-once session, retries a write with the same sequence number after
//! a timeout or a redirect (so it is applied once), and records what it saw.

use bytes::Bytes;
use engine::config::Rng;
use engine::NodeId;
use net::{ClientRequest, ReadConsistency, RequestBody, ResponseStatus};
use node::{KvOp, KvResponse};

use crate::linearizability::{HistoryRecorder, NodeKvInput, NodeKvOutput, OperationId};

use super::node::{Request, Response, Waiter};

/// The history type the simulator records: small integer keys and values.
pub type SimHistory = HistoryRecorder<NodeKvInput<u8, u64>, NodeKvOutput<u64>>;

/// The operation a client is working on.
#[derive(Clone, Debug)]
struct Outstanding {
    operation: u64,
    input: NodeKvInput<u8, u64>,
    /// The session sequence of a write; `None` for a read.
    sequence: Option<u64>,
    history: OperationId,
    attempt: u32,
    /// When the current attempt gives up waiting.
    deadline: u64,
    /// When to send the next attempt, if it is waiting to be sent.
    resend_at: Option<u64>,
}

/// One client.
pub struct SimClient {
    pub index: usize,
    /// The session's client id: random, never 0.
    session: u64,
    next_sequence: u64,
    next_operation: u64,
    /// The node the client believes leads.
    target: NodeId,
    /// The last redirect named no leader: pick a node at random.
    target_random: bool,
    current: Option<Outstanding>,
    idle_until: u64,
    /// Operations completed, for the liveness check.
    pub completed: u64,
    /// Linearizable (ReadIndex) or the leader's lease.
    pub read_consistency: ReadConsistency,
}

/// How long a client waits for an answer before retrying elsewhere.
pub const REQUEST_TIMEOUT: u64 = 400;
/// How long it waits after a redirect or `Busy` before retrying.
const RETRY_BACKOFF: u64 = 20;

/// The key-value encoding of the simulator's integers.
pub fn key_bytes(key: u8) -> Bytes {
    Bytes::from(vec![b'k', key])
}

pub fn value_bytes(value: u64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

/// The key-value write an input stands for; `None` for a read.
pub fn write_op(input: &NodeKvInput<u8, u64>) -> Option<KvOp> {
    Some(match input {
        NodeKvInput::Put { key, value } => KvOp::Put { key: key_bytes(*key), value: value_bytes(*value) },
        NodeKvInput::Delete { key } => KvOp::Delete { key: key_bytes(*key) },
        NodeKvInput::Cas { key, expected, new } => {
            KvOp::Cas { key: key_bytes(*key), expected: expected.map(value_bytes), new: Some(value_bytes(*new)) }
        }
        NodeKvInput::Get { .. } => return None,
    })
}

pub fn value_of(bytes: &Bytes) -> u64 {
    u64::from_le_bytes(bytes.as_ref().try_into().expect("simulator values are 8 bytes"))
}

impl SimClient {
    pub fn new(index: usize, rng: &mut Rng, read_consistency: ReadConsistency) -> SimClient {
        SimClient {
            index,
            session: rng.next_u64() | 1,
            next_sequence: 1,
            next_operation: 1,
            target: 1,
            target_random: false,
            current: None,
            idle_until: 0,
            completed: 0,
            read_consistency,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.current.is_none()
    }

    /// Starts a new operation if the client is idle and `allowed`; retries
    /// the current one when its deadline passed. Returns a request to send.
    pub fn poll(
        &mut self,
        rng: &mut Rng,
        now: u64,
        nodes: &[NodeId],
        keys: u8,
        allowed: bool,
        history: &mut SimHistory,
    ) -> Option<(NodeId, Request)> {
        if let Some(current) = &mut self.current {
            let due = match current.resend_at {
                Some(at) => now >= at,
                None => now >= current.deadline,
            };
            if !due {
                return None;
            }
            if current.resend_at.is_none() || self.target_random {
                // Timed out, or nobody knows the leader: try another node.
                self.target = nodes[rng.range(0, nodes.len() as u64) as usize];
                self.target_random = false;
            }
            current.resend_at = None;
            current.attempt += 1;
            current.deadline = now + REQUEST_TIMEOUT;
            return Some((self.target, self.request()));
        }
        if !allowed || now < self.idle_until {
            return None;
        }
        let key = rng.range(0, u64::from(keys)) as u8;
        let value = (self.index as u64) << 32 | self.next_operation;
        let input = match rng.range(0, 10) {
            0..=3 => NodeKvInput::Get { key },
            4..=6 => NodeKvInput::Put { key, value },
            7 => NodeKvInput::Delete { key },
            _ => {
                // Compare against a value some client may have written.
                let expected = match rng.range(0, 3) {
                    0 => None,
                    _ => Some((rng.range(0, 4)) << 32 | rng.range(1, self.next_operation + 1)),
                };
                NodeKvInput::Cas { key, expected, new: value }
            }
        };
        let sequence = if matches!(input, NodeKvInput::Get { .. }) {
            None
        } else {
            self.next_sequence += 1;
            Some(self.next_sequence - 1)
        };
        let id = history.invoke(self.index as u64, input.clone(), now);
        self.current = Some(Outstanding {
            operation: self.next_operation,
            input,
            sequence,
            history: id,
            attempt: 0,
            deadline: now + REQUEST_TIMEOUT,
            resend_at: None,
        });
        self.next_operation += 1;
        Some((self.target, self.request()))
    }

    fn request(&self) -> Request {
        let current = self.current.as_ref().expect("an operation in progress");
        let (client_id, sequence, body) = match (&current.input, current.sequence) {
            (NodeKvInput::Get { key }, _) => {
                let query = KvOp::Get { key: key_bytes(*key) }.encode();
                (0, 0, RequestBody::Read { query, consistency: self.read_consistency })
            }
            (input, Some(sequence)) => {
                let op = write_op(input).expect("reads have no sequence");
                (self.session, sequence, RequestBody::Write { command: op.encode() })
            }
            (_, None) => unreachable!("writes have a sequence"),
        };
        let waiter = Waiter { client: self.index, operation: current.operation, attempt: current.attempt };
        let request_id = current.operation << 16 | u64::from(current.attempt);
        Request { waiter, request: ClientRequest { request_id, client_id, sequence, body } }
    }

    /// An answer arrives. An `Ok` answer to any attempt of the current
    /// operation settles it (all attempts of a write are one session
    /// sequence, applied once; every attempt of a read lies inside the
    /// operation's interval); a redirect only matters for the latest attempt.
    pub fn on_response(&mut self, now: u64, response: Response, from: NodeId, history: &mut SimHistory, rng: &mut Rng) {
        let Response { waiter, status } = response;
        let Some(current) = &mut self.current else { return };
        if current.operation != waiter.operation {
            return;
        }
        let latest = waiter.attempt == current.attempt && current.resend_at.is_none();
        match status {
            ResponseStatus::Ok(bytes) => {
                let response = KvResponse::decode(&bytes).expect("a key-value response");
                let output = match (&current.input, response) {
                    (NodeKvInput::Get { .. }, KvResponse::Value(value)) => {
                        NodeKvOutput::Value(value.as_ref().map(value_of))
                    }
                    (NodeKvInput::Put { .. }, KvResponse::Written) => NodeKvOutput::Done,
                    (NodeKvInput::Delete { .. }, KvResponse::Deleted { .. }) => NodeKvOutput::Done,
                    (NodeKvInput::Cas { .. }, KvResponse::CasSucceeded) => NodeKvOutput::Cas { swapped: true },
                    (NodeKvInput::Cas { .. }, KvResponse::CasFailed { .. }) => NodeKvOutput::Cas { swapped: false },
                    (input, response) => panic!("client {}: {input:?} answered with {response:?}", self.index),
                };
                history.complete(current.history, output, now);
                self.target = from;
                self.current = None;
                self.completed += 1;
                self.idle_until = now + rng.range(0, 30);
            }
            ResponseStatus::SessionExpired | ResponseStatus::BadRequest(_) => {
                panic!(
                    "client {} (session {:x}) operation {:?} sequence {:?} was refused: {status:?}",
                    self.index, self.session, current.input, current.sequence
                )
            }
            ResponseStatus::NotLeader { leader_id, .. } => {
                if !latest {
                    return;
                }
                match leader_id {
                    Some(leader) => self.target = leader,
                    None => self.target_random = true,
                }
                current.resend_at = Some(now + RETRY_BACKOFF);
            }
            ResponseStatus::Busy | ResponseStatus::TimedOut => {
                if latest {
                    current.resend_at = Some(now + RETRY_BACKOFF);
                }
            }
        }
    }

    /// At the end of the run: a read still waiting constrains nothing and is
    /// dropped; a write still waiting stays open (its outcome is unknown).
    pub fn finish(&mut self, history: &mut SimHistory) {
        if let Some(current) = self.current.take() {
            if current.sequence.is_none() {
                history.discard(current.history);
            }
        }
    }
}
