//! A local cluster of `node serve` processes on loopback, for `sweep`,
//! `demo` and the integration test.
//!
//! The cluster owns its processes and its temporary directory (data and
//! logs): dropping it stops the nodes (SIGTERM, then SIGKILL after a grace
//! period) and removes the directory, on success, on error and after a
//! Ctrl-C alike. The nodes run in their own process group so a terminal's
//! Ctrl-C reaches only the bench, which then stops them in order; and each
//! node gets SIGTERM if the bench dies without cleaning up
//! (`PR_SET_PDEATHSIG`).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::kv::KvOp;
use net::{ClientConfig, ClientTls, ClientTlsFiles, Roles};
use rand::Rng;

/// The token of clusters the bench starts (they listen on loopback only).
pub const LOCAL_TOKEN: &str = "bench-local-cluster";
/// The user a TLS local cluster's client certificate names (every role:
/// the bench writes, reads and asks for stats).
pub const BENCH_USER: &str = "bench";
/// The cluster id of clusters the bench starts.
pub const LOCAL_CLUSTER_ID: u64 = 1;
/// How long a node gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a local cluster could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "the node binary was not found (looked at {looked}); build it with the profile of this bench (`cargo build --profile production -p node`, as README does), \
         or give --node-bin PATH (or BENCH_NODE_BIN)"
    )]
    NodeBinaryMissing { looked: String },
    #[error("building the node binary failed ({0}); see cargo's output above")]
    Build(String),
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("no free block of loopback ports found")]
    NoPorts,
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("node {id} exited with {status}; the end of its log ({log}):\n{tail}")]
    NodeExited { id: u64, status: std::process::ExitStatus, log: PathBuf, tail: String },
    #[error("no leader answered a write on shard {shard} within {waited:?} (last: {last}); node logs are in {dir}")]
    NoLeader { shard: u32, waited: Duration, last: String, dir: PathBuf },
    #[error("stopped by a signal")]
    Interrupted,
    #[error("cannot write the cluster's TLS credentials: {0}")]
    Credentials(#[from] net::tls::DevCertError),
    #[error("cannot load the bench's TLS credentials: {0}")]
    ClientCredentials(#[from] net::CredentialsError),
}

/// What cluster to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub node_binary: PathBuf,
    pub nodes: u32,
    pub shards: u32,
    /// Extra `node serve` arguments (for example `--batch-bytes-max 65536`).
    pub extra_args: Vec<String>,
    /// The nodes' `--log-level`.
    pub log_level: String,
    /// Keep the data and log directory instead of removing it.
    pub keep: bool,
    /// Run the nodes with TLS (mutual TLS between nodes, a client
    /// certificate for the bench), from throwaway credentials written into
    /// the cluster's directory (`node certs`' files, `--tls-dir`).
    pub tls: bool,
}

impl ClusterSpec {
    /// Three nodes of `node_binary`, one shard, default settings,
    /// plaintext, removed when stopped.
    pub fn three_nodes(node_binary: PathBuf) -> ClusterSpec {
        ClusterSpec {
            node_binary,
            nodes: 3,
            shards: 1,
            extra_args: Vec::new(),
            log_level: "warn".into(),
            keep: false,
            tls: false,
        }
    }

    /// The core threads each node runs: `--cores` from `extra_args`, or
    /// the machine's CPUs divided among the nodes
    /// ([`net::runtime::shared_machine_cores`]).
    pub fn cores(&self) -> u32 {
        let given = self.extra_args.iter().position(|arg| arg == "--cores");
        given
            .and_then(|at| self.extra_args.get(at + 1))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| net::runtime::shared_machine_cores(self.shards, self.nodes))
    }

    fn cores_given(&self) -> bool {
        self.extra_args.iter().any(|arg| arg == "--cores")
    }
}

/// A running local cluster.
pub struct LocalCluster {
    children: Vec<(u64, Child)>,
    client_addrs: Vec<SocketAddr>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    spec: ClusterSpec,
    /// The bench's client credentials when the cluster runs TLS.
    client_tls: Option<ClientTlsFiles>,
}

