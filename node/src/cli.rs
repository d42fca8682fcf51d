//! The `node` command line (clap derive). This module only describes and
//! parses the arguments; [`crate::config`] validates them into typed
//! configurations, merging the optional TOML file given with `--config`.
//!
//! Every `serve` option is an `Option` so that "not given on the command line"
//! can fall back to the file, and the file's keys are the flags' long names
//! without the dashes in front (`node-id = 1`, `peers = "1=..."`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// A replicated, durable key-value store on Raft.
#[derive(Debug, Parser)]
#[command(name = "node", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run a node of a cluster.
    Serve(Box<ServeArgs>),
    /// Read and write keys on a running cluster.
    Kv(KvArgs),
    /// Inspect and change a running cluster.
    Admin(AdminArgs),
    /// Start a local three-node cluster on loopback with temporary data
    /// directories, for trying the node out.
    Dev(DevArgs),
    /// Write a throwaway CA and node and client certificates (and a client
    /// token file) to a directory, for a development or test cluster with
    /// TLS: then `node serve --tls-dir DIR`. The CA keys are written next to
    /// the certificates: not for production (see net/README.md). CAs already
    /// in the directory are reused (adding a node: `--node-ids 4`).
    Certs(CertsArgs),
    /// Seed this node's data directory of a new cluster from a backup
    /// (`node admin backup`), then start the node with `node serve` as
    /// usual. Run it on every node of the new cluster with the same backup,
    /// --peers and --cluster-id (another id than the backed-up cluster's).
    Restore(RestoreArgs),
}

/// `node restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file `node admin backup` wrote.
    #[arg(long, value_name = "FILE")]
    pub backup: PathBuf,
    /// Only read the whole backup, check every checksum and print what it
    /// holds (each shard's index, term and size); write nothing.
    #[arg(long, conflicts_with_all = ["data_dir", "node_id", "peers", "cluster_id"])]
    pub check: bool,
    /// This node's data directory: new or empty.
    #[arg(long, value_name = "PATH", required_unless_present = "check")]
    pub data_dir: Option<PathBuf>,
    /// This node's id in the new cluster.
    #[arg(long, value_name = "ID", required_unless_present = "check")]
    pub node_id: Option<u64>,
    /// The new cluster's members, as `node serve --peers` will be given
    /// them (ID=HOST:PORT,...): every one a voter.
    #[arg(long, value_name = "ID=HOST:PORT,...", required_unless_present = "check")]
    pub peers: Option<String>,
    /// The new cluster's id: another one than the backed-up cluster's.
    #[arg(long, value_name = "ID", required_unless_present = "check")]
    pub cluster_id: Option<u64>,
}

/// `node certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Where to write the files (created if missing; files of the same
    /// names are replaced).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The cluster's id, named in every certificate.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub cluster_id: u64,
    /// The node ids to issue certificates for, such as `1,2,3`.
    #[arg(long, value_name = "ID,...", value_delimiter = ',', default_value = "1,2,3")]
    pub node_ids: Vec<u64>,
    /// Client users as `NAME=ROLES` (roles `read`, `write`, `admin`, joined
    /// by `+` or `,` inside quotes); each gets a certificate and a token.
    #[arg(
        long = "user",
        value_name = "NAME=ROLES",
        default_values = ["admin=read+write+admin", "writer=read+write", "reader=read"]
    )]
    pub users: Vec<String>,
}

/// Parses a byte count: a number alone, or with a unit (`B`; `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB` in powers of 1,024; `KB`, `MB`, `GB`,
/// `TB` in powers of 1,000), a space allowed before it: `268435456`,
/// `256MiB` and `256 MiB` are the same. The help shows defaults that way,
/// and the options refused that very form before.
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{value:?} is not a byte count (a number, optionally with a unit such as MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("{value:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{value:?} is too large"))
}

/// A byte rate: a byte count, `/s` allowed after it (`8 MiB/s`).
fn parse_rate(value: &str) -> Result<u64, String> {
    parse_bytes(value.trim().strip_suffix("/s").unwrap_or(value))
}

fn parse_bytes_usize(value: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(value)?).map_err(|_| format!("{value:?} is too large"))
}

fn parse_bytes_u32(value: &str) -> Result<u32, String> {
    u32::try_from(parse_bytes(value)?).map_err(|_| format!("{value:?} is too large (at most 4 GiB - 1)"))
}

/// A byte count in the configuration file: an integer, or a string with a
/// unit as [`parse_bytes`] reads it (`log-memory-bytes = "512 MiB"`).
fn de_bytes<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    de_count(deserializer, parse_bytes)
}

