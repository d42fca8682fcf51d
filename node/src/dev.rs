//! `node dev`: a local cluster on loopback with temporary data directories,
//! for trying the node out. Each member is this same binary running `serve`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{DevConfig, ServeConfig, DEV_TOKEN};
use crate::discovery::PeerSource;

/// Why the dev cluster could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot create the data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("cannot start node {0}: {1}")]
    Spawn(u64, std::io::Error),
    #[error("node {0} exited early with {1}; see its log above")]
    Exited(u64, std::process::ExitStatus),
    #[error("cannot install the signal handler: {0}")]
    Signal(String),
}

/// The `serve` arguments that reproduce `config`.
pub fn serve_args(config: &ServeConfig) -> Vec<String> {
    let peers = match &config.peers {
        PeerSource::Static(peers) => {
            peers.iter().map(|peer| format!("{}={}", peer.id, peer.addr)).collect::<Vec<_>>().join(",")
        }
        other => panic!("dev clusters use static peers, not {other:?}"),
    };
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--node-id".into(),
        config.node_id.to_string(),
        "--cluster-id".into(),
        config.cluster_id.to_string(),
        "--peer-addr".into(),
        config.peer_addr.to_string(),
        "--client-addr".into(),
        config.client_addr.to_string(),
        "--peers".into(),
        peers,
        "--data-dir".into(),
        config.data_dir.display().to_string(),
        "--shards".into(),
        config.shards.to_string(),
        "--cores".into(),
        config.cores().to_string(),
        "--log-level".into(),
        config.log_level.clone(),
        "--pin-cores".into(),
        config.pin_cores.to_string(),
        "--forward-writes".into(),
        config.forward_writes.to_string(),
    ];
    if let Some(addr) = config.resp_addr {
        args.extend(["--resp-addr".into(), addr.to_string()]);
    }
    if let Some(addr) = config.metrics_addr {
        args.extend(["--metrics-addr".into(), addr.to_string()]);
    }
    args
}

/// Copies a node's log to this process's, each line tagged with the node:
/// the three nodes' lines interleave, and most do not name their node.
fn prefix_log(id: u64, log: Option<std::process::ChildStderr>) {
    let Some(log) = log else { return };
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(log).lines() {
            let Ok(line) = line else { break };
            eprintln!("[node {id}] {line}");
        }
    });
}

/// Starts the dev cluster's nodes as child processes of this one, into
/// `children` (those started before a failure are there to be stopped).
fn spawn_nodes(
    config: &DevConfig,
    root: &std::path::Path,
    token: &str,
    children: &mut Vec<(u64, Child)>,
) -> Result<(), DevError> {
    let exe = std::env::current_exe().map_err(|error| DevError::Spawn(0, error))?;
    for serve in config.serve_configs(root) {
        let mut child = Command::new(&exe)
            .args(serve_args(&serve))
            .env("NODE_TOKEN", token)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|error| DevError::Spawn(serve.node_id, error))?;
        prefix_log(serve.node_id, child.stderr.take());
        children.push((serve.node_id, child));
    }
    Ok(())
}