impl LocalCluster {
    /// Starts the nodes; see [`LocalCluster::wait_ready`] for when they serve.
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster, ClusterError> {
        let dir = tempfile::Builder::new().prefix("raft-bench-").tempdir().map_err(ClusterError::TempDir)?;
        let path = dir.path().to_path_buf();
        let cores = spec.cores();
        // Each node listens on its peer and client ports plus each core.
        let stride = u16::try_from(cores).expect("at most 1024 shards");
        let ports = free_port_block(2 * spec.nodes as u16 * stride).ok_or(ClusterError::NoPorts)?;
        let peer_port = |id: u64| ports + (2 * (id as u16 - 1)) * stride;
        let client_port = |id: u64| ports + (2 * (id as u16 - 1) + 1) * stride;
        let peers = (1..=u64::from(spec.nodes))
            .map(|id| format!("{id}=127.0.0.1:{}", peer_port(id)))
            .collect::<Vec<_>>()
            .join(",");
        let mut tls_args = Vec::new();
        let client_tls = if spec.tls {
            let tls_dir = path.join("tls");
            let node_ids: Vec<u64> = (1..=u64::from(spec.nodes)).collect();
            let written =
                net::tls::dev_certificates(&tls_dir, LOCAL_CLUSTER_ID, &node_ids, &[(BENCH_USER, Roles::ALL)])?;
            tls_args = vec!["--tls-dir".to_string(), tls_dir.display().to_string()];
            written.client_tls(BENCH_USER)
        } else {
            None
        };
        let mut cluster = LocalCluster {
            children: Vec::new(),
            client_addrs: (1..=u64::from(spec.nodes))
                .map(|id| SocketAddr::from(([127, 0, 0, 1], client_port(id))))
                .collect(),
            dir: Some(dir),
            path,
            spec: spec.clone(),
            client_tls,
        };
        for id in 1..=u64::from(spec.nodes) {
            let data_dir = cluster.path.join(format!("node-{id}"));
            let log_path = cluster.log_path(id);
            let log = std::fs::File::create(&log_path).map_err(ClusterError::TempDir)?;
            let log_err = log.try_clone().map_err(ClusterError::TempDir)?;
            let mut command = Command::new(&spec.node_binary);
            command
                .arg("serve")
                .args(["--node-id", &id.to_string()])
                .args(["--cluster-id", &LOCAL_CLUSTER_ID.to_string()])
                .args(["--peer-addr", &format!("127.0.0.1:{}", peer_port(id))])
                .args(["--client-addr", &format!("127.0.0.1:{}", client_port(id))])
                .args(["--peers", &peers])
                .args(["--data-dir", &data_dir.display().to_string()])
                .args(["--shards", &spec.shards.to_string()])
                .args(if spec.cores_given() { Vec::new() } else { vec!["--cores".to_string(), cores.to_string()] })
                .args(["--log-level", &spec.log_level])
                // Three nodes share this machine: pinning would put every
                // node's first thread on CPU 0.
                .args(["--pin-cores", "false"])
                .args(&tls_args)
                .args(&spec.extra_args)
                .env("NODE_TOKEN", LOCAL_TOKEN)
                .env_remove("NODE_TOKEN_FILE")
                .env_remove("NODE_CONFIG")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .process_group(0);
            // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child =
                command.spawn().map_err(|source| ClusterError::Spawn { binary: spec.node_binary.clone(), source })?;
            cluster.children.push((id, child));
        }
        Ok(cluster)
    }