/// A rate in the configuration file: a byte count, optionally ending in
/// `/s` as on the command line (`snapshot-write-rate = "8 MiB/s"` was
/// refused in the file while the flag took it).
fn de_rate<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    de_count(deserializer, parse_rate)
}

fn de_count<'de, D, T>(deserializer: D, parse: fn(&str) -> Result<u64, String>) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let bytes = match Raw::deserialize(deserializer)? {
        Raw::Number(number) => number,
        Raw::Text(text) => parse(&text).map_err(D::Error::custom)?,
    };
    T::try_from(bytes).map(Some).map_err(|_| D::Error::custom(format!("{bytes} is too large")))
}

/// `--join`: a flag (the manual flow) or members' addresses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum JoinArg {
    Flag(bool),
    Members(String),
}

fn parse_join(value: &str) -> Result<JoinArg, String> {
    Ok(match value {
        "true" => JoinArg::Flag(true),
        "false" => JoinArg::Flag(false),
        "" => return Err("expected HOST:PORT,... or nothing".into()),
        members => JoinArg::Members(members.to_string()),
    })
}

/// `node serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the options below, keyed by their long names
    /// (`node-id = 1`, `data-dir = "/var/lib/node"`). Flags and environment
    /// variables override the file.
    #[arg(long, value_name = "PATH", env = "NODE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: ServeOptions,
}

