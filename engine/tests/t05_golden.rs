//! Datadriven golden scripts (in the manner of etcd's `testdata/*.txt`): each
//! file in `engine/testdata/` is a sequence of blocks
//!
//! ```text
//! command arg...
//! ----
//! expected output
//! ```
//!
//! separated by blank lines. `REWRITE=1 cargo test -p engine --test
//! t05_golden` rewrites the expected output; commit only diffs you understand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use engine::message::{AppendResponse, MessageBody};
use engine::testing::Cluster;
use engine::{ConfChange, ConfChangeOp, Config, Message, NodeId, ReadMode, Ready};

struct Block {
    command: String,
    expected: String,
}

fn parse(text: &str) -> Vec<(Vec<String>, Option<Block>)> {
    // Each item: the comment/blank lines before a block, then the block.
    let mut items = Vec::new();
    let mut prefix = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            prefix.push(line.to_string());
            continue;
        }
        let command = line.to_string();
        let separator = lines.next().unwrap_or_default();
        assert_eq!(separator, "----", "expected ---- after command {command:?}");
        let mut expected = String::new();
        while let Some(&next) = lines.peek() {
            if next.is_empty() {
                break;
            }
            expected.push_str(next);
            expected.push('\n');
            lines.next();
        }
        items.push((std::mem::take(&mut prefix), Some(Block { command, expected })));
    }
    if !prefix.is_empty() {
        items.push((prefix, None));
    }
    items
}

struct Script {
    cluster: Cluster,
    options: BTreeMap<String, String>,
}

fn fmt_entries(batch: Option<&engine::EntryBatch>) -> String {
    let Some(batch) = batch else { return String::new() };
    let parts: Vec<String> = batch.entries().map(|e| fmt_entry(&e)).collect();
    format!(" entries=[{}]", parts.join(", "))
}

fn fmt_entry(entry: &engine::Entry) -> String {
    match entry.kind {
        engine::EntryKind::Noop => format!("{}/{} noop", entry.index, entry.term),
        engine::EntryKind::Normal => {
            format!("{}/{} {:?}", entry.index, entry.term, String::from_utf8_lossy(&entry.data))
        }
        engine::EntryKind::Config => match ConfChange::decode(&entry.data) {
            Ok(change) if change.is_leave_joint() => format!("{}/{} conf:leave-joint", entry.index, entry.term),
            Ok(change) => format!("{}/{} conf:{:?}", entry.index, entry.term, change.ops),
            Err(_) => format!("{}/{} conf:<bad>", entry.index, entry.term),
        },
    }
}

fn fmt_message(message: &Message) -> String {
    let head = format!("{}->{} term={}", message.from, message.to, message.term);
    match &message.body {
        MessageBody::PreVote(r) => format!("{head} PreVote last={}/{}", r.last_log_index, r.last_log_term),
        MessageBody::Vote(r) => {
            format!(
                "{head} Vote last={}/{}{}",
                r.last_log_index,
                r.last_log_term,
                if r.transfer { " transfer" } else { "" }
            )
        }
        MessageBody::PreVoteResponse { granted } => format!("{head} PreVoteResponse granted={granted}"),
        MessageBody::VoteResponse { granted } => format!("{head} VoteResponse granted={granted}"),
        MessageBody::Append(r) => format!(
            "{head} Append prev={}/{} commit={}{}",
            r.prev_index,
            r.prev_term,
            r.commit,
            fmt_entries(r.entries.as_ref())
        ),
        MessageBody::AppendResponse(AppendResponse { index, no_space: true, .. }) => {
            format!("{head} AppendResponse no-space index={index}")
        }
        MessageBody::AppendResponse(AppendResponse { index, reject: false, .. }) => {
            format!("{head} AppendResponse index={index}")
        }
        MessageBody::AppendResponse(AppendResponse { index, reject: true, hint_index, hint_term, .. }) => {
            format!("{head} AppendResponse reject index={index} hint={hint_index}/{hint_term}")
        }
        MessageBody::Heartbeat { commit, read_context } => {
            format!("{head} Heartbeat commit={commit} round={read_context}")
        }
        MessageBody::HeartbeatResponse { read_context } => format!("{head} HeartbeatResponse round={read_context}"),
        MessageBody::InstallSnapshot(chunk) => format!(
            "{head} InstallSnapshot snap={}/{} offset={} len={} done={}",
            chunk.meta.index,
            chunk.meta.term,
            chunk.offset,
            chunk.data.len(),
            chunk.done
        ),
        MessageBody::InstallSnapshotResponse { index, term, next_offset, rejected } => {
            format!("{head} InstallSnapshotResponse snap={index}/{term} next={next_offset} rejected={rejected}")
        }
        MessageBody::TimeoutNow => format!("{head} TimeoutNow"),
        MessageBody::ReadIndex { context } => format!("{head} ReadIndex ctx={context}"),
        MessageBody::ReadIndexResponse { context, index } => {
            format!("{head} ReadIndexResponse ctx={context} index={index}")
        }
        MessageBody::Propose { command } => format!("{head} Propose len={}", command.len()),
    }
}

