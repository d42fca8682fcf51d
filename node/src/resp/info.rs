//! The front door's introspection commands: `COMMAND` (what `redis-cli`
//! and client libraries ask at start), `CONFIG GET` (what
//! `redis-benchmark` asks at start) and `INFO` (the shards' Raft state).

use bytes::Bytes;
use net::resp::Reply;

use super::commands::COMMANDS;
use super::Server;

/// The Redis version the front door claims in `HELLO` and `INFO`: the
/// command set and replies follow Redis 7.0's for the commands it serves.
pub const REDIS_VERSION: &str = "7.0.0";

fn bulk(text: impl Into<String>) -> Reply {
    Reply::Bulk(Bytes::from(text.into()))
}

fn is_write(name: &str) -> bool {
    matches!(name, "append" | "decr" | "decrby" | "del" | "getset" | "incr" | "incrby" | "mset" | "set" | "setnx")
}

fn is_keyed(name: &str) -> bool {
    COMMANDS.iter().any(|entry| entry.0 == name && entry.2 > 0)
}

/// One `COMMAND INFO` entry, in Redis 7's ten-field form.
fn command_entry(entry: &(&str, i64, i64, i64, i64)) -> Reply {
    let (name, arity, first, last, step) = *entry;
    let mut flags = Vec::new();
    if is_write(name) {
        flags.push(Reply::Simple(Bytes::from_static(b"write")));
    } else if is_keyed(name) || name == "dbsize" {
        flags.push(Reply::Simple(Bytes::from_static(b"readonly")));
    }
    flags.push(Reply::Simple(Bytes::from_static(b"fast")));
    Reply::Array(vec![
        bulk(name),
        Reply::Integer(arity),
        Reply::Set(flags),
        Reply::Integer(first),
        Reply::Integer(last),
        Reply::Integer(step),
        Reply::Set(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS
/// [name...]`.
pub fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(command_entry).collect());
    };
    let find = |name: &Bytes| COMMANDS.iter().find(|entry| entry.0.as_bytes().eq_ignore_ascii_case(name));
    match sub.to_ascii_lowercase().as_slice() {
        b"count" => Reply::Integer(COMMANDS.len() as i64),
        b"info" => Reply::Array(args[2..].iter().map(|name| find(name).map_or(Reply::Null, command_entry)).collect()),
        b"docs" => {
            let names: Vec<&(&str, i64, i64, i64, i64)> =
                if args.len() == 2 { COMMANDS.iter().collect() } else { args[2..].iter().filter_map(find).collect() };
            Reply::Map(
                names
                    .into_iter()
                    .map(|entry| {
                        let group = if is_keyed(entry.0) { "string" } else { "connection" };
                        let docs = Reply::Map(vec![
                            (bulk("summary"), bulk(format!("{} (raft-node RESP front door)", entry.0.to_uppercase()))),
                            (bulk("since"), bulk("1.0.0")),
                            (bulk("group"), bulk(group)),
                        ]);
                        (bulk(entry.0), docs)
                    })
                    .collect(),
            )
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND, COMMAND COUNT, COMMAND INFO, COMMAND DOCS.",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// The settings `CONFIG GET` reports: what a Redis tool asks about, answered
/// for this store (every write is synced on a majority before it is
/// answered, which is what `appendonly yes` with `appendfsync always` means
/// to a Redis user).
/// `maxclients` is the front door's connection bound, [`super::CONNECTIONS_MAX`]
/// (it answered nothing, so a tool took the Redis default).
const CONFIG: &[(&str, &str)] = &[
    ("appendfsync", "always"),
    ("appendonly", "yes"),
    ("databases", "1"),
    ("maxclients", "1024"),
    ("maxmemory", "0"),
    ("save", ""),
];

/// `CONFIG GET pattern...` (glob patterns with `*` and `?`); other `CONFIG`
/// subcommands are refused.
pub fn config(args: &[Bytes]) -> Reply {
    if !args[1].eq_ignore_ascii_case(b"get") {
        return Reply::error(format!(
            "ERR CONFIG {} is not supported by this store (CONFIG GET is)",
            String::from_utf8_lossy(&args[1]).to_uppercase()
        ));
    }
    if args.len() < 3 {
        return Reply::error("ERR wrong number of arguments for 'config|get' command");
    }
    let mut pairs = Vec::new();
    for (name, value) in CONFIG {
        if args[2..].iter().any(|pattern| glob(&pattern.to_ascii_lowercase(), name.as_bytes())) {
            pairs.push((bulk(*name), bulk(*value)));
        }
    }
    Reply::Map(pairs)
}

/// Whether `text` matches `pattern` (`*` any run, `?` one byte).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((byte, rest)) => text.first() == Some(byte) && glob(rest, &text[1..]),
    }
}

/// The sections `INFO` was asked for: none, `all`, `everything` or
/// `default` mean all of them; `replication` is the Raft section (it holds
/// the role); an unknown one adds nothing, as in Redis (whose `INFO
/// replication` returns that section alone: tools that read the role ask
/// for it).
pub struct Sections {
    server: bool,
    clients: bool,
    raft: bool,
    keyspace: bool,
}

impl Sections {
    pub fn asked(args: &[Bytes]) -> Sections {
        if args.is_empty() {
            return Sections { server: true, clients: true, raft: true, keyspace: true };
        }
        let mut sections = Sections { server: false, clients: false, raft: false, keyspace: false };
        for arg in args {
            match arg.to_ascii_lowercase().as_slice() {
                b"all" | b"everything" | b"default" => return Sections::asked(&[]),
                b"server" => sections.server = true,
                b"clients" => sections.clients = true,
                b"raft" | b"replication" => sections.raft = true,
                b"keyspace" => sections.keyspace = true,
                _ => {}
            }
        }
        sections
    }
}

/// `INFO [SECTION ...]`: the server, the front door, and each shard's Raft
/// state as this node sees it (role, term, commit, applied, leader).
pub async fn info(server: &Server, sections: Sections) -> Reply {
    let mut text = String::new();
    if sections.server {
        info_server(server, &mut text);
    }
    if sections.clients {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        info_clients(server, &mut text);
    }
    if sections.raft {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        info_raft(server, &mut text).await;
    }
    if sections.keyspace {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        info_keyspace(server, &mut text).await;
    }
    Reply::Bulk(Bytes::from(text))
}

/// Redis's `db0` line (omitted with no keys, as Redis does): tools such as
/// `redis-cli --stat` read the key count there. Keys never expire here.
async fn info_keyspace(server: &Server, text: &mut String) {
    text.push_str("# Keyspace\r\n");
    match super::commands::key_count(&server.backend).await {
        Ok(0) => {}
        Ok(keys) => text.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n")),
        Err(Reply::Error(error)) => {
            text.push_str(&format!("db0:error={}\r\n", String::from_utf8_lossy(&error).replace(['\r', '\n'], " ")))
        }
        Err(other) => text.push_str(&format!("db0:error={other:?}\r\n")),
    }
}

fn info_server(server: &Server, text: &mut String) {
    let backend = &server.backend;
    text.push_str("# Server\r\n");
    text.push_str(&format!("redis_version:{REDIS_VERSION}\r\n"));
    text.push_str(&format!("raft_node_version:{}\r\n", env!("CARGO_PKG_VERSION")));
    text.push_str(&format!("node_id:{}\r\n", backend.node_id()));
    text.push_str(&format!("tcp_port:{}\r\n", server.config.addr.port()));
    text.push_str(&format!("uptime_in_seconds:{}\r\n", server.started.elapsed().as_secs()));
}

fn info_clients(server: &Server, text: &mut String) {
    let backend = &server.backend;
    text.push_str("# Clients\r\n");
    text.push_str(&format!("connected_clients:{}\r\n", server.connections.get()));
    text.push_str(&format!("total_connections_received:{}\r\n", server.connections_total.get()));
    text.push_str(&format!("front_door_sessions:{}\r\n", backend.sessions_open()));
}

async fn info_raft(server: &Server, text: &mut String) {
    let backend = &server.backend;
    text.push_str("# Raft\r\n");
    text.push_str(&format!("shards:{}\r\n", backend.shard_count()));
    for shard in 0..backend.shard_count() {
        match backend.status(shard).await {
            Ok(status) => {
                let role = status["role"].as_str().unwrap_or("unknown").to_ascii_lowercase();
                if shard == 0 {
                    // Redis's own field says whether the server takes
                    // writes: every node does (a follower forwards them),
                    // so it is always `master`; `raft_role` is the truth.
                    text.push_str(&format!("role:master\r\nraft_role:{role}\r\n"));
                }
                text.push_str(&format!(
                    "shard{shard}:role={role},term={},commit={},applied={},leader={}\r\n",
                    status["term"], status["commit"], status["applied"], status["leader"]
                ));
            }
            Err(failed) => text.push_str(&format!("shard{shard}:error={}\r\n", failed.0.replace(['\r', '\n'], " "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_patterns() {
        assert!(glob(b"*", b"save"));
        assert!(glob(b"append*", b"appendfsync"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"save", b"saves"));
        assert!(!glob(b"x*", b"save"));
    }

    #[test]
    fn config_get_maxclients_is_the_connection_bound() {
        let args = [Bytes::from_static(b"config"), Bytes::from_static(b"get"), Bytes::from_static(b"maxc*")];
        let Reply::Map(pairs) = config(&args) else { panic!("CONFIG GET answers a map") };
        assert_eq!(pairs, vec![(bulk("maxclients"), bulk(super::super::CONNECTIONS_MAX.to_string()))]);
    }
}