/// The options of `node serve`, from flags or the configuration file.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeOptions {
    /// This node's id: a positive integer, unique in the cluster and never
    /// reused for another node. Required.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,

    /// The cluster's id: every node of one cluster has the same, and a node
    /// refuses peers and data directories of another cluster. [default: 1]
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<u64>,

    /// Address to listen on for other nodes (Raft traffic), as IP:PORT.
    /// Required.
    #[arg(long, value_name = "IP:PORT")]
    pub peer_addr: Option<String>,

    /// Address to listen on for clients (reads, writes, admin), as IP:PORT.
    /// Required.
    #[arg(long, value_name = "IP:PORT")]
    pub client_addr: Option<String>,

    /// Address for the Redis front door (RESP2/RESP3: `redis-cli`,
    /// `redis-benchmark`, Redis client libraries), as IP:PORT. Clients
    /// authenticate with `AUTH <token>`. It turns on --forward-writes, so
    /// that a follower takes writes too. [default: none]
    #[arg(long, value_name = "IP:PORT")]
    pub resp_addr: Option<String>,

    /// Address for the Prometheus endpoint (HTTP: `/metrics`, `/livez`,
    /// `/readyz`), as IP:PORT. It needs no token: bind it where only your
    /// monitoring reaches. [default: none]
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<String>,

    /// The cluster's members as a static list `ID=HOST:PORT,...` of peer
    /// addresses, this node included. Host names are resolved at start.
    /// Give this or --discovery-dns.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,

    /// Find the members by DNS instead of --peers: a comma-separated list of
    /// names. Each name is looked up as SRV records (at `_raft._tcp.NAME`
    /// unless it starts with `_`); a name without SRV records is looked up as
    /// A/AAAA records with --discovery-port. A node's id is the number at the
    /// end of the first label of its host name (`node-3.db.local` is node 3),
    /// or given as `ID@NAME`.
    #[arg(long, value_name = "NAME,...")]
    pub discovery_dns: Option<String>,

    /// The peer port for names found by A/AAAA records (--discovery-dns).
    #[arg(long, value_name = "PORT")]
    pub discovery_port: Option<u16>,

    /// The DNS server for --discovery-dns, as IP:PORT. [default: the system's
    /// resolver configuration]
    #[arg(long, value_name = "IP:PORT")]
    pub discovery_nameserver: Option<String>,

    /// How long one DNS query may take, such as `2s` or `500ms`. [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub discovery_timeout: Option<String>,

    /// How often a running node looks its --discovery-dns names up again,
    /// such as `30s` or `1m`. A member whose address changed is reached at
    /// the new one; a node newly found is added as a learner and promoted
    /// by the leader once caught up; a name that disappears is never
    /// removed (removal stays `node admin remove`). [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub discovery_interval: Option<String>,

    /// The directory for this node's logs, snapshots and metadata; created if
    /// missing (its parent must exist). Required.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,

    /// The number of shards (independent Raft groups) the key space is split
    /// into; equal on every node. [default: 1]
    #[arg(long, value_name = "COUNT")]
    pub shards: Option<u32>,

    /// The threads (one io_uring runtime each) the shards run on: shard s
    /// on core s mod cores. Equal on every node: core k talks to core k of
    /// the others. Give fewer when several nodes share one machine (a local
    /// test cluster does: the machine's CPUs divided by its nodes), or the
    /// nodes' threads outnumber the CPUs. [default: the smaller of the shard
    /// count and the machine's CPUs]
    #[arg(long, value_name = "COUNT")]
    pub cores: Option<u32>,

    /// The cluster's shared secret, which peers and clients present in the
    /// handshake. Prefer --token-file or the environment: a flag is visible
    /// to other users in the process list.
    #[arg(long, value_name = "SECRET", env = "NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// A file holding the cluster's shared secret (trailing newlines are
    /// ignored). Give either this or --token.
    #[arg(long, value_name = "PATH", env = "NODE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Run TLS with the files `node certs --dir DIR` wrote: DIR/node-ca.pem,
    /// DIR/node-ID.pem and DIR/node-ID.key, plus DIR/client-ca.pem and
    /// DIR/client-tokens when present. The --tls-* and --client-tokens
    /// options override single files.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// TLS 1.3 with mutual authentication on both listeners: the CA that
    /// signs node certificates (PEM). Peers must present a certificate it
    /// signed naming `raft-node://CLUSTER_ID/NODE_ID`. Without TLS the node
    /// runs plaintext and says so in a warning at start.
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,

    /// This node's certificate chain (PEM, leaf first), signed by --tls-ca
    /// and naming this node: presented on both listeners and on links.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// This node's private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// The client listener's CA (PEM): clients may present certificates it
    /// signed, naming `raft-client://CLUSTER_ID/USER?roles=...`. Without it,
    /// clients authenticate with tokens only.
    #[arg(long, value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,

    /// Per-user client tokens and roles, one `name:roles:token` per line
    /// (roles `read`, `write`, `admin`). With it, the shared --token is the
    /// peers' secret only and no longer a client credential. Re-read on
    /// SIGHUP, as are every TLS file.
    #[arg(long, value_name = "PATH")]
    pub client_tokens: Option<PathBuf>,

    /// Bytes of entries in one replication batch, at most. [default: 1 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes_usize)]
    #[serde(default, deserialize_with = "de_bytes")]
    pub batch_bytes_max: Option<usize>,

    /// Replication batches in flight to one follower, at most (the window).
    /// [default: 256]
    #[arg(long, value_name = "COUNT")]
    pub inflight_batches_max: Option<usize>,

    /// Bytes in flight to one follower, at most. [default: 32 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes_usize)]
    #[serde(default, deserialize_with = "de_bytes")]
    pub inflight_bytes_max: Option<usize>,

    /// Proposed but uncommitted bytes a leader accepts before it answers
    /// Busy. [default: 256 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes_usize)]
    #[serde(default, deserialize_with = "de_bytes")]
    pub uncommitted_bytes_max: Option<usize>,

    /// Removed: session settings are part of the replicated state, so that
    /// no node can disagree; change them with `node admin sessions`.
    #[arg(long, value_name = "COUNT", hide = true)]
    pub sessions_max: Option<usize>,

    /// Election timeout, lower bound, in ticks. Times `--tick-interval`, it
    /// is also how long the node refuses votes after it hears a leader,
    /// which leaders' leases rest on: after a restart with a shorter value,
    /// the node keeps the longer hold it said before until its new word is
    /// in force. [default: 50]
    #[arg(long, value_name = "TICKS")]
    pub election_ticks_min: Option<u32>,

    /// Election timeout, upper bound (exclusive), in ticks. [default: 100]
    #[arg(long, value_name = "TICKS")]
    pub election_ticks_max: Option<u32>,

    /// A leader's heartbeat period, in ticks; less than the election
    /// timeout. [default: 5]
    #[arg(long, value_name = "TICKS")]
    pub heartbeat_ticks: Option<u32>,

    /// Take a snapshot after this many applied entries, and keep a quarter
    /// of that below it when compacting the log (small values let tests
    /// exercise catch-up by snapshot). [default: 100000, keeping 5000]
    #[arg(long, value_name = "COUNT")]
    pub snapshot_entries: Option<u64>,

    /// Take a snapshot only once the entries applied since the last one hold
    /// this many times its size in bytes (0: every `snapshot-entries`
    /// alone). Bounds the bytes snapshots write to a fraction of the log's,
    /// whatever the state's size; the in-memory log then grows to about this
    /// multiple of the state. [default: 2]
    #[arg(long, value_name = "FACTOR")]
    pub snapshot_log_factor: Option<u64>,

    /// Also take a snapshot once the entries applied since the last one hold
    /// this many bytes, however few they are (the factor still applies), and
    /// keep at most a quarter of it in the log below a snapshot: with large
    /// values, counting entries alone lets the in-memory log grow to
    /// `snapshot-entries` times the value size (0: entries only). A budget
    /// for the node: each of its shards gets an even part.
    /// [default: 268435456, 256 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    #[serde(default, deserialize_with = "de_bytes")]
    pub snapshot_log_bytes: Option<u64>,

    /// Write a local snapshot at most this many bytes per second (unless
    /// that takes over 4 s, or the log outgrows the snapshot by half of
    /// `snapshot-log-bytes` meanwhile; 0: at disk speed). Paced, its writes
    /// stay out of the way of the log's fdatasyncs. [default: 8388608, 8 MiB/s]
    #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_rate")]
    pub snapshot_write_rate: Option<u64>,

    /// The most payload bytes the node's in-memory logs hold beyond what
    /// the followers it hears from still need (0: each log since its last
    /// snapshot is held whole). Older applied entries keep their index and
    /// term but drop their payloads (the WAL keeps them); a follower that
    /// needs one gets a snapshot. Bounds memory with a large state, where
    /// a snapshot comes only once the log grew to `snapshot-log-factor`
    /// times the state. Recovery after a restart holds no more either: the
    /// oldest committed entries beyond it are read again from the WAL to be
    /// applied. A shard restoring a received snapshot takes no more entries
    /// once twice this is waiting to be applied. A budget for the node: each
    /// of its shards gets an even part. [default: 268435456, 256 MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    #[serde(default, deserialize_with = "de_bytes")]
    pub log_memory_bytes: Option<u64>,

    /// The length of a tick, such as `10ms`. [default: 10ms]
    #[arg(long, value_name = "DURATION")]
    pub tick_interval: Option<String>,

    /// The consistency of reads whose request does not choose one.
    /// [default: linearizable]
    #[arg(long, value_name = "MODE")]
    pub read_consistency: Option<ReadConsistencyArg>,

    /// Log filter: a level (`off`, `error`, `warn`, `info`, `debug`, `trace`)
    /// or a list of levels and `target=level` directives such as
    /// `info,node=debug`. [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Join an existing cluster instead of bootstrapping one. Given members'
    /// client addresses (`--join HOST:PORT,...`, any one member is enough),
    /// the node asks the cluster for an id (kept in the data directory: a
    /// restart needs the same command only), is added as a learner, catches
    /// up and is promoted to voter (unless --learner); no --node-id or
    /// --peers needed. With TLS, give --node-id (the id your CA issued this
    /// node's certificate for) and --join-tls-cert/--join-tls-key (an admin
    /// client certificate) or --join-token-file (an admin token). Without addresses (`--join`), the old manual way: the
    /// node starts as a non-member with --node-id and --peers and waits for
    /// `node admin add-learner`.
    #[arg(long, value_name = "HOST:PORT,...", num_args = 0..=1, default_missing_value = "true",
          value_parser = parse_join)]
    pub join: Option<JoinArg>,

    /// With --join: stay a non-voting learner (a read replica) instead of
    /// being promoted to voter once caught up. [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub learner: Option<bool>,

    /// With --join HOST:PORT,... and TLS: the client certificate (PEM,
    /// naming `raft-client://CLUSTER_ID/USER?roles=...` with the admin role)
    /// that the node presents to the members it joins through. Without it
    /// (or --join-token-file), the shared token (--token, NODE_TOKEN or
    /// --token-file) is presented, which the members accept from clients
    /// only without --client-tokens.
    #[arg(long, value_name = "PATH", requires = "join_tls_key")]
    pub join_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --join-tls-cert.
    #[arg(long, value_name = "PATH", requires = "join_tls_cert")]
    pub join_tls_key: Option<PathBuf>,

    /// With --join HOST:PORT,... and TLS, instead of --join-tls-cert: a file
    /// holding a client token with the admin role (such as a user's token
    /// from the members' --client-tokens file) that the node presents to the
    /// members it joins through.
    #[arg(long, value_name = "PATH", conflicts_with = "join_tls_cert")]
    pub join_token_file: Option<PathBuf>,

    /// When bootstrapping a cluster with --peers: the members that are
    /// witnesses, as IDs separated by commas (in a file, a list). Every
    /// bootstrapping node must give the same list, and each listed node
    /// runs with --witness; full voters must be a strict majority. Used
    /// only until the first leader records the membership in the log.
    /// [default: none]
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub witnesses: Option<Vec<u64>>,

    /// Run as a witness: a voter that keeps only the hard state and entry
    /// metadata (no payloads, no state machine) and serves no reads or
    /// writes. Needs --join (with members' addresses the node joins as a
    /// witness by itself; with bare --join, the manual way, it waits for
    /// `node admin add-witness`), or this node's id in --witnesses when
    /// bootstrapping. Recorded in the data directory: a restart must give
    /// it again, and a data directory of a full replica refuses it.
    /// [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub witness: Option<bool>,

    /// Pin core k's thread to CPU k (thread-per-core). Turn it off when
    /// several nodes share one machine (a local test cluster): they would all
    /// pin their first thread to CPU 0. [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub pin_cores: Option<bool>,

    /// Forward writes that reach a follower to the leader, and answer them
    /// once applied here, instead of answering `NotLeader` with the leader's
    /// address. For clients that talk to one node only; clients that follow
    /// redirects (the bench, `node kv`) save a hop without it. Writes without
    /// a client session are always redirected. [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub forward_writes: Option<bool>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadConsistencyArg {
    /// Confirm leadership with a quorum (ReadIndex), then read: always
    /// up to date.
    Linearizable,
    /// Read at the leader under its lease: no round trip, assumes bounded
    /// clock drift.
    Lease,
    /// Read whatever the contacted node has applied: may be out of date.
    Stale,
}

