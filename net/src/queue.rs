//! The bounded queue of frames waiting for a connection's writer.
//!
//! Producers and the writer live on one thread (tokio-uring is `!Send`), so
//! the queue is a `RefCell<VecDeque>` with two `Notify`s: one wakes the writer
//! when frames arrive, one wakes producers waiting for space. The bound is
//! `frames_max`; what happens at the bound is the producer's choice: Raft
//! messages are dropped and counted ([`OutQueue::try_push`]), client
//! responses wait for space ([`OutQueue::push`]).

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
    space: Notify,
    closed: Cell<bool>,
}

impl OutQueue {
    pub(crate) fn new(frames_max: usize) -> OutQueue {
        assert!(frames_max > 0, "a queue must hold at least one frame");
        OutQueue {
            items: RefCell::new(VecDeque::with_capacity(frames_max)),
            frames_max,
            writer_wake: Notify::new(),
            space: Notify::new(),
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

    /// Enqueues `item`, waiting while the queue is full. Gives the item back
    /// if the queue is (or becomes) closed, so the caller knows it was not sent.
    pub(crate) async fn push(&self, mut item: Outgoing) -> Result<(), Outgoing> {
        loop {
            // Single-threaded: nothing runs between this check and the
            // registration of the waiter inside `notified().await`.
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(back) if self.closed.get() => return Err(back),
                Err(back) => item = back,
            }
            self.space.notified().await;
        }
    }

    /// The oldest frame, if any; wakes producers waiting for space.
    pub(crate) fn pop(&self) -> Option<Outgoing> {
        let item = self.items.borrow_mut().pop_front();
        if item.is_some() {
            self.space.notify_waiters();
        }
        item
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
        self.space.notify_waiters();
    }

    /// Removes every queued frame, returning how many there were.
    pub(crate) fn drain(&self) -> usize {
        let count = self.items.borrow().len();
        self.items.borrow_mut().clear();
        self.space.notify_waiters();
        count
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Duration;

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
    fn a_full_queue_makes_push_wait_instead_of_dropping() {
        tokio_uring::start(async {
            let queue = Rc::new(OutQueue::new(1));
            queue.try_push(response(1)).unwrap();
            assert_eq!(request_id(&queue.try_push(response(2)).unwrap_err()), 2);
            let waiting = tokio_uring::spawn({
                let queue = queue.clone();
                async move { queue.push(response(3)).await.is_ok() }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiting.is_finished(), "push returned while the queue was full");
            assert_eq!(queue.pop().map(|item| request_id(&item)), Some(1));
            assert!(waiting.await.unwrap(), "push failed after space was freed");
            assert_eq!(queue.pop().map(|item| request_id(&item)), Some(3));
        });
    }

    #[test]
    fn closing_gives_a_waiting_push_its_item_back() {
        tokio_uring::start(async {
            let queue = Rc::new(OutQueue::new(1));
            queue.try_push(response(1)).unwrap();
            let waiting = tokio_uring::spawn({
                let queue = queue.clone();
                async move { queue.push(response(2)).await.map_err(|item| request_id(&item)) }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            queue.close();
            assert_eq!(waiting.await.unwrap(), Err(2));
            assert!(queue.wait_ready().await, "queued frames are still written after close");
            assert_eq!(queue.drain(), 1);
            assert!(!queue.wait_ready().await);
        });
    }
}