    /// The nodes' client addresses (core 0's, where every shard is reachable).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// The process ids of the running nodes, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, child)| child.id()).collect()
    }

    /// Where data and logs are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bench's TLS files (the node CA and its client certificate) when
    /// the cluster runs TLS.
    pub fn client_tls(&self) -> Option<&ClientTlsFiles> {
        self.client_tls.as_ref()
    }

    /// How a client of this cluster connects: its certificate with TLS, the
    /// shared token without.
    pub fn client_config(&self) -> Result<ClientConfig, ClusterError> {
        Ok(match &self.client_tls {
            Some(files) => {
                ClientConfig::with_tls(LOCAL_CLUSTER_ID, ClientTls::load(LOCAL_CLUSTER_ID, files)?, Bytes::new())
            }
            None => ClientConfig::new(LOCAL_CLUSTER_ID, Bytes::from_static(LOCAL_TOKEN.as_bytes())),
        })
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.path.join(format!("node-{id}.log"))
    }

    /// Fails if a node has exited.
    pub fn check_alive(&mut self) -> Result<(), ClusterError> {
        for index in 0..self.children.len() {
            let (id, child) = &mut self.children[index];
            let id = *id;
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log_path(id);
                let tail = log_tail(&log, 20);
                return Err(ClusterError::NodeExited { id, status, log, tail });
            }
        }
        Ok(())
    }

    /// Waits until every shard has a leader that commits a write (a `Put`
    /// of an empty value under a `bench/ready/N` key of that shard, see
    /// [`ready_key`]), following `NotLeader`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        for shard in 0..self.spec.shards {
            loop {
                self.check_alive()?;
                if crate::signal::stop_requested() {
                    return Err(ClusterError::Interrupted);
                }
                let probe = probe_write(
                    &self.client_addrs,
                    self.client_config()?,
                    shard,
                    self.spec.shards,
                    Duration::from_millis(1_500),
                );
                let last = match probe {
                    Ok(()) => break,
                    Err(reason) => reason,
                };
                if start.elapsed() >= timeout {
                    return Err(ClusterError::NoLeader { shard, waited: timeout, last, dir: self.path.clone() });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Stops the nodes and removes the directory (unless kept); also what
    /// dropping does.
    pub fn stop(&mut self) {
        for (_, child) in &mut self.children {
            // SAFETY: signalling a child of ours that has not been reaped.
            if matches!(child.try_wait(), Ok(None)) {
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (_, child) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.children.clear();
        if let Some(dir) = self.dir.take() {
            if self.spec.keep {
                eprintln!("kept the cluster's data and logs in {}", dir.keep().display());
            } else if let Err(error) = dir.close() {
                eprintln!("warning: cannot remove {}: {error}", self.path.display());
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first key `bench/ready/N` that belongs to `shard` of `shards`: a
/// node refuses a key of another shard, so each shard's probe needs one of
/// its own.
pub fn ready_key(shard: u32, shards: u32) -> Bytes {
    (0u32..)
        .map(|n| Bytes::from(format!("bench/ready/{n}")))
        .find(|key| net::kv::shard_for_key(key, shards) == shard)
        .expect("every shard owns some key")
}

/// One write through the leader of `shard`, starting at any node (outside
/// a session: it is idempotent).
fn probe_write(
    addrs: &[SocketAddr],
    config: ClientConfig,
    shard: u32,
    shards: u32,
    timeout: Duration,
) -> Result<(), String> {
    let command = KvOp::Put { key: ready_key(shard, shards), value: Bytes::new() }.encode();
    let mut client = net::Client::new(addrs.to_vec(), config, shard, timeout);
    tokio_uring::start(async move {
        client.write_at_least_once(command).await.map(|_| ()).map_err(|error| error.to_string())
    })
}

/// The first of `count` consecutive loopback ports that are all free now,
/// below the kernel's ephemeral range: a port in it can be taken as the
/// source port of any outgoing connection between this check and the
/// node's bind (CI once saw a node of `a_sweep_compares_shard_counts` fail
/// to listen on 49341, taken meanwhile by a connection of a test running
/// beside it).
fn free_port_block(count: u16) -> Option<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000, ephemeral_low.max(10_000 + 2 * count).saturating_sub(count));
    let mut rng = rand::rng();
    for _ in 0..200 {
        let base: u16 = rng.random_range(low..high);
        let listeners: Result<Vec<TcpListener>, _> =
            (0..count).map(|offset| TcpListener::bind(("127.0.0.1", base + offset))).collect();
        if listeners.is_ok() {
            return Some(base);
        }
    }
    None
}

/// The last `lines` lines of a log file.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The cargo profile that builds into the target directory `dir_name`
/// (`debug` is the `dev` profile's, built without a flag; every other
/// profile's directory bears its name: `release`, `production`).
fn cargo_profile(dir_name: &str) -> Option<&str> {
    (dir_name != "debug").then_some(dir_name)
}

/// Finds the `node` binary: `explicit` if given; else next to this
/// executable (the same cargo target directory, or its parent for test
/// binaries in `deps/`). If `build` and this process runs under cargo
/// (`cargo run` sets `CARGO`), it first builds the node binary with the same
/// profile (`release`, or `production` with link-time optimization), so a
/// changed node is never measured stale nor measured in another build.
pub fn find_node_binary(explicit: Option<&Path>, build: bool) -> Result<PathBuf, ClusterError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(ClusterError::NodeBinaryMissing { looked: path.display().to_string() })
        };
    }
    let exe = std::env::current_exe()
        .map_err(|error| ClusterError::Spawn { binary: PathBuf::from("bench"), source: error })?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("node"));
        if dir.file_name().is_some_and(|name| name == "deps") {
            if let Some(parent) = dir.parent() {
                candidates.push(parent.join("node"));
            }
        }
    }
    if let (true, Some(cargo)) = (build, std::env::var_os("CARGO")) {
        // A test binary runs from the profile directory's `deps/`.
        let profile_dir = exe.parent().and_then(|dir| if dir.ends_with("deps") { dir.parent() } else { Some(dir) });
        let profile = profile_dir.and_then(Path::file_name).and_then(|name| name.to_str()).and_then(cargo_profile);
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let flags = profile.map(|name| format!(" --profile {name}")).unwrap_or_default();
        eprintln!("building the node binary (cargo build{flags} -p node) ...");
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", "node", "--bin", "node", "--manifest-path"]).arg(&manifest);
        if let Some(name) = profile {
            command.args(["--profile", name]);
        }
        let status = command.status().map_err(|error| ClusterError::Build(error.to_string()))?;
        if !status.success() {
            return Err(ClusterError::Build(status.to_string()));
        }
    }
    if let Some(found) = candidates.iter().find(|candidate| candidate.is_file()) {
        return Ok(found.clone());
    }
    let looked = candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(ClusterError::NodeBinaryMissing { looked })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local cluster's ports lie below the ephemeral range, where no
    /// outgoing connection takes them between the check and the nodes'
    /// binds (they were drawn from 20,000-60,000 before, which this
    /// machine's range, 32,768-60,999, overlaps).
    #[test]
    fn local_cluster_ports_lie_below_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("Linux");
        let low: u16 = range.split_whitespace().next().and_then(|low| low.parse().ok()).expect("the range");
        for _ in 0..50 {
            let base = free_port_block(12).expect("a free block");
            assert!(
                base >= 10_000 && base + 12 <= low,
                "ports {base}..{} reach the ephemeral range {low}..",
                base + 12
            );
        }
    }

    fn spec(nodes: u32, shards: u32, extra_args: &[&str]) -> ClusterSpec {
        ClusterSpec {
            node_binary: PathBuf::from("node"),
            nodes,
            shards,
            extra_args: extra_args.iter().map(ToString::to_string).collect(),
            log_level: "warn".into(),
            keep: false,
            tls: false,
        }
    }

    #[test]
    fn nodes_divide_the_machines_cpus_unless_told() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(spec(3, 4, &[]).cores(), (cpus / 3).clamp(1, 4));
        assert_eq!(spec(1, 64, &[]).cores(), cpus.min(64));
        assert_eq!(spec(3, 1, &[]).cores(), 1, "never more cores than shards");
        let told = spec(3, 4, &["--batch-bytes-max", "65536", "--cores", "2"]);
        assert_eq!((told.cores(), told.cores_given()), (2, true));
    }
}
