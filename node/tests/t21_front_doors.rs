//! The front doors of real three-node clusters of the `node` binary.
//!
//! The Redis front door (`node serve --resp-addr`), driven by a maintained
//! Redis client (the `redis` crate) as an outside application would: every
//! command, through the leader and the followers, two shards so that
//! multi-key commands span shards, pipelines, errors, a malformed stream, a
//! leader killed while a client writes through a follower, and
//! `redis-benchmark` (skipped, with a message, when it is not installed; CI
//! installs it).
//!
//! The Prometheus endpoint (`--metrics-addr`): `/metrics` scraped and
//! parsed on every node, `/livez`, and `/readyz` before and after the
//! cluster has a leader.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Value};

mod common;
use common::http_get;

const TOKEN: &str = "resp-test-token";

/// A cluster whose nodes serve RESP on `resp_port(id)`.
struct RespCluster {
    dir: PathBuf,
    base_port: u16,
    shards: u32,
    nodes: Vec<Option<Child>>,
    /// What `connect` logs in with: `user:token`, or `:token`.
    login: String,
    /// More `node serve` arguments.
    extra: Vec<String>,
}

impl RespCluster {
    fn start(base_port: u16, shards: u32) -> RespCluster {
        RespCluster::start_with(base_port, shards, format!(":{TOKEN}"), |_| Vec::new())
    }

    /// A cluster with `extra(dir)` more arguments to every node, whose
    /// `connect` logs in as `login`.
    fn start_with(
        base_port: u16,
        shards: u32,
        login: String,
        extra: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> RespCluster {
        let dir = std::env::temp_dir().join(format!("node-resp-{}-{base_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let extra = extra(&dir);
        let mut cluster = RespCluster { dir, base_port, shards, nodes: vec![None, None, None], login, extra };
        for id in 1..=3 {
            cluster.nodes[id as usize - 1] = Some(cluster.spawn(id));
        }
        cluster
    }

    fn resp_port(&self, id: u64) -> u16 {
        self.base_port + 50 + id as u16
    }

    fn metrics_port(&self, id: u64) -> u16 {
        self.base_port + 60 + id as u16
    }

    fn spawn(&self, id: u64) -> Child {
        let port = |id: u64, offset: u16| self.base_port + 2 * (id as u16 - 1) + offset;
        let peers: Vec<String> = (1..=3).map(|peer| format!("{peer}=127.0.0.1:{}", port(peer, 0))).collect();
        Command::new(env!("CARGO_BIN_EXE_node"))
            .args(["serve", "--node-id", &id.to_string(), "--shards", &self.shards.to_string()])
            .args(["--peer-addr", &format!("127.0.0.1:{}", port(id, 0))])
            .args(["--client-addr", &format!("127.0.0.1:{}", port(id, 1))])
            .args(["--resp-addr", &format!("127.0.0.1:{}", self.resp_port(id))])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.metrics_port(id))])
            .args(["--peers", &peers.join(",")])
            .args(["--data-dir", &self.dir.join(format!("node-{id}")).display().to_string()])
            .args(["--log-level", "error", "--pin-cores", "false"])
            .args(&self.extra)
            .env("NODE_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .spawn()
            .expect("start node")
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An authenticated connection to node `id`'s front door, once it
    /// accepts one.
    fn connect(&self, id: u64) -> Connection {
        let url = format!("redis://{}@127.0.0.1:{}/", self.login, self.resp_port(id));
        let client = redis::Client::open(url).expect("a valid URL");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(connection) => {
                    connection.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    return connection;
                }
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("node {id}'s front door: {error}"),
            }
        }
    }

    /// Node `id`'s Raft role on shard 0, from `INFO`.
    fn raft_role(&self, id: u64) -> Option<String> {
        let info: String = redis::cmd("INFO").query(&mut self.connect(id)).ok()?;
        info.lines().find_map(|line| line.strip_prefix("raft_role:")).map(str::to_string)
    }

