//! Typed, validated configurations for each subcommand, built from the parsed
//! command line ([`crate::cli`]) and, for `serve`, the optional TOML file.
//!
//! Validation happens here, before anything starts, so that a mistake is one
//! clear error and a non-zero exit rather than a half-started node. Checks
//! that need the network (DNS discovery) or the data directory's contents
//! happen later, at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use engine::NodeId;
use net::{AdminRequest, ReadConsistency, RequestBody};

use crate::cli::{
    AdminActionArgs, AdminArgs, CertsArgs, Cli, CliCommand, ClientArgs, DevArgs, JoinArg, KvArgs, KvOpArgs,
    ReadConsistencyArg, RestoreArgs, ServeArgs, ServeOptions,
};
use crate::discovery::{DnsDiscovery, DnsName, HostPort, PeerSource, PeerSpecError, StaticPeer};
use crate::kv::KvOp;

/// Shards per node, at most; each shard is a Raft group with its own WAL.
pub const SHARDS_MAX: u32 = 1024;
/// Nodes `node dev` starts, at most.
pub const DEV_NODES_MAX: u32 = 9;

/// A configuration that cannot be used; each variant says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    ConfigFileUnreadable { path: PathBuf, source: std::io::Error },
    #[error("the configuration file {path} is invalid: {source}")]
    ConfigFileInvalid { path: PathBuf, source: Box<toml::de::Error> },
    #[error("--{option} is required (as a flag or as `{option}` in the configuration file)")]
    Missing { option: &'static str },
    #[error("--{option} must not be {value}: {reason}")]
    OutOfRange { option: &'static str, value: String, reason: &'static str },
    /// A positional argument, named as the usage line names it (`<KEY>`).
    #[error("{argument} must not be {value}: {reason}")]
    ArgumentOutOfRange { argument: &'static str, value: String, reason: &'static str },
    #[error("--{option} {value:?} is not a valid address: {reason}")]
    BadAddress { option: &'static str, value: String, reason: String },
    /// A positional address, named as the usage line names it.
    #[error("{argument} {value:?} is not a valid address: {reason}")]
    BadAddressArgument { argument: &'static str, value: String, reason: String },
    #[error("--{option} {value:?} is not a duration such as 500ms, 2s or 1m")]
    BadDuration { option: &'static str, value: String },
    #[error("--{option}: {source}")]
    Peers { option: &'static str, source: PeerSpecError },
    #[error("give the members with either --peers or --discovery-dns, not both")]
    PeersAndDiscovery,
    #[error("give the members with --peers ID=HOST:PORT,... or --discovery-dns NAME")]
    NoPeers,
    #[error("--peers does not include this node's id {node_id}: list every member, this node too")]
    SelfNotInPeers { node_id: NodeId },
    #[error("--discovery-port is required: without it, names found only by A/AAAA records have no port")]
    DiscoveryPortMissing,
    #[error("the data directory {path} cannot be created: its parent directory {parent} does not exist")]
    DataDirParentMissing { path: PathBuf, parent: PathBuf },
    #[error("the data directory {path} cannot be created: {parent} is a file, not a directory")]
    DataDirParentNotDirectory { path: PathBuf, parent: PathBuf },
    #[error("the data directory {path} exists and is not a directory")]
    DataDirNotDirectory { path: PathBuf },
    #[error("give the token once: either --token (or NODE_TOKEN) or --token-file (or NODE_TOKEN_FILE)")]
    TokenTwice,
    #[error("a token is required: --token, the NODE_TOKEN environment variable, or --token-file (or NODE_TOKEN_FILE)")]
    TokenMissing,
    #[error("a credential is required: a token (--token, the NODE_TOKEN environment variable, or --token-file or NODE_TOKEN_FILE) or, against a cluster with TLS, a client certificate (--tls-cert and --tls-key, with --tls-ca)")]
    ClientCredentialMissing,
    #[error("the token is empty")]
    TokenEmpty,
    #[error("cannot read the token file {path} (--token-file or NODE_TOKEN_FILE): {source}")]
    TokenFileUnreadable { path: PathBuf, source: std::io::Error },
    #[error("election timeout ticks: min {min} must be at least 2 and less than max {max}")]
    ElectionTicks { min: u32, max: u32 },
    #[error("--heartbeat-ticks {heartbeat} must be at least 1 and less than --election-ticks-min {election_min}")]
    HeartbeatTicks { heartbeat: u32, election_min: u32 },
    #[error("--log-level {value:?} is not a level (error, warn, info, debug, trace) or a directive list")]
    BadLogLevel { value: String },
    #[error("--{option} (or `{option}` in the configuration file) is no longer an option: {instead}")]
    Removed { option: &'static str, instead: &'static str },
    #[error("TLS needs --tls-ca, --tls-cert and --tls-key (or --tls-dir); {missing} is missing")]
    TlsIncomplete { missing: &'static str },
    #[error("--tls-dir {dir}: {file} is missing (write the files with `node certs --dir {dir} --cluster-id {cluster_id} --node-ids {node_id}`, which reuses the CAs already there)")]
    TlsDirIncomplete { dir: PathBuf, file: PathBuf, cluster_id: u64, node_id: NodeId },
    #[error("--join HOST:PORT,... with TLS needs --node-id: node certificates name their node (`raft-node://CLUSTER_ID/NODE_ID`), so the id is the one your CA issued this node's certificate for, not one the cluster assigns")]
    JoinWithTlsNeedsId,
    #[error("--join HOST:PORT,... with TLS needs a client credential with the admin role for the members it joins through: --join-tls-cert and --join-tls-key (a client certificate), --join-token-file (an admin client token), or the cluster's shared token (--token, NODE_TOKEN or --token-file) if the members take it from clients")]
    JoinWithTlsNoCredential,
    #[error("--join-tls-cert and --join-tls-key go together, with --join HOST:PORT,... and TLS; {missing} is missing")]
    JoinTlsIncomplete { missing: &'static str },
    #[error("give the joining node's credential once: --join-tls-cert and --join-tls-key, or --join-token-file")]
    JoinCredentialTwice,
    #[error("{given} is what a node joining through members with TLS presents to them; it needs {missing}")]
    JoinCredentialUnused { given: &'static str, missing: &'static str },
    #[error("--join (or `join` in the configuration file) lists no member: give the client addresses of members to join through (HOST:PORT,...), `true` for the manual way (`node admin add-learner`), or leave it out to bootstrap with --peers")]
    JoinNoMembers,
    #[error("--witness needs --join, or this node's id in --witnesses when it bootstraps a cluster with --peers: a witness joins a running cluster (through members with --join HOST:PORT,..., or the manual way with --join and `node admin add-witness`) or is listed as one by every bootstrapping node")]
    WitnessWithoutJoin,
    #[error("--witnesses lists node {id}, this node: start it with --witness too (it keeps no payloads, and the others count it as a witness)")]
    ListedWitnessWithoutFlag { id: NodeId },
    #[error("--witnesses {reason}")]
    BadWitnesses { reason: String },
    #[error("--witness and --learner exclude each other: a witness votes, a learner does not")]
    WitnessAndLearner,
    #[error("--learner needs --join: it keeps a joining node a non-voting learner; a node that bootstraps a cluster with --peers is a voter")]
    LearnerWithoutJoin,
    #[error("cannot read the value from {path}: {source}")]
    ValueFileUnreadable { path: PathBuf, source: std::io::Error },
    #[error("--{option} needs --discovery-dns (it says how to find the members by DNS; with --peers it does nothing)")]
    DiscoveryOptionWithoutDns { option: &'static str },
    #[error("--user {value:?}: {reason}")]
    BadUser { value: String, reason: String },
}

/// The shared secret presented in handshakes. `Debug` does not print it, so
/// that a logged configuration leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub Bytes);

impl std::fmt::Debug for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Token(<{} bytes>)", self.0.len())
    }
}

/// Replication flow control, named as in [`engine::Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    pub batch_bytes_max: usize,
    pub inflight_batches_max: usize,
    pub inflight_bytes_max: usize,
    pub uncommitted_bytes_max: usize,
}

impl Default for FlowLimits {
    fn default() -> FlowLimits {
        FlowLimits {
            batch_bytes_max: 1 << 20,
            inflight_batches_max: 256,
            inflight_bytes_max: 32 << 20,
            uncommitted_bytes_max: 256 << 20,
        }
    }
}

/// Raft timing: ticks and the length of one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub election_ticks_min: u32,
    pub election_ticks_max: u32,
    pub heartbeat_ticks: u32,
    pub tick_interval: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            // etcd's proportions (heartbeat 1/10 of the election timeout):
            // a 50 ms heartbeat, a 0.5-1 s election timeout. Shorter timeouts
            // turn a loaded machine's scheduling delays and fdatasync stalls
            // into needless elections.
            election_ticks_min: 50,
            election_ticks_max: 100,
            heartbeat_ticks: 5,
            tick_interval: Duration::from_millis(10),
        }
    }
}

/// How a node proves who it is and checks who calls it, beyond the shared
/// token. The default is plaintext, which the node warns about at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// TLS on both listeners and on links; `None`: plaintext.
    pub tls: Option<net::NodeTlsFiles>,
    /// Per-user client tokens with roles (`net::tokens`); `None`: clients
    /// use the shared token (every role) or a client certificate.
    pub client_tokens: Option<PathBuf>,
}

