//! `bench run --protocol resp`: the same load against a server that speaks
//! the Redis protocol (`redis-server`, or the node's RESP front door), so
//! the two can be compared in one table.
//!
//! What is shared with the native runner ([`crate::runner`]): the settings
//! ([`RunSettings`]), the split of the load over connections
//! (`plan_connections`), the workload's draws ([`Workload`], the same keys
//! and values in the same order for a seed), the closed and open loops (the
//! open loop's [`crate::schedule::Schedule`], latency from the intended send
//! time), the recording ([`Recorder`], HDR histograms), the live display and
//! the result file. What differs is the wire: a write is `SET key value`
//! (answered `+OK`), a read `GET key` (a bulk string or null), encoded by
//! [`net::resp`]. RESP answers in order, so a connection matches answers to
//! requests by position instead of by request id, and there is no leader to
//! follow: a broken connection reconnects to the next address.
//!
//! The token (`--token`, `--token-file`) is sent with `AUTH` on every
//! connection, as `redis-cli -a` does: the node's front door needs it; a
//! `redis-server` without a password answers that it has none, which is
//! not an error here. Settings that only the native protocol has
//! (`--cluster-id`, `--shards`, `--consistency`) are recorded but not used.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use net::resp::{encode_command, Reply, ReplyParser};
use tokio::sync::{Notify, Semaphore};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::result::ResultFile;
use crate::runner::{check_io_uring, resolve, run_workers, ConnectionPlan, RunError, RunOptions, RunSettings, Window};
use crate::signal;
use crate::stats::{duration_nanos, OpKind, Recorder};
use crate::workload::{KeyChooser, KeyValueOp, Workload};

/// Requests encoded into one write at most (as the native runner).
const SEND_BATCH_MAX: usize = 64;
/// How long the last answers may take after the measured window ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failure, doubled up to the maximum.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 64 << 10;
/// Bound on connecting to a server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Makes one run against RESP servers at `options.settings.addrs` and
/// returns its result, in the same format as the native runner's.
pub fn run_resp(options: &RunOptions) -> Result<ResultFile, RunError> {
    let mut settings = options.settings.clone();
    settings.validate()?;
    check_io_uring()?;
    let addrs = settings.addrs.iter().map(|addr| resolve(addr)).collect::<Result<Vec<_>, _>>()?;
    let token = (!options.token.is_empty()).then(|| String::from_utf8_lossy(&options.token).into_owned());
    let info = options.fetch_status.then(|| ask_each(&settings.addrs, &addrs, token.as_deref(), &["INFO", "server"]));
    let keys = KeyChooser::new(settings.workload.keys, settings.workload.distribution)?;
    let window = Window::new(&settings);
    let shared = Arc::new(Shared { settings: settings.clone(), addrs, keys, window, token: token.clone() });
    let finished = run_workers(&shared, &shared.settings, &shared.window, options, "bench-resp", connection)?;
    let mut result = finished.result(options, settings.clone(), info)?;
    result.protocol = Some("resp".to_string());
    // The server's own per-command counts and times (`cmdstat_set:calls=...`).
    result.cluster_stats = options
        .fetch_status
        .then(|| ask_each(&settings.addrs, &shared.addrs, token.as_deref(), &["INFO", "commandstats"]));
    Ok(result)
}

/// What every worker thread reads.
struct Shared {
    settings: RunSettings,
    addrs: Vec<SocketAddr>,
    keys: KeyChooser,
    window: Window,
    /// Sent with `AUTH` first on every connection.
    token: Option<String>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.window.stopping()
    }
}

/// What lives across reconnections of one connection slot.
struct Slot {
    workload: Workload,
    /// The open loop's next request number.
    next_scheduled: u64,
}

/// A request waiting for its answer (answers come in order).
struct Pending {
    op: OpKind,
    intended: Instant,
    sent: Instant,
}