    /// Waits until every shard has a leader (a write through each node
    /// succeeds) and returns shard 0's leader.
    fn wait_ready(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in 1..=3 {
            let mut connection = self.connect(id);
            while let Err(error) = redis::cmd("SET").arg(format!("ready-{id}")).arg(1).query::<()>(&mut connection) {
                assert!(Instant::now() < deadline, "node {id} takes no write: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        (1..=3).find(|id| self.raft_role(*id).as_deref() == Some("leader")).expect("shard 0 has a leader")
    }
}

impl Drop for RespCluster {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn error_text<T: std::fmt::Debug>(result: RedisResult<T>) -> String {
    match result {
        Ok(value) => panic!("expected an error reply, got {value:?}"),
        Err(error) => error.to_string(),
    }
}

/// Every command of the front door, through each node (the leader and both
/// followers), with keys on both shards.
#[test]
fn every_command_through_every_node() {
    let cluster = RespCluster::start(28_100, 2);
    let leader = cluster.wait_ready();
    for id in 1..=3 {
        let role = if id == leader { "leader" } else { "follower" };
        let mut c = cluster.connect(id);
        let key = |name: &str| format!("{name}-via-{id}");
        let ping: String = redis::cmd("PING").query(&mut c).unwrap();
        assert_eq!(ping, "PONG");
        let echo: String = redis::cmd("ECHO").arg("hi there").query(&mut c).unwrap();
        assert_eq!(echo, "hi there");
        let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();
        assert!(error_text(redis::cmd("SELECT").arg(1).query::<()>(&mut c)).contains("DB index is out of range"));

        // SET and its options, SETNX, GETSET, GET, STRLEN, APPEND.
        let _: () = redis::cmd("SET").arg(key("s")).arg("v1").query(&mut c).unwrap();
        let value: String = redis::cmd("GET").arg(key("s")).query(&mut c).unwrap();
        assert_eq!(value, "v1", "{role} reads its own write");
        let nx: Option<String> = redis::cmd("SET").arg(key("s")).arg("v2").arg("NX").query(&mut c).unwrap();
        assert_eq!(nx, None, "SET NX on a present key writes nothing");
        let xx: Option<String> = redis::cmd("SET").arg(key("absent")).arg("v").arg("XX").query(&mut c).unwrap();
        assert_eq!(xx, None, "SET XX on an absent key writes nothing");
        let old: Option<String> = redis::cmd("SET").arg(key("s")).arg("v3").arg("GET").query(&mut c).unwrap();
        assert_eq!(old.as_deref(), Some("v1"));
        let setnx: i64 = redis::cmd("SETNX").arg(key("n1")).arg("a").query(&mut c).unwrap();
        let setnx_again: i64 = redis::cmd("SETNX").arg(key("n1")).arg("b").query(&mut c).unwrap();
        assert_eq!((setnx, setnx_again), (1, 0));
        let previous: Option<String> = redis::cmd("GETSET").arg(key("n1")).arg("c").query(&mut c).unwrap();
        assert_eq!(previous.as_deref(), Some("a"));
        let length: i64 = redis::cmd("APPEND").arg(key("n1")).arg("def").query(&mut c).unwrap();
        assert_eq!(length, 4);
        let strlen: i64 = redis::cmd("STRLEN").arg(key("n1")).query(&mut c).unwrap();
        assert_eq!(strlen, 4);
        let missing: Option<String> = redis::cmd("GET").arg(key("absent")).query(&mut c).unwrap();
        assert_eq!(missing, None);

        // Counters, applied in the state machine.
        let counter = key("counter");
        let values: Vec<i64> = [("INCR", None), ("INCRBY", Some(10)), ("DECR", None), ("DECRBY", Some(5))]
            .iter()
            .map(|(name, by)| {
                let mut command = redis::cmd(name);
                command.arg(&counter);
                if let Some(by) = by {
                    command.arg(*by);
                }
                command.query(&mut c).unwrap()
            })
            .collect();
        assert_eq!(values, vec![1, 11, 10, 5]);
        let not_integer = error_text(redis::cmd("INCR").arg(key("s")).query::<i64>(&mut c));
        assert!(not_integer.contains("not an integer"), "{not_integer}");
        let _: () = redis::cmd("SET").arg(key("max")).arg(i64::MAX).query(&mut c).unwrap();
        assert!(error_text(redis::cmd("INCR").arg(key("max")).query::<i64>(&mut c)).contains("overflow"));

        // Multi-key commands across both shards.
        let pairs: Vec<(String, String)> = (0..8).map(|i| (key(&format!("m{i}")), format!("value-{i}"))).collect();
        let _: () = redis::cmd("MSET").arg(&pairs).query(&mut c).unwrap();
        let keys: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys).arg(key("absent"));
        let got: Vec<Option<String>> = mget.query(&mut c).unwrap();
        let mut expected: Vec<Option<String>> = pairs.iter().map(|(_, v)| Some(v.clone())).collect();
        expected.push(None);
        assert_eq!(got, expected);
        // A key given twice keeps its last value, as in Redis.
        let _: () =
            redis::cmd("MSET").arg(key("twice")).arg("first").arg(key("twice")).arg("last").query(&mut c).unwrap();
        let twice: String = redis::cmd("GET").arg(key("twice")).query(&mut c).unwrap();
        assert_eq!(twice, "last");
        let _: i64 = redis::cmd("DEL").arg(key("twice")).query(&mut c).unwrap();
        let exists: i64 = redis::cmd("EXISTS").arg(&keys[..3]).arg(key("absent")).query(&mut c).unwrap();
        assert_eq!(exists, 3);
        let deleted: i64 = redis::cmd("DEL").arg(&keys[..5]).arg(key("absent")).query(&mut c).unwrap();
        assert_eq!(deleted, 5);
        let exists: i64 = redis::cmd("EXISTS").arg(&keys).query(&mut c).unwrap();
        assert_eq!(exists, 3);

        // Connection commands.
        let _: () = redis::cmd("CLIENT").arg("SETNAME").arg(format!("tester-{id}")).query(&mut c).unwrap();
        let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut c).unwrap();
        assert_eq!(name, format!("tester-{id}"));
        let client_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
        assert!(client_id > 0);
        let info: String = redis::cmd("INFO").query(&mut c).unwrap();
        for field in ["role=", "term=", "commit=", "applied=", "leader="] {
            assert!(info.contains(field), "INFO has {field}: {info}");
        }
        assert!(info.contains(&format!("raft_role:{role}")), "{info}");
        // A section alone, as Redis answers it (tools read the role with
        // `INFO replication`); an unknown section is empty.
        let replication: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
        assert!(replication.contains("role:master") && !replication.contains("# Server"), "{replication}");
        let server: String = redis::cmd("INFO").arg("server").query(&mut c).unwrap();
        assert!(server.starts_with("# Server") && !server.contains("# Raft"), "{server}");
        let nothing: String = redis::cmd("INFO").arg("bogus").query(&mut c).unwrap();
        assert_eq!(nothing, "");
        // Redis's key count line, which `redis-cli --stat` reads (there was
        // no Keyspace section); at least the three keys left above.
        let keyspace: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
        let keys: u64 = keyspace
            .strip_prefix("# Keyspace\r\ndb0:keys=")
            .and_then(|rest| rest.split(',').next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no db0 line: {keyspace:?}"));
        assert!(keys >= 3 && keyspace.ends_with(",expires=0,avg_ttl=0\r\n"), "{keyspace:?}");
        let maxclients: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxclients").query(&mut c).unwrap();
        assert_eq!(maxclients, ["maxclients", "1024"]);
        let commands: Vec<Value> = redis::cmd("COMMAND").query(&mut c).unwrap();
        assert!(commands.len() >= 25, "COMMAND lists every command");
        let docs: Value = redis::cmd("COMMAND").arg("DOCS").arg("get").query(&mut c).unwrap();
        // RESP2 sends the map as a flat array: the name, then its docs.
        assert!(
            matches!(&docs, Value::Array(entries) if entries.len() == 2 && entries[0] == Value::BulkString(b"get".to_vec())),
            "{docs:?}"
        );
        let config: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("append*").query(&mut c).unwrap();
        assert_eq!(config, vec!["appendfsync", "always", "appendonly", "yes"]);

        // Errors: unknown command, wrong arity, bad options, empty keys.
        let unknown = error_text(redis::cmd("FLUSHALL").query::<()>(&mut c));
        assert!(unknown.contains("unknown command 'FLUSHALL'"), "{unknown}");
        let arity = error_text(redis::cmd("GET").query::<()>(&mut c));
        assert!(arity.contains("wrong number of arguments for 'get'"), "{arity}");
        assert!(error_text(redis::cmd("SET").arg("k").arg("v").arg("EX").arg(5).query::<()>(&mut c))
            .contains("not supported"));
        assert!(error_text(redis::cmd("SET").arg("k").arg("v").arg("NX").arg("XX").query::<()>(&mut c))
            .contains("syntax error"));
        // Repeated options are taken, as Redis 7 takes them.
        let _: () = redis::cmd("SET").arg(key("twice-opt")).arg("1").query(&mut c).unwrap();
        let old: Option<String> =
            redis::cmd("SET").arg(key("twice-opt")).arg("2").arg("GET").arg("XX").arg("GET").query(&mut c).unwrap();
        assert_eq!(old.as_deref(), Some("1"));
        let _: i64 = redis::cmd("DEL").arg(key("twice-opt")).query(&mut c).unwrap();
        assert!(error_text(redis::cmd("GET").arg("").query::<()>(&mut c)).contains("empty keys"));
        let long_key = "k".repeat(65 * 1024);
        assert!(error_text(redis::cmd("GET").arg(&long_key).query::<()>(&mut c)).contains("exceeds the limit"));

        // RESP3 through HELLO 3, then a null in RESP3.
        let hello: Value = redis::cmd("HELLO").arg(3).query(&mut c).unwrap();
        let Value::Map(fields) = hello else { panic!("HELLO 3 answers a map: {hello:?}") };
        assert!(fields.contains(&(Value::BulkString(b"proto".to_vec()), Value::Int(3))), "{fields:?}");
        let null: Value = redis::cmd("GET").arg(key("absent")).query(&mut c).unwrap();
        assert_eq!(null, Value::Nil);
        let _: () = redis::cmd("QUIT").query(&mut c).unwrap();
    }
    // Every write is visible from every node (linearizable reads).
    let size: i64 = redis::cmd("DBSIZE").query(&mut cluster.connect(1)).unwrap();
    let size_again: i64 = redis::cmd("DBSIZE").query(&mut cluster.connect(3)).unwrap();
    assert_eq!(size, size_again);
    assert_eq!(size, 3 * (1 + 1 + 1 + 1 + 3) + 3, "s, n1, counter, max and 3 m-keys per node; 3 ready keys");
}

/// Authentication, pipelines in order, atomic increments from many
/// clients, and bad input that closes only its own connection.
#[test]
fn auth_pipelines_atomicity_and_bad_input() {
    let cluster = RespCluster::start(28_200, 1);
    cluster.wait_ready();
    let port = cluster.resp_port(2);
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut anonymous = anonymous.get_connection().unwrap();
    assert!(error_text(redis::cmd("GET").arg("k").query::<()>(&mut anonymous)).contains("NOAUTH"));
    assert!(error_text(redis::cmd("AUTH").arg("wrong").query::<()>(&mut anonymous)).contains("WRONGPASS"));
    assert!(error_text(redis::cmd("AUTH").arg("alice").arg(TOKEN).query::<()>(&mut anonymous)).contains("WRONGPASS"));
    let _: () = redis::cmd("AUTH").arg("default").arg(TOKEN).query(&mut anonymous).unwrap();

    // A pipeline of increments of one key and reads of it keeps its order.
    let mut c = cluster.connect(3);
    let mut pipe = redis::pipe();
    for _ in 0..50 {
        pipe.cmd("INCR").arg("pipelined").cmd("GET").arg("pipelined");
    }
    let answers: Vec<i64> = pipe.query(&mut c).unwrap();
    let expected: Vec<i64> = (1..=50).flat_map(|n| [n, n]).collect();
    assert_eq!(answers, expected, "each GET sees the INCR before it");

    // Concurrent INCRs through all three nodes: none is lost or doubled.
    let threads: Vec<_> = (1..=3u64)
        .map(|id| {
            let mut connection = cluster.connect(id);
            std::thread::spawn(move || {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd("INCR").arg("shared");
                }
                for _ in 0..3 {
                    let _: Vec<i64> = pipe.query(&mut connection).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let total: i64 = redis::cmd("GET").arg("shared").query(&mut c).unwrap();
    assert_eq!(total, 900);

    // A malformed stream gets the protocol error and its connection closes;
    // other connections are unaffected.
    for garbage in [&b"*1\r\n$abc\r\n"[..], b"*2\r\n$3\r\nGET\r\n:5\r\n", b"*99999999\r\n"] {
        let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        raw.read_to_end(&mut answer).expect("the node closes the connection");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("-ERR Protocol error"), "{garbage:?}: {answer}");
    }
    // A bulk string longer than a shard takes is refused before it is read.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n").unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("invalid bulk length"));
    // The same with the whole value sent (as redis-cli -x does): the client
    // finishes sending and reads the error; the node closed at once before,
    // and the reset made the client's send fail (redis-cli died of SIGPIPE).
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n".to_vec();
    command.resize(command.len() + (8 << 20), b'x');
    command.extend_from_slice(b"\r\n");
    raw.write_all(&command).expect("the whole command is sent: the node reads it before it closes");
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).expect("the node closes the connection after the error");
    assert!(String::from_utf8_lossy(&answer).contains("invalid bulk length"));
    let still: i64 = redis::cmd("GET").arg("shared").query(&mut c).unwrap();
    assert_eq!(still, 900, "the other connection still works");
}

/// A pipeline's writes of one key keep their order and go to the log as
/// one batch: 200 APPENDs through a follower answer 1..=200 in order and
/// leave the letters in the pipeline's order, in far fewer log entries than
/// writes (one per command before batching). A key given twice in an MSET
/// keeps its last value, and writes of several shards in one pipeline each
/// land on their own shard.
#[test]
fn pipelined_writes_are_batched_in_order() {
    let cluster = RespCluster::start(28_900, 2);
    let leader = cluster.wait_ready();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut c = cluster.connect(follower);
    let letters: Vec<u8> = (0..200).map(|n| b'a' + (n % 26) as u8).collect();
    let shard_of_key = net::kv::shard_for_key(b"ordered", 2);
    let commit = |c: &mut Connection| -> u64 {
        let info: String = redis::cmd("INFO").query(c).unwrap();
        let line = info.lines().find(|line| line.starts_with(&format!("shard{shard_of_key}:"))).unwrap().to_string();
        line.split(',').find_map(|part| part.strip_prefix("commit=")).unwrap().parse().unwrap()
    };
    let before = commit(&mut c);
    let mut pipe = redis::pipe();
    for letter in &letters {
        pipe.cmd("APPEND").arg("ordered").arg(&[*letter][..]);
    }
    let lengths: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(lengths, (1..=200).collect::<Vec<i64>>(), "each APPEND sees the ones before it");
    let after = commit(&mut c);
    let value: Vec<u8> = redis::cmd("GET").arg("ordered").query(&mut c).unwrap();
    assert_eq!(value, letters, "the pipeline's order");
    eprintln!("200 pipelined APPENDs took {} log entries", after - before);
    assert!(after - before < 50, "200 pipelined writes took {} log entries: not batched", after - before);

    let _: () = redis::cmd("MSET")
        .arg("twice")
        .arg("first")
        .arg("other")
        .arg("x")
        .arg("twice")
        .arg("last")
        .query(&mut c)
        .unwrap();
    let twice: String = redis::cmd("GET").arg("twice").query(&mut c).unwrap();
    assert_eq!(twice, "last");
    let mut pipe = redis::pipe();
    for n in 0..64 {
        pipe.cmd("SET").arg(format!("spread-{n}")).arg(n);
    }
    let _: () = pipe.query(&mut c).unwrap();
    for n in 0..64 {
        let stored: i64 = redis::cmd("GET").arg(format!("spread-{n}")).query(&mut cluster.connect(leader)).unwrap();
        assert_eq!(stored, n);
    }
}

/// Per-user tokens (`--client-tokens`) on the front door: `AUTH user
/// token` logs in as that user, whose roles decide what it may run (a
/// reader's `SET` gets `NOPERM`); a token under another user's name, and
/// the cluster token (no longer a client credential once a token file is
/// given), get `WRONGPASS`.
#[test]
fn per_user_tokens_and_roles() {
    const WRITER: &str = "writer-token-0123456789";
    const READER: &str = "reader-token-0123456789";
    let cluster = RespCluster::start_with(29_000, 1, format!("writer:{WRITER}"), |dir| {
        let file = dir.join("client-tokens");
        std::fs::write(&file, format!("writer:read,write:{WRITER}\nreader:read:{READER}\n")).unwrap();
        vec!["--client-tokens".into(), file.display().to_string()]
    });
    cluster.wait_ready();
    let mut writer = cluster.connect(1);
    let _: () = redis::cmd("SET").arg("owned").arg("by-writer").query(&mut writer).unwrap();

    let port = cluster.resp_port(2);
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
    for (user, token) in [("reader", WRITER), ("default", TOKEN), ("writer", READER)] {
        let refused = error_text(redis::cmd("AUTH").arg(user).arg(token).query::<()>(&mut c));
        assert!(refused.contains("WRONGPASS"), "{user}: {refused}");
    }
    assert!(error_text(redis::cmd("AUTH").arg(TOKEN).query::<()>(&mut c)).contains("WRONGPASS"));
    let _: () = redis::cmd("AUTH").arg("reader").arg(READER).query(&mut c).unwrap();
    let value: String = redis::cmd("GET").arg("owned").query(&mut c).unwrap();
    assert_eq!(value, "by-writer");
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("raft_role:"), "{info}");
    let refused = error_text(redis::cmd("SET").arg("owned").arg("by-reader").query::<()>(&mut c));
    assert!(refused.to_uppercase().contains("NOPERM") && refused.contains("reader"), "{refused}");
    let refused = error_text(redis::cmd("INCR").arg("counter").query::<()>(&mut c));
    assert!(refused.to_uppercase().contains("NOPERM"), "{refused}");
    // A token alone names its user.
    let _: () = redis::cmd("AUTH").arg(WRITER).query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg("owned").arg("again").query(&mut c).unwrap();
    let value: String = redis::cmd("GET").arg("owned").query(&mut writer).unwrap();
    assert_eq!(value, "again");
}

/// A client writes through a follower while the leader is killed: writes
/// keep succeeding once a new leader is elected, every acknowledged INCR
/// took effect once (the answers are strictly increasing), and nothing
/// acknowledged is lost.
#[test]
fn leader_killed_mid_stream() {
    let mut cluster = RespCluster::start(28_300, 1);
    let leader = cluster.wait_ready();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let survivor = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let mut c = cluster.connect(follower);
    let mut answers = Vec::new();
    let mut unknown = 0;
    let start = Instant::now();
    let mut killed = false;
    while answers.len() < 400 && start.elapsed() < Duration::from_secs(60) {
        if !killed && answers.len() == 150 {
            cluster.kill(leader);
            killed = true;
        }
        match redis::cmd("INCR").arg("ledger").query::<i64>(&mut c) {
            Ok(value) => answers.push(value),
            Err(error) => {
                assert!(error.to_string().contains("TRYAGAIN"), "only 'try again' while leadership moves: {error}");
                unknown += 1;
            }
        }
    }
    eprintln!("leader {leader} killed after 150 INCRs; {unknown} outcomes unknown; {:?} in all", start.elapsed());
    assert!(killed && answers.len() == 400, "writes continue after the kill ({} acknowledged)", answers.len());
    assert!(answers.windows(2).all(|pair| pair[0] < pair[1]), "each INCR applied once: {answers:?}");
    let last = *answers.last().unwrap();
    assert!(last >= 400, "every acknowledged INCR counted: {last}");
    assert!(last <= 400 + unknown, "no INCR applied twice: last {last}, {unknown} unknown outcomes");
    let stored: i64 = redis::cmd("GET").arg("ledger").query(&mut cluster.connect(survivor)).unwrap();
    assert_eq!(stored, last, "the surviving nodes hold every acknowledged INCR");
    // Alone, the survivor answers a read it cannot serve with TRYAGAIN,
    // and does not say a write may have been applied.
    cluster.kill(follower);
    let error = error_text(redis::cmd("GET").arg("ledger").query::<i64>(&mut cluster.connect(survivor)));
    assert!(error.to_uppercase().contains("TRYAGAIN") && error.contains("no answer"), "{error}");
    assert!(!error.contains("write"), "a read's TRYAGAIN speaks of a write: {error}");
}

/// Pipelines of INCRs from a connection to each follower while the leader
/// is killed: every answer is a distinct value (no INCR applied twice, none
/// answered twice), and the counter ends at least at the number
/// acknowledged and at most that plus the outcomes left unknown.
#[test]
fn leader_killed_under_pipelined_writes() {
    let mut cluster = RespCluster::start(28_600, 1);
    let leader = cluster.wait_ready();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writers: Vec<_> = followers
        .iter()
        .map(|id| {
            let mut connection = cluster.connect(*id);
            let (killed, rounds) = (killed.clone(), rounds.clone());
            std::thread::spawn(move || {
                // Writes until ten pipelines after the kill have been
                // answered: the kill then surely lands mid-stream, however
                // fast the writes go (a bound of rounds keeps a stuck
                // cluster from looping forever).
                let (mut values, mut unknown, mut rounds_after_kill) = (Vec::new(), 0u64, 0);
                for _ in 0..5_000 {
                    let after_kill = killed.load(std::sync::atomic::Ordering::SeqCst);
                    let mut pipe = redis::pipe();
                    for _ in 0..20 {
                        pipe.cmd("INCR").arg("pipelined-ledger");
                    }
                    match pipe.query::<Vec<i64>>(&mut connection) {
                        Ok(answers) => values.extend(answers),
                        Err(error) => {
                            assert!(error.to_string().contains("TRYAGAIN"), "{error}");
                            unknown += 20;
                        }
                    }
                    rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if after_kill {
                        rounds_after_kill += 1;
                        if rounds_after_kill == 10 {
                            break;
                        }
                    }
                }
                (values, unknown, rounds_after_kill)
            })
        })
        .collect();
    // Killed once both writers are well under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rounds.load(std::sync::atomic::Ordering::SeqCst) < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.kill(leader);
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut values = Vec::new();
    let mut unknown = 0;
    for writer in writers {
        let (answers, lost, rounds_after_kill) = writer.join().unwrap();
        assert!(rounds_after_kill > 0, "the writer was still writing when the leader died");
        values.extend(answers);
        unknown += lost;
    }
    let acknowledged = values.len() as i64;
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len() as i64, acknowledged, "every INCR answer is a distinct value");
    let stored: i64 = redis::cmd("GET").arg("pipelined-ledger").query(&mut cluster.connect(followers[0])).unwrap();
    eprintln!("{acknowledged} INCRs acknowledged, {unknown} unknown, counter {stored}");
    assert!(acknowledged >= 600, "most writes succeed across the failover: {acknowledged}");
    assert!(stored >= acknowledged && stored <= acknowledged + unknown as i64, "{stored}");
    assert!(*values.last().unwrap() <= stored);
}

/// `redis-benchmark`, unchanged, against a follower: no errors, and every
/// INCR it sent was applied exactly once.
#[test]
fn redis_benchmark_runs_clean() {
    let Ok(version) = Command::new("redis-benchmark").arg("--version").output() else {
        eprintln!("SKIPPED: redis-benchmark is not installed (Debian: apt-get install redis-tools)");
        return;
    };
    assert!(version.status.success());
    let cluster = RespCluster::start(28_400, 1);
    let leader = cluster.wait_ready();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let requests = 2_000;
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &cluster.resp_port(follower).to_string(), "-a", TOKEN])
        .args(["-t", "set,get,incr,mset", "-c", "50", "-P", "16", "-n", &requests.to_string(), "-q"])
        .output()
        .expect("redis-benchmark runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "redis-benchmark failed: {stdout} {stderr}");
    assert!(!stdout.to_lowercase().contains("error") && !stderr.to_lowercase().contains("error"), "{stdout} {stderr}");
    for test in ["SET", "GET", "INCR", "MSET"] {
        assert!(stdout.contains(&format!("{test}:")) || stdout.contains(&format!("{test} (")), "{test}: {stdout}");
    }
    let counter: i64 = redis::cmd("GET").arg("counter:__rand_int__").query(&mut cluster.connect(leader)).unwrap();
    assert_eq!(counter, requests, "every INCR once");
}

/// One sample of an exposition: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of an OpenMetrics text exposition.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    // OpenMetrics' escaped-string: a help text holds `"` and `\` only as
    // `\"` and `\\` (a strict parser refuses the exposition otherwise).
    for help in text.lines().filter_map(|line| line.strip_prefix("# HELP ")) {
        let mut escaped = false;
        for character in help.chars() {
            match (escaped, character) {
                (false, '\\') => escaped = true,
                (false, '"') => panic!("an unescaped quote in a help text: {help}"),
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, other) => panic!("a bad escape \\{other} in a help text: {help}"),
                (false, _) => {}
            }
        }
        assert!(!escaped, "a help text ends in a backslash: {help}");
    }
    let mut samples = Vec::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = rest
                    .split(',')
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                        (key.to_string(), value.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        samples.push((name, labels, value));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(found, found_labels, _)| {
            found == name && labels.iter().all(|(key, value)| found_labels.iter().any(|(k, v)| k == key && v == value))
        })
        .map(|(_, _, value)| *value)
}