fn fmt_ready(id: NodeId, ready: &Ready, out: &mut String) {
    writeln!(out, "> {id} handling Ready").unwrap();
    if let Some(soft) = ready.soft_state {
        writeln!(out, "  role: {:?} leader={}", soft.role, soft.leader).unwrap();
    }
    if let Some(hs) = ready.hard_state {
        let sync = if ready.hard_state_must_sync { " (sync)" } else { "" };
        let (term, vote, commit, ack) = (hs.term, hs.vote, hs.commit, hs.ack_term);
        writeln!(out, "  hard state: term={term} vote={vote} commit={commit} ack={ack}{sync}").unwrap();
    }
    for batch in &ready.entries {
        let parts: Vec<String> = batch.entries().map(|e| fmt_entry(&e)).collect();
        writeln!(out, "  persist: {}", parts.join(", ")).unwrap();
    }
    for message in &ready.messages {
        writeln!(out, "  send: {}", fmt_message(message)).unwrap();
    }
    for message in &ready.messages_after_persist {
        writeln!(out, "  send after persist: {}", fmt_message(message)).unwrap();
    }
    for entry in &ready.committed_entries {
        writeln!(out, "  apply: {}", fmt_entry(entry)).unwrap();
    }
    for read in &ready.read_states {
        writeln!(out, "  read ready: ctx={} index={}", read.context, read.index).unwrap();
    }
    if ready.snapshot_due {
        writeln!(out, "  take snapshot").unwrap();
    }
    if let Some(index) = ready.compact_to {
        writeln!(out, "  compact storage to {index}").unwrap();
    }
    for read in &ready.snapshot_reads {
        writeln!(out, "  read snapshot {} for {}: offset={} len={}", read.index, read.to, read.offset, read.len)
            .unwrap();
    }
    for write in &ready.snapshot_writes {
        writeln!(
            out,
            "  write snapshot {}/{}: offset={} len={}{}",
            write.meta.index,
            write.meta.term,
            write.offset,
            write.data.len(),
            if write.done { " done" } else { "" }
        )
        .unwrap();
    }
    if let Some(meta) = &ready.snapshot_install {
        writeln!(out, "  install snapshot {}/{} voters={:?}", meta.index, meta.term, meta.conf.voters).unwrap();
    }
    for context in &ready.dropped_reads {
        writeln!(out, "  read dropped: ctx={context}").unwrap();
    }
}

fn ids(arg: &str) -> Vec<NodeId> {
    arg.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().expect("node id")).collect()
}