/// State shared by one connection's sender and receiver.
#[derive(Default)]
struct Conn {
    inflight: VecDeque<Pending>,
    /// Set when the connection must stop sending: `true` if it broke.
    broken: Option<bool>,
    sender_done: bool,
}

async fn connection(shared: Arc<Shared>, plan: ConnectionPlan, recorder: Rc<RefCell<Recorder>>) {
    // The same per-connection seed as the native runner: the same draws.
    let seed = shared.settings.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(plan.index as u64);
    let slot = Rc::new(RefCell::new(Slot {
        workload: Workload::new(&shared.settings.workload, shared.keys.clone(), seed),
        next_scheduled: 0,
    }));
    let mut next_addr = plan.index % shared.addrs.len();
    let mut backoff = RECONNECT_BACKOFF_MIN;
    while !shared.stopping() {
        let addr = shared.addrs[next_addr];
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_string(),
                };
                shared.window.error(&recorder, Instant::now(), "connect", || format!("{addr}: {reason}"));
                next_addr = (next_addr + 1) % shared.addrs.len();
                pause(&shared, backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(token) = &shared.token {
            if let Err(reason) = authenticate(&stream, token).await {
                shared.window.error(&recorder, Instant::now(), "auth", || format!("{addr}: {reason}"));
                next_addr = (next_addr + 1) % shared.addrs.len();
                pause(&shared, backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        }
        if !drive(&shared, &plan, &slot, &recorder, stream).await {
            break;
        }
        next_addr = (next_addr + 1) % shared.addrs.len();
        pause(&shared, backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// Sends `AUTH token` and reads its answer: `Ok` for `+OK`, and for a
/// server that has no password (a `redis-server` as installed).
async fn authenticate(stream: &TcpStream, token: &str) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode_command(&["AUTH", token], &mut out);
    let (written, _) = stream.write_all(out).await;
    written.map_err(|error| format!("sending AUTH: {error}"))?;
    let parser = ReplyParser::default();
    let mut buf = BytesMut::new();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Some(reply) = parser.next(&mut buf).map_err(|error| error.to_string())? {
            return auth_outcome(&reply);
        }
        let read = tokio::time::timeout_at(deadline.into(), stream.read(vec![0u8; 4096])).await;
        match read {
            Ok((Ok(0), _)) => return Err("the server closed the connection after AUTH".into()),
            Ok((Ok(count), chunk)) => buf.extend_from_slice(&chunk[..count]),
            Ok((Err(error), _)) => return Err(format!("reading AUTH's answer: {error}")),
            Err(_) => return Err("no answer to AUTH".into()),
        }
    }
}

/// Whether `AUTH`'s reply lets the connection go on.
fn auth_outcome(reply: &Reply) -> Result<(), String> {
    match reply {
        Reply::Simple(status) if &status[..] == b"OK" => Ok(()),
        Reply::Error(message) if String::from_utf8_lossy(message).contains("without any password configured") => Ok(()),
        Reply::Error(message) => Err(format!("AUTH refused: {}", String::from_utf8_lossy(message))),
        other => Err(format!("AUTH answered {other:?}")),
    }
}

/// Sleeps for `pause`, but not past the end of the run.
async fn pause(shared: &Shared, pause: Duration) {
    let until = (Instant::now() + pause).min(shared.window.end);
    tokio::time::sleep_until(until.into()).await;
}

/// Runs the load over one connection; `true` if it broke and must be
/// replaced, `false` when the run is over.
async fn drive(
    shared: &Arc<Shared>,
    plan: &ConnectionPlan,
    slot: &Rc<RefCell<Slot>>,
    recorder: &Rc<RefCell<Recorder>>,
    stream: TcpStream,
) -> bool {
    let stream = Rc::new(stream);
    let conn = Rc::new(RefCell::new(Conn::default()));
    let permits = Rc::new(Semaphore::new(plan.inflight));
    let wake_sender = Rc::new(Notify::new());
    let wake_receiver = Rc::new(Notify::new());
    let send_task = tokio_uring::spawn(send_loop(
        shared.clone(),
        plan.clone(),
        slot.clone(),
        conn.clone(),
        stream.clone(),
        permits.clone(),
        (wake_sender.clone(), wake_receiver.clone()),
        recorder.clone(),
    ));
    receive_loop(shared, &conn, &stream, &permits, (&wake_sender, &wake_receiver), recorder).await;
    wake_sender.notify_one();
    send_task.await.expect("the send loop does not panic");
    let mut conn = conn.borrow_mut();
    let broken = conn.broken.unwrap_or(false);
    let kind = if broken { "connection_lost" } else { "unanswered" };
    for pending in conn.inflight.drain(..) {
        shared.window.error(recorder, pending.intended, kind, || "no answer before the connection ended".into());
    }
    broken
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    shared: Arc<Shared>,
    plan: ConnectionPlan,
    slot: Rc<RefCell<Slot>>,
    conn: Rc<RefCell<Conn>>,
    stream: Rc<TcpStream>,
    permits: Rc<Semaphore>,
    (wake_sender, wake_receiver): (Rc<Notify>, Rc<Notify>),
    recorder: Rc<RefCell<Recorder>>,
) {
    let mut out = BytesMut::with_capacity(READ_SIZE);
    let stop = |conn: &RefCell<Conn>| conn.borrow().broken.is_some() || signal::stop_requested();
    'run: loop {
        if stop(&conn) {
            break;
        }
        let now = Instant::now();
        let mut next_due = None;
        let mut queued = 0;
        while queued < SEND_BATCH_MAX {
            let intended = match plan.schedule {
                None => now,
                Some(schedule) => shared.window.start + schedule.due(slot.borrow().next_scheduled),
            };
            if intended >= shared.window.end || (plan.schedule.is_none() && now >= shared.window.end) {
                break 'run;
            }
            if let (Some(schedule), true) = (plan.schedule, now >= shared.window.end + DRAIN_TIMEOUT) {
                // Too far behind the schedule to catch up: what was never
                // sent failed.
                let due = schedule.count_before(shared.window.end - shared.window.start);
                let unsent = due.saturating_sub(slot.borrow().next_scheduled);
                shared.window.errors(&recorder, shared.window.warmup_end, "unsent", unsent, || {
                    format!("the open loop fell more than {DRAIN_TIMEOUT:?} behind its schedule")
                });
                break 'run;
            }
            if intended > now {
                next_due = Some(intended);
                break;
            }
            let Ok(permit) = permits.try_acquire() else { break };
            permit.forget();
            let mut slot = slot.borrow_mut();
            let op = slot.workload.next_key_value();
            match &op {
                KeyValueOp::Put { key, value } => encode_command(&[&b"SET"[..], key, value], &mut out),
                KeyValueOp::Get { key } => encode_command(&[&b"GET"[..], key], &mut out),
            }
            if plan.schedule.is_some() {
                slot.next_scheduled += 1;
            }
            conn.borrow_mut().inflight.push_back(Pending { op: op.kind(), intended, sent: Instant::now() });
            queued += 1;
        }
        if queued > 0 {
            wake_receiver.notify_one();
            let (written, returned) = stream.write_all(std::mem::take(&mut out)).await;
            out = returned;
            out.clear();
            if let Err(error) = written {
                shared.window.error(&recorder, Instant::now(), "send", || error.to_string());
                conn.borrow_mut().broken.get_or_insert(true);
                break;
            }
            continue;
        }
        match next_due {
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = wake_sender.notified() => {}
                }
            }
            None => {
                tokio::select! {
                    permit = permits.acquire() => drop(permit),
                    _ = wake_sender.notified() => {}
                    _ = tokio::time::sleep_until(shared.window.end.into()) => {}
                }
            }
        }
    }
    if !out.is_empty() {
        // Requests queued when the run ended are in flight: send them.
        let (written, _) = stream.write_all(out).await;
        if let Err(error) = written {
            shared.window.error(&recorder, Instant::now(), "send", || error.to_string());
            conn.borrow_mut().broken.get_or_insert(true);
        }
    }
    conn.borrow_mut().sender_done = true;
    wake_receiver.notify_one();
}