/// `/readyz` is 503 while a node knows no leader and 200 once it does and
/// has caught up; `/metrics` parses and shows one leader, agreeing terms,
/// the stage histograms in seconds and the front door's connections.
#[test]
fn metrics_and_health_endpoints() {
    let mut cluster = RespCluster::start(28_500, 2);
    // Node 1 alone first: it answers /livez but is not ready.
    cluster.kill(2);
    cluster.kill(3);
    let port = cluster.metrics_port(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        if let Some(answer) = http_get(port, "/livez") {
            break answer;
        }
        assert!(Instant::now() < deadline, "no /livez answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(live.0, 200);
    let (code, reason) = http_get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "alone, node 1 knows no leader: {reason}");
    assert!(reason.contains("knows no leader"), "{reason}");
    assert_eq!(http_get(port, "/nothing-here").unwrap().0, 404);
    for id in 2..=3 {
        cluster.nodes[id as usize - 1] = Some(cluster.spawn(id));
    }
    cluster.wait_ready();
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(cluster.metrics_port(id), "/readyz").map(|answer| answer.0) != Some(200) {
            assert!(Instant::now() < deadline, "node {id} never ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A scraper that asks for the Prometheus text format 0.0.4 gets it
    // (everyone got OpenMetrics, whose counters a 0.0.4 parser misreads).
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", cluster.metrics_port(1))).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: text/plain;version=0.0.4;q=0.9,*/*;q=0.1\r\n\r\n";
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        assert!(body.contains("# TYPE raft_node_leader_changes_total counter\n"), "{body}");
        assert!(!body.contains("# EOF") && !body.contains("# UNIT"), "{body}");
    }
    let _resp_client = cluster.connect(2);
    let scrapes: Vec<_> = (1..=3)
        .map(|id| {
            let (code, text) = http_get(cluster.metrics_port(id), "/metrics").unwrap();
            assert_eq!(code, 200);
            parse_exposition(&text)
        })
        .collect();
    for shard in ["0", "1"] {
        let leaders = scrapes
            .iter()
            .filter(|samples| sample(samples, "raft_node_role", &[("shard", shard), ("role", "leader")]) == Some(1.0))
            .count();
        assert_eq!(leaders, 1, "shard {shard} has one leader");
        // Every role is a series on every node, 1 for the one it has.
        for samples in &scrapes {
            let roles: Vec<_> = ["follower", "precandidate", "candidate", "leader"]
                .into_iter()
                .map(|role| sample(samples, "raft_node_role", &[("shard", shard), ("role", role)]))
                .collect();
            assert!(roles.iter().all(|value| matches!(value, Some(v) if *v == 0.0 || *v == 1.0)), "{roles:?}");
            assert_eq!(roles.iter().flatten().sum::<f64>(), 1.0, "shard {shard}: one role at a time: {roles:?}");
        }
        let terms: Vec<_> =
            scrapes.iter().map(|samples| sample(samples, "raft_node_term", &[("shard", shard)]).unwrap()).collect();
        assert!(terms.iter().all(|term| *term == terms[0] && *term >= 1.0), "{terms:?}");
        // Every node's links to the two others are up.
        for (index, samples) in scrapes.iter().enumerate() {
            let me = index as u64 + 1;
            for peer in (1..=3u64).filter(|&peer| peer != me) {
                let up = sample(samples, "raft_node_peer_link_up", &[("shard", shard), ("peer", &peer.to_string())]);
                assert_eq!(up, Some(1.0), "node {me}, shard {shard}: the link to node {peer}");
            }
        }
        for samples in &scrapes {
            let applied = sample(samples, "raft_node_applied_index", &[("shard", shard)]).unwrap();
            assert!(
                applied >= 1.0,
                "shard {shard}: applied {applied} on a node; applied on each: {:?}",
                scrapes.iter().map(|s| sample(s, "raft_node_applied_index", &[("shard", shard)])).collect::<Vec<_>>()
            );
            assert!(sample(samples, "raft_node_leader_changes_total", &[("shard", shard)]).unwrap() >= 1.0);
        }
    }
    // Node 2 took the ready-2 write through its front door: its total stage
    // histogram on the key's shard counts it, buckets rise to +Inf = count.
    let samples = &scrapes[1];
    assert!(sample(samples, "raft_node_connections", &[("listener", "resp")]).unwrap() >= 1.0);
    let mut checked = 0;
    for shard in ["0", "1"] {
        let count = sample(samples, "raft_node_stage_duration_seconds_count", &[("shard", shard), ("stage", "apply")]);
        let Some(count) = count.filter(|count| *count > 0.0) else { continue };
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|(name, labels, _)| {
                name == "raft_node_stage_duration_seconds_bucket"
                    && labels.contains(&("shard".to_string(), shard.to_string()))
                    && labels.contains(&("stage".to_string(), "apply".to_string()))
            })
            .map(|(_, _, value)| *value)
            .collect();
        assert_eq!(buckets.len(), 18, "17 bounds and +Inf");
        assert!(buckets.windows(2).all(|pair| pair[0] <= pair[1]), "cumulative: {buckets:?}");
        assert_eq!(*buckets.last().unwrap(), count);
        let le = |bound: &str| {
            sample(
                samples,
                "raft_node_stage_duration_seconds_bucket",
                &[("shard", shard), ("stage", "apply"), ("le", bound)],
            )
        };
        assert_eq!(le("+Inf"), Some(count));
        assert!(le("0.001").is_some(), "bounds in seconds");
        checked += 1;
    }
    assert!(checked > 0, "some shard applied entries on node 2");
    assert!(sample(samples, "raft_node_log_bytes_written_total", &[("shard", "0")]).unwrap() > 0.0);
    // Last: while node 1 ran alone, this kept it alone long enough that its
    // links to the others were in their reconnect backoff (up to 2 s) when
    // they started, and its first acknowledgements came late.
    idle_connections_neither_starve_the_probes_nor_stay_open(cluster.metrics_port(1));
}

/// More idle connections than the endpoint serves at once: `/livez` still
/// answers (16 idle ones made it fail for the request timeout, a liveness
/// probe's restart), `HEAD` is answered without a body, and the endpoint
/// closes the idle ones itself (their descriptors stayed open for as long as
/// the clients kept them).
fn idle_connections_neither_starve_the_probes_nor_stay_open(port: u16) {
    use std::io::{Read, Write};
    let mut idle: Vec<std::net::TcpStream> =
        (0..20).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = http_get(port, "/livez").expect("/livez answers with 20 idle connections open");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let mut head = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    head.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    head.write_all(b"HEAD /livez HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    head.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n"), "{answer:?}");
    // Every idle connection is closed by the endpoint: evicted by the newer
    // ones, or at the request timeout (5 s).
    for (index, stream) in idle.iter_mut().enumerate() {
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(
            matches!(read, Ok(0) | Err(_)) && !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "idle connection {index} was not closed: {read:?}"
        );
    }
}
