//! The bounded queue of frames waiting for a connection's writer.
//!
//! Producers and the writer live on one thread (tokio-uring is `!Send`), so
//! the queue is a `RefCell<VecDeque>` with a `Notify` that wakes the writer
//! when frames arrive. The bound is `frames_max`, and a push never waits:
//! Raft messages at the bound are dropped and counted, and client responses
//! never meet it, because a client connection reserves each answer's place
//! when it reads the request (`crate::listener`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use engine::Message;
use tokio::sync::Notify;

use crate::client::ClientResponse;
use crate::codec::{encode_message, encode_response};

/// One frame to send, kept as a value until the writer encodes it straight
/// into its reusable buffer (no per-message allocation).
#[derive(Clone, Debug)]
pub(crate) enum Outgoing {
    Raft { shard_id: u32, message: Message },
    Response { shard_id: u32, response: ClientResponse },
}

impl Outgoing {
    /// Encodes the frame's head into `out` and returns its zero-copy tail.
    pub(crate) fn encode(&self, cluster_id: u64, out: &mut BytesMut) -> Bytes {
        match self {
            Outgoing::Raft { shard_id, message } => encode_message(cluster_id, *shard_id, message, out),
            Outgoing::Response { shard_id, response } => encode_response(cluster_id, *shard_id, response, out),
        }
    }
}

/// A bounded, single-thread frame queue with back-pressure.
///
/// Invariant: `items.len() <= frames_max`.
pub(crate) struct OutQueue {
    items: RefCell<VecDeque<Outgoing>>,
    frames_max: usize,
    writer_wake: Notify,
    closed: Cell<bool>,
}

impl OutQueue {
    pub(crate) fn new(frames_max: usize) -> OutQueue {
        assert!(frames_max > 0, "a queue must hold at least one frame");
        OutQueue {
            items: RefCell::new(VecDeque::with_capacity(frames_max)),
            frames_max,
            writer_wake: Notify::new(),
            closed: Cell::new(false),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Enqueues `item` unless the queue is full or closed; gives it back then.
    // The item is returned by value on purpose: boxing it would allocate per
    // message on the hot path, and the caller needs it back (never dropped).
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_push(&self, item: Outgoing) -> Result<(), Outgoing> {
        if self.closed.get() {
            return Err(item);
        }
        let mut items = self.items.borrow_mut();
        if items.len() >= self.frames_max {
            return Err(item);
        }
        items.push_back(item);
        drop(items);
        self.writer_wake.notify_one();
        Ok(())
    }

    /// The oldest frame, if any.
    pub(crate) fn pop(&self) -> Option<Outgoing> {
        self.items.borrow_mut().pop_front()
    }

    /// Waits until a frame is queued or the queue is closed; returns whether
    /// frames are there.
    pub(crate) async fn wait_ready(&self) -> bool {
        loop {
            if !self.items.borrow().is_empty() {
                return true;
            }
            if self.closed.get() {
                return false;
            }
            self.writer_wake.notified().await;
        }
    }

    /// Refuses new frames and wakes everyone. Queued frames are discarded by
    /// the caller with [`OutQueue::drain`].
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.writer_wake.notify_one();
    }

    /// Removes every queued frame, returning how many there were.
    pub(crate) fn drain(&self) -> usize {
        let count = self.items.borrow().len();
        self.items.borrow_mut().clear();
        count
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::client::ResponseStatus;

    fn response(request_id: u64) -> Outgoing {
        Outgoing::Response {
            shard_id: 0,
            response: ClientResponse { request_id, status: ResponseStatus::Ok(Bytes::new()) },
        }
    }

    fn request_id(item: &Outgoing) -> u64 {
        match item {
            Outgoing::Response { response, .. } => response.request_id,
            Outgoing::Raft { .. } => panic!("not a response"),
        }
    }

    #[test]
    fn a_full_queue_hands_the_item_back_instead_of_growing() {
        let queue = OutQueue::new(1);
        queue.try_push(response(1)).unwrap();
        assert_eq!(request_id(&queue.try_push(response(2)).unwrap_err()), 2);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop().map(|item| request_id(&item)), Some(1));
        queue.try_push(response(3)).unwrap();
        assert_eq!(queue.pop().map(|item| request_id(&item)), Some(3));
    }

    #[test]
    fn closing_refuses_new_items_and_queued_ones_are_still_written() {
        tokio_uring::start(async {
            let queue = OutQueue::new(2);
            queue.try_push(response(1)).unwrap();
            queue.close();
            assert_eq!(request_id(&queue.try_push(response(2)).unwrap_err()), 2);
            assert!(queue.wait_ready().await, "queued frames are still written after close");
            assert_eq!(queue.drain(), 1);
            assert!(!queue.wait_ready().await);
        });
    }
}