async fn receive_loop(
    shared: &Arc<Shared>,
    conn: &Rc<RefCell<Conn>>,
    stream: &TcpStream,
    permits: &Semaphore,
    (wake_sender, wake_receiver): (&Notify, &Notify),
    recorder: &Rc<RefCell<Recorder>>,
) {
    let request_timeout = Duration::from_secs_f64(shared.settings.request_timeout_s);
    let parser = ReplyParser::default();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        // Every complete answer in the buffer first.
        loop {
            let reply = match parser.next(&mut buf) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(error) => {
                    shared.window.error(recorder, Instant::now(), "bad_reply", || error.to_string());
                    conn.borrow_mut().broken.get_or_insert(true);
                    return;
                }
            };
            let now = Instant::now();
            let Some(pending) = conn.borrow_mut().inflight.pop_front() else {
                shared
                    .window
                    .error(recorder, now, "unexpected_answer", || format!("{reply:?} with no request in flight"));
                conn.borrow_mut().broken.get_or_insert(true);
                return;
            };
            permits.add_permits(1);
            wake_sender.notify_one();
            match check_reply(pending.op, &reply) {
                Ok(()) => {
                    shared.window.live.record(duration_nanos(now - pending.intended));
                    let mut recorder = recorder.borrow_mut();
                    if pending.intended >= shared.window.warmup_end {
                        recorder.record(pending.op, now - pending.intended, now - pending.sent);
                    } else {
                        recorder.warmup_completed += 1;
                    }
                }
                Err((kind, example)) => shared.window.error(recorder, pending.intended, kind, || example),
            }
        }
        let (empty, sender_done) = {
            let conn = conn.borrow();
            (conn.inflight.is_empty(), conn.sender_done)
        };
        if empty {
            if sender_done || conn.borrow().broken.is_some() {
                return;
            }
            wake_receiver.notified().await;
            continue;
        }
        let deadline = (Instant::now() + request_timeout).min(shared.window.end + DRAIN_TIMEOUT);
        buf.reserve(READ_SIZE);
        let start = buf.len();
        let end = buf.capacity();
        let read = tokio::time::timeout_at(deadline.into(), stream.read(std::mem::take(&mut buf).slice(start..end)));
        match read.await {
            Ok((Ok(0), _)) => {
                shared
                    .window
                    .error(recorder, Instant::now(), "connection", || "the server closed the connection".into());
                conn.borrow_mut().broken.get_or_insert(true);
                return;
            }
            Ok((Ok(_), slice)) => buf = slice.into_inner(),
            Ok((Err(error), _)) => {
                shared.window.error(recorder, Instant::now(), "connection", || error.to_string());
                conn.borrow_mut().broken.get_or_insert(true);
                return;
            }
            Err(_elapsed) => {
                // The read's buffer went with the dropped operation; whatever
                // is in flight is not answered in time.
                let mut conn = conn.borrow_mut();
                let past_end = Instant::now() >= shared.window.end;
                let kind = if past_end { "unanswered" } else { "timeout" };
                for pending in conn.inflight.drain(..) {
                    shared.window.error(recorder, pending.intended, kind, || {
                        format!("no answer within {:?}", deadline.saturating_duration_since(pending.sent))
                    });
                }
                conn.broken.get_or_insert(!past_end);
                return;
            }
        }
    }
}