impl SecurityConfig {
    /// The credentials the node loads (and reloads on SIGHUP).
    pub fn node_security(
        &self,
        cluster_id: u64,
        node_id: NodeId,
        token: Option<&Token>,
        history: net::History,
    ) -> net::NodeSecurityConfig {
        let client_tokens = match (&self.client_tokens, token) {
            (Some(path), _) => net::ClientTokens::File(path.clone()),
            (None, Some(token)) => net::ClientTokens::Shared(token.0.clone()),
            (None, None) => net::ClientTokens::None,
        };
        net::NodeSecurityConfig {
            cluster_id,
            node_id,
            tls: self.tls.clone(),
            peer_token: token.map(|token| token.0.clone()),
            client_tokens,
            history,
        }
    }
}

/// Everything `node serve` needs, validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    /// The Redis front door's address ([`crate::resp`]), if it has one.
    pub resp_addr: Option<SocketAddr>,
    /// The Prometheus endpoint's address ([`crate::metrics`]), if it has one.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the members' peer addresses come from; resolve with
    /// [`crate::discovery::discover`], then check with
    /// [`crate::discovery::check_members`].
    pub peers: PeerSource,
    pub data_dir: PathBuf,
    /// Invariant: `1..=SHARDS_MAX`.
    pub shards: u32,
    /// Core threads to run the shards on; `None`: the smaller of the shard
    /// count and the machine's CPUs (see [`ServeConfig::cores`]).
    /// Invariant: 1 to `shards`.
    pub core_threads: Option<u32>,
    /// The shared secret: the peers' credential without TLS (then
    /// required), checked in addition to certificates with TLS, and the
    /// clients' credential unless [`SecurityConfig::client_tokens`] names a
    /// token file.
    pub token: Option<Token>,
    pub security: SecurityConfig,
    pub limits: FlowLimits,
    pub timing: Timing,
    pub read_consistency: ReadConsistency,
    pub log_level: String,
    /// Start as a non-member of an existing cluster (no bootstrap voters).
    pub join: bool,
    /// Members' client addresses to join through (`--join HOST:PORT,...`):
    /// the node gets its id from the cluster (when `node_id` is 0), asks to
    /// be added, and is promoted once caught up (see [`crate::membership`]).
    pub join_through: Vec<HostPort>,
    /// With `join_through`: stay a learner.
    pub learner: bool,
    /// With `join_through` and TLS: the admin client credential the node
    /// presents to the members it joins through (`None`: the shared token).
    pub join_credential: Option<JoinCredential>,
    /// The members of the bootstrap configuration that are witnesses
    /// (`--witnesses`; every bootstrapping node gives the same list): used
    /// only while the log records no membership yet. Empty when joining.
    pub bootstrap_witnesses: Vec<NodeId>,
    /// Run as a witness (see [`crate::membership::check_replica_kind`]):
    /// entry metadata only, no state machine. Invariant: with `join`, and
    /// not with `learner`.
    pub witness: bool,
    /// Pin core k's thread to CPU k.
    pub pin_cores: bool,
    /// Followers forward session writes to the leader instead of
    /// redirecting the client.
    pub forward_writes: bool,
    /// Applied entries between snapshots; `None` keeps the engine default.
    /// Invariant: positive.
    pub snapshot_entries: Option<u64>,
    /// A snapshot waits until the entries applied since the last one hold
    /// this many times its bytes (0: off).
    pub snapshot_log_factor: u64,
    /// The node's budget of log applied since the shards' last snapshots,
    /// in bytes, split evenly over its shards: a shard's snapshot is also
    /// due once its entries applied since the last one hold its part (0:
    /// off). See [`ServeConfig::shard_snapshot_log_bytes`].
    pub snapshot_log_bytes: u64,
    /// Bytes per second for writing a local snapshot (0: no pacing).
    pub snapshot_write_rate: u64,
    /// The node's budget of payload bytes its in-memory logs hold beyond
    /// what followers still need, split evenly over its shards (0: off).
    /// See `engine::Config::log_memory_bytes`.
    pub log_memory_bytes: u64,
}

/// The default of `--discovery-interval`: a moved or added member is
/// noticed within half a minute, for a handful of DNS queries per node.
pub const DISCOVERY_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// The default of `--snapshot-log-factor`.
pub const SNAPSHOT_LOG_FACTOR_DEFAULT: u64 = 2;
/// The default of `--snapshot-log-bytes`.
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 256 << 20;
/// The default of `--log-memory-bytes`: as much as `--snapshot-log-bytes`,
/// so a node holds about that much log whatever its state's size.
pub const LOG_MEMORY_BYTES_DEFAULT: u64 = 256 << 20;
/// The default of `--snapshot-write-rate`: the WAL's own default.
pub const SNAPSHOT_WRITE_RATE_DEFAULT: u64 = 8 << 20;

impl ServeConfig {
    /// The core threads the node runs: `core_threads`, or the smaller of
    /// the shard count and the machine's CPUs.
    pub fn cores(&self) -> usize {
        match self.core_threads {
            Some(cores) => cores as usize,
            None => net::runtime::default_cores(self.shards) as usize,
        }
    }

