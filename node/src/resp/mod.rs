//! The Redis front door (`node serve --resp-addr`): `redis-cli`,
//! `redis-benchmark` and Redis client libraries use the key-value state
//! machine over RESP2, or RESP3 after `HELLO 3`.
//!
//! It runs on core 0's io_uring runtime, one task per connection, and
//! reaches every shard through the node's in-process request path
//! ([`crate::local::NodeHandle`], what a request that arrived at the wrong
//! core takes): no extra network hop, and the shards stay on their cores.
//! The codec is `net::resp`. Commands are in [`commands`]; how writes go
//! through exactly-once sessions is in [`backend`].
//!
//! # Pipelining and order
//!
//! A connection reads a batch of commands and runs them concurrently, up to
//! [`PIPELINE_MAX`] at once; it reads no more until their replies are
//! written (so a connection holds at most that many commands, plus one
//! read buffer bounded by the codec's limits). Replies go out in the order
//! of the commands. So that a pipeline means what it means to Redis, a
//! command waits for the commands before it to be answered when it would
//! otherwise race one of them: a read after a write, a write after a read,
//! and anything that changes the connection (`AUTH`, `HELLO`,
//! `CLIENT SETNAME`, `SELECT`, `QUIT`). Runs of reads go to the cluster
//! together. A run of writes, of any keys, goes as one batch per shard
//! (`net::kv` op 9): the state machine applies a batch's ops in their order
//! in one step, so writes of one key keep the pipeline's order, and the
//! log takes one entry (one session sequence) per batch instead of one per
//! command. That is how `redis-benchmark -P 16` writing one key gets more
//! than one write in flight per connection.
//!
//! # Bounds
//!
//! At most [`CONNECTIONS_MAX`] connections (more are answered with an error
//! and closed); per connection [`PIPELINE_MAX`] commands in flight and a
//! bulk string of at most the shard's command limit. Input that is not RESP
//! or breaks a bound gets the protocol error reply and closes that
//! connection only.

pub mod backend;
pub mod commands;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use net::resp::{Command, CommandParser, Reply, RespLimits, Version};
use net::{FrameIo, Stream};
use tokio_uring::net::TcpListener;

use crate::local::NodeHandle;
use backend::Backend;
use commands::{Classified, Finish, PlannedWrite, ReplyFuture};

/// Connections the front door serves at once; more are refused with an
/// error reply.
pub const CONNECTIONS_MAX: usize = 1024;
/// Commands of one connection in flight at once; the connection stops
/// reading at this bound until their replies are written.
pub const PIPELINE_MAX: usize = 256;
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 << 10;
/// How long a caller may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// What a plaintext client at a TLS RESP port is told before it is refused.
const PLAINTEXT_AT_TLS: &[u8] = b"-ERR this port needs TLS (redis-cli --tls --cacert CA.pem)\r\n";
/// Replies buffered before they are written even though more commands of
/// the batch wait (a pipeline of large `GET`s).
const OUTPUT_FLUSH_BYTES: usize = 256 << 10;

/// What the front door needs from the node's configuration.
#[derive(Clone, Debug)]
pub struct RespConfig {
    pub addr: SocketAddr,
    /// The node's credentials: `AUTH` presents a client token (the cluster
    /// token, or a user's from `--client-tokens`), reloaded with them.
    pub security: net::NodeSecurity,
    /// The largest command a shard accepts, in bytes: a bulk string beyond
    /// it is refused by the codec before it is buffered.
    pub command_bytes_max: usize,
}

/// The front door's figures for the metrics endpoint (same core).
#[derive(Clone, Default)]
pub struct RespStats {
    connections: Rc<Cell<usize>>,
}

impl RespStats {
    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }
}

/// The front door's shared state, on one core.
struct Server {
    config: RespConfig,
    backend: Rc<Backend>,
    limits: RespLimits,
    connections: Rc<Cell<usize>>,
    connections_total: Cell<u64>,
    next_client_id: Cell<u64>,
    started: Instant,
}

/// Binds the listener and spawns the accept loop on the current tokio-uring
/// runtime. The caller checked that the port is free (tokio-uring binds
/// with `SO_REUSEPORT`, so a taken port would not fail here).
pub fn spawn(config: RespConfig, handle: NodeHandle) -> std::io::Result<RespStats> {
    let listener = TcpListener::bind(config.addr)?;
    let command_bytes_max = config.command_bytes_max;
    let bulk_length_max = command_bytes_max + 1024;
    let limits =
        RespLimits { bulk_length_max, command_bytes_max: 2 * bulk_length_max + (64 << 10), ..RespLimits::default() };
    let stats = RespStats::default();
    let server = Rc::new(Server {
        config,
        backend: Rc::new(Backend::new(handle, command_bytes_max)),
        limits,
        connections: stats.connections.clone(),
        connections_total: Cell::new(0),
        next_client_id: Cell::new(1),
        started: Instant::now(),
    });
    tracing::info!(addr = %server.config.addr, "RESP front door listening");
    tokio_uring::spawn(accept_loop(listener, server));
    Ok(stats)
}

