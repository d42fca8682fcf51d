//! The Redis commands the front door serves, as key-value ops (`net::kv`).
//!
//! [`plan`] looks at a keyed command once: it becomes a read (a future that
//! runs it) or a [`PlannedWrite`] (its ops, which the connection sends with
//! the pipeline's other writes, see [`super`]), or an error reply for bad
//! arguments.
//!
//! Multi-key commands (`MGET`, `MSET`, `DEL`, `EXISTS` with several keys)
//! run one op per key, each on its key's shard, as in Redis Cluster across
//! slots: a write's ops on one shard are one batch, applied atomically, but
//! not across shards (another client may see some of an `MSET`'s keys
//! written and not others); a read's are one linearizable read each, so
//! they are not one snapshot even within a shard. Read-modify-write commands
//! (`INCR`, `APPEND`, `SET NX/XX/GET`, `SETNX`, `GETSET`) are single ops
//! that the state machine applies in one step.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::future::join_all;
use net::kv::shard_for_key;
use net::resp::{Command, Reply};

use super::backend::{Backend, CallFailed};
use crate::kv::{KvOp, KvRefusal, KvResponse, SetCondition, COUNT_QUERY, KEY_SIZE_MAX, VALUE_SIZE_MAX};

/// A reply that will be ready later.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply>>>;

/// The outcomes of a command's ops, in their order, made into its reply.
pub type Finish = Box<dyn FnOnce(Vec<Result<KvResponse, CallFailed>>) -> Reply>;

/// A command's writes: ops that go to the cluster with the other writes of
/// the pipeline (one batch per shard, in the pipeline's order: see
/// [`super`]), and what makes its reply of their outcomes.
pub struct PlannedWrite {
    pub ops: Vec<KvOp>,
    pub finish: Finish,
}

/// What a command is, for the connection.
pub enum Classified {
    /// Answered at once, without the cluster.
    Now(Reply),
    /// Needs the connection's state (authentication, protocol, name) and
    /// everything before it answered first.
    Connection,
    /// Reads the store (or the node's state).
    Read(ReplyFuture),
    /// Writes the store.
    Write(PlannedWrite),
}

/// Arity per command: positive is exact, negative is a minimum (Redis's
/// `COMMAND` convention, which `COMMAND` reports too), with the command's
/// first key, last key (-1: the last argument) and key step.
pub const COMMANDS: &[(&str, i64, i64, i64, i64)] = &[
    ("append", 3, 1, 1, 1),
    ("auth", -2, 0, 0, 0),
    ("client", -2, 0, 0, 0),
    ("command", -1, 0, 0, 0),
    ("config", -2, 0, 0, 0),
    ("dbsize", 1, 0, 0, 0),
    ("decr", 2, 1, 1, 1),
    ("decrby", 3, 1, 1, 1),
    ("del", -2, 1, -1, 1),
    ("echo", 2, 0, 0, 0),
    ("exists", -2, 1, -1, 1),
    ("get", 2, 1, 1, 1),
    ("getset", 3, 1, 1, 1),
    ("hello", -1, 0, 0, 0),
    ("incr", 2, 1, 1, 1),
    ("incrby", 3, 1, 1, 1),
    ("info", -1, 0, 0, 0),
    ("mget", -2, 1, -1, 1),
    ("mset", -3, 1, -1, 2),
    ("ping", -1, 0, 0, 0),
    ("quit", -1, 0, 0, 0),
    ("select", 2, 0, 0, 0),
    ("set", -3, 1, 1, 1),
    ("setnx", 3, 1, 1, 1),
    ("strlen", 2, 1, 1, 1),
];

/// Looks a command up by name (any case): its lowercase name and arity.
pub fn lookup(name: &[u8]) -> Option<(&'static str, i64)> {
    COMMANDS.iter().find(|entry| entry.0.as_bytes().eq_ignore_ascii_case(name)).map(|entry| (entry.0, entry.1))
}

/// Checks a known command's argument count against its arity.
pub fn arity_ok(arity: i64, count: usize) -> bool {
    let count = count as i64;
    if arity >= 0 {
        count == arity
    } else {
        count >= -arity
    }
}

/// Redis's error for a command nobody knows, with its first arguments.
pub fn unknown_command(command: &Command) -> Reply {
    let name = String::from_utf8_lossy(command.name());
    let mut message = format!("ERR unknown command '{}', with args beginning with: ", excerpt(&name));
    for arg in command.args.iter().skip(1).take(4) {
        message.push_str(&format!("'{}' ", excerpt(&String::from_utf8_lossy(arg))));
    }
    Reply::error(message)
}

