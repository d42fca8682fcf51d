//! The command line and the configuration file: what is accepted, and the
//! error for each kind of mistake.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::CommandFactory;
use node::cli::Cli;
use node::config::{parse_from, CliError, ConfigError, JoinCredential, NodeCommand, ServeConfig, Token};
use node::discovery::{DnsName, PeerSource, PeerSpecError};
use node::kv::KvOp;

/// A scratch directory for one test, removed when the test ends (passing or
/// not), so runs do not pile directories up in the temporary directory.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("node-t20-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// `node serve` with a valid set of flags, where `extra` (flag, value pairs)
/// replaces or adds flags.
fn serve(dir: &std::path::Path, extra: &[&str]) -> Result<ServeConfig, CliError> {
    let data_dir = dir.join("data").to_string_lossy().into_owned();
    let mut flags: Vec<(String, String)> = [
        ("--node-id", "2"),
        ("--peer-addr", "127.0.0.1:7102"),
        ("--client-addr", "127.0.0.1:7103"),
        ("--token", "secret"),
        ("--data-dir", data_dir.as_str()),
        ("--peers", "1=127.0.0.1:7100,2=127.0.0.1:7102,3=node-3.local:7104"),
    ]
    .iter()
    .map(|(flag, value)| (flag.to_string(), value.to_string()))
    .collect();
    if extra.contains(&"--discovery-dns") {
        flags.retain(|(flag, _)| flag != "--peers");
    }
    for pair in extra.chunks(2) {
        let (flag, value) = (pair[0].to_string(), pair[1].to_string());
        match flags.iter_mut().find(|(existing, _)| *existing == flag) {
            Some(existing) if flag != "--peers" || !extra.contains(&"--discovery-dns") => existing.1 = value,
            _ => flags.push((flag, value)),
        }
    }
    let args = ["node".to_string(), "serve".to_string()]
        .into_iter()
        .chain(flags.into_iter().flat_map(|(flag, value)| [flag, value]));
    match parse_from(args)? {
        NodeCommand::Serve(config) => Ok(*config),
        other => panic!("parsed as {other:?}"),
    }
}

fn config_error(result: Result<ServeConfig, CliError>) -> ConfigError {
    match result {
        Err(CliError::Config(error)) => error,
        Err(CliError::Parse(error)) => panic!("clap refused it: {error}"),
        Ok(config) => panic!("accepted {config:?}"),
    }
}

#[test]
fn help_documents_every_option() {
    Cli::command().debug_assert();
    fn check(command: &clap::Command, path: &str) {
        for argument in command.get_arguments() {
            assert!(argument.get_help().is_some(), "{path}: {} has no help", argument.get_id());
        }
        for subcommand in command.get_subcommands() {
            assert!(subcommand.get_about().is_some(), "{path} {} has no help", subcommand.get_name());
            check(subcommand, &format!("{path} {}", subcommand.get_name()));
        }
    }
    check(&Cli::command(), "node");
    let mut command = Cli::command();
    let serve = command.find_subcommand_mut("serve").unwrap();
    let help = serve.render_long_help().to_string();
    for option in ["--node-id", "--peers", "--discovery-dns", "--token-file", "--read-consistency", "--config"] {
        assert!(help.contains(option), "serve --help lacks {option}");
    }
}

