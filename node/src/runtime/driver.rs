//! The loop that runs one shard on its core's tokio-uring runtime: it waits
//! for the next event (a Raft message or client request in the shard's
//! inbox, storage's progress, a tick, a stored or restored snapshot), hands it to the
//! [`Shard`], and awaits [`Shard::process`]. All decisions are the shard's;
//! this loop only waits.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::Message;
use net::ClientRequest;
use tokio::sync::mpsc;
use wal::LogStore;

use super::peers::Replier;
use super::storage::{LogStorage, SnapshotDone};
use crate::app::StateMachine;
use crate::shard::{Shard, ShardError, ShardTransport, SystemClock};

/// Events a shard's inbox carries, bounded by [`SHARD_INBOX_MAX`].
pub enum ShardEvent<R = Replier> {
    Raft(Message),
    /// A client request from `caller` (see [`crate::local::Forwarded`]).
    Request {
        request: ClientRequest,
        caller: Option<Arc<str>>,
        reply: R,
        arrived: Instant,
    },
}

/// Events queued for a shard, at most; beyond it Raft messages are dropped
/// (Raft retries) and client requests answered `Busy`.
pub const SHARD_INBOX_MAX: usize = 8192;
/// Events handled per wake-up before the driver processes a Ready, so one busy
/// connection cannot starve ticks and durability reports.
const EVENTS_PER_WAKE_MAX: usize = 4096;
/// How long shutdown waits for background work on the log to end.
const SHUTDOWN_BACKGROUND_WAIT: Duration = Duration::from_secs(5);

/// A shard as the runtime runs it: over a log store and a transport whose
/// replies are `R`.
pub type RuntimeShard<S, L, T> = Shard<S, LogStorage<L>, T, SystemClock>;

/// Runs `shard` until `shutdown` is set or its inbox closes (or a storage
/// failure, which stops the shard loudly rather than risk reporting
/// something durable that is not), then answers what waits, saves the hard
/// state and closes the log.
pub async fn run_shard<S, L, T>(
    mut shard: RuntimeShard<S, L, T>,
    mut inbox: mpsc::Receiver<ShardEvent<T::Reply>>,
    mut snapshots: mpsc::UnboundedReceiver<SnapshotDone>,
    tick_interval: Duration,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ShardError>
where
    S: StateMachine,
    L: LogStore + 'static,
    T: ShardTransport,
{
    let log = shard.storage().log().clone();
    let mut ticker = tokio::time::interval(tick_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let oldest = shard.oldest_pending_append();
        tokio::select! {
            event = inbox.recv() => {
                let Some(event) = event else { break Ok(()) };
                handle(&mut shard, event);
                for _ in 0..EVENTS_PER_WAKE_MAX {
                    match inbox.try_recv() {
                        Ok(event) => handle(&mut shard, event),
                        Err(_) => break,
                    }
                }
            }
            durable = log.wait_durable(oldest.unwrap_or(0)), if oldest.is_some() => {
                if let Err(error) = durable {
                    break Err(shard.storage_error(error));
                }
            }
            Some(done) = snapshots.recv() => match done {
                SnapshotDone::Stored(stored) => shard.snapshot_stored(stored),
                SnapshotDone::Restored(restored) => shard.snapshot_restored(restored),
            },
            _ = ticker.tick() => {
                shard.tick();
                if shutdown.load(Ordering::Relaxed) {
                    break Ok(());
                }
            }
        }
        if let Err(error) = shard.process().await {
            break Err(error);
        }
    };
    // The log closes only once nothing else holds it.
    drop(log);
    stop(shard, result).await
}

fn handle<S, L, T>(shard: &mut RuntimeShard<S, L, T>, event: ShardEvent<T::Reply>)
where
    S: StateMachine,
    L: LogStore + 'static,
    T: ShardTransport,
{
    match event {
        ShardEvent::Raft(message) => shard.step(message),
        ShardEvent::Request { request, caller, reply, arrived } => {
            let caller = caller.as_deref().unwrap_or(crate::session::LOCAL_CALLER);
            shard.request(request, caller, reply, arrived)
        }
    }
}

/// Answers everything still waiting, closes the log cleanly, and reports
/// why the shard stopped.
async fn stop<S, L, T>(mut shard: RuntimeShard<S, L, T>, result: Result<(), ShardError>) -> Result<(), ShardError>
where
    S: StateMachine,
    L: LogStore + 'static,
    T: ShardTransport,
{
    let shard_id = shard.context().shard_id;
    let Err(error) = &result else {
        if let Err(error) = shard.shut_down().await {
            tracing::warn!(shard = shard_id, %error, "saving the hard state at shutdown failed");
        }
        shard.storage().stop_background();
        let log = shard.storage().log().clone();
        drop(shard);
        // Background work (a paced compaction, a snapshot being stored)
        // holds the log for a moment; let it finish so the log closes.
        let deadline = Instant::now() + SHUTDOWN_BACKGROUND_WAIT;
        while Rc::strong_count(&log) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match Rc::try_unwrap(log) {
            Ok(log) => {
                if let Err(error) = log.close().await {
                    tracing::warn!(shard = shard_id, %error, "closing the log failed");
                }
            }
            Err(_) => tracing::warn!(shard = shard_id, "log still in use at shutdown; not closed"),
        }
        tracing::info!(shard = shard_id, "shard stopped cleanly");
        return result;
    };
    shard.abandon_requests();
    tracing::error!(shard = shard_id, %error, "shard stopped");
    result
}