async fn accept_loop(listener: TcpListener, server: Rc<Server>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if server.connections.get() >= CONNECTIONS_MAX {
            let refusal = format!("-ERR max number of clients reached ({CONNECTIONS_MAX})\r\n").into_bytes();
            tokio_uring::spawn(async move {
                let _ = stream.write_all(refusal).await;
            });
            continue;
        }
        server.connections.set(server.connections.get() + 1);
        server.connections_total.set(server.connections_total.get() + 1);
        let id = server.next_client_id.get();
        server.next_client_id.set(id + 1);
        let server = server.clone();
        tokio_uring::spawn(async move {
            // TLS when the node has it (the client port's settings); the
            // handshake is bounded, so a silent caller does not hold a place.
            let security = &server.config.security;
            let accepted =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, security.accept_front_door(stream, PLAINTEXT_AT_TLS))
                    .await
                    .unwrap_or_else(|_| Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")));
            match accepted {
                Ok((stream, certified)) => {
                    let mut connection = Connection::new(server.clone(), id);
                    // A client certificate logs the connection in, as on the
                    // client port; `AUTH` may still switch users.
                    connection.identity = certified;
                    if let Err(reason) = connection.serve(&stream).await {
                        tracing::debug!(%remote, %reason, "RESP connection closed");
                        if reason.starts_with(PROTOCOL_ERROR) {
                            linger(&stream).await;
                        }
                    }
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                Err(reason) => tracing::info!(%remote, %reason, "RESP connection refused"),
            }
            server.connections.set(server.connections.get() - 1);
        });
    }
}

/// How `Connection::serve` says the client broke the protocol.
const PROTOCOL_ERROR: &str = "protocol error";
/// After a protocol error: how long, and how many bytes, the rest of what
/// the client is still sending is read and dropped before the socket closes.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// Lets a client that broke the protocol read the error: the error is
/// written, the socket's sending side closed, and what the client still
/// sends (the rest of a bulk string over the limit) read and dropped, within
/// bounds. Closed at once, the socket was reset under a client still
/// sending a value of 1 MiB or more, which got EPIPE (redis-cli died of
/// SIGPIPE) without the error.
async fn linger(stream: &Stream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut dropped = 0;
    let mut buffer = BytesMut::with_capacity(READ_SIZE);
    while dropped < LINGER_BYTES {
        buffer.clear();
        match tokio::time::timeout_at(deadline, stream.read_append(buffer)).await {
            Ok((Ok(read), returned)) if read > 0 => {
                dropped += read;
                buffer = returned;
            }
            _ => return,
        }
    }
}

/// One client connection's state.
struct Connection {
    server: Rc<Server>,
    id: u64,
    version: Version,
    /// Who `AUTH` said the client is; `None` before it.
    identity: Option<net::Identity>,
    name: Option<Bytes>,
    quit: bool,
    /// The commands in flight, in order.
    inflight: Vec<Slot>,
    /// The ops of the writes in flight, in order: sent at the next drain.
    writes: Vec<net::kv::KvOp>,
    /// Whether the commands in flight read (`false`) or write (`true`).
    writing: Option<bool>,
    output: BytesMut,
}

/// A command in flight.
enum Slot {
    /// A reply that will be ready (reads, and replies known at once).
    Reply(ReplyFuture),
    /// A write: the next `count` ops of the connection's writes.
    Write { count: usize, finish: Finish },
}

impl Connection {
    fn new(server: Rc<Server>, id: u64) -> Connection {
        Connection {
            server,
            id,
            version: Version::Resp2,
            identity: None,
            name: None,
            quit: false,
            inflight: Vec::new(),
            writes: Vec::new(),
            writing: None,
            output: BytesMut::new(),
        }
    }

