//! An application that embeds the node with its own state machine: a
//! ledger of accounts whose transfers must conserve the total
//! ([`machine`]). It runs two ways:
//!
//! - `ledger local`: a three-replica cluster inside this process (memory,
//!   channels), a workload of transfers from several clients, the leader
//!   stopped in the middle, then the invariants checked on every replica;
//! - `ledger serve ARGS`: one node of a real cluster (the io_uring WAL,
//!   TCP), with the arguments of `node serve`; and `ledger run --addr ...`
//!   drives the same workload against such a cluster and checks it.
//!
//! ```text
//! cargo run --release -p node --example ledger -- local
//! ```

mod machine;
mod workload;

use std::time::Duration;

use clap::{Parser, Subcommand};
use machine::{Ledger, Summary};
use net::ReadConsistency;
use node::client_cmd::BlockingClient;
use node::config::{ClientConfig, Token};
use node::discovery::HostPort;
use node::embed::LocalCluster;
use workload::Seen;

/// A ledger replicated by the Raft node library.
#[derive(Parser)]
#[command(name = "ledger", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A cluster in this process: run transfers, stop the leader, check.
    Local(WorkloadArgs),
    /// Run one node of a TCP cluster; the arguments are `node serve`'s.
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Drive the workload against a running TCP cluster and check it.
    Run {
        /// The nodes' client addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<String>,
        #[arg(long, env = "NODE_TOKEN", default_value = "dev-cluster-token")]
        token: String,
        #[arg(long, default_value_t = 1)]
        cluster_id: u64,
        #[command(flatten)]
        workload: WorkloadArgs,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct WorkloadArgs {
    /// Accounts to open.
    #[arg(long, default_value_t = 16)]
    accounts: u32,
    /// Each account's opening balance.
    #[arg(long, default_value_t = 1_000)]
    initial: u64,
    /// Concurrent clients, each in its own session.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Transfers per client.
    #[arg(long, default_value_t = 200)]
    transfers: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Local(workload) => run_local(workload),
        Command::Serve { args } => serve(args),
        Command::Run { addr, token, cluster_id, workload } => run_tcp(addr, token, cluster_id, workload),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: Vec<String>) -> Result<(), String> {
    let argv = ["ledger".to_string(), "serve".to_string()].into_iter().chain(args);
    match node::config::parse_from(argv).map_err(|error| error.to_string())? {
        node::config::NodeCommand::Serve(config) => {
            node::runtime::serve(*config, |_shard| Ledger::default()).map_err(|error| error.to_string())
        }
        _ => Err("expected the arguments of `node serve`".into()),
    }
}

/// The in-process run: three replicas, clients on threads, the leader
/// stopped halfway and restarted, then every replica checked.
fn run_local(workload: WorkloadArgs) -> Result<(), String> {
    let mut cluster = LocalCluster::start(3, |_shard| Ledger::default()).map_err(|error| error.to_string())?;
    let leader = cluster.wait_for_leader(0, Duration::from_secs(10)).ok_or("no leader elected")?;
    workload::open_accounts(&mut cluster.client(), workload.accounts, workload.initial)?;
    let half = workload.transfers / 2;
    let first = run_clients(workload, half, || Ok(cluster.client()))?;
    eprintln!("stopping the leader, node {leader}");
    cluster.stop(leader).map_err(|error| error.to_string())?;
    let second = run_clients(workload, workload.transfers - half, || Ok(cluster.client()))?;
    cluster.restart(leader).map_err(|error| error.to_string())?;
    let mut seen = first;
    seen += second;
    let summaries = wait_for_agreement(cluster.ids(), |id| {
        let handle = cluster.handle(id)?;
        let request = net::ClientRequest::plain(
            0,
            net::RequestBody::Read { query: machine::summary_query(), consistency: ReadConsistency::Stale },
        );
        match handle.call(0, request).blocking_recv() {
            Ok(net::ResponseStatus::Ok(bytes)) => Summary::decode(&bytes),
            _ => None,
        }
    });
    workload::check(&summaries, workload.accounts, workload.initial, seen)?;
    println!(
        "ledger: {} transfers acknowledged, {} unknown; every replica agrees: {:?}",
        seen.acknowledged, seen.unknown, summaries[0].1
    );
    cluster.shutdown().map_err(|error| error.to_string())
}

/// Runs `clients` threads of `count` transfers each, each with a client
/// from `make_client` (made on the thread: a client owns an io_uring
/// runtime, which stays on its thread), and adds up what they saw.
fn run_clients<C: net::Connector>(
    workload: WorkloadArgs,
    count: u64,
    make_client: impl Fn() -> Result<BlockingClient<C>, String> + Sync,
) -> Result<Seen, String> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workload.clients)
            .map(|index| {
                let make_client = &make_client;
                scope.spawn(move || {
                    let mut client = make_client()?;
                    workload::transfers(&mut client, workload.accounts, count, 0x5EED + index * 977)
                })
            })
            .collect();
        let mut seen = Seen::default();
        for thread in threads {
            seen += thread.join().map_err(|_| "a client thread panicked".to_string())??;
        }
        Ok(seen)
    })
}

/// Asks every replica for its summary until all answer the same (they
/// converge once they applied everything), for at most 20 s.
fn wait_for_agreement(ids: &[u64], summary: impl Fn(u64) -> Option<Summary>) -> Vec<(u64, Summary)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let summaries: Vec<(u64, Summary)> = ids.iter().filter_map(|&id| summary(id).map(|s| (id, s))).collect();
        let agree = summaries.len() == ids.len() && summaries.windows(2).all(|pair| pair[0].1 == pair[1].1);
        if agree || std::time::Instant::now() >= deadline {
            return summaries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The TCP run: the same workload against a running cluster; the leader is
/// stopped by whoever runs the cluster (the test), not here.
fn run_tcp(addr: Vec<String>, token: String, cluster_id: u64, workload: WorkloadArgs) -> Result<(), String> {
    let hosts: Vec<HostPort> =
        addr.iter().map(|a| a.parse::<HostPort>().map_err(|e| format!("{a}: {e}"))).collect::<Result<_, _>>()?;
    let config = |addrs: Vec<HostPort>| ClientConfig {
        addrs,
        cluster_id,
        token: Some(Token(bytes::Bytes::from(token.clone()))),
        tls: None,
        timeout: Duration::from_secs(10),
        shard: 0,
    };
    let client = |addrs: Vec<HostPort>| BlockingClient::new(&config(addrs)).map_err(|error| error.to_string());
    workload::open_accounts(&mut client(hosts.clone())?, workload.accounts, workload.initial)?;
    let seen = run_clients(workload, workload.transfers, || client(hosts.clone()))?;
    let ids: Vec<u64> = (0..hosts.len() as u64).collect();
    let summaries = wait_for_agreement(&ids, |index| {
        let mut client = client(vec![hosts[index as usize].clone()]).ok()?;
        let answer = client.read(machine::summary_query(), ReadConsistency::Stale).ok()?;
        Summary::decode(&answer)
    });
    workload::check(&summaries, workload.accounts, workload.initial, seen)?;
    println!(
        "ledger: {} transfers acknowledged, {} unknown; every replica agrees: {:?}",
        seen.acknowledged, seen.unknown, summaries[0].1
    );
    Ok(())
}