/// How a command-line client reaches the cluster.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// A node's client address, HOST:PORT; repeat or separate with commas to
    /// give several (the client tries them in turn).
    #[arg(
        long = "addr",
        value_name = "HOST:PORT",
        env = "NODE_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101"
    )]
    pub addrs: Vec<String>,

    /// The cluster's id.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub cluster_id: u64,

    /// The cluster's shared secret.
    #[arg(long, value_name = "SECRET", env = "NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// A file holding the cluster's shared secret.
    #[arg(long, value_name = "PATH", env = "NODE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Connect with TLS, checking the node's certificate against this CA
    /// (the node CA, PEM). Authenticate with --tls-cert and --tls-key, or
    /// with a per-user token (--token).
    #[arg(long, value_name = "PATH", env = "NODE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// A client certificate (PEM) naming `raft-client://CLUSTER_ID/USER?roles=...`;
    /// needs --tls-ca and --tls-key.
    #[arg(long, value_name = "PATH", env = "NODE_TLS_CERT", requires = "tls_ca", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PATH", env = "NODE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How long to wait for an answer, such as `5s`.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub timeout: String,

    /// The shard an admin request is for (`node kv` finds its key's shard
    /// itself: keys map to shards by `net::kv::shard_for_key`). Without it,
    /// membership changes (`add-learner`, `add-witness`, `promote`,
    /// `remove`) go to every shard and `status` shows every shard; other
    /// requests go to shard 0.
    #[arg(long, value_name = "SHARD")]
    pub shard: Option<u32>,
}

