//! Bad starts end with a clear error and a non-zero exit: a peer list without
//! this node, a port in use, a data directory of another cluster or node, an
//! unresolvable DNS name, invalid flags. A data directory on a file system
//! that loses it on a restart (or costs synced writes) starts with a warning.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node"))
        .args(args)
        .env("NODE_TOKEN", "t")
        .stdin(Stdio::null())
        .output()
        .expect("run node")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn serve_args<'a>(
    id: &'a str,
    peer: &'a str,
    client: &'a str,
    peers: &'a str,
    dir: &'a str,
    cluster: &'a str,
) -> Vec<&'a str> {
    vec![
        "serve",
        "--node-id",
        id,
        "--cluster-id",
        cluster,
        "--peer-addr",
        peer,
        "--client-addr",
        client,
        "--peers",
        peers,
        "--data-dir",
        dir,
        "--log-level",
        "error",
    ]
}

#[test]
fn peer_list_without_this_node_is_refused() {
    let dir = std::env::temp_dir().join(format!("node-start-{}-a", std::process::id()));
    let output =
        node(&serve_args("4", "127.0.0.1:22500", "127.0.0.1:22501", "1=127.0.0.1:22502", dir.to_str().unwrap(), "1"));
    assert!(!output.status.success());
    assert!(stderr(&output).contains('4'), "{}", stderr(&output));
}

#[test]
fn port_in_use_is_refused() {
    let _taken = std::net::TcpListener::bind("127.0.0.1:22510").unwrap();
    let dir = std::env::temp_dir().join(format!("node-start-{}-b", std::process::id()));
    let output =
        node(&serve_args("1", "127.0.0.1:22510", "127.0.0.1:22511", "1=127.0.0.1:22510", dir.to_str().unwrap(), "1"));
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("127.0.0.1:22510") && text.contains("in use"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn data_directory_of_another_cluster_is_refused() {
    let dir = std::env::temp_dir().join(format!("node-start-{}-c", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_text = dir.to_str().unwrap().to_string();
    // A single-node cluster 1 initializes the directory, then stops.
    let mut first = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(serve_args("1", "127.0.0.1:22520", "127.0.0.1:22521", "1=127.0.0.1:22520", &dir_text, "1"))
        .env("NODE_TOKEN", "t")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert!(status.success(), "a clean shutdown exits 0, got {status}");
    let output = node(&serve_args("1", "127.0.0.1:22520", "127.0.0.1:22521", "1=127.0.0.1:22520", &dir_text, "2"));
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("cluster"), "{text}");
    let output = node(&serve_args("2", "127.0.0.1:22520", "127.0.0.1:22521", "2=127.0.0.1:22520", &dir_text, "1"));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("node"), "{}", stderr(&output));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unresolvable_dns_name_is_refused() {
    let dir = std::env::temp_dir().join(format!("node-start-{}-d", std::process::id()));
    let output = node(&[
        "serve",
        "--node-id",
        "1",
        "--cluster-id",
        "1",
        "--peer-addr",
        "127.0.0.1:22530",
        "--client-addr",
        "127.0.0.1:22531",
        "--discovery-dns",
        "node-1.invalid",
        "--discovery-port",
        "22530",
        "--discovery-nameserver",
        "127.0.0.1:22539",
        "--discovery-timeout",
        "300ms",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("node-1.invalid"), "{}", stderr(&output));
}

#[test]
fn invalid_flags_are_refused_with_usage() {
    let output = node(&["serve", "--node-id", "0"]);
    assert!(!output.status.success());
    assert!(!stderr(&output).is_empty());
    let help = node(&["serve", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--data-dir"));
}

/// Runs a single-node `serve` on `dir` for a moment at log level `warn`
/// and returns what it logged.
fn serve_briefly(dir: &std::path::Path, peer: &str, client: &str) -> String {
    serve_listed_briefly(dir, peer, peer, client)
}

/// The same, with `--peers` listing the node at `listed`.
fn serve_listed_briefly(dir: &std::path::Path, peer: &str, listed: &str, client: &str) -> String {
    let mut args = serve_args("1", peer, client, "", dir.to_str().unwrap(), "1");
    let peers = format!("1={listed}");
    args[10] = &peers;
    let level = args.len() - 1;
    args[level] = "warn";
    let child = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(&args)
        .env("NODE_TOKEN", "t")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "a clean shutdown exits 0: {}", stderr(&output));
    stderr(&output)
}

#[test]
fn a_data_directory_in_memory_is_warned_about() {
    let mount_point = std::env::temp_dir().join(format!("node-start-{}-tmpfs", std::process::id()));
    std::fs::create_dir_all(&mount_point).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&mount_point).status();
    if !mounted.is_ok_and(|status| status.success()) {
        // CI runs as root, where this never happens.
        eprintln!("SKIPPED: cannot mount a tmpfs at {} (needs root)", mount_point.display());
        let _ = std::fs::remove_dir(&mount_point);
        return;
    }
    let text = serve_briefly(&mount_point.join("node"), "127.0.0.1:22540", "127.0.0.1:22541");
    let _ = Command::new("umount").arg(&mount_point).status();
    let _ = std::fs::remove_dir(&mount_point);
    assert!(text.contains("is on tmpfs") && text.contains("empties it"), "{text}");
}

#[test]
fn the_data_directory_s_file_system_is_checked_at_start() {
    // Whatever this machine's temporary directory is on, the node says
    // what the check finds there (on the project's machine: ext4 without a
    // journal), and nothing when it finds nothing.
    let dir = std::env::temp_dir().join(format!("node-start-{}-fs", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mount, finding) = wal::filesystem::check(&dir).expect("the temporary directory's mount is known");
    let text = serve_briefly(&dir, "127.0.0.1:22550", "127.0.0.1:22551");
    let _ = std::fs::remove_dir_all(&dir);
    match finding {
        Some(finding) => {
            let warning = finding.warning(&dir, &mount);
            let start = &warning[..warning.find(':').unwrap()];
            assert!(text.contains(start), "expected {warning:?} in {text}");
        }
        None => assert!(!text.contains("the data directory"), "{text}"),
    }
    assert!(!text.contains("--peers lists this node"), "{text}");
}

/// A data directory on a file system with less free space than one log
/// segment is warned about at start, with the sizes: such a node refused
/// every write with "disk full" while `df` showed it nearly empty (an audit
/// on a 64 MiB tmpfs). Needs root to mount the small file system; says
/// SKIPPED without it (CI runs as root).
#[test]
fn a_file_system_smaller_than_a_log_segment_is_warned_about() {
    let dir = std::env::temp_dir().join(format!("node-start-{}-small", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the small-file-system warning was not checked");
        return;
    }
    let text = serve_briefly(&dir, "127.0.0.1:22580", "127.0.0.1:22581");
    let _ = Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(text.contains("MiB free: each shard's log takes 64 MiB at a time"), "{text}");
}

/// A node whose own `--peers` entry is not where it listens is warned
/// about: the other members dial the entry, and a typo there left a
/// cluster with no leader and nothing said.
#[test]
fn an_own_peers_entry_that_differs_from_the_peer_address_is_warned_about() {
    let dir = std::env::temp_dir().join(format!("node-start-{}-listed", std::process::id()));
    let text = serve_listed_briefly(&dir, "127.0.0.1:22560", "127.0.0.1:22570", "127.0.0.1:22561");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.contains("--peers lists this node at 127.0.0.1:22570 but it listens for peers on 127.0.0.1:22560"),
        "{text}"
    );
}