fn excerpt(text: &str) -> String {
    text.chars().take(64).collect()
}

pub fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

fn not_an_integer() -> Reply {
    Reply::error("ERR value is not an integer or out of range")
}

/// Turns a keyed command into its plan, or an error reply for bad
/// arguments. `name` is the lowercase name; the arity was checked.
pub fn plan(backend: &Rc<Backend>, name: &str, args: &[Bytes]) -> Classified {
    for key in keys_of(name, args) {
        if let Err(reply) = check_key(key) {
            return Classified::Now(reply);
        }
    }
    match name {
        "get" | "strlen" | "mget" | "exists" | "dbsize" => plan_read(backend, name, args),
        "mset" => plan_mset(args),
        "incr" | "decr" | "incrby" | "decrby" => plan_increment(name, args),
        _ => plan_write(name, args),
    }
}

fn plan_read(backend: &Rc<Backend>, name: &str, args: &[Bytes]) -> Classified {
    let key = || args[1].clone();
    match name {
        "get" => read_one(backend, key(), |response| match response {
            KvResponse::Value(Some(value)) => Reply::Bulk(value),
            _ => Reply::Null,
        }),
        "strlen" => read_one(backend, key(), |response| match response {
            KvResponse::Value(Some(value)) => Reply::Integer(value.len() as i64),
            _ => Reply::Integer(0),
        }),
        "mget" => read_many(backend, &args[1..], |response| match response {
            KvResponse::Value(Some(value)) => Reply::Bulk(value),
            _ => Reply::Null,
        }),
        "exists" => {
            let reads = read_many(backend, &args[1..], |response| {
                Reply::Integer(i64::from(matches!(response, KvResponse::Value(Some(_)))))
            });
            sum_integers(reads)
        }
        "dbsize" => {
            let backend = backend.clone();
            read(
                async move { key_count(&backend).await.map_or_else(|error| error, |count| Reply::Integer(count as i64)) },
            )
        }
        other => unreachable!("{other} is not a read"),
    }
}

fn plan_write(name: &str, args: &[Bytes]) -> Classified {
    let key = || args[1].clone();
    match name {
        "set" => plan_set(args),
        "setnx" => {
            let op = KvOp::Set { key: key(), value: args[2].clone(), condition: SetCondition::IfAbsent, get: false };
            write_one(op, |response| match response {
                KvResponse::SetDone { written, .. } => Reply::Integer(i64::from(written)),
                other => unexpected(other),
            })
        }
        "getset" => {
            let op = KvOp::Set { key: key(), value: args[2].clone(), condition: SetCondition::Always, get: true };
            write_one(op, previous_value)
        }
        "del" => {
            let deletes: Vec<_> = args[1..].iter().map(|key| KvOp::Delete { key: key.clone() }).collect();
            let writes = write_many(deletes, |response| match response {
                KvResponse::Deleted { existed } => Reply::Integer(i64::from(existed)),
                other => unexpected(other),
            });
            sum_integers(writes)
        }
        "append" => {
            let op = KvOp::Append { key: key(), value: args[2].clone() };
            if let Some(reply) = check_value(&op) {
                return Classified::Now(reply);
            }
            write_one(op, integer_answer)
        }
        other => unreachable!("{other} is not a keyed command"),
    }
}

/// `MSET`: one put per key, in order (a key given twice keeps its last
/// value, as in Redis: the puts of one shard are one batch).
fn plan_mset(args: &[Bytes]) -> Classified {
    if args.len().is_multiple_of(2) {
        return Classified::Now(wrong_arity("mset"));
    }
    let puts: Vec<_> =
        args[1..].chunks(2).map(|pair| KvOp::Put { key: pair[0].clone(), value: pair[1].clone() }).collect();
    if let Some(reply) = puts.iter().find_map(check_value) {
        return Classified::Now(reply);
    }
    let writes = write_many(puts, |response| match response {
        KvResponse::Written => Reply::ok(),
        other => unexpected(other),
    });
    all_ok(writes)
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: one `Increment` op.
fn plan_increment(name: &str, args: &[Bytes]) -> Classified {
    let delta = match name {
        "incr" => 1,
        "decr" => -1,
        _ => match parse_integer(&args[2]) {
            Some(delta) if name == "incrby" => delta,
            Some(delta) => match delta.checked_neg() {
                Some(delta) => delta,
                None => return Classified::Now(Reply::error("ERR decrement would overflow")),
            },
            None => return Classified::Now(not_an_integer()),
        },
    };
    write_one(KvOp::Increment { key: args[1].clone(), delta }, integer_answer)
}

/// The keys a keyed command names.
fn keys_of<'a>(name: &str, args: &'a [Bytes]) -> Vec<&'a Bytes> {
    match name {
        "dbsize" => Vec::new(),
        "mget" | "del" | "exists" => args[1..].iter().collect(),
        "mset" => args[1..].iter().step_by(2).collect(),
        _ => vec![&args[1]],
    }
}