/// `node kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Send a write outside any session: one request, but a retry after a
    /// lost answer may apply it twice. By default a write opens a session of
    /// its own (assigned by the cluster), so it is applied exactly once.
    #[arg(long)]
    pub at_least_once: bool,
    #[command(subcommand)]
    pub op: KvOpArgs,
}

#[derive(Debug, Subcommand)]
pub enum KvOpArgs {
    /// Set KEY to VALUE.
    Put {
        /// The key (1 to 65536 bytes).
        key: String,
        /// The value to store (or --value-file).
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from FILE instead, byte for byte (`-`: standard
        /// input): for binary values, and values larger than a command line
        /// takes (about 128 KiB).
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        value_file: Option<PathBuf>,
    },
    /// Print KEY's value.
    Get {
        /// The key to read.
        key: String,
        /// How fresh the value must be. [default: the node's default]
        #[arg(long, value_name = "MODE")]
        consistency: Option<ReadConsistencyArg>,
        /// Print the value's bytes as they are, with no newline; a key
        /// with no value prints nothing and exits with status 1.
        #[arg(long)]
        raw: bool,
    },
    /// Remove KEY.
    Delete {
        /// The key to remove.
        key: String,
    },
    /// Compare-and-swap: change KEY only if its value is the expected one.
    Cas {
        /// The key to change.
        key: String,
        /// The value KEY must have.
        #[arg(long, value_name = "VALUE", required_unless_present = "expect_absent", conflicts_with = "expect_absent")]
        expected: Option<String>,
        /// KEY must not exist.
        #[arg(long)]
        expect_absent: bool,
        /// The value to set.
        #[arg(long, value_name = "VALUE", required_unless_present = "delete", conflicts_with = "delete")]
        new: Option<String>,
        /// Remove KEY instead of setting it.
        #[arg(long)]
        delete: bool,
    },
}

/// `node admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: AdminActionArgs,
}