    /// The engine configuration for one shard of this node, given the voters
    /// found by discovery.
    pub fn engine_config(&self, voters: Vec<NodeId>) -> engine::Config {
        let mut config = engine::Config::new(self.node_id, voters);
        config.election_ticks_min = self.timing.election_ticks_min;
        config.election_ticks_max = self.timing.election_ticks_max;
        config.heartbeat_ticks = self.timing.heartbeat_ticks;
        config.batch_bytes_max = self.limits.batch_bytes_max;
        config.inflight_batches_max = self.limits.inflight_batches_max;
        config.inflight_bytes_max = self.limits.inflight_bytes_max;
        config.uncommitted_bytes_max = self.limits.uncommitted_bytes_max;
        if let Some(entries) = self.snapshot_entries {
            config.snapshot_entries = entries;
            config.compaction_tail = config.compaction_tail.min(entries / 4);
        }
        // Replicas snapshot at different points (every 1 to 1.5 intervals),
        // so their serializing and writing do not all land at once.
        config.snapshot_entries_jitter = config.snapshot_entries / 2;
        config.snapshot_log_factor = self.snapshot_log_factor;
        config.snapshot_log_bytes = self.shard_snapshot_log_bytes();
        config.log_memory_bytes = self.shard_log_memory_bytes();
        config.witness = self.witness;
        if !config.voters.is_empty() {
            config.witnesses = self.bootstrap_witnesses.clone();
        }
        config
    }

    /// Each shard's part of `--snapshot-log-bytes`. A budget per node, not
    /// per shard: the log since a snapshot is held in memory, so four shards
    /// with the whole budget each would hold four times the log (a node with
    /// four shards ran 13-21 % slower so, its fresh pages faulting in). Groups
    /// of writes made this the rule that decides for small writes too: the
    /// entry count (`--snapshot-entries`) counts groups, about a hundred
    /// writes each under load, so it is rarely reached.
    pub fn shard_snapshot_log_bytes(&self) -> u64 {
        self.per_shard(self.snapshot_log_bytes)
    }

    /// The in-memory log budget of one shard (`--log-memory-bytes` split
    /// over the shards; 0: no bound): the engine's, and the WAL's while it
    /// recovers.
    pub fn shard_log_memory_bytes(&self) -> u64 {
        self.per_shard(self.log_memory_bytes)
    }

    /// Each shard's even part of a node's budget of `bytes` (0 stays 0:
    /// off; a budget never rounds down to off).
    fn per_shard(&self, bytes: u64) -> u64 {
        match bytes {
            0 => 0,
            bytes => (bytes / u64::from(self.shards.max(1))).max(1),
        }
    }
}

/// How a node that joins through members with TLS on proves to them that
/// it may (the admin role).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinCredential {
    /// A client certificate and its key (`--join-tls-cert`, `--join-tls-key`).
    Certificate { certificate: PathBuf, private_key: PathBuf },
    /// A client token (`--join-token-file`).
    Token(Token),
}

/// How a command-line client reaches the cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Invariant: not empty.
    pub addrs: Vec<HostPort>,
    pub cluster_id: u64,
    /// A per-user or shared token; `None` when a client certificate
    /// authenticates instead.
    pub token: Option<Token>,
    /// Connect with TLS (`--tls-ca`, optionally a client certificate).
    pub tls: Option<net::ClientTlsFiles>,
    pub timeout: Duration,
    pub shard: u32,
}

/// `node kv ...`: one operation.
#[derive(Clone, Debug)]
pub struct KvCommand {
    pub client: ClientConfig,
    pub op: KvOp,
    /// Write outside any session (`--at-least-once`).
    pub at_least_once: bool,
    /// For a `Get`: the consistency asked for, or `None` for the node's
    /// default.
    pub consistency: Option<ReadConsistency>,
    /// For a `Get`: print the value's bytes as they are (`--raw`).
    pub raw: bool,
}

/// `node admin ...`: one request.
#[derive(Clone, Debug)]
pub struct AdminCommand {
    pub client: ClientConfig,
    /// [`RequestBody::Status`] or [`RequestBody::Admin`].
    pub body: RequestBody,
    /// No `--shard` was given: a membership change goes to every shard, and
    /// `status` shows every shard.
    pub every_shard: bool,
}

/// `node dev`: a local cluster on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevConfig {
    pub nodes: u32,
    pub base_port: u16,
    /// `None`: make a temporary directory.
    pub data_root: Option<PathBuf>,
    pub keep_data: bool,
    pub shards: u32,
    pub log_level: String,
    pub forward_writes: bool,
    /// Each node opens a Redis front door ([`DevConfig::resp_port`]).
    pub resp: bool,
    /// Each node opens a Prometheus endpoint ([`DevConfig::metrics_port`]).
    pub metrics: bool,
}

/// The token every `node dev` cluster uses: it only listens on loopback.
pub const DEV_TOKEN: &[u8] = b"dev-cluster-token";

impl DevConfig {
    /// Node `id`'s peer and client ports (see `node dev --help`).
    pub fn ports(&self, id: NodeId) -> (u16, u16) {
        let peer = u32::from(self.base_port) + 2 * (id as u32 - 1);
        (peer as u16, (peer + 1) as u16)
    }

    /// Node `id`'s Redis front door port: `base_port + 100 + id - 1`.
    pub fn resp_port(&self, id: NodeId) -> Option<u16> {
        self.resp.then(|| (u32::from(self.base_port) + 100 + id as u32 - 1) as u16)
    }

    /// Node `id`'s Prometheus endpoint port: `base_port + 200 + id - 1`.
    pub fn metrics_port(&self, id: NodeId) -> Option<u16> {
        self.metrics.then(|| (u32::from(self.base_port) + 200 + id as u32 - 1) as u16)
    }

    /// The `serve` configuration of each node, with data directories
    /// `root/node-N`.
    pub fn serve_configs(&self, root: &Path) -> Vec<ServeConfig> {
        let members: Vec<StaticPeer> = (1..=u64::from(self.nodes))
            .map(|id| StaticPeer { id, addr: HostPort { host: "127.0.0.1".into(), port: self.ports(id).0 } })
            .collect();
        (1..=u64::from(self.nodes))
            .map(|id| {
                let (peer, client) = self.ports(id);
                ServeConfig {
                    node_id: id,
                    cluster_id: 1,
                    peer_addr: SocketAddr::from(([127, 0, 0, 1], peer)),
                    client_addr: SocketAddr::from(([127, 0, 0, 1], client)),
                    resp_addr: self.resp_port(id).map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
                    metrics_addr: self.metrics_port(id).map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
                    peers: PeerSource::Static(members.clone()),
                    data_dir: root.join(format!("node-{id}")),
                    shards: self.shards,
                    // The nodes share this machine's CPUs.
                    core_threads: Some(net::runtime::shared_machine_cores(self.shards, self.nodes)),
                    token: Some(Token(Bytes::from_static(DEV_TOKEN))),
                    security: SecurityConfig::default(),
                    limits: FlowLimits::default(),
                    timing: Timing::default(),
                    read_consistency: ReadConsistency::Linearizable,
                    log_level: self.log_level.clone(),
                    join: false,
                    join_through: Vec::new(),
                    learner: false,
                    join_credential: None,
                    bootstrap_witnesses: Vec::new(),
                    witness: false,
                    // Several nodes on one machine: let the scheduler place them.
                    pin_cores: false,
                    forward_writes: self.forward_writes || self.resp,
                    snapshot_entries: None,
                    snapshot_log_factor: SNAPSHOT_LOG_FACTOR_DEFAULT,
                    snapshot_log_bytes: SNAPSHOT_LOG_BYTES_DEFAULT,
                    snapshot_write_rate: SNAPSHOT_WRITE_RATE_DEFAULT,
                    log_memory_bytes: LOG_MEMORY_BYTES_DEFAULT,
                }
            })
            .collect()
    }
}

