//! Embedding the node in an application: a replicated state machine of the
//! application's own, run as real nodes (the io_uring WAL, TCP) or as a
//! whole cluster inside one process (memory, channels) for the
//! application's tests.
//!
//! ```no_run
//! use bytes::Bytes;
//! use node::embed::LocalCluster;
//! use node::KvStateMachine;
//!
//! // Three replicas in this process, each with its own state machine.
//! let mut cluster = LocalCluster::start(3, |_shard| KvStateMachine::new()).unwrap();
//! let mut client = cluster.client();
//! let mut session = client.open_session().unwrap();
//! let put = node::KvOp::Put { key: Bytes::from("k"), value: Bytes::from("v") };
//! client.write(&mut session, put.encode()).unwrap();
//! // A leader failure: stop it, the others elect another, the client follows.
//! let leader = cluster.leader(0).unwrap();
//! cluster.stop(leader).unwrap();
//! client.write(&mut session, put.encode()).unwrap();
//! cluster.restart(leader).unwrap(); // it recovers from its (memory) disks
//! cluster.shutdown().unwrap();
//! ```
//!
//! A node of a real cluster is [`crate::runtime::start`] (or
//! [`crate::runtime::serve`]) with a [`crate::config::ServeConfig`], any
//! state machine, [`Storage::Wal`] and [`Network::Tcp`]; clients in other
//! processes use `net::Client` (TCP), code in the same process a
//! [`NodeHandle`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::NodeId;
use net::{ClientRequest, Connector, ResponseStatus};

use crate::app::StateMachine;
use crate::client_cmd::{BlockingClient, ClientCmdError};
use crate::config::ServeConfig;
use crate::runtime::{self, Hub, MemDisks, Network, NodeHandle, RunningNode, ServeError, Storage};

/// The cluster id of in-process clusters.
const LOCAL_CLUSTER_ID: u64 = 1;
/// How long a client of an in-process cluster retries a call.
const LOCAL_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's way into an in-process cluster: the nodes' handles, by id
/// (shared with the cluster, so a restarted node is found again).
#[derive(Clone)]
pub struct LocalConnector {
    handles: Arc<Mutex<BTreeMap<NodeId, NodeHandle>>>,
}

impl Connector for LocalConnector {
    type Address = NodeId;

    async fn exchange(&mut self, node: &NodeId, shard: u32, request: &ClientRequest) -> Result<ResponseStatus, String> {
        let handle = self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(node).cloned();
        let handle = handle.ok_or_else(|| format!("node {node} is not running"))?;
        handle.call(shard, request.clone()).await.map_err(|_| format!("node {node} stopped before answering"))
    }

    fn leader(&self, status: &ResponseStatus) -> Option<NodeId> {
        match status {
            ResponseStatus::NotLeader { leader_id: Some(leader), .. } => Some(*leader),
            _ => None,
        }
    }

    fn forget(&mut self, _: &NodeId) {}

    async fn shards(&mut self, node: &NodeId) -> Result<u32, String> {
        let handles = self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        handles.get(node).map(NodeHandle::shards).ok_or_else(|| format!("node {node} is not running"))
    }
}

/// A cluster of nodes inside this process: each node's shards keep their
/// logs in memory that outlives the node (so a stopped node restarts from
/// it), and nodes talk through a [`Hub`]. Every node runs the real shard
/// driver on its own io_uring threads.
pub struct LocalCluster<S, F> {
    config: ServeConfig,
    ids: Vec<NodeId>,
    nodes: BTreeMap<NodeId, RunningNode>,
    handles: Arc<Mutex<BTreeMap<NodeId, NodeHandle>>>,
    hub: Hub,
    disks: MemDisks,
    make_app: Arc<F>,
    _app: std::marker::PhantomData<fn() -> S>,
}