/// Starts the members, waits for Ctrl-C, stops them and removes the data
/// (unless asked to keep it).
pub fn run_dev(config: DevConfig) -> Result<(), DevError> {
    let root = config
        .data_root
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("raft-node-dev-{}", std::process::id())));
    let created_root = !root.exists();
    std::fs::create_dir_all(&root).map_err(|error| DevError::DataDir(root.clone(), error))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).map_err(|e| DevError::Signal(e.to_string()))?;
    }
    let token = String::from_utf8_lossy(DEV_TOKEN).to_string();
    let mut children: Vec<(u64, Child)> = Vec::new();
    let mut result = spawn_nodes(&config, &root, &token, &mut children)
        .and_then(|()| wait_serving(&config, &root, &token, &mut children, &stop));
    if result.is_ok() && !stop.load(Ordering::SeqCst) {
        let first_client = config.ports(1).1;
        println!("dev cluster: {} nodes on 127.0.0.1, data in {}", config.nodes, root.display());
        for id in 1..=u64::from(config.nodes) {
            let (peer, client) = config.ports(id);
            let resp = config.resp_port(id).map(|port| format!(", redis 127.0.0.1:{port}")).unwrap_or_default();
            let metrics = config
                .metrics_port(id)
                .map(|port| format!(", metrics http://127.0.0.1:{port}/metrics"))
                .unwrap_or_default();
            println!("  node {id}: peers 127.0.0.1:{peer}, clients 127.0.0.1:{client}{resp}{metrics}");
        }
        if let Some(port) = config.resp_port(1) {
            println!("redis: redis-cli -p {port} -a {token} set hello world");
        }
        if let Some(port) = config.metrics_port(1) {
            println!("metrics: curl -s http://127.0.0.1:{port}/metrics; curl -i http://127.0.0.1:{port}/readyz");
        }
        println!("try:  NODE_TOKEN={token} node kv --addr 127.0.0.1:{first_client} put hello world");
        println!("      NODE_TOKEN={token} node admin --addr 127.0.0.1:{first_client} status");
        println!("Ctrl-C stops the cluster.");
        result = watch(&mut children, &stop);
    }
    for (_, child) in &mut children {
        // SAFETY: sending a signal to a child we started.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
    }
    for (_, child) in &mut children {
        let _ = child.wait();
    }
    if !config.keep_data {
        // Only what this command made: the nodes' directories, and the root
        // if it created it and nothing else is left in it (`--data-root .`
        // removed the whole working directory).
        for serve in config.serve_configs(&root) {
            let _ = std::fs::remove_dir_all(&serve.data_dir);
        }
        if created_root {
            let _ = std::fs::remove_dir(&root);
        }
    }
    result
}

/// How long `node dev` waits for its nodes to answer before it prints the
/// banner anyway (with a warning).
const SERVING_WAIT: Duration = Duration::from_secs(30);

/// Waits until every node answers a status call on its client port, so
/// that the banner is printed for a cluster that serves: it came before a
/// node had failed on a busy port (found by an audit), and the failure
/// followed the instructions. A node that exits meanwhile is the error it
/// was; Ctrl-C ends the wait.
fn wait_serving(
    config: &DevConfig,
    root: &std::path::Path,
    token: &str,
    children: &mut [(u64, Child)],
    stop: &AtomicBool,
) -> Result<(), DevError> {
    let deadline = std::time::Instant::now() + SERVING_WAIT;
    let mut waiting = config.serve_configs(root);
    while !waiting.is_empty() && !stop.load(Ordering::SeqCst) {
        if let Some(ended) = node_exited(children, stop) {
            return ended;
        }
        waiting.retain(|serve| !answers_status(serve, token));
        if std::time::Instant::now() >= deadline {
            let ids: Vec<String> = waiting.iter().map(|serve| serve.node_id.to_string()).collect();
            eprintln!(
                "warning: node(s) {} do not answer after {}s; see their log",
                ids.join(", "),
                SERVING_WAIT.as_secs()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether the node answers a status call at its client address.
fn answers_status(serve: &ServeConfig, token: &str) -> bool {
    let client = crate::config::ClientConfig {
        addrs: vec![crate::discovery::HostPort { host: "127.0.0.1".into(), port: serve.client_addr.port() }],
        cluster_id: serve.cluster_id,
        token: Some(crate::config::Token(bytes::Bytes::copy_from_slice(token.as_bytes()))),
        tls: None,
        timeout: Duration::from_millis(500),
        shard: 0,
    };
    matches!(crate::client_cmd::call(&client, net::RequestBody::Status), Ok(net::ResponseStatus::Ok(_)))
}

/// Waits until `stop` is set (Ctrl-C or SIGTERM), or a node exits on its
/// own: that is an error.
fn watch(children: &mut [(u64, Child)], stop: &AtomicBool) -> Result<(), DevError> {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(ended) = node_exited(children, stop) {
            return ended;
        }
    }
}

/// If a node has exited: an error, unless a stop follows soon. A
/// terminal's Ctrl-C reaches the nodes as well (they share its process
/// group) and one may exit before this process's handler has run.
fn node_exited(children: &mut [(u64, Child)], stop: &AtomicBool) -> Option<Result<(), DevError>> {
    let (id, status) = children.iter_mut().find_map(|(id, child)| child.try_wait().ok().flatten().map(|s| (*id, s)))?;
    std::thread::sleep(Duration::from_millis(500));
    Some(if stop.load(Ordering::SeqCst) { Ok(()) } else { Err(DevError::Exited(id, status)) })
}