    /// Serves until the client leaves, quits, or sends what is not RESP.
    async fn serve(&mut self, stream: &Stream) -> Result<(), String> {
        let parser = CommandParser::new(self.server.limits);
        let mut input = BytesMut::with_capacity(READ_SIZE);
        loop {
            loop {
                if self.inflight.len() >= PIPELINE_MAX || self.output.len() >= OUTPUT_FLUSH_BYTES {
                    self.drain().await;
                    self.flush(stream).await?;
                }
                match parser.next(&mut input) {
                    Ok(Some(command)) => {
                        self.handle(command).await;
                        if self.quit {
                            self.drain().await;
                            return self.flush(stream).await;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        self.drain().await;
                        Reply::error(error.redis_message()).encode(self.version, &mut self.output);
                        self.flush(stream).await?;
                        return Err(format!("{PROTOCOL_ERROR}: {error}"));
                    }
                }
            }
            self.drain().await;
            self.flush(stream).await?;
            if input.capacity() - input.len() < READ_SIZE / 2 {
                input.reserve(READ_SIZE);
            }
            let (result, buffer) = stream.read_append(input).await;
            input = buffer;
            match result {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Sends the writes in flight, waits for every reply in flight and
    /// encodes them in order.
    async fn drain(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        let mut futures = Vec::new();
        // In command order: `None` for the next future's reply, or a write's
        // op count and what makes its reply.
        let mut order = Vec::with_capacity(self.inflight.len());
        for slot in self.inflight.drain(..) {
            match slot {
                Slot::Reply(reply) => {
                    futures.push(reply);
                    order.push(None);
                }
                Slot::Write { count, finish } => order.push(Some((count, finish))),
            }
        }
        // The next pipeline is likely as long: its ops go into a vector of
        // this one's size instead of one regrown from empty.
        let next = Vec::with_capacity(self.writes.len());
        let writes = std::mem::replace(&mut self.writes, next);
        let backend = self.server.backend.clone();
        let written = async move {
            if writes.is_empty() {
                Vec::new()
            } else {
                backend.write_ops(writes).await
            }
        };
        let (replies, outcomes) = futures_util::future::join(join_all(futures), written).await;
        let (mut replies, mut outcomes) = (replies.into_iter(), outcomes.into_iter());
        for item in order {
            let reply = match item {
                None => replies.next().expect("a reply per future"),
                Some((count, finish)) => finish(outcomes.by_ref().take(count).collect()),
            };
            reply.encode(self.version, &mut self.output);
        }
        self.writing = None;
    }

    async fn flush(&mut self, stream: &Stream) -> Result<(), String> {
        if self.output.is_empty() {
            return Ok(());
        }
        let output = std::mem::take(&mut self.output);
        let result = match stream {
            // One write of the buffer, as before TLS existed here (no
            // segment list to allocate per flush).
            Stream::Plain(tcp) => tcp.write_all(output).await.0,
            Stream::Tls(_) => stream.write_segments(vec![output.freeze()]).await.0,
        };
        result.map_err(|error| error.to_string())
    }

    fn push_now(&mut self, reply: Reply) {
        self.inflight.push(Slot::Reply(Box::pin(std::future::ready(reply))));
    }

    async fn handle(&mut self, command: Command) {
        let Some((name, arity)) = commands::lookup(command.name()) else {
            self.push_now(commands::unknown_command(&command));
            return;
        };
        if !commands::arity_ok(arity, command.args.len()) {
            self.push_now(commands::wrong_arity(name));
            return;
        }
        if self.identity.is_none() && !matches!(name, "auth" | "hello" | "quit") {
            self.push_now(Reply::error("NOAUTH Authentication required."));
            return;
        }
        let classified = self.classify(name, &command.args);
        if let Some(refusal) = self.forbidden(name, &classified) {
            self.push_now(refusal);
            return;
        }
        match classified {
            Classified::Now(reply) => self.push_now(reply),
            Classified::Connection => {
                self.drain().await;
                let reply = self.connection_command(name, &command.args);
                self.push_now(reply);
            }
            Classified::Read(reply) => {
                if self.writing == Some(true) {
                    self.drain().await;
                }
                self.writing = Some(false);
                self.inflight.push(Slot::Reply(reply));
            }
            Classified::Write(PlannedWrite { ops, finish }) => {
                if self.writing == Some(false) {
                    self.drain().await;
                }
                self.writing = Some(true);
                self.inflight.push(Slot::Write { count: ops.len(), finish });
                self.writes.extend(ops);
            }
        }
    }

    /// Redis's `NOPERM` error when the client's roles do not allow the
    /// command: reads (`GET`, `INFO`, ...) need `read`, writes `write`.
    fn forbidden(&self, name: &str, classified: &Classified) -> Option<Reply> {
        let needed = match classified {
            Classified::Read(_) => net::Roles::READ,
            Classified::Write(_) => net::Roles::WRITE,
            Classified::Now(_) | Classified::Connection => return None,
        };
        let identity = self.identity.as_ref()?;
        (!identity.roles.contains(needed)).then(|| {
            Reply::error(format!(
                "NOPERM User {} has no permissions to run the '{name}' command (it has roles {}; this needs {needed})",
                identity.user, identity.roles
            ))
        })
    }

    fn classify(&self, name: &str, args: &[Bytes]) -> Classified {
        match name {
            "auth" | "hello" | "select" | "quit" => Classified::Connection,
            "client" if args[1].eq_ignore_ascii_case(b"setname") => Classified::Connection,
            "client" => Classified::Now(self.client_command(args)),
            "ping" => Classified::Now(match args.get(1) {
                None => Reply::Simple(Bytes::from_static(b"PONG")),
                Some(message) if args.len() == 2 => Reply::Bulk(message.clone()),
                Some(_) => commands::wrong_arity("ping"),
            }),
            "echo" => Classified::Now(Reply::Bulk(args[1].clone())),
            "command" => Classified::Now(info::command(args)),
            "config" => Classified::Now(info::config(args)),
            "info" => {
                let server = self.server.clone();
                let sections = info::Sections::asked(&args[1..]);
                Classified::Read(Box::pin(async move { info::info(&server, sections).await }))
            }
            keyed => commands::plan(&self.server.backend, keyed, args),
        }
    }

    /// Commands that change the connection; everything before them was
    /// answered.
    fn connection_command(&mut self, name: &str, args: &[Bytes]) -> Reply {
        match name {
            "auth" => match args.len() {
                2 => self.authenticate(None, &args[1]),
                3 => self.authenticate(Some(&args[1]), &args[2]),
                _ => Reply::error("ERR syntax error"),
            },
            "hello" => self.hello(args),
            "select" => match commands::parse_integer(&args[1]) {
                Some(0) => Reply::ok(),
                Some(_) => Reply::error("ERR DB index is out of range (this store has database 0 only)"),
                None => Reply::error("ERR value is not an integer or out of range"),
            },
            "quit" => {
                self.quit = true;
                Reply::ok()
            }
            "client" => {
                // CLIENT SETNAME: the only connection-changing subcommand.
                if args.len() != 3 {
                    return commands::wrong_arity("client|setname");
                }
                if args[2].iter().any(|byte| *byte <= b' ' || *byte > b'~') {
                    return Reply::error("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::ok()
            }
            other => unreachable!("{other} does not change the connection"),
        }
    }

    /// `AUTH [user] token`: a client token of the node's credentials (the
    /// cluster token, user `default`, or a user's own token from
    /// `--client-tokens`, whose name must then match when given).
    fn authenticate(&mut self, user: Option<&Bytes>, token: &[u8]) -> Reply {
        let identity = self.server.config.security.authenticate_token(token).filter(|identity| match user {
            None => true,
            Some(user) if identity.method == net::AuthMethod::SharedToken => user.as_ref() == b"default",
            Some(user) => user.as_ref() == identity.user.as_bytes(),
        });
        match identity {
            Some(identity) => {
                self.identity = Some(identity);
                Reply::ok()
            }
            None => Reply::error("WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    /// `HELLO [protover [AUTH user token] [SETNAME name]]`.
    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut version = self.version;
        if let Some(protover) = args.get(1) {
            version = match commands::parse_integer(protover) {
                Some(2) => Version::Resp2,
                Some(3) => Version::Resp3,
                Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
                None => return Reply::error("ERR Protocol version is not an integer or out of range"),
            };
        }
        let mut index = 2;
        let mut name = None;
        while index < args.len() {
            let option = args[index].to_ascii_uppercase();
            match option.as_slice() {
                b"AUTH" if index + 2 < args.len() => {
                    if let reply @ Reply::Error(_) = self.authenticate(Some(&args[index + 1]), &args[index + 2]) {
                        return reply;
                    }
                    index += 3;
                }
                b"SETNAME" if index + 1 < args.len() => {
                    name = Some(args[index + 1].clone());
                    index += 2;
                }
                _ => return Reply::error("ERR Syntax error in HELLO option"),
            }
        }
        if self.identity.is_none() {
            return Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
                 AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol \
                 version at the same time",
            );
        }
        if name.is_some() {
            self.name = name;
        }
        self.version = version;
        let text = |text: &'static str| Reply::Bulk(Bytes::from_static(text.as_bytes()));
        Reply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(info::REDIS_VERSION)),
            (text("proto"), Reply::Integer(if version == Version::Resp3 { 3 } else { 2 })),
            (text("id"), Reply::Integer(self.id as i64)),
            (text("mode"), text("standalone")),
            (text("role"), text("master")),
            (text("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// `CLIENT GETNAME | ID | SETINFO | INFO` (`SETNAME` changes the
    /// connection and runs in order).
    fn client_command(&self, args: &[Bytes]) -> Reply {
        let sub = args[1].to_ascii_lowercase();
        match sub.as_slice() {
            b"getname" => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            b"id" => Reply::Integer(self.id as i64),
            // Client libraries announce themselves; nothing to keep.
            b"setinfo" => Reply::ok(),
            b"info" => Reply::Bulk(Bytes::from(format!(
                "id={} name={} resp={}\n",
                self.id,
                String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
                if self.version == Version::Resp3 { 3 } else { 2 }
            ))),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT GETNAME, SETNAME, ID.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }
}

mod info;