impl Script {
    fn config(&self, id: NodeId, voters: Vec<NodeId>, learners: Vec<NodeId>) -> Config {
        // `witnesses=` names bootstrap voters that are witnesses; a node
        // added later with an id listed there starts as one (`--witness`).
        let witnesses = self.options.get("witnesses").map_or_else(Vec::new, |v| ids(v));
        let mut config = Config::new(id, voters.clone());
        config.learners = learners;
        config.witness = witnesses.contains(&id);
        if !voters.is_empty() {
            config.witnesses = witnesses;
        }
        let flag = |name: &str, default: bool| self.options.get(name).map_or(default, |v| v == "true");
        config.pre_vote = flag("pre-vote", false);
        config.check_quorum = flag("check-quorum", false);
        config.election_ticks_min = 10;
        config.election_ticks_max = 20;
        if let Some(bytes) = self.options.get("batch-bytes") {
            config.batch_bytes_max = bytes.parse().unwrap();
        }
        if let Some(entries) = self.options.get("snapshot-entries") {
            config.snapshot_entries = entries.parse().unwrap();
        }
        if let Some(tail) = self.options.get("compaction-tail") {
            config.compaction_tail = tail.parse().unwrap();
        }
        if let Some(bytes) = self.options.get("chunk-bytes") {
            config.snapshot_chunk_bytes = bytes.parse().unwrap();
        }
        if let Some(lag) = self.options.get("promotion-lag") {
            config.promotion_lag_max = lag.parse().unwrap();
        }
        if let Some(window) = self.options.get("inflight") {
            config.inflight_batches_max = window.parse().unwrap();
        }
        config.seed = id;
        config
    }