/// Keys are 1 to [`KEY_SIZE_MAX`] bytes in this store.
fn check_key(key: &Bytes) -> Result<(), Reply> {
    if key.is_empty() {
        return Err(Reply::error("ERR empty keys are not supported by this store"));
    }
    if key.len() > KEY_SIZE_MAX {
        return Err(Reply::error(format!("ERR key of {} bytes exceeds the limit of {KEY_SIZE_MAX} bytes", key.len())));
    }
    Ok(())
}

fn check_value(op: &KvOp) -> Option<Reply> {
    let size = match op {
        KvOp::Put { value, .. } | KvOp::Append { value, .. } | KvOp::Set { value, .. } => value.len(),
        _ => 0,
    };
    (size > VALUE_SIZE_MAX)
        .then(|| Reply::error(format!("ERR value of {size} bytes exceeds the limit of {VALUE_SIZE_MAX} bytes")))
}

/// `SET key value [NX | XX] [GET]`; expiry options are refused (this
/// store keeps no expiry times).
fn plan_set(args: &[Bytes]) -> Classified {
    let (mut condition, mut get) = (SetCondition::Always, false);
    // As Redis parses them: an option given twice is taken (`SET k v GET
    // GET` was refused here); only NX with XX is a syntax error.
    for option in &args[3..] {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
            b"XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
            b"GET" => get = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" => {
                return Classified::Now(Reply::error(
                    "ERR expiry (EX, PX, EXAT, PXAT, KEEPTTL) is not supported by this store",
                ))
            }
            _ => return Classified::Now(syntax_error()),
        }
    }
    let (key, value) = (args[1].clone(), args[2].clone());
    if condition == SetCondition::Always && !get {
        let op = KvOp::Put { key, value };
        if let Some(reply) = check_value(&op) {
            return Classified::Now(reply);
        }
        return write_one(op, |response| match response {
            KvResponse::Written => Reply::ok(),
            other => unexpected(other),
        });
    }
    let op = KvOp::Set { key, value, condition, get };
    if let Some(reply) = check_value(&op) {
        return Classified::Now(reply);
    }
    write_one(op, move |response| match response {
        KvResponse::SetDone { previous, .. } if get => previous.map_or(Reply::Null, Reply::Bulk),
        KvResponse::SetDone { written: true, .. } => Reply::ok(),
        KvResponse::SetDone { written: false, .. } => Reply::Null,
        other => unexpected(other),
    })
}

fn previous_value(response: KvResponse) -> Reply {
    match response {
        KvResponse::SetDone { previous, .. } => previous.map_or(Reply::Null, Reply::Bulk),
        other => unexpected(other),
    }
}

fn integer_answer(response: KvResponse) -> Reply {
    match response {
        KvResponse::Integer(value) => Reply::Integer(value),
        KvResponse::Refused(KvRefusal::NotAnInteger) => not_an_integer(),
        KvResponse::Refused(KvRefusal::Overflow) => Reply::error("ERR increment or decrement would overflow"),
        KvResponse::Refused(KvRefusal::TooLarge) => {
            Reply::error(format!("ERR string exceeds maximum allowed size ({VALUE_SIZE_MAX} bytes)"))
        }
        other => unexpected(other),
    }
}

/// An answer of the wrong kind: a bug somewhere, reported to the client
/// rather than panicking the node.
/// The keys of every shard (one read per shard, in parallel), or the
/// error reply of the first that failed: `DBSIZE`, and `INFO keyspace`.
pub(super) async fn key_count(backend: &Backend) -> Result<u64, Reply> {
    let counts = (0..backend.shard_count())
        .map(|shard| backend.read(shard, Bytes::from_static(COUNT_QUERY)))
        .collect::<Vec<_>>();
    let mut total = 0;
    for count in join_all(counts).await {
        match count {
            Ok(KvResponse::Count(count)) => total += count,
            Ok(other) => return Err(unexpected(other)),
            Err(failed) => return Err(failed_reply(failed)),
        }
    }
    Ok(total)
}