/// Whether `reply` is the success answer to `op`: `+OK` to a `SET`, a bulk
/// string or null to a `GET`. Otherwise the error kind and an example.
pub fn check_reply(op: OpKind, reply: &Reply) -> Result<(), (&'static str, String)> {
    match (op, reply) {
        (OpKind::Write, Reply::Simple(status)) if &status[..] == b"OK" => Ok(()),
        (OpKind::Read, Reply::Bulk(_) | Reply::Null) => Ok(()),
        (_, Reply::Error(message)) => Err(("error_reply", String::from_utf8_lossy(message).into_owned())),
        (op, other) => Err(("unexpected_answer", format!("a {op} was answered with {other:?}"))),
    }
}

/// Sends one command over a plain blocking connection and returns the
/// reply: for the status and stats a result file records, and for tests.
pub fn resp_call(addr: SocketAddr, args: &[&str], timeout: Duration) -> Result<Reply, String> {
    resp_call_as(addr, None, args, timeout)
}

/// [`resp_call`] after `AUTH token` when a token is given.
pub fn resp_call_as(addr: SocketAddr, token: Option<&str>, args: &[&str], timeout: Duration) -> Result<Reply, String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|error| error.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|error| error.to_string())?;
    let mut out = BytesMut::new();
    if let Some(token) = token {
        encode_command(&["AUTH", token], &mut out);
    }
    encode_command(args, &mut out);
    stream.write_all(&out).map_err(|error| error.to_string())?;
    let parser = ReplyParser::default();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 16 << 10];
    let mut authenticated = token.is_none();
    loop {
        if let Some(reply) = parser.next(&mut buf).map_err(|error| error.to_string())? {
            if authenticated {
                return Ok(reply);
            }
            auth_outcome(&reply)?;
            authenticated = true;
            continue;
        }
        match stream.read(&mut chunk).map_err(|error| error.to_string())? {
            0 => return Err("the server closed the connection".into()),
            read => buf.extend_from_slice(&chunk[..read]),
        }
    }
}