/// `node certs`: throwaway TLS credentials for a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsConfig {
    pub dir: PathBuf,
    pub cluster_id: u64,
    /// Invariant: not empty, no 0.
    pub node_ids: Vec<NodeId>,
    pub users: Vec<(String, net::Roles)>,
}

impl CertsConfig {
    pub fn from_args(args: CertsArgs) -> Result<CertsConfig, ConfigError> {
        positive("cluster-id", args.cluster_id)?;
        if args.node_ids.is_empty() {
            return Err(ConfigError::Missing { option: "node-ids" });
        }
        for &id in &args.node_ids {
            positive("node-ids", id)?;
        }
        let users = args
            .users
            .iter()
            .map(|spec| {
                let bad = |reason: String| ConfigError::BadUser { value: spec.clone(), reason };
                let (name, roles) = spec.split_once('=').ok_or_else(|| bad("expected NAME=ROLES".into()))?;
                net::identity::check_user_name(name).map_err(|error| bad(error.to_string()))?;
                let roles = net::Roles::parse(&roles.replace('+', ",")).map_err(|error| bad(error.to_string()))?;
                Ok((name.to_string(), roles))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertsConfig { dir: args.dir, cluster_id: args.cluster_id, node_ids: args.node_ids, users })
    }
}

/// A subcommand, ready to run.
#[derive(Clone, Debug)]
pub enum NodeCommand {
    Serve(Box<ServeConfig>),
    Kv(KvCommand),
    Admin(AdminCommand),
    Dev(DevConfig),
    Certs(CertsConfig),
    /// `node admin backup`.
    Backup {
        client: ClientConfig,
        out: PathBuf,
    },
    Restore(crate::backup::RestoreConfig),
    /// `node restore --check`: the backup file to check.
    CheckBackup(PathBuf),
}

/// Why the command line was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Includes `--help` and `--version`: print it with `error.exit()`.
    #[error(transparent)]
    Parse(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Parses and validates a command line (the program name first).
pub fn parse_from<I, T>(args: I) -> Result<NodeCommand, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    Ok(NodeCommand::try_from(cli.command)?)
}

impl TryFrom<CliCommand> for NodeCommand {
    type Error = ConfigError;

    fn try_from(command: CliCommand) -> Result<NodeCommand, ConfigError> {
        Ok(match command {
            CliCommand::Serve(args) => NodeCommand::Serve(Box::new(ServeConfig::from_args(*args)?)),
            CliCommand::Kv(args) => NodeCommand::Kv(KvCommand::from_args(args)?),
            CliCommand::Admin(AdminArgs { client, action: AdminActionArgs::Backup { out } }) => {
                NodeCommand::Backup { client: ClientConfig::from_args(client)?, out }
            }
            CliCommand::Admin(args) => NodeCommand::Admin(AdminCommand::from_args(args)?),
            CliCommand::Restore(args) => restore_command(args)?,
            CliCommand::Dev(args) => NodeCommand::Dev(DevConfig::from_args(args)?),
            CliCommand::Certs(args) => NodeCommand::Certs(CertsConfig::from_args(args)?),
        })
    }
}

/// `node restore`'s arguments, checked: positive ids, the peer list's
/// syntax, this node among the voters; or, with `--check`, the file only.
fn restore_command(args: RestoreArgs) -> Result<NodeCommand, ConfigError> {
    let (Some(data_dir), Some(node_id), Some(peers), Some(cluster_id)) =
        (args.data_dir, args.node_id, args.peers, args.cluster_id)
    else {
        debug_assert!(args.check, "clap requires the restore options without --check");
        return Ok(NodeCommand::CheckBackup(args.backup));
    };
    let node_id = positive("node-id", node_id)?;
    let cluster_id = positive("cluster-id", cluster_id)?;
    let peers = crate::discovery::parse_static_peers(&peers)
        .map_err(|source| ConfigError::Peers { option: "peers", source })?;
    let voters: Vec<NodeId> = peers.iter().map(|peer| peer.id).collect();
    if !voters.contains(&node_id) {
        return Err(ConfigError::SelfNotInPeers { node_id });
    }
    let backup = args.backup;
    Ok(NodeCommand::Restore(crate::backup::RestoreConfig { backup, data_dir, node_id, voters, cluster_id }))
}

/// Reads a `serve` configuration file.
pub fn read_config_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::ConfigFileUnreadable { path: path.to_owned(), source })?;
    toml::from_str(&text)
        .map_err(|source| ConfigError::ConfigFileInvalid { path: path.to_owned(), source: Box::new(source) })
}

impl ServeOptions {
    /// These options, with the ones not given taken from `file`.
    pub fn or(self, file: ServeOptions) -> ServeOptions {
        macro_rules! merge {
            ($($field:ident),* $(,)?) => {
                ServeOptions { $($field: self.$field.or(file.$field)),* }
            };
        }
        merge!(
            node_id,
            cluster_id,
            peer_addr,
            client_addr,
            resp_addr,
            metrics_addr,
            peers,
            discovery_dns,
            discovery_port,
            discovery_nameserver,
            discovery_timeout,
            discovery_interval,
            data_dir,
            shards,
            cores,
            token,
            token_file,
            tls_dir,
            tls_ca,
            tls_cert,
            tls_key,
            tls_client_ca,
            client_tokens,
            batch_bytes_max,
            inflight_batches_max,
            inflight_bytes_max,
            uncommitted_bytes_max,
            sessions_max,
            election_ticks_min,
            election_ticks_max,
            heartbeat_ticks,
            tick_interval,
            snapshot_entries,
            snapshot_log_factor,
            snapshot_log_bytes,
            snapshot_write_rate,
            log_memory_bytes,
            read_consistency,
            log_level,
            join,
            learner,
            join_tls_cert,
            join_tls_key,
            join_token_file,
            witnesses,
            witness,
            pin_cores,
            forward_writes,
        )
    }
}

impl ServeConfig {
    /// Merges the file (if any) under the flags and validates the result.
    pub fn from_args(args: ServeArgs) -> Result<ServeConfig, ConfigError> {
        let options = match &args.config {
            Some(path) => {
                let file = read_config_file(path)?;
                // A token in the file and a token file from the flags (or the
                // reverse) would be two tokens: the flags' source wins whole.
                let file = if args.options.token.is_some() || args.options.token_file.is_some() {
                    ServeOptions { token: None, token_file: None, ..file }
                } else {
                    file
                };
                args.options.or(file)
            }
            None => args.options,
        };
        ServeConfig::from_options(options)
    }