impl<S, F> LocalCluster<S, F>
where
    S: StateMachine + 'static,
    F: Fn(u32) -> S + Send + Sync + 'static,
{
    /// Starts `count` nodes (ids 1 to `count`) of one shard each, with
    /// state machines from `make_app`.
    pub fn start(count: u64, make_app: F) -> Result<LocalCluster<S, F>, ServeError> {
        LocalCluster::start_with(count, |_| {}, make_app)
    }

    /// Like [`LocalCluster::start`], with `adjust` changing every node's
    /// configuration first (shards, timing, forwarding, ...).
    pub fn start_with(
        count: u64,
        adjust: impl Fn(&mut ServeConfig),
        make_app: F,
    ) -> Result<LocalCluster<S, F>, ServeError> {
        let ids: Vec<NodeId> = (1..=count).collect();
        let mut config = ServeConfig::in_process(1, LOCAL_CLUSTER_ID, &ids);
        adjust(&mut config);
        let mut cluster = LocalCluster {
            config,
            ids: ids.clone(),
            nodes: BTreeMap::new(),
            handles: Arc::default(),
            hub: Hub::new(),
            disks: MemDisks::new(),
            make_app: Arc::new(make_app),
            _app: std::marker::PhantomData,
        };
        for id in ids {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// The ids of every node, running or not.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// A client of shard 0 that follows the leader across the nodes.
    pub fn client(&self) -> BlockingClient<LocalConnector> {
        self.client_of_shard(0)
    }

    /// A client of shard `shard`.
    pub fn client_of_shard(&self, shard: u32) -> BlockingClient<LocalConnector> {
        let connector = LocalConnector { handles: self.handles.clone() };
        BlockingClient::with_connector(connector, self.ids.clone(), shard, LOCAL_CLIENT_TIMEOUT)
            .expect("io_uring was available to start the nodes")
    }

    /// The handle of a running node.
    pub fn handle(&self, id: NodeId) -> Option<NodeHandle> {
        self.nodes.get(&id).map(RunningNode::handle)
    }

    /// The node that leads shard `shard` now, as the running nodes report
    /// it (the one that says it is leader, with the highest term).
    pub fn leader(&self, shard: u32) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for (&id, node) in &self.nodes {
            let status = node.handle().call(shard, ClientRequest::plain(0, net::RequestBody::Status));
            let Ok(ResponseStatus::Ok(json)) = status.blocking_recv() else { continue };
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&json) else { continue };
            if status["role"] == "Leader" {
                let term = status["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(best_term, _)| term > best_term) {
                    best = Some((term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits up to `timeout` for a leader of shard `shard`.
    pub fn wait_for_leader(&self, shard: u32, timeout: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader(shard) {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops node `id` cleanly (its memory disks keep what it stored).
    pub fn stop(&mut self, id: NodeId) -> Result<(), ServeError> {
        self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id);
        match self.nodes.remove(&id) {
            Some(node) => node.stop(),
            None => Ok(()),
        }
    }

    /// Starts node `id` (again), recovering from its memory disks.
    pub fn restart(&mut self, id: NodeId) -> Result<(), ServeError> {
        self.stop(id)?;
        let mut config = self.config.clone();
        config.node_id = id;
        let (peer_addr, client_addr) = in_process_addresses(id);
        config.peer_addr = peer_addr;
        config.client_addr = client_addr;
        let make_app = self.make_app.clone();
        let storage = Storage::Memory(self.disks.clone());
        let network = Network::InProcess(self.hub.clone());
        let node = runtime::start(config, storage, network, move |shard| make_app(shard))?;
        self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id, node.handle());
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops every node.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        let mut result = Ok(());
        for id in self.ids.clone() {
            if let Err(error) = self.stop(id) {
                result = Err(error);
            }
        }
        result
    }
}

/// The addresses an in-process node announces in the address book (never
/// listened on: clients use node ids).
fn in_process_addresses(id: NodeId) -> (SocketAddr, SocketAddr) {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = |base: u16| base.wrapping_add((id % 10_000) as u16);
    (SocketAddr::new(ip, port(40_000)), SocketAddr::new(ip, port(50_000)))
}

impl ServeConfig {
    /// The configuration of node `node_id` of an in-process cluster of
    /// `members`: defaults everywhere, addresses that are never listened on.
    pub fn in_process(node_id: NodeId, cluster_id: u64, members: &[NodeId]) -> ServeConfig {
        use crate::discovery::{HostPort, PeerSource, StaticPeer};
        let peers = members
            .iter()
            .map(|&id| {
                let (peer, _) = in_process_addresses(id);
                StaticPeer { id, addr: HostPort { host: peer.ip().to_string(), port: peer.port() } }
            })
            .collect();
        let (peer_addr, client_addr) = in_process_addresses(node_id);
        ServeConfig {
            node_id,
            cluster_id,
            peer_addr,
            client_addr,
            resp_addr: None,
            metrics_addr: None,
            peers: PeerSource::Static(peers),
            data_dir: std::env::temp_dir(),
            shards: 1,
            core_threads: None,
            token: Some(crate::config::Token(Bytes::from_static(b"in-process"))),
            security: crate::config::SecurityConfig::default(),
            limits: crate::config::FlowLimits::default(),
            timing: crate::config::Timing::default(),
            read_consistency: net::ReadConsistency::Linearizable,
            log_level: "warn".into(),
            join: false,
            join_through: Vec::new(),
            learner: false,
            join_credential: None,
            bootstrap_witnesses: Vec::new(),
            witness: false,
            pin_cores: false,
            forward_writes: false,
            snapshot_entries: None,
            snapshot_log_factor: crate::config::SNAPSHOT_LOG_FACTOR_DEFAULT,
            snapshot_log_bytes: crate::config::SNAPSHOT_LOG_BYTES_DEFAULT,
            snapshot_write_rate: 0,
            log_memory_bytes: crate::config::LOG_MEMORY_BYTES_DEFAULT,
        }
    }
}

/// Why an embedded call failed.
pub type EmbedError = ClientCmdError;