#[test]
fn a_full_serve_command_line() {
    let dir = scratch("full");
    let config = serve(
        &dir,
        &[
            "--shards",
            "4",
            "--cluster-id",
            "9",
            "--tick-interval",
            "5ms",
            "--election-ticks-min",
            "20",
            "--election-ticks-max",
            "40",
            "--heartbeat-ticks",
            "3",
            "--read-consistency",
            "lease",
            "--inflight-batches-max",
            "64",
            "--log-level",
            "info,node=debug",
            "--snapshot-entries",
            "5000",
            "--snapshot-log-factor",
            "3",
            "--snapshot-log-bytes",
            "1000000",
            "--snapshot-write-rate",
            "1048576",
            "--log-memory-bytes",
            "4000000",
        ],
    )
    .unwrap();
    assert_eq!(config.node_id, 2);
    assert_eq!(config.cluster_id, 9);
    assert_eq!(config.shards, 4);
    assert_eq!(config.timing.tick_interval, Duration::from_millis(5));
    assert_eq!(config.timing.election_ticks_min, 20);
    assert_eq!(config.limits.inflight_batches_max, 64);
    assert_eq!(config.read_consistency, net::ReadConsistency::Lease);
    let PeerSource::Static(peers) = &config.peers else { panic!("static peers expected") };
    assert_eq!(peers.iter().map(|peer| peer.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(peers[2].addr.to_string(), "node-3.local:7104");
    assert_eq!(config.token.as_ref().unwrap().0, "secret");
    assert!(!format!("{config:?}").contains("secret"), "Debug must not print the token");
    assert_eq!(config.snapshot_write_rate, 1 << 20);
    let engine = config.engine_config(vec![1, 2, 3]);
    assert_eq!(engine.heartbeat_ticks, 3);
    // The node's budget of log bytes is split over its four shards.
    assert_eq!((engine.snapshot_entries, engine.snapshot_log_factor, engine.snapshot_log_bytes), (5000, 3, 250_000));
    assert_eq!(engine.snapshot_entries_jitter, 2500, "replicas spread their snapshots over half an interval");
    // So is its budget of payload bytes held in memory.
    assert_eq!(engine.log_memory_bytes, 1_000_000);
    engine.validate().unwrap();
    // By default 256 MiB for the node; 0 turns it off.
    let defaults = serve(&dir, &["--shards", "2"]).unwrap().engine_config(vec![1, 2, 3]);
    assert_eq!(defaults.log_memory_bytes, 128 << 20);
    let off = serve(&dir, &["--log-memory-bytes", "0"]).unwrap().engine_config(vec![1, 2, 3]);
    assert_eq!(off.log_memory_bytes, 0);
}

#[test]
fn peer_list_mistakes() {
    let dir = scratch("peers");
    assert!(matches!(
        config_error(serve(&dir, &["--peers", "1=127.0.0.1:7100,3=127.0.0.1:7104"])),
        ConfigError::SelfNotInPeers { node_id: 2 }
    ));
    assert!(matches!(
        config_error(serve(&dir, &["--peers", "1=127.0.0.1:7100,2=127.0.0.1:7102,1=127.0.0.1:7104"])),
        ConfigError::Peers { source: PeerSpecError::DuplicateId { id: 1 }, .. }
    ));
    for bad in ["2=127.0.0.1", "2=127.0.0.1:0", "2=127.0.0.1:99999", "2=bad host:1", "2=:7000", "2=a..b:1"] {
        assert!(
            matches!(
                config_error(serve(&dir, &["--peers", bad])),
                ConfigError::Peers { source: PeerSpecError::BadAddress { .. }, .. }
            ),
            "{bad}"
        );
    }
    for bad in ["0=127.0.0.1:1", "x=127.0.0.1:1"] {
        assert!(matches!(
            config_error(serve(&dir, &["--peers", bad])),
            ConfigError::Peers { source: PeerSpecError::BadId { .. }, .. }
        ));
    }
    assert!(matches!(
        config_error(serve(&dir, &["--peers", "127.0.0.1:7100"])),
        ConfigError::Peers { source: PeerSpecError::BadEntry { .. }, .. }
    ));
    // Two members at one address reach each other's listener, or their own.
    assert!(matches!(
        config_error(serve(&dir, &["--peers", "1=127.0.0.1:7102,2=127.0.0.1:7102"])),
        ConfigError::Peers { source: PeerSpecError::DuplicateAddress { first: 1, second: 2, .. }, .. }
    ));
    // Options of DNS discovery do nothing with --peers: refused, not ignored.
    for option in ["--discovery-port", "--discovery-interval"] {
        let value = if option == "--discovery-port" { "7000" } else { "10s" };
        assert!(matches!(config_error(serve(&dir, &[option, value])), ConfigError::DiscoveryOptionWithoutDns { .. }));
    }
    assert!(matches!(
        config_error(serve(&dir, &["--peers", "2=127.0.0.1:7102", "--discovery-dns", "db.local"])),
        ConfigError::PeersAndDiscovery
    ));
}

#[test]
fn dns_discovery_options() {
    let dir = scratch("dns");
    let config = serve(
        &dir,
        &[
            "--discovery-dns",
            "cluster.local,7@db-a.local",
            "--discovery-port",
            "7100",
            "--discovery-nameserver",
            "127.0.0.1:5353",
            "--discovery-timeout",
            "300ms",
        ],
    )
    .unwrap();
    let PeerSource::Dns(dns) = config.peers else { panic!("DNS discovery expected") };
    assert_eq!(
        dns.names,
        [DnsName { id: None, name: "cluster.local".into() }, DnsName { id: Some(7), name: "db-a.local".into() }]
    );
    assert_eq!(dns.port, Some(7100));
    assert_eq!(dns.nameserver, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(dns.timeout, Duration::from_millis(300));
    assert!(matches!(
        config_error(serve(&dir, &["--discovery-dns", "cluster.local", "--discovery-nameserver", "localhost"])),
        ConfigError::BadAddress { option: "discovery-nameserver", .. }
    ));
    assert!(matches!(config_error(serve(&dir, &["--discovery-dns", "bad name"])), ConfigError::Peers { .. }));
    // Names are looked up again every 30 s unless told otherwise; never 0.
    assert_eq!(dns.interval, Duration::from_secs(30));
    let every = |interval: &str| serve(&dir, &["--discovery-dns", "cluster.local", "--discovery-interval", interval]);
    let PeerSource::Dns(dns) = every("5s").unwrap().peers else { panic!("DNS discovery expected") };
    assert_eq!(dns.interval, Duration::from_secs(5));
    assert!(matches!(config_error(every("0s")), ConfigError::OutOfRange { option: "discovery-interval", .. }));
    assert!(matches!(config_error(every("soon")), ConfigError::BadDuration { option: "discovery-interval", .. }));
}

#[test]
fn other_serve_mistakes() {
    let dir = scratch("mistakes");
    assert!(matches!(config_error(serve(&dir, &["--shards", "0"])), ConfigError::OutOfRange { option: "shards", .. }));
    // Cores: 1 to the shard count; without the flag, at most the CPUs.
    for (shards, cores) in [("4", "0"), ("2", "3")] {
        let result = serve(&dir, &["--shards", shards, "--cores", cores]);
        assert!(matches!(config_error(result), ConfigError::OutOfRange { option: "cores", .. }), "{shards} {cores}");
    }
    let config = serve(&dir, &["--shards", "4", "--cores", "1"]).unwrap();
    assert_eq!((config.core_threads, config.cores()), (Some(1), 1));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(serve(&dir, &["--shards", "4"]).unwrap().cores(), cpus.min(4));
    assert!(matches!(
        config_error(serve(&dir, &["--node-id", "0"])),
        ConfigError::OutOfRange { option: "node-id", .. }
    ));
    assert!(matches!(
        config_error(serve(&dir, &["--peer-addr", "localhost:7000"])),
        ConfigError::BadAddress { option: "peer-addr", .. }
    ));
    assert!(matches!(
        config_error(serve(&dir, &["--client-addr", "127.0.0.1:7102"])),
        ConfigError::BadAddress { option: "client-addr", .. }
    ));
    assert!(matches!(
        config_error(serve(&dir, &["--data-dir", "/nonexistent-parent-dir/data"])),
        ConfigError::DataDirParentMissing { .. }
    ));
    std::fs::write(dir.join("file"), b"x").unwrap();
    let file = dir.join("file").to_string_lossy().into_owned();
    assert!(matches!(config_error(serve(&dir, &["--data-dir", &file])), ConfigError::DataDirNotDirectory { .. }));
    let under_file = format!("{file}/sub");
    assert!(matches!(
        config_error(serve(&dir, &["--data-dir", &under_file])),
        ConfigError::DataDirParentNotDirectory { .. }
    ));
    assert!(matches!(
        config_error(serve(&dir, &["--heartbeat-ticks", "50"])),
        ConfigError::HeartbeatTicks { heartbeat: 50, election_min: 50 }
    ));
    assert!(matches!(
        config_error(serve(&dir, &["--election-ticks-min", "30", "--election-ticks-max", "20"])),
        ConfigError::ElectionTicks { .. }
    ));
    assert!(matches!(config_error(serve(&dir, &["--tick-interval", "10"])), ConfigError::BadDuration { .. }));
    // Below 1ms, ticks alone kept half a core busy.
    assert!(matches!(
        config_error(serve(&dir, &["--tick-interval", "1us"])),
        ConfigError::OutOfRange { option: "tick-interval", .. }
    ));
    assert_eq!(serve(&dir, &["--tick-interval", "1h"]).unwrap().timing.tick_interval, Duration::from_secs(3600));
    assert!(matches!(config_error(serve(&dir, &["--learner", "true"])), ConfigError::LearnerWithoutJoin));
    assert!(matches!(
        config_error(serve(&dir, &["--witnesses", "3,3"])),
        ConfigError::BadWitnesses { reason } if reason.contains("twice")
    ));
    assert!(matches!(config_error(serve(&dir, &["--log-level", "loud"])), ConfigError::BadLogLevel { .. }));
    assert!(matches!(config_error(serve(&dir, &["--batch-bytes-max", "0"])), ConfigError::OutOfRange { .. }));
    assert!(matches!(config_error(serve(&dir, &["--token", ""])), ConfigError::TokenEmpty));
    let missing = dir.join("no-token").to_string_lossy().into_owned();
    assert!(matches!(config_error(serve(&dir, &["--token-file", &missing])), ConfigError::TokenTwice));
    // clap refuses unknown values of enumerations itself.
    assert!(matches!(serve(&dir, &["--read-consistency", "eventual"]), Err(CliError::Parse(_))));
}

#[test]
fn token_file_and_config_file() {
    let dir = scratch("file");
    let token_file = dir.join("token");
    std::fs::write(&token_file, b"from-file\n").unwrap();
    let config_file = dir.join("node.toml");
    std::fs::write(
        &config_file,
        format!(
            "node-id = 3\npeer-addr = \"127.0.0.1:7104\"\nclient-addr = \"127.0.0.1:7105\"\n\
             peers = \"1=127.0.0.1:7100,2=127.0.0.1:7102,3=127.0.0.1:7104\"\ndata-dir = {:?}\ntoken-file = {:?}\n\
             shards = 2\nread-consistency = \"stale\"\nresp-addr = \"127.0.0.1:7204\"\n\
             metrics-addr = \"127.0.0.1:7304\"\nwitnesses = [1]\nsnapshot-write-rate = \"8 MiB/s\"\n",
            dir.join("data"),
            token_file
        ),
    )
    .unwrap();
    let path = config_file.to_string_lossy().into_owned();
    let NodeCommand::Serve(config) = parse_from(["node", "serve", "--config", &path]).unwrap() else { panic!() };
    assert_eq!((config.node_id, config.shards), (3, 2));
    assert_eq!(config.token.as_ref().unwrap().0, "from-file");
    assert_eq!(config.read_consistency, net::ReadConsistency::Stale);
    assert_eq!(config.resp_addr, Some("127.0.0.1:7204".parse().unwrap()));
    assert_eq!(config.metrics_addr, Some("127.0.0.1:7304".parse().unwrap()));
    assert!(config.forward_writes, "the RESP front door's followers forward writes");
    assert_eq!(config.bootstrap_witnesses, [1]);
    // A rate as README writes it, as the flag takes it (the file refused
    // it: `unknown unit "mib/s"`).
    assert_eq!(config.snapshot_write_rate, 8 << 20);
    let clash = parse_from(["node", "serve", "--config", &path, "--resp-addr", "127.0.0.1:7105"]);
    assert!(matches!(clash, Err(CliError::Config(ConfigError::BadAddress { option: "resp-addr", .. }))));
    let clash = parse_from(["node", "serve", "--config", &path, "--metrics-addr", "127.0.0.1:7204"]);
    assert!(matches!(clash, Err(CliError::Config(ConfigError::BadAddress { option: "metrics-addr", .. }))));
    // Flags override the file, a token flag replaces the file's token file.
    let NodeCommand::Serve(config) =
        parse_from(["node", "serve", "--config", &path, "--shards", "5", "--token", "flag"]).unwrap()
    else {
        panic!()
    };
    assert_eq!((config.shards, config.token.as_ref().unwrap().0.as_ref()), (5, b"flag".as_ref()));

    std::fs::write(&config_file, "node-id = 3\nshard = 2\n").unwrap();
    let error = parse_from(["node", "serve", "--config", &path]).unwrap_err();
    assert!(error.to_string().contains("unknown field"), "{error}");
    let missing = dir.join("missing.toml").to_string_lossy().into_owned();
    assert!(matches!(
        parse_from(["node", "serve", "--config", &missing]),
        Err(CliError::Config(ConfigError::ConfigFileUnreadable { .. }))
    ));
    let unreadable = dir.join("missing-token").to_string_lossy().into_owned();
    let error = config_error(
        parse_from([
            "node",
            "serve",
            "--node-id",
            "1",
            "--peer-addr",
            "127.0.0.1:1",
            "--client-addr",
            "127.0.0.1:2",
            "--peers",
            "1=127.0.0.1:1",
            "--data-dir",
            &dir.join("data").to_string_lossy(),
            "--token-file",
            &unreadable,
        ])
        .map(|command| match command {
            NodeCommand::Serve(config) => *config,
            _ => unreachable!(),
        }),
    );
    assert!(matches!(error, ConfigError::TokenFileUnreadable { .. }), "{error}");
    // It names the environment variable the path may have come from.
    assert!(error.to_string().contains("(--token-file or NODE_TOKEN_FILE)"), "{error}");
}

/// A client's TLS file that cannot be read is named by its option and
/// environment variable (the error gave only the path).
#[test]
fn an_unreadable_client_tls_file_names_its_option() {
    let dir = scratch("client-tls");
    let missing = dir.join("missing.pem").to_string_lossy().into_owned();
    let NodeCommand::Kv(kv) =
        parse_from(["node", "kv", "--token", "t", "--addr", "127.0.0.1:1", "--tls-ca", &missing, "get", "k"]).unwrap()
    else {
        panic!()
    };
    let error = node::client_cmd::BlockingClient::new(&kv.client).err().expect("the CA cannot be read").to_string();
    assert!(error.starts_with("TLS: --tls-ca (or NODE_TLS_CA): cannot read "), "{error}");
    assert!(error.contains("missing.pem"), "{error}");
}

#[test]
fn kv_admin_and_dev_commands() {
    let NodeCommand::Kv(kv) =
        parse_from(["node", "kv", "--token", "t", "--addr", "a.local:1,127.0.0.1:2", "put", "k", "v"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(kv.op, KvOp::Put { key: "k".into(), value: "v".into() });
    assert_eq!(kv.client.addrs.len(), 2);
    // A bad address names the environment variable too, where it may have
    // come from (it named the flag only).
    let error = parse_from(["node", "kv", "--token", "t", "--addr", "garbage", "get", "k"]).unwrap_err().to_string();
    assert!(error.starts_with("--addr (or NODE_ADDR) \"garbage\" is not a valid address"), "{error}");
    // A value from a file, byte for byte (binary, or beyond what argv takes).
    let dir = scratch("value-file");
    let file = dir.join("value");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let path = file.to_string_lossy().into_owned();
    let NodeCommand::Kv(kv) = parse_from(["node", "kv", "--token", "t", "put", "k", "--value-file", &path]).unwrap()
    else {
        panic!()
    };
    assert_eq!(kv.op, KvOp::Put { key: "k".into(), value: bytes.into() });
    assert!(matches!(parse_from(["node", "kv", "--token", "t", "put", "k"]), Err(CliError::Parse(_))));
    assert!(matches!(
        parse_from(["node", "kv", "--token", "t", "put", "k", "v", "--value-file", &path]),
        Err(CliError::Parse(_))
    ));
    let missing = dir.join("missing").to_string_lossy().into_owned();
    assert!(matches!(
        parse_from(["node", "kv", "--token", "t", "put", "k", "--value-file", &missing]),
        Err(CliError::Config(ConfigError::ValueFileUnreadable { .. }))
    ));
    let NodeCommand::Kv(kv) =
        parse_from(["node", "kv", "--token", "t", "cas", "k", "--expect-absent", "--new", "v"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(kv.op, KvOp::Cas { key: "k".into(), expected: None, new: Some("v".into()) });
    let NodeCommand::Kv(kv) = parse_from(["node", "kv", "--token", "t", "get", "k", "--consistency", "stale"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(kv.consistency, Some(net::ReadConsistency::Stale));
    assert!(matches!(
        parse_from(["node", "kv", "--token", "t", "cas", "k", "--expected", "a", "--expect-absent", "--new", "b"]),
        Err(CliError::Parse(_))
    ));
    assert!(matches!(parse_from(["node", "kv", "--token", "t", "cas", "k", "--new", "b"]), Err(CliError::Parse(_))));
    // Positional arguments are named as the usage line names them.
    let error = parse_from(["node", "kv", "--token", "t", "get", ""]).unwrap_err().to_string();
    assert_eq!(error, "<KEY> must not be 0 bytes long: a key is 1 to 65536 bytes");

    let NodeCommand::Admin(admin) =
        parse_from(["node", "admin", "--token", "t", "add-learner", "4", "127.0.0.1:7106"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        admin.body,
        net::RequestBody::Admin(net::AdminRequest::AddLearner { id: 4, addr: "127.0.0.1:7106".into() })
    );
    let NodeCommand::Admin(admin) =
        parse_from(["node", "admin", "--token", "t", "add-witness", "5", "127.0.0.1:7110"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        admin.body,
        net::RequestBody::Admin(net::AdminRequest::AddWitness { id: 5, addr: "127.0.0.1:7110".into() })
    );
    let NodeCommand::Admin(admin) = parse_from(["node", "admin", "--token", "t", "status"]).unwrap() else { panic!() };
    assert_eq!(admin.body, net::RequestBody::Status);
    let error = parse_from(["node", "admin", "--token", "t", "remove", "0"]).unwrap_err().to_string();
    assert_eq!(error, "<ID> must not be 0: ids are positive");
    let error = parse_from(["node", "admin", "--token", "t", "add-learner", "4", "nowhere"]).unwrap_err().to_string();
    assert!(error.starts_with("<PEER_ADDR> \"nowhere\" is not a valid address"), "{error}");

    let NodeCommand::Dev(dev) = parse_from(["node", "dev"]).unwrap() else { panic!() };
    let configs = dev.serve_configs(std::path::Path::new("/tmp/dev"));
    assert_eq!(configs.len(), 3);
    assert_eq!(configs[2].peer_addr, "127.0.0.1:7104".parse().unwrap());
    assert_eq!(configs[2].client_addr, "127.0.0.1:7105".parse().unwrap());
    assert!(matches!(parse_from(["node", "dev", "--nodes", "2"]), Err(CliError::Config(_))));
}

/// `node serve` with TLS: `--tls-dir` names the files `node certs` writes,
/// single options override them, a partial set is refused naming what is
/// missing, and the shared token becomes optional (certificates authenticate
/// peers) but stays required without TLS.
#[test]
fn tls_options() {
    let dir = scratch("tls");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    for name in ["node-ca.pem", "node-2.pem", "node-2.key", "client-tokens"] {
        std::fs::write(certs.join(name), "x").unwrap();
    }
    let certs_arg = certs.to_string_lossy().into_owned();
    let config = serve(&dir, &["--tls-dir", &certs_arg]).unwrap();
    let tls = config.security.tls.clone().expect("TLS on");
    assert_eq!(
        (tls.node_ca, tls.certificate, tls.private_key),
        (certs.join("node-ca.pem"), certs.join("node-2.pem"), certs.join("node-2.key"))
    );
    assert_eq!(tls.client_ca, None, "no client-ca.pem in the directory: clients use tokens");
    assert_eq!(config.security.client_tokens, Some(certs.join("client-tokens")));
    let other_key = dir.join("other.key").to_string_lossy().into_owned();
    let config = serve(&dir, &["--tls-dir", &certs_arg, "--tls-key", &other_key]).unwrap();
    assert_eq!(config.security.tls.unwrap().private_key, dir.join("other.key"));
    assert!(serve(&dir, &[]).unwrap().security.tls.is_none(), "plaintext by default");

    std::fs::remove_file(certs.join("node-2.key")).unwrap();
    assert!(matches!(
        config_error(serve(&dir, &["--tls-dir", &certs_arg])),
        ConfigError::TlsDirIncomplete { file, .. } if file == certs.join("node-2.key")
    ));
    let ca = certs.join("node-ca.pem").to_string_lossy().into_owned();
    assert!(matches!(
        config_error(serve(&dir, &["--tls-ca", &ca])),
        ConfigError::TlsIncomplete { missing: "--tls-cert" }
    ));

    let data_dir = dir.join("data").to_string_lossy().into_owned();
    let base = ["node", "serve", "--node-id", "2", "--peer-addr", "127.0.0.1:7102", "--client-addr", "127.0.0.1:7103"];
    let without_token = |extra: &[&str]| {
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain(["--data-dir", &data_dir, "--peers", "2=127.0.0.1:7102"])
            .chain(extra.iter().copied())
            .collect();
        parse_from(args)
    };
    let key = certs.join("node-2.pem").to_string_lossy().into_owned();
    let Ok(NodeCommand::Serve(config)) = without_token(&["--tls-ca", &ca, "--tls-cert", &key, "--tls-key", &key])
    else {
        panic!("TLS without a token was refused")
    };
    assert!(config.token.is_none());
    assert!(matches!(without_token(&[]), Err(CliError::Config(ConfigError::TokenMissing))));

    // The same options as keys of the configuration file.
    let config_file = dir.join("node.toml");
    std::fs::write(&config_file, format!("tls-dir = {certs_arg:?}\nclient-tokens = \"/etc/tokens\"\n")).unwrap();
    let config_arg = config_file.to_string_lossy().into_owned();
    let config = serve(&dir, &["--config", &config_arg, "--tls-cert", &key, "--tls-key", &key]).unwrap();
    assert_eq!(config.security.tls.unwrap().node_ca, certs.join("node-ca.pem"));
    assert_eq!(config.security.client_tokens, Some(PathBuf::from("/etc/tokens")));

    // Clients: a certificate replaces the token; a certificate without its
    // key is refused by the parser.
    let NodeCommand::Kv(kv) =
        parse_from(["node", "kv", "--tls-ca", &ca, "--tls-cert", &key, "--tls-key", &key, "get", "k"]).unwrap()
    else {
        panic!()
    };
    assert!(kv.client.token.is_none());
    assert_eq!(kv.client.tls.unwrap().certificate, Some(certs.join("node-2.pem")));
    assert!(matches!(
        parse_from(["node", "kv", "--tls-ca", &ca, "--tls-cert", &key, "get", "k"]),
        Err(CliError::Parse(_))
    ));
    // Without any credential, the error names both kinds (it asked for a
    // token only, even of a client given --tls-ca).
    let error = parse_from(["node", "kv", "--tls-ca", &ca, "get", "k"]).unwrap_err();
    assert!(matches!(error, CliError::Config(ConfigError::ClientCredentialMissing)), "{error}");
    assert!(error.to_string().contains("--tls-cert and --tls-key"), "{error}");
}

/// `node certs` parses users as NAME=ROLES and refuses unknown roles.
#[test]
fn certs_command() {
    let NodeCommand::Certs(certs) =
        parse_from(["node", "certs", "--dir", "/tmp/x", "--user", "ops=read+admin"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(certs.users, vec![("ops".to_string(), net::Roles::READ | net::Roles::ADMIN)]);
    assert_eq!(certs.node_ids, vec![1, 2, 3]);
    assert!(matches!(
        parse_from(["node", "certs", "--dir", "/tmp/x", "--user", "ops=root"]),
        Err(CliError::Config(ConfigError::BadUser { .. }))
    ));
}

#[test]
fn join_through_members() {
    let dir = scratch("join");
    let data_dir = dir.join("data").to_string_lossy().into_owned();
    let parse = |extra: &[&str]| {
        let mut args = vec!["node", "serve", "--peer-addr", "127.0.0.1:7108", "--client-addr", "127.0.0.1:7109"];
        args.extend(["--token", "secret", "--data-dir", data_dir.as_str()]);
        args.extend(extra);
        match parse_from(args) {
            Ok(NodeCommand::Serve(config)) => Ok(*config),
            Ok(other) => panic!("not serve: {other:?}"),
            Err(error) => Err(error),
        }
    };
    // Any member's address, nothing else about the cluster: the id comes
    // from the cluster (0 until then), no --peers needed.
    let config = parse(&["--join", "10.0.0.1:7001,node-2.local:7001"]).unwrap();
    assert_eq!(config.node_id, 0);
    assert!(config.join && !config.learner);
    assert_eq!(config.join_through.len(), 2);
    assert_eq!(config.peers, PeerSource::Static(Vec::new()));
    assert!(parse(&["--join", "10.0.0.1:7001", "--learner"]).unwrap().learner);
    // A witness joins (either way) or is listed by a bootstrap, and is no learner.
    let witness = parse(&["--join", "10.0.0.1:7001", "--witness"]).unwrap();
    assert!(witness.witness && witness.engine_config(Vec::new()).witness);
    assert!(!config.witness && !config.engine_config(Vec::new()).witness);
    assert!(parse(&["--join", "--witness", "--node-id", "4", "--peers", "4=127.0.0.1:7108"]).unwrap().witness);
    assert!(matches!(
        config_error(parse(&["--node-id", "4", "--peers", "4=127.0.0.1:7108", "--witness"])),
        ConfigError::WitnessWithoutJoin
    ));
    assert!(matches!(
        config_error(parse(&["--join", "10.0.0.1:7001", "--witness", "--learner"])),
        ConfigError::WitnessAndLearner
    ));
    // Or a bootstrap lists it (every node the same list): the engine's
    // first membership then has it as a witness, on every node.
    let peers = "4=127.0.0.1:7108,5=127.0.0.1:7110,6=127.0.0.1:7112";
    let listed = parse(&["--node-id", "4", "--peers", peers, "--witnesses", "4", "--witness"]).unwrap();
    assert_eq!(listed.bootstrap_witnesses, [4]);
    let engine = listed.engine_config(vec![4, 5, 6]);
    assert!(engine.witness);
    assert_eq!(engine.witnesses, [4]);
    assert_eq!(listed.engine_config(Vec::new()).witnesses, Vec::<u64>::new(), "not once the log has a membership");
    let full = parse(&["--node-id", "5", "--peers", peers, "--witnesses", "4"]).unwrap();
    assert!(!full.witness && full.engine_config(vec![4, 5, 6]).witnesses == [4]);
    assert!(matches!(
        config_error(parse(&["--node-id", "4", "--peers", peers, "--witnesses", "4"])),
        ConfigError::ListedWitnessWithoutFlag { id: 4 }
    ));
    for (witnesses, reason) in [("5,6", "strict majority"), ("7", "not in --peers")] {
        match config_error(parse(&["--node-id", "4", "--peers", peers, "--witnesses", witnesses])) {
            ConfigError::BadWitnesses { reason: found } => assert!(found.contains(reason), "{found}"),
            other => panic!("--witnesses {witnesses}: {other:?}"),
        }
    }
    match config_error(parse(&["--join", "10.0.0.1:7001", "--witnesses", "4"])) {
        ConfigError::BadWitnesses { reason } => assert!(reason.contains("joining"), "{reason}"),
        other => panic!("--witnesses with --join: {other:?}"),
    }
    // The manual flow: --join without addresses still needs --node-id.
    assert!(matches!(config_error(parse(&["--join"])), ConfigError::Missing { option: "node-id" }));
    assert!(matches!(
        config_error(parse(&["--join", "not an address"])),
        ConfigError::BadAddress { option: "join", .. }
    ));
    // With TLS: the id is the certificate's (--node-id), and the members
    // are called with an admin client certificate or token.
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    for file in ["node-ca.pem", "node-4.pem", "node-4.key"] {
        std::fs::write(tls.join(file), "x").unwrap();
    }
    let tls_dir = tls.to_str().unwrap();
    let error = config_error(parse(&["--join", "10.0.0.1:7001", "--tls-dir", tls_dir]));
    assert!(matches!(error, ConfigError::JoinWithTlsNeedsId), "{error}");
    // (`parse` gives a token: it is the credential without a certificate.)
    let with_token = parse(&["--join", "10.0.0.1:7001", "--node-id", "4", "--tls-dir", tls_dir]);
    assert_eq!(with_token.unwrap().join_credential, None);
    let admin = ["--join-tls-cert", "admin.pem", "--join-tls-key", "admin.key"];
    let with_certificate =
        parse(&[&["--join", "10.0.0.1:7001", "--node-id", "4", "--tls-dir", tls_dir][..], &admin[..]].concat())
            .unwrap();
    assert_eq!(
        with_certificate.join_credential,
        Some(JoinCredential::Certificate { certificate: "admin.pem".into(), private_key: "admin.key".into() })
    );
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "admin-secret\n").unwrap();
    let token_file = token_file.to_str().unwrap();
    let with_admin_token =
        parse(&["--join", "10.0.0.1:7001", "--node-id", "4", "--tls-dir", tls_dir, "--join-token-file", token_file]);
    assert_eq!(
        with_admin_token.unwrap().join_credential,
        Some(JoinCredential::Token(Token(Bytes::from_static(b"admin-secret"))))
    );
    // A join credential without --join HOST:PORT (or without TLS) is a
    // mistake, and the error names what was given and what is missing.
    let error = config_error(parse(&[&["--node-id", "4", "--peers", "4=127.0.0.1:7108"][..], &admin[..]].concat()));
    assert!(matches!(error, ConfigError::JoinCredentialUnused { .. }), "{error}");
    assert!(error.to_string().starts_with("--join-tls-cert and --join-tls-key is what"), "{error}");
    assert!(error.to_string().contains("needs --join HOST:PORT,... and TLS"), "{error}");
    let error = config_error(parse(&["--join", "10.0.0.1:7001", "--join-token-file", token_file]));
    assert!(error.to_string().starts_with("--join-token-file is what"), "{error}");
    assert!(error.to_string().contains("needs TLS") && !error.to_string().contains("--join-tls-cert"), "{error}");
    // `join = ""` in a configuration file lists no member (it read as a
    // missing option).
    let file = dir.join("join.toml");
    std::fs::write(&file, "join = \"\"\nnode-id = 4\n").unwrap();
    let error = config_error(parse(&["--config", file.to_str().unwrap()]));
    assert!(matches!(error, ConfigError::JoinNoMembers), "{error}");
}

/// `node restore` and `node admin backup` on the command line: the
/// configuration they make, and the mistakes refused before any file is
/// touched.
#[test]
fn restore_and_backup_command_lines() {
    let restore = |node_id: &str, peers: &str, cluster_id: &str| {
        parse_from([
            "node",
            "restore",
            "--backup",
            "c.backup",
            "--data-dir",
            "d",
            "--node-id",
            node_id,
            "--peers",
            peers,
            "--cluster-id",
            cluster_id,
        ])
    };
    let peers = "1=127.0.0.1:7000,2=127.0.0.1:7002,3=127.0.0.1:7004";
    match restore("2", peers, "9").unwrap() {
        NodeCommand::Restore(config) => {
            assert_eq!((config.node_id, config.cluster_id, &config.voters[..]), (2, 9, &[1, 2, 3][..]));
            assert_eq!((config.backup.to_str(), config.data_dir.to_str()), (Some("c.backup"), Some("d")));
        }
        other => panic!("{other:?}"),
    }
    let error = restore("4", peers, "9").unwrap_err().to_string();
    assert!(error.contains("does not include this node's id 4"), "{error}");
    let error = restore("2", peers, "0").unwrap_err().to_string();
    assert!(error.contains("cluster-id") && error.contains("positive"), "{error}");
    let error = restore("2", "1=nowhere", "9").unwrap_err().to_string();
    assert!(error.contains("--peers"), "{error}");
    match parse_from(["node", "restore", "--backup", "c.backup", "--check"]).unwrap() {
        NodeCommand::CheckBackup(path) => assert_eq!(path.to_str(), Some("c.backup")),
        other => panic!("{other:?}"),
    }
    assert!(parse_from(["node", "restore", "--backup", "c.backup", "--check", "--node-id", "1"]).is_err());
    assert!(parse_from(["node", "restore", "--backup", "c.backup", "--node-id", "1"]).is_err(), "options missing");
    let backup = ["node", "admin", "--addr", "127.0.0.1:7101", "--token", "t", "backup", "--out", "c.backup"];
    match parse_from(backup).unwrap() {
        NodeCommand::Backup { client, out } => {
            assert_eq!((client.addrs.len(), out.to_str()), (1, Some("c.backup")));
        }
        other => panic!("{other:?}"),
    }
}

/// Byte counts take the units the help shows their defaults in (`[default:
/// 1 MiB]`): `--batch-bytes-max 1MiB` was refused with "invalid digit found
/// in string". The configuration file takes them too.
#[test]
fn byte_counts_take_units() {
    let dir = scratch("units");
    let config = serve(
        &dir,
        &[
            "--batch-bytes-max",
            "1MiB",
            "--log-memory-bytes",
            "512 MiB",
            "--snapshot-log-bytes",
            "1GB",
            "--snapshot-write-rate",
            "8 MiB/s",
            "--uncommitted-bytes-max",
            "268_435_456",
        ],
    )
    .unwrap();
    assert_eq!(config.limits.batch_bytes_max, 1 << 20);
    assert_eq!(config.log_memory_bytes, 512 << 20);
    assert_eq!(config.snapshot_log_bytes, 1_000_000_000);
    assert_eq!(config.snapshot_write_rate, 8 << 20);
    for bad in ["1 MiBs", "MiB", "1.5MiB", "99999999999TiB"] {
        match serve(&dir, &["--log-memory-bytes", bad]) {
            Err(CliError::Parse(error)) => assert!(error.to_string().contains("--log-memory-bytes"), "{error}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
    let file = dir.join("units.toml");
    std::fs::write(&file, "log-memory-bytes = \"64 MiB\"\nsnapshot-log-bytes = 1048576\n").unwrap();
    let path = file.to_string_lossy().into_owned();
    let config = serve(&dir, &["--config", &path]).unwrap();
    assert_eq!((config.log_memory_bytes, config.snapshot_log_bytes), (64 << 20, 1 << 20));
    std::fs::write(&file, "log-memory-bytes = \"64 parsecs\"\n").unwrap();
    let error = config_error(serve(&dir, &["--config", &path]));
    assert!(error.to_string().contains("unknown unit"), "{error}");
}