/// The `field:value` lines of an `INFO` answer, as a JSON object.
pub fn info_fields(reply: &Reply) -> Result<serde_json::Value, String> {
    let text = match reply {
        Reply::Bulk(text) | Reply::Verbatim { text, .. } => text,
        Reply::Error(message) => return Err(String::from_utf8_lossy(message).into_owned()),
        other => return Err(format!("INFO answered {other:?}")),
    };
    let fields: BTreeMap<String, String> = String::from_utf8_lossy(text)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(field, value)| (field.to_string(), value.trim().to_string()))
        .collect();
    Ok(serde_json::to_value(fields).expect("strings serialize"))
}

/// Asks every server `args` (an `INFO` section), answers keyed by address,
/// `{"error": ...}` where one did not answer.
fn ask_each(names: &[String], addrs: &[SocketAddr], token: Option<&str>, args: &[&str]) -> serde_json::Value {
    let answers: BTreeMap<String, serde_json::Value> = names
        .iter()
        .zip(addrs)
        .map(|(name, &addr)| {
            let answer = resp_call_as(addr, token, args, Duration::from_secs(2)).and_then(|reply| info_fields(&reply));
            (name.clone(), answer.unwrap_or_else(|error| serde_json::json!({ "error": error })))
        })
        .collect();
    serde_json::to_value(answers).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn replies_are_checked_by_operation() {
        assert_eq!(check_reply(OpKind::Write, &Reply::ok()), Ok(()));
        assert_eq!(check_reply(OpKind::Read, &Reply::Null), Ok(()));
        assert_eq!(check_reply(OpKind::Read, &Reply::Bulk(Bytes::from_static(b"v"))), Ok(()));
        assert_eq!(
            check_reply(OpKind::Write, &Reply::error("OOM command not allowed")),
            Err(("error_reply", "OOM command not allowed".to_string()))
        );
        assert!(matches!(check_reply(OpKind::Write, &Reply::Null), Err(("unexpected_answer", _))));
        assert!(matches!(check_reply(OpKind::Read, &Reply::ok()), Err(("unexpected_answer", _))));
    }

    #[test]
    fn info_lines_become_fields() {
        let reply = Reply::Bulk(Bytes::from_static(b"# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n\r\n"));
        let fields = info_fields(&reply).unwrap();
        assert_eq!(fields["redis_version"], "7.0.15");
        assert_eq!(fields["process_id"], "42");
        assert!(info_fields(&Reply::error("NOPERM")).is_err());
    }
}