    /// Validates complete options.
    pub fn from_options(options: ServeOptions) -> Result<ServeConfig, ConfigError> {
        let (join, join_through) = match &options.join {
            None | Some(JoinArg::Flag(false)) => (false, Vec::new()),
            Some(JoinArg::Flag(true)) => (true, Vec::new()),
            Some(JoinArg::Members(list)) => {
                let members = list
                    .split(',')
                    .map(str::trim)
                    .filter(|member| !member.is_empty())
                    .map(|member| {
                        member.parse::<HostPort>().map_err(|error| ConfigError::BadAddress {
                            option: "join",
                            value: member.into(),
                            reason: error.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if members.is_empty() {
                    return Err(ConfigError::JoinNoMembers);
                }
                (true, members)
            }
        };
        // Joining through members, the cluster assigns the id (0 until then).
        let tls_given = options.tls_dir.is_some() || options.tls_ca.is_some() || options.tls_cert.is_some();
        let node_id = match options.node_id {
            Some(id) => positive("node-id", id)?,
            None if !join_through.is_empty() && tls_given => return Err(ConfigError::JoinWithTlsNeedsId),
            None if !join_through.is_empty() => 0,
            None => return Err(ConfigError::Missing { option: "node-id" }),
        };
        let cluster_id = options.cluster_id.unwrap_or(1);
        positive("cluster-id", cluster_id)?;
        let peer_addr = socket_addr("peer-addr", options.peer_addr.as_deref())?;
        let client_addr = socket_addr("client-addr", options.client_addr.as_deref())?;
        if peer_addr == client_addr {
            return Err(ConfigError::BadAddress {
                option: "client-addr",
                value: client_addr.to_string(),
                reason: "it is also the --peer-addr".into(),
            });
        }
        let resp_addr = options.resp_addr.as_deref().map(|addr| socket_addr("resp-addr", Some(addr))).transpose()?;
        if let Some(addr) = resp_addr.filter(|addr| *addr == peer_addr || *addr == client_addr) {
            return Err(ConfigError::BadAddress {
                option: "resp-addr",
                value: addr.to_string(),
                reason: "it is also the --peer-addr or --client-addr".into(),
            });
        }
        let metrics_addr =
            options.metrics_addr.as_deref().map(|addr| socket_addr("metrics-addr", Some(addr))).transpose()?;
        if let Some(addr) =
            metrics_addr.filter(|addr| [Some(peer_addr), Some(client_addr), resp_addr].contains(&Some(*addr)))
        {
            return Err(ConfigError::BadAddress {
                option: "metrics-addr",
                value: addr.to_string(),
                reason: "it is also the --peer-addr, --client-addr or --resp-addr".into(),
            });
        }
        let peers = if join_through.is_empty() || options.peers.is_some() || options.discovery_dns.is_some() {
            peer_source(node_id, &options)?
        } else {
            // The members come from the cluster's address book.
            PeerSource::Static(Vec::new())
        };
        let timing = timing(&options)?;
        let security = security(node_id, &options)?;
        let has_token = options.token.is_some() || options.token_file.is_some();
        let join_credential = join_credential(&options, &security, &join_through, has_token)?;
        let data_dir = options.data_dir.ok_or(ConfigError::Missing { option: "data-dir" })?;
        check_data_dir(&data_dir)?;
        let shards = options.shards.unwrap_or(1);
        if shards == 0 || shards > SHARDS_MAX {
            return Err(ConfigError::OutOfRange {
                option: "shards",
                value: shards.to_string(),
                reason: "the number of shards is 1 to 1024",
            });
        }
        let cores = options.cores.map(|cores| check_cores(cores, shards)).transpose()?;
        let token = match token(options.token, options.token_file) {
            // With TLS, certificates authenticate peers: the token is optional.
            Err(ConfigError::TokenMissing) if security.tls.is_some() => None,
            other => Some(other?),
        };
        let defaults = FlowLimits::default();
        let limits = FlowLimits {
            batch_bytes_max: positive("batch-bytes-max", options.batch_bytes_max.unwrap_or(defaults.batch_bytes_max))?,
            inflight_batches_max: positive(
                "inflight-batches-max",
                options.inflight_batches_max.unwrap_or(defaults.inflight_batches_max),
            )?,
            inflight_bytes_max: positive(
                "inflight-bytes-max",
                options.inflight_bytes_max.unwrap_or(defaults.inflight_bytes_max),
            )?,
            uncommitted_bytes_max: positive(
                "uncommitted-bytes-max",
                options.uncommitted_bytes_max.unwrap_or(defaults.uncommitted_bytes_max),
            )?,
        };
        if options.sessions_max.is_some() {
            return Err(ConfigError::Removed {
                option: "sessions-max",
                instead: "session settings are replicated so that no node can disagree: \
                          `node admin sessions --max N` changes them for the whole cluster",
            });
        }
        let read_consistency = options.read_consistency.unwrap_or(ReadConsistencyArg::Linearizable).into();
        let (learner, witness) = (options.learner.unwrap_or(false), options.witness.unwrap_or(false));
        let bootstrap_witnesses = bootstrap_witnesses(options.witnesses.clone(), &peers, join)?;
        let listed = bootstrap_witnesses.contains(&node_id);
        if witness && !join && !listed {
            return Err(ConfigError::WitnessWithoutJoin);
        }
        if listed && !witness {
            return Err(ConfigError::ListedWitnessWithoutFlag { id: node_id });
        }
        if witness && learner {
            return Err(ConfigError::WitnessAndLearner);
        }
        if learner && !join {
            return Err(ConfigError::LearnerWithoutJoin);
        }
        let log_level = options.log_level.unwrap_or_else(|| "info".into());
        check_log_level(&log_level)?;
        Ok(ServeConfig {
            node_id,
            cluster_id,
            peer_addr,
            client_addr,
            resp_addr,
            metrics_addr,
            peers,
            data_dir,
            shards,
            core_threads: cores,
            token,
            security,
            limits,
            timing,
            read_consistency,
            log_level,
            join,
            join_through,
            learner,
            join_credential,
            bootstrap_witnesses,
            witness,
            pin_cores: options.pin_cores.unwrap_or(true),
            // The RESP front door's clients talk to one node: a follower
            // must take their writes (see `crate::resp::backend`).
            forward_writes: options.forward_writes.unwrap_or(false) || resp_addr.is_some(),
            snapshot_entries: options
                .snapshot_entries
                .map(|entries| positive("snapshot-entries", entries))
                .transpose()?,
            snapshot_log_factor: options.snapshot_log_factor.unwrap_or(SNAPSHOT_LOG_FACTOR_DEFAULT),
            snapshot_log_bytes: options.snapshot_log_bytes.unwrap_or(SNAPSHOT_LOG_BYTES_DEFAULT),
            snapshot_write_rate: options.snapshot_write_rate.unwrap_or(SNAPSHOT_WRITE_RATE_DEFAULT),
            log_memory_bytes: options.log_memory_bytes.unwrap_or(LOG_MEMORY_BYTES_DEFAULT),
        })
    }
}

/// The bootstrap witnesses of `--witnesses`, checked: only when
/// bootstrapping with a static `--peers` list, each one of those members,
/// and full voters a strict majority (as the engine requires of every
/// configuration: the full voters alone then form a quorum).
fn bootstrap_witnesses(
    witnesses: Option<Vec<NodeId>>,
    peers: &PeerSource,
    join: bool,
) -> Result<Vec<NodeId>, ConfigError> {
    let mut witnesses = witnesses.unwrap_or_default();
    if witnesses.is_empty() {
        return Ok(witnesses);
    }
    let bad = |reason: String| Err(ConfigError::BadWitnesses { reason });
    if join {
        return bad("names the witnesses of a cluster being bootstrapped; a joining node takes the cluster's \
                    membership (join a witness with --join and --witness)"
            .into());
    }
    let PeerSource::Static(members) = peers else {
        return bad("needs a static --peers list (with DNS discovery, add witnesses by joining them)".into());
    };
    witnesses.sort_unstable();
    if let Some(pair) = witnesses.windows(2).find(|pair| pair[0] == pair[1]) {
        return bad(format!("lists node {} twice", pair[0]));
    }
    if let Some(id) = witnesses.iter().find(|id| !members.iter().any(|member| member.id == **id)) {
        return bad(format!("lists node {id}, which is not in --peers"));
    }
    let full = members.len() - witnesses.len();
    if full <= witnesses.len() {
        return bad(format!(
            "makes {} of {} voters witnesses: full voters must be a strict majority",
            witnesses.len(),
            members.len()
        ));
    }
    Ok(witnesses)
}

impl From<ReadConsistencyArg> for ReadConsistency {
    fn from(arg: ReadConsistencyArg) -> ReadConsistency {
        match arg {
            ReadConsistencyArg::Linearizable => ReadConsistency::Linearizable,
            ReadConsistencyArg::Lease => ReadConsistency::Lease,
            ReadConsistencyArg::Stale => ReadConsistency::Stale,
        }
    }
}

fn positive<T: PartialEq + Default + ToString>(option: &'static str, value: T) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(ConfigError::OutOfRange { option, value: value.to_string(), reason: "it must be positive" });
    }
    Ok(value)
}

/// The node id an admin action names (`<ID>`): positive.
fn positive_id(id: u64) -> Result<u64, ConfigError> {
    if id == 0 {
        return Err(ConfigError::ArgumentOutOfRange {
            argument: "<ID>",
            value: "0".into(),
            reason: "ids are positive",
        });
    }
    Ok(id)
}

fn socket_addr(option: &'static str, value: Option<&str>) -> Result<SocketAddr, ConfigError> {
    let value = value.ok_or(ConfigError::Missing { option })?;
    let addr: SocketAddr = value.parse().map_err(|_| ConfigError::BadAddress {
        option,
        value: value.into(),
        reason: "expected IP:PORT, such as 0.0.0.0:7100 or [::1]:7100".into(),
    })?;
    if addr.port() == 0 {
        return Err(ConfigError::BadAddress { option, value: value.into(), reason: "the port must not be 0".into() });
    }
    Ok(addr)
}

fn peer_source(node_id: NodeId, options: &ServeOptions) -> Result<PeerSource, ConfigError> {
    match (&options.peers, &options.discovery_dns) {
        (Some(_), Some(_)) => Err(ConfigError::PeersAndDiscovery),
        (None, None) => Err(ConfigError::NoPeers),
        (Some(list), None) => {
            let peers = crate::discovery::parse_static_peers(list)
                .map_err(|source| ConfigError::Peers { option: "peers", source })?;
            if !peers.iter().any(|peer| peer.id == node_id) {
                return Err(ConfigError::SelfNotInPeers { node_id });
            }
            let dns_only = [
                ("discovery-port", options.discovery_port.is_some()),
                ("discovery-interval", options.discovery_interval.is_some()),
                ("discovery-timeout", options.discovery_timeout.is_some()),
                ("discovery-nameserver", options.discovery_nameserver.is_some()),
            ];
            if let Some((option, _)) = dns_only.iter().find(|(_, given)| *given) {
                return Err(ConfigError::DiscoveryOptionWithoutDns { option });
            }
            Ok(PeerSource::Static(peers))
        }
        (None, Some(names)) => {
            let names: Vec<DnsName> = crate::discovery::parse_dns_names(names)
                .map_err(|source| ConfigError::Peers { option: "discovery-dns", source })?;
            let nameserver = match &options.discovery_nameserver {
                None => None,
                Some(value) => Some(socket_addr("discovery-nameserver", Some(value))?),
            };
            let timeout = match &options.discovery_timeout {
                None => Duration::from_secs(2),
                Some(value) => duration("discovery-timeout", value)?,
            };
            let interval = positive_duration(
                "discovery-interval",
                options.discovery_interval.as_deref(),
                DISCOVERY_INTERVAL_DEFAULT,
            )?;
            if let Some(port) = options.discovery_port {
                positive("discovery-port", port)?;
            }
            Ok(PeerSource::Dns(DnsDiscovery { names, port: options.discovery_port, nameserver, timeout, interval }))
        }
    }
}

/// The client credential of a node that joins through members with TLS on:
/// a certificate or a token with the admin role, or else the shared token,
/// which must then be given.
fn join_credential(
    options: &ServeOptions,
    security: &SecurityConfig,
    join_through: &[HostPort],
    has_token: bool,
) -> Result<Option<JoinCredential>, ConfigError> {
    let certificate = match (&options.join_tls_cert, &options.join_tls_key) {
        (Some(certificate), Some(key)) => {
            Some(JoinCredential::Certificate { certificate: certificate.clone(), private_key: key.clone() })
        }
        (None, None) => None,
        (None, Some(_)) => return Err(ConfigError::JoinTlsIncomplete { missing: "--join-tls-cert" }),
        (Some(_), None) => return Err(ConfigError::JoinTlsIncomplete { missing: "--join-tls-key" }),
    };
    let token = options.join_token_file.clone().map(|path| token(None, Some(path))).transpose()?;
    let credential = match (certificate, token) {
        (Some(_), Some(_)) => return Err(ConfigError::JoinCredentialTwice),
        (certificate, token) => certificate.or(token.map(JoinCredential::Token)),
    };
    if join_through.is_empty() || security.tls.is_none() {
        let Some(credential) = credential else { return Ok(None) };
        let given = match credential {
            JoinCredential::Certificate { .. } => "--join-tls-cert and --join-tls-key",
            JoinCredential::Token(_) => "--join-token-file",
        };
        let missing = match (join_through.is_empty(), security.tls.is_none()) {
            (true, true) => "--join HOST:PORT,... and TLS (--tls-dir, or --tls-ca, --tls-cert and --tls-key)",
            (true, false) => "--join HOST:PORT,... (the members' client addresses)",
            (false, _) => {
                "TLS (--tls-dir, or --tls-ca, --tls-cert and --tls-key); without it the node joins with the cluster's shared token"
            }
        };
        return Err(ConfigError::JoinCredentialUnused { given, missing });
    }
    if credential.is_none() && !has_token {
        return Err(ConfigError::JoinWithTlsNoCredential);
    }
    Ok(credential)
}

fn check_data_dir(path: &Path) -> Result<(), ConfigError> {
    if path.exists() {
        if !path.is_dir() {
            return Err(ConfigError::DataDirNotDirectory { path: path.to_owned() });
        }
        return Ok(());
    }
    let parent = match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        None => return Ok(()),
    };
    if parent.exists() && !parent.is_dir() {
        return Err(ConfigError::DataDirParentNotDirectory { path: path.to_owned(), parent: parent.to_owned() });
    }
    if !parent.is_dir() {
        return Err(ConfigError::DataDirParentMissing { path: path.to_owned(), parent: parent.to_owned() });
    }
    Ok(())
}

/// The TLS files and the client token file: single options over the files
/// of `--tls-dir`.
fn security(node_id: NodeId, options: &ServeOptions) -> Result<SecurityConfig, ConfigError> {
    let cluster_id = options.cluster_id.unwrap_or(1);
    let from_dir = |name: String, required: bool| -> Result<Option<PathBuf>, ConfigError> {
        let Some(dir) = &options.tls_dir else { return Ok(None) };
        let file = dir.join(name);
        if file.is_file() {
            Ok(Some(file))
        } else if required {
            Err(ConfigError::TlsDirIncomplete { dir: dir.clone(), file, cluster_id, node_id })
        } else {
            Ok(None)
        }
    };
    let pick = |given: &Option<PathBuf>, name: String, required: bool| match given {
        Some(path) => Ok(Some(path.clone())),
        None => from_dir(name, required),
    };
    let ca = pick(&options.tls_ca, "node-ca.pem".into(), true)?;
    let certificate = pick(&options.tls_cert, format!("node-{node_id}.pem"), true)?;
    let private_key = pick(&options.tls_key, format!("node-{node_id}.key"), true)?;
    let client_ca = pick(&options.tls_client_ca, "client-ca.pem".into(), false)?;
    let client_tokens = pick(&options.client_tokens, "client-tokens".into(), false)?;
    let tls = match (ca, certificate, private_key) {
        (None, None, None) if client_ca.is_none() => None,
        (Some(node_ca), Some(certificate), Some(private_key)) => {
            Some(net::NodeTlsFiles { node_ca, client_ca, certificate, private_key })
        }
        (None, _, _) => return Err(ConfigError::TlsIncomplete { missing: "--tls-ca" }),
        (_, None, _) => return Err(ConfigError::TlsIncomplete { missing: "--tls-cert" }),
        (_, _, None) => return Err(ConfigError::TlsIncomplete { missing: "--tls-key" }),
    };
    Ok(SecurityConfig { tls, client_tokens })
}

/// The token from exactly one of its sources.
fn token(token: Option<String>, token_file: Option<PathBuf>) -> Result<Token, ConfigError> {
    let bytes = match (token, token_file) {
        (Some(_), Some(_)) => return Err(ConfigError::TokenTwice),
        (None, None) => return Err(ConfigError::TokenMissing),
        (Some(token), None) => Bytes::from(token),
        (None, Some(path)) => {
            let mut contents =
                std::fs::read(&path).map_err(|source| ConfigError::TokenFileUnreadable { path, source })?;
            while contents.last().is_some_and(|&byte| byte == b'\n' || byte == b'\r') {
                contents.pop();
            }
            Bytes::from(contents)
        }
    };
    if bytes.is_empty() {
        return Err(ConfigError::TokenEmpty);
    }
    Ok(Token(bytes))
}

fn timing(options: &ServeOptions) -> Result<Timing, ConfigError> {
    let defaults = Timing::default();
    let election_ticks_min = options.election_ticks_min.unwrap_or(defaults.election_ticks_min);
    let election_ticks_max =
        options.election_ticks_max.unwrap_or(defaults.election_ticks_max.max(election_ticks_min + 1));
    if election_ticks_min < 2 || election_ticks_min >= election_ticks_max {
        return Err(ConfigError::ElectionTicks { min: election_ticks_min, max: election_ticks_max });
    }
    let heartbeat_ticks = options.heartbeat_ticks.unwrap_or(defaults.heartbeat_ticks);
    if heartbeat_ticks == 0 || heartbeat_ticks >= election_ticks_min {
        return Err(ConfigError::HeartbeatTicks { heartbeat: heartbeat_ticks, election_min: election_ticks_min });
    }
    let tick_interval = positive_duration("tick-interval", options.tick_interval.as_deref(), defaults.tick_interval)?;
    if tick_interval < Duration::from_millis(1) {
        // Each tick is a timer wake-up of every shard: at 1us an idle node
        // spent half a core on them.
        return Err(ConfigError::OutOfRange {
            option: "tick-interval",
            value: format!("{tick_interval:?}"),
            reason: "a tick must be at least 1ms (the default is 10ms)",
        });
    }
    Ok(Timing { election_ticks_min, election_ticks_max, heartbeat_ticks, tick_interval })
}

/// Parses `250us`, `10ms`, `2s`, `1m`.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "us" => Some(Duration::from_micros(number)),
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(number.checked_mul(3600)?)),
        _ => None,
    }
}