fn unexpected(response: KvResponse) -> Reply {
    Reply::error(format!("ERR unexpected answer from the state machine: {response:?}"))
}

fn failed_reply(failed: CallFailed) -> Reply {
    Reply::Error(Bytes::from(failed.0))
}

/// Parses an integer argument as Redis does (`string2ll`): the same rule
/// the state machine applies to a stored value.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    crate::kv::parse_redis_integer(bytes)
}

fn read(reply: impl Future<Output = Reply> + 'static) -> Classified {
    Classified::Read(Box::pin(reply))
}

fn read_one(backend: &Rc<Backend>, key: Bytes, answer: fn(KvResponse) -> Reply) -> Classified {
    let backend = backend.clone();
    read(async move {
        let shard = shard_for_key(&key, backend.shard_count());
        match backend.read(shard, KvOp::Get { key }.encode()).await {
            Ok(response) => answer(response),
            Err(failed) => failed_reply(failed),
        }
    })
}

/// Reads several keys, each on its shard, concurrently; an array of
/// answers in the keys' order.
fn read_many(backend: &Rc<Backend>, keys: &[Bytes], answer: fn(KvResponse) -> Reply) -> Classified {
    let backend = backend.clone();
    let keys = keys.to_vec();
    read(async move {
        let reads = keys.into_iter().map(|key| {
            let backend = backend.clone();
            async move {
                let shard = shard_for_key(&key, backend.shard_count());
                backend.read(shard, KvOp::Get { key }.encode()).await
            }
        });
        collect(join_all(reads).await, answer)
    })
}

fn write_one(op: KvOp, answer: impl FnOnce(KvResponse) -> Reply + 'static) -> Classified {
    Classified::Write(PlannedWrite {
        ops: vec![op],
        finish: Box::new(move |mut outcomes| match outcomes.pop().expect("one outcome per op") {
            Ok(response) => answer(response),
            Err(failed) => failed_reply(failed),
        }),
    })
}

/// Writes several ops, each on its key's shard (not atomically across
/// shards); an array of answers in the ops' order.
fn write_many(ops: Vec<KvOp>, answer: fn(KvResponse) -> Reply) -> Classified {
    Classified::Write(PlannedWrite { ops, finish: Box::new(move |outcomes| collect(outcomes, answer)) })
}

/// The answers as an array, or the first failure.
fn collect(results: Vec<Result<KvResponse, CallFailed>>, answer: fn(KvResponse) -> Reply) -> Reply {
    let mut replies = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(response) => replies.push(answer(response)),
            Err(failed) => return failed_reply(failed),
        }
    }
    Reply::Array(replies)
}

/// An array of integer answers summed (`DEL`, `EXISTS`).
fn sum_integers(classified: Classified) -> Classified {
    map_reply(classified, |reply| match reply {
        Reply::Array(replies) => {
            let mut sum = 0;
            for reply in replies {
                match reply {
                    Reply::Integer(value) => sum += value,
                    other => return other,
                }
            }
            Reply::Integer(sum)
        }
        other => other,
    })
}

/// An array of `OK`s as one `OK` (`MSET`).
fn all_ok(classified: Classified) -> Classified {
    map_reply(classified, |reply| match reply {
        Reply::Array(replies) => replies.into_iter().find(|reply| *reply != Reply::ok()).unwrap_or_else(Reply::ok),
        other => other,
    })
}

fn map_reply(classified: Classified, map: fn(Reply) -> Reply) -> Classified {
    match classified {
        Classified::Read(reply) => read(async move { map(reply.await) }),
        Classified::Write(PlannedWrite { ops, finish }) => {
            Classified::Write(PlannedWrite { ops, finish: Box::new(move |outcomes| map(finish(outcomes))) })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_follows_redis_conventions() {
        assert!(arity_ok(2, 2));
        assert!(!arity_ok(2, 3));
        assert!(arity_ok(-2, 5));
        assert!(!arity_ok(-3, 2));
        assert_eq!(lookup(b"GeT"), Some(("get", 2)));
        assert_eq!(lookup(b"flushall"), None);
    }

    #[test]
    fn integer_arguments_are_strict() {
        assert_eq!(parse_integer(b"-5"), Some(-5));
        assert_eq!(parse_integer(b"5x"), None);
        assert_eq!(parse_integer(b""), None);
        assert_eq!(parse_integer(b"99999999999999999999"), None);
    }
}