#[derive(Debug, Subcommand)]
pub enum AdminActionArgs {
    /// Role, term, commit and applied index per shard, and each peer's
    /// progress.
    Status,
    /// Add node ID, reachable by peers at PEER_ADDR, as a non-voting learner.
    AddLearner {
        /// The new node's id, never used before in this cluster.
        id: u64,
        /// The new node's peer address, HOST:PORT.
        #[arg(value_name = "PEER_ADDR")]
        peer_addr: String,
    },
    /// Add node ID, reachable by peers at PEER_ADDR, as a witness (a voter
    /// that keeps entry metadata only), or make learner ID one. The node
    /// must run with `node serve --witness`.
    AddWitness {
        /// The witness's node id, never used before in this cluster.
        id: u64,
        /// The witness's peer address, HOST:PORT.
        #[arg(value_name = "PEER_ADDR")]
        peer_addr: String,
    },
    /// Make learner ID a (full) voter once it caught up. Refused for a node
    /// that is not a learner (a witness cannot be promoted either).
    Promote {
        /// The learner's node id.
        id: u64,
    },
    /// Remove node ID from the cluster.
    Remove {
        /// The member's node id.
        id: u64,
    },
    /// Hand leadership to node ID.
    TransferLeader {
        /// The voter to become leader.
        id: u64,
    },
    /// Take a snapshot now and compact the log.
    Snapshot,
    /// Counters and per-stage latency histograms.
    Stats,
    /// Copy every shard's state into FILE (a new file), as of a point
    /// after every write acknowledged before it started: what `node
    /// restore` makes a new cluster from. Needs the `admin` role; copies
    /// from the node it reaches first (not a witness).
    Backup {
        /// Where to write the backup (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Change the cluster's client session settings (replicated: every
    /// node applies the same); options not given stay as they are. `admin
    /// status` shows the current ones.
    Sessions {
        /// Sessions kept at most (a new cluster keeps 4096).
        #[arg(long, value_name = "COUNT")]
        max: Option<u32>,
        /// A session without writes for this long expires, such as `10m` (a
        /// new cluster's: 10m).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Answers a session keeps that its client has not acknowledged (a
        /// new cluster's: 1024).
        #[arg(long, value_name = "COUNT")]
        replies_max: Option<u32>,
        /// Bytes of such answers a session keeps (a new cluster's: 256 KiB).
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes_u32)]
        reply_bytes_max: Option<u32>,
    },
}

/// `node dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Nodes to start (odd, so a majority survives a failure).
    #[arg(long, value_name = "COUNT", default_value_t = 3)]
    pub nodes: u32,
    /// Node N listens for peers on BASE_PORT + 2N - 2 and for clients on
    /// BASE_PORT + 2N - 1 (node 1: 7100 and 7101).
    #[arg(long, value_name = "PORT", default_value_t = 7100)]
    pub base_port: u16,
    /// Where the nodes' data directories go (`node-1` ... `node-N`; at exit
    /// those are removed unless --keep-data, and the directory itself only
    /// if this command created it). [default: a new temporary directory]
    #[arg(long, value_name = "PATH")]
    pub data_root: Option<PathBuf>,
    /// Keep the data directories on exit.
    #[arg(long)]
    pub keep_data: bool,
    /// Shards per node.
    #[arg(long, value_name = "COUNT", default_value_t = 1)]
    pub shards: u32,
    /// Log filter, as for `serve`.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
    /// Followers forward session writes to the leader, as for `serve`.
    #[arg(long)]
    pub forward_writes: bool,
    /// Open no Redis front door (by default node N serves RESP on BASE_PORT
    /// + 100 + N - 1: node 1 on 7200).
    #[arg(long)]
    pub no_resp: bool,
    /// Open no Prometheus endpoint (by default node N serves metrics on
    /// BASE_PORT + 200 + N - 1: node 1 on 7300).
    #[arg(long)]
    pub no_metrics: bool,
}