/// A duration option that must not be zero, or `default` when not given.
fn positive_duration(option: &'static str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    let duration = value.map_or(Ok(default), |value| duration(option, value))?;
    if duration.is_zero() {
        return Err(ConfigError::OutOfRange { option, value: "0".into(), reason: "it must be positive" });
    }
    Ok(duration)
}

fn duration(option: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).ok_or_else(|| ConfigError::BadDuration { option, value: value.into() })
}

/// Accepts a level or a list of `level` and `target=level` directives (a
/// subset of `tracing_subscriber::EnvFilter` syntax, strict so that a typo is
/// an error rather than a filter that matches nothing).
fn check_log_level(value: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |text: &str| LEVELS.contains(&text.to_ascii_lowercase().as_str());
    let is_target = |text: &str| {
        !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    let valid = value.split(',').all(|directive| match directive.split_once('=') {
        Some((target, level)) => is_target(target) && is_level(level),
        None => is_level(directive),
    });
    if valid {
        Ok(())
    } else {
        Err(ConfigError::BadLogLevel { value: value.into() })
    }
}

impl ClientConfig {
    pub fn from_args(args: ClientArgs) -> Result<ClientConfig, ConfigError> {
        let addrs = args
            .addrs
            .iter()
            .map(|value| {
                value.parse::<HostPort>().map_err(|error| ConfigError::BadAddress {
                    // The value may come from the environment: name both
                    // (an audit took the error to be about the flag).
                    option: "addr (or NODE_ADDR)",
                    value: value.clone(),
                    // The reason alone: the error names the value already.
                    reason: match error {
                        PeerSpecError::BadAddress { reason, .. } => reason.to_string(),
                        other => other.to_string(),
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(ConfigError::Missing { option: "addr" });
        }
        positive("cluster-id", args.cluster_id)?;
        let token = match token(args.token, args.token_file) {
            // A client certificate is a credential of its own.
            Err(ConfigError::TokenMissing) if args.tls_cert.is_some() => None,
            Err(ConfigError::TokenMissing) => return Err(ConfigError::ClientCredentialMissing),
            other => Some(other?),
        };
        let tls = args.tls_ca.map(|node_ca| net::ClientTlsFiles {
            node_ca,
            certificate: args.tls_cert,
            private_key: args.tls_key,
        });
        let timeout = positive_duration("timeout", Some(&args.timeout), Duration::ZERO)?;
        Ok(ClientConfig { addrs, cluster_id: args.cluster_id, token, tls, timeout, shard: args.shard.unwrap_or(0) })
    }
}

/// The bytes of `--value-file` (`-`: standard input).
fn read_value_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|source| ConfigError::ValueFileUnreadable { path: path.to_owned(), source })
}

impl KvCommand {
    pub fn from_args(args: KvArgs) -> Result<KvCommand, ConfigError> {
        let client = ClientConfig::from_args(args.client)?;
        let key = |key: String| -> Result<Bytes, ConfigError> {
            if key.is_empty() || key.len() > crate::kv::KEY_SIZE_MAX {
                return Err(ConfigError::ArgumentOutOfRange {
                    argument: "<KEY>",
                    value: format!("{} bytes long", key.len()),
                    reason: "a key is 1 to 65536 bytes",
                });
            }
            Ok(Bytes::from(key))
        };
        let mut consistency = None;
        let mut raw = false;
        let op = match args.op {
            KvOpArgs::Put { key: name, value, value_file } => {
                let value = match (value, value_file) {
                    (Some(value), _) => Bytes::from(value),
                    (None, Some(path)) => Bytes::from(read_value_file(&path)?),
                    (None, None) => unreachable!("clap requires VALUE or --value-file"),
                };
                KvOp::Put { key: key(name)?, value }
            }
            KvOpArgs::Get { key: name, consistency: asked, raw: as_is } => {
                consistency = asked.map(ReadConsistency::from);
                raw = as_is;
                KvOp::Get { key: key(name)? }
            }
            KvOpArgs::Delete { key: name } => KvOp::Delete { key: key(name)? },
            KvOpArgs::Cas { key: name, expected, expect_absent, new, delete } => {
                debug_assert!(expected.is_some() != expect_absent, "clap enforces one of --expected, --expect-absent");
                debug_assert!(new.is_some() != delete, "clap enforces one of --new, --delete");
                KvOp::Cas { key: key(name)?, expected: expected.map(Bytes::from), new: new.map(Bytes::from) }
            }
        };
        Ok(KvCommand { client, op, consistency, at_least_once: args.at_least_once, raw })
    }
}

/// The id and peer address of a member to add (`add-learner`,
/// `add-witness`), checked: a positive id and a `HOST:PORT`.
fn new_member(id: u64, peer_addr: String) -> Result<(u64, String), ConfigError> {
    positive_id(id)?;
    peer_addr.parse::<HostPort>().map_err(|error| ConfigError::BadAddressArgument {
        argument: "<PEER_ADDR>",
        value: peer_addr.clone(),
        reason: error.to_string(),
    })?;
    Ok((id, peer_addr))
}

impl AdminCommand {
    pub fn from_args(args: AdminArgs) -> Result<AdminCommand, ConfigError> {
        let every_shard = args.client.shard.is_none();
        let client = ClientConfig::from_args(args.client)?;
        let body = match args.action {
            AdminActionArgs::Status => RequestBody::Status,
            AdminActionArgs::AddLearner { id, peer_addr } => {
                let (id, addr) = new_member(id, peer_addr)?;
                RequestBody::Admin(AdminRequest::AddLearner { id, addr })
            }
            AdminActionArgs::AddWitness { id, peer_addr } => {
                let (id, addr) = new_member(id, peer_addr)?;
                RequestBody::Admin(AdminRequest::AddWitness { id, addr })
            }
            AdminActionArgs::Promote { id } => RequestBody::Admin(AdminRequest::Promote { id: positive_id(id)? }),
            AdminActionArgs::Remove { id } => RequestBody::Admin(AdminRequest::Remove { id: positive_id(id)? }),
            AdminActionArgs::TransferLeader { id } => {
                RequestBody::Admin(AdminRequest::TransferLeader { id: positive_id(id)? })
            }
            AdminActionArgs::Snapshot => RequestBody::Admin(AdminRequest::TakeSnapshot),
            AdminActionArgs::Stats => RequestBody::Admin(AdminRequest::Stats),
            AdminActionArgs::Backup { .. } => unreachable!("`node admin backup` is its own command"),
            AdminActionArgs::Sessions { max, timeout, replies_max, reply_bytes_max } => {
                let timeout_ms = match timeout {
                    Some(text) => {
                        let timeout = duration("timeout", &text)?;
                        if timeout.as_millis() < u128::from(crate::session::TIMEOUT_MS_MIN) {
                            return Err(ConfigError::OutOfRange {
                                option: "timeout",
                                value: text,
                                reason: "a session timeout is at least 1s",
                            });
                        }
                        timeout.as_millis() as u64
                    }
                    None => 0,
                };
                let settings = net::SessionSettings {
                    sessions_max: max.map(|max| positive("max", max)).transpose()?.unwrap_or(0),
                    timeout_ms,
                    replies_max: replies_max.map(|max| positive("replies-max", max)).transpose()?.unwrap_or(0),
                    reply_bytes_max: reply_bytes_max
                        .map(|max| positive("reply-bytes-max", max))
                        .transpose()?
                        .unwrap_or(0),
                };
                RequestBody::Admin(AdminRequest::SessionSettings(settings))
            }
        };
        Ok(AdminCommand { client, body, every_shard })
    }
}

impl DevConfig {
    pub fn from_args(args: DevArgs) -> Result<DevConfig, ConfigError> {
        if args.nodes == 0 || args.nodes > DEV_NODES_MAX || args.nodes.is_multiple_of(2) {
            return Err(ConfigError::OutOfRange {
                option: "nodes",
                value: args.nodes.to_string(),
                reason: "a dev cluster has 1, 3, 5, 7 or 9 nodes",
            });
        }
        let last_port = u32::from(args.base_port) + 200 + args.nodes - 1;
        if args.base_port < 1024 || last_port > u32::from(u16::MAX) {
            return Err(ConfigError::OutOfRange {
                option: "base-port",
                value: args.base_port.to_string(),
                reason: "the dev ports must lie between 1024 and 65535",
            });
        }
        if args.shards == 0 || args.shards > SHARDS_MAX {
            return Err(ConfigError::OutOfRange {
                option: "shards",
                value: args.shards.to_string(),
                reason: "the number of shards is 1 to 1024",
            });
        }
        if let Some(root) = &args.data_root {
            check_data_dir(root)?;
        }
        check_log_level(&args.log_level)?;
        Ok(DevConfig {
            nodes: args.nodes,
            base_port: args.base_port,
            data_root: args.data_root,
            keep_data: args.keep_data,
            shards: args.shards,
            log_level: args.log_level,
            forward_writes: args.forward_writes,
            resp: !args.no_resp,
            metrics: !args.no_metrics,
        })
    }
}

/// `--cores`: 1 to the shard count (a core without a shard would idle).
fn check_cores(cores: u32, shards: u32) -> Result<u32, ConfigError> {
    if cores == 0 || cores > shards {
        return Err(ConfigError::OutOfRange {
            option: "cores",
            value: cores.to_string(),
            reason: "the number of cores is 1 to the number of shards",
        });
    }
    Ok(cores)
}
