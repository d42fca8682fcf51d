//! The `node` binary: the key-value node, its client, and a local dev cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use node::config::{parse_from, CliError, NodeCommand};

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log redirected to a file (or collected
    // by a supervisor) got escape sequences in every line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn main() -> ExitCode {
    let command = match parse_from(std::env::args_os()) {
        Ok(command) => command,
        Err(CliError::Parse(error)) => error.exit(),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let result: Result<(), String> = match command {
        NodeCommand::Serve(config) => {
            init_logging(&config.log_level);
            let keep = node::KvStateMachine::slice_keep_for_log_budget(config.shard_snapshot_log_bytes());
            node::runtime::serve(*config, move |_| node::KvStateMachine::with_slice_keep_bytes(keep))
                .map_err(|e| e.to_string())
        }
        NodeCommand::Kv(command) => node::client_cmd::run_kv(command).map_err(|e| e.to_string()),
        NodeCommand::Admin(command) => node::client_cmd::run_admin(command).map_err(|e| e.to_string()),
        NodeCommand::Certs(config) => node::certs::run_certs(&config).map_err(|e| e.to_string()),
        NodeCommand::Backup { client, out } => {
            remove_on_interrupt(PathBuf::from(format!("{}.partial", out.display())));
            node::backup::run_backup(&client, &out, true)
                .map(|summary| println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default()))
                .map_err(|e| e.to_string())
        }
        NodeCommand::CheckBackup(path) => node::backup::check_backup(&path)
            .map(|summary| println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default()))
            .map_err(|e| e.to_string()),
        NodeCommand::Restore(config) => node::backup::run_restore(&config).map(|summary| {
            // The new cluster's id, not the backed-up one's: an operator
            // copied the printed id into the next commands (fifth audit).
            let mut shown = serde_json::to_value(&summary).unwrap_or_default();
            if let Some(fields) = shown.as_object_mut() {
                let backed_up = fields.remove("cluster_id").unwrap_or_default();
                fields.insert("backup_cluster_id".into(), backed_up);
                fields.insert("cluster_id".into(), config.cluster_id.into());
            }
            println!("{}", serde_json::to_string_pretty(&shown).unwrap_or_default());
            eprintln!(
                "restored {} shard(s) into {}: start the node with `node serve --data-dir {} --node-id {} --cluster-id {} --peers ...` (and --shards {}) ; restore every node of the new cluster from this same backup: a node started empty, or restored from another backup, and this one refuse each other (a node added later joins with --join)",
                summary.shards.len(),
                config.data_dir.display(),
                config.data_dir.display(),
                config.node_id,
                config.cluster_id,
                summary.shards.len()
            );
        })
        .map_err(|e| e.to_string()),
        NodeCommand::Dev(config) => {
            init_logging(&config.log_level);
            node::dev::run_dev(config).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C (or SIGTERM) during a backup removes the partial file it was
/// writing and exits 130: the file stayed beside the backup's name (found
/// by an audit; harmless, since the next backup replaces it, but it looked
/// like a backup).
fn remove_on_interrupt(partial: PathBuf) {
    let installed = ctrlc::set_handler(move || {
        let _ = std::fs::remove_file(&partial);
        eprintln!("interrupted: the backup was not written ({} removed)", partial.display());
        std::process::exit(130);
    });
    if let Err(error) = installed {
        eprintln!("warning: no Ctrl-C handler ({error}): an interrupted backup leaves its .partial file");
    }
}