    fn run(&mut self, command: &str) -> String {
        let mut out = String::new();
        let words: Vec<&str> = command.split_whitespace().collect();
        let (name, args) = (words[0], &words[1..]);
        let kv: BTreeMap<&str, &str> = args.iter().filter_map(|a| a.split_once('=')).collect();
        let positional: Vec<&str> = args.iter().copied().filter(|a| !a.contains('=')).collect();
        let id = |i: usize| -> NodeId { positional[i].parse().expect("node id") };
        match name {
            "add-nodes" => {
                for (key, value) in &kv {
                    self.options.insert(key.to_string(), value.to_string());
                }
                let count: u64 = positional[0].parse().unwrap();
                let voters: Vec<NodeId> = kv.get("voters").map_or_else(|| (1..=count).collect(), |v| ids(v));
                let learners: Vec<NodeId> = kv.get("learners").map_or_else(Vec::new, |v| ids(v));
                let members: Vec<NodeId> = voters.iter().chain(&learners).copied().collect();
                let configs: Vec<Config> =
                    members.iter().map(|&id| self.config(id, voters.clone(), learners.clone())).collect();
                self.cluster = Cluster::new(&members, |id| configs.iter().find(|c| c.id == id).unwrap().clone());
                writeln!(out, "voters={voters:?} learners={learners:?}").unwrap();
            }
            "add-node" => {
                // A new, empty node that learns its membership from the log.
                let config = self.config(id(0), Vec::new(), Vec::new());
                self.cluster.add_node(config);
                writeln!(out, "ok").unwrap();
            }
            "campaign" => {
                self.cluster.raft(id(0)).campaign();
                writeln!(out, "ok").unwrap();
            }
            "propose" => match self.cluster.raft(id(0)).propose(Bytes::from(positional[1].to_string())) {
                Ok((index, term)) => writeln!(out, "proposed at {index}/{term}").unwrap(),
                Err(error) => writeln!(out, "error: {error}").unwrap(),
            },
            "propose-conf-change" => {
                let mut ops = Vec::new();
                for (key, value) in args.iter().filter_map(|a| a.split_once('=')) {
                    for node in ids(value) {
                        ops.push(match key {
                            "add-voter" => ConfChangeOp::AddVoter(node),
                            "add-learner" => ConfChangeOp::AddLearner(node),
                            "remove" => ConfChangeOp::Remove(node),
                            "add-witness" => ConfChangeOp::AddWitness(node),
                            other => panic!("unknown conf change op {other}"),
                        });
                    }
                }
                match self.cluster.raft(id(0)).propose_conf_change(ConfChange { ops }) {
                    Ok((index, term)) => writeln!(out, "proposed at {index}/{term}").unwrap(),
                    Err(error) => writeln!(out, "error: {error}").unwrap(),
                }
            }
            "tick" => {
                let count: u32 = positional.get(1).map_or(1, |n| n.parse().unwrap());
                for _ in 0..count {
                    self.cluster.raft(id(0)).tick();
                }
                writeln!(out, "ok").unwrap();
            }
            "tick-all" => {
                let count: u32 = positional.first().map_or(1, |n| n.parse().unwrap());
                for _ in 0..count {
                    self.cluster.tick_all();
                }
                writeln!(out, "ok").unwrap();
            }
            "process-ready" => {
                for &p in &positional {
                    let node: NodeId = p.parse().unwrap();
                    match self.cluster.process_ready(node) {
                        Some(ready) => fmt_ready(node, &ready, &mut out),
                        None => writeln!(out, "> {node} no Ready").unwrap(),
                    }
                }
            }
            "deliver-msgs" => {
                let targets: Vec<NodeId> = positional.iter().map(|p| p.parse().unwrap()).collect();
                let limit: usize = kv.get("limit").map_or(usize::MAX, |n| n.parse().unwrap());
                let mut chosen = Vec::new();
                let mut rest = Vec::new();
                for message in std::mem::take(&mut self.cluster.network) {
                    if (targets.is_empty() || targets.contains(&message.to)) && chosen.len() < limit {
                        chosen.push(message);
                    } else {
                        rest.push(message);
                    }
                }
                self.cluster.network = rest;
                if chosen.is_empty() {
                    writeln!(out, "no messages").unwrap();
                }
                for message in chosen {
                    let shown = fmt_message(&message);
                    let to = message.to;
                    if !self.cluster.deliver(message.clone()) {
                        writeln!(out, "dropped: {shown}").unwrap();
                        continue;
                    }
                    let _ = to;
                    writeln!(out, "{shown}").unwrap();
                }
            }
            "stabilize" => {
                for _ in 0..1000 {
                    let mut moved = false;
                    let nodes: Vec<NodeId> = self.cluster.nodes.keys().copied().collect();
                    for node in nodes {
                        if let Some(ready) = self.cluster.process_ready(node) {
                            fmt_ready(node, &ready, &mut out);
                            moved = true;
                        }
                    }
                    let messages = std::mem::take(&mut self.cluster.network);
                    for message in messages {
                        moved = true;
                        let shown = fmt_message(&message);
                        if !self.cluster.deliver(message) {
                            writeln!(out, "dropped: {shown}").unwrap();
                        }
                    }
                    if !moved {
                        break;
                    }
                }
            }
            "partition" => {
                self.cluster.partition(&ids(positional[0]), &ids(positional[1]));
                writeln!(out, "ok").unwrap();
            }
            "isolate" => {
                self.cluster.isolate(id(0));
                writeln!(out, "ok").unwrap();
            }
            "heal" => {
                self.cluster.heal();
                writeln!(out, "ok").unwrap();
            }
            "crash" => {
                self.cluster.crash(id(0));
                writeln!(out, "ok").unwrap();
            }
            "restart" => {
                self.cluster.restart(id(0));
                writeln!(out, "ok").unwrap();
            }
            "read-index" => {
                let context: u64 = positional[1].parse().unwrap();
                let mode = if kv.get("mode") == Some(&"lease") { ReadMode::Lease } else { ReadMode::ReadIndex };
                match self.cluster.raft(id(0)).read_index(context, mode) {
                    Ok(()) => writeln!(out, "ok").unwrap(),
                    Err(error) => writeln!(out, "error: {error}").unwrap(),
                }
            }
            "transfer-leader" => match self.cluster.raft(id(0)).transfer_leader(id(1)) {
                Ok(()) => writeln!(out, "ok").unwrap(),
                Err(error) => writeln!(out, "error: {error}").unwrap(),
            },
            "raft-state" => {
                for (node_id, node) in &self.cluster.nodes {
                    let raft = &node.raft;
                    let down = if self.cluster.down.contains(node_id) { " (down)" } else { "" };
                    writeln!(
                        out,
                        "{node_id}: {:?} term={} leader={} commit={} applied={} last={}{down}",
                        raft.role(),
                        raft.term(),
                        raft.leader(),
                        raft.committed(),
                        raft.applied(),
                        raft.last_index()
                    )
                    .unwrap();
                }
            }
            "conf" => {
                let conf = self.cluster.node(id(0)).raft.conf().clone();
                write!(
                    out,
                    "voters={:?} outgoing={:?} learners={:?}",
                    conf.voters, conf.voters_outgoing, conf.learners
                )
                .unwrap();
                if !conf.witnesses.is_empty() {
                    write!(out, " witnesses={:?}", conf.witnesses).unwrap();
                }
                writeln!(out).unwrap();
            }
            "log" => {
                let raft = &self.cluster.node(id(0)).raft;
                let entries: Vec<String> =
                    (raft.first_index()..=raft.last_index()).filter_map(|i| raft.entry(i)).map(fmt_entry).collect();
                writeln!(out, "{}", if entries.is_empty() { "(empty)".to_string() } else { entries.join("\n") })
                    .unwrap();
            }
            "snapshot" => {
                let raft = &self.cluster.node(id(0)).raft;
                writeln!(
                    out,
                    "snapshot={}/{} first={} last={} applied={}",
                    raft.snapshot().index,
                    raft.snapshot().term,
                    raft.first_index(),
                    raft.last_index(),
                    raft.applied()
                )
                .unwrap();
            }
            "propose-n" => {
                let count: u32 = positional[1].parse().unwrap();
                for i in 0..count {
                    self.cluster.raft(id(0)).propose(Bytes::from(format!("v{i}"))).unwrap();
                }
                writeln!(out, "ok").unwrap();
            }
            "status" => {
                let status = self.cluster.node(id(0)).raft.status();
                for peer in status.progress {
                    writeln!(
                        out,
                        "{}: {:?} match={} next={} inflight={}{}",
                        peer.id,
                        peer.state,
                        peer.match_index,
                        peer.next_index,
                        peer.inflight_batches,
                        if peer.learner {
                            " learner"
                        } else if peer.witness {
                            " witness"
                        } else {
                            ""
                        }
                    )
                    .unwrap();
                }
            }
            other => panic!("unknown command {other:?}"),
        }
        for node in self.cluster.nodes.values() {
            node.raft.check_invariants();
        }
        out
    }
}

fn run_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap();
    let items = parse(&text);
    let mut script = Script { cluster: Cluster::new(&[], |id| Config::new(id, vec![id])), options: BTreeMap::new() };
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    for (prefix, block) in items {
        for line in prefix {
            rewritten.push_str(&line);
            rewritten.push('\n');
        }
        let Some(block) = block else { continue };
        let actual = script.run(&block.command);
        if actual != block.expected {
            failures.push(format!(
                "{}: `{}`\n--- expected ---\n{}--- actual ---\n{}",
                path.display(),
                block.command,
                block.expected,
                actual
            ));
        }
        rewritten.push_str(&block.command);
        rewritten.push_str("\n----\n");
        rewritten.push_str(&actual);
    }
    if std::env::var_os("REWRITE").is_some() {
        std::fs::write(path, rewritten).unwrap();
        return Ok(());
    }
    match failures.first() {
        None => Ok(()),
        Some(first) => Err(format!("{first}\n({} failing blocks; REWRITE=1 regenerates)", failures.len())),
    }
}

#[test]
fn golden_scripts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no golden scripts in {}", dir.display());
    let errors: Vec<String> = paths.iter().filter_map(|p| run_file(p).err()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}
