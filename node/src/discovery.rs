//! Finding the cluster's members: a static list, or DNS.
//!
//! # Static
//!
//! `--peers 1=10.0.0.1:7100,2=node-2.db.local:7100,3=[fd00::3]:7100`: each
//! member's id and peer address. Host names are resolved (A, then AAAA) at
//! start.
//!
//! # DNS
//!
//! `--discovery-dns NAME,...` with optional `--discovery-port PORT`. Each
//! name is looked up as SRV records, at `_raft._tcp.NAME` unless NAME already
//! starts with `_` (then as given). Every SRV record is one member: its target
//! host (resolved by A, then AAAA records) and its port. A name without SRV
//! records is one member itself: its A/AAAA address with `--discovery-port`.
//!
//! Node ids come from host names, so that every node derives the same mapping
//! from the same records: the id is the decimal number at the end of the
//! host's first label (`node-3.db.local` and `raft3.db.local` are node 3).
//! For a name without such a number, write the id in front: `3@db-a.local`
//! (only for names resolved by A/AAAA; an SRV target always carries its id).
//!
//! A name that does not resolve, a DNS server that does not answer, a host
//! name without an id, or two members with one id are errors that name the
//! culprit: the node does not start with a partial membership.
//!
//! A running node looks the names up again every `--discovery-interval`
//! and follows what changed ([`crate::dns_watch`]); there a failed lookup
//! is logged and changes nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use engine::NodeId;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

/// The SRV service prefix for a name that does not give its own.
pub const SRV_PREFIX: &str = "_raft._tcp.";

/// A `HOST:PORT` pair where the host is an IP address or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// An IP address (without brackets) or a host name.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The address, if the host is an IP address (no DNS needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(formatter, "[{}]:{}", self.host, self.port)
        } else {
            write!(formatter, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = PeerSpecError;

    fn from_str(value: &str) -> Result<HostPort, PeerSpecError> {
        let bad = |reason: &'static str| PeerSpecError::BadAddress { value: value.into(), reason };
        if let Ok(addr) = value.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("the port must not be 0"));
            }
            return Ok(HostPort { host: addr.ip().to_string(), port: addr.port() });
        }
        let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("expected HOST:PORT"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("the port must not be 0"));
        }
        check_host_name(host).map_err(bad)?;
        Ok(HostPort { host: host.into(), port })
    }
}

/// Refuses what cannot be a DNS host name, so that typos fail at parse time.
fn check_host_name(host: &str) -> Result<(), &'static str> {
    /// RFC 1035: a name is at most 253 characters as text.
    const HOST_NAME_SIZE_MAX: usize = 253;
    if host.is_empty() {
        return Err("the host is empty");
    }
    if host.len() > HOST_NAME_SIZE_MAX {
        return Err("the host name is longer than 253 characters");
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.split('.').all(valid_label) {
        return Err("the host is neither an IP address nor a valid host name");
    }
    Ok(())
}

/// One member of a static list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPeer {
    pub id: NodeId,
    pub addr: HostPort,
}

/// A name to look up, with an id given explicitly as `ID@NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsName {
    pub id: Option<NodeId>,
    pub name: String,
}

/// DNS discovery settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// Invariant: not empty.
    pub names: Vec<DnsName>,
    /// The port for members found by A/AAAA records.
    pub port: Option<u16>,
    /// The DNS server to ask, or `None` for the system's configuration.
    pub nameserver: Option<SocketAddr>,
    /// How long one query may take.
    pub timeout: Duration,
    /// How often a running node looks the names up again (see
    /// [`crate::dns_watch`]). Invariant: positive.
    pub interval: Duration,
}

/// Where the members come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSource {
    Static(Vec<StaticPeer>),
    Dns(DnsDiscovery),
}

/// A member, resolved: its id and peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// A peer list or name list that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerSpecError {
    #[error("{value:?} is not a valid address: {reason}")]
    BadAddress { value: String, reason: &'static str },
    #[error("{entry:?} is not ID=HOST:PORT")]
    BadEntry { entry: String },
    #[error("{entry:?}: the node id must be a positive integer")]
    BadId { entry: String },
    #[error("node id {id} appears twice")]
    DuplicateId { id: NodeId },
    #[error("nodes {first} and {second} are both at {addr}: each member needs its own peer address")]
    DuplicateAddress { first: NodeId, second: NodeId, addr: String },
    #[error("{entry:?} is not a DNS name or ID@NAME: {reason}")]
    BadName { entry: String, reason: &'static str },
    #[error("the list is empty")]
    Empty,
}

/// Discovery that did not give a usable membership.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(String),
    #[error("DNS name {name} cannot be resolved: {reason}")]
    Unresolvable { name: String, reason: String },
    #[error("DNS name {name} has no SRV records, and --discovery-port is not set for its A/AAAA records")]
    PortMissing { name: String },
    #[error("cannot tell the node id of host {host}: its first label does not end with a number; use ID@NAME")]
    NoIdInName { host: String },
    #[error("node id {id} is claimed by both {first} and {second}")]
    DuplicateId { id: NodeId, first: String, second: String },
    #[error("discovery found no member with this node's id {node_id} (found ids {found:?})")]
    SelfNotFound { node_id: NodeId, found: Vec<NodeId> },
}

/// Parses `ID=HOST:PORT,...`.
pub fn parse_static_peers(list: &str) -> Result<Vec<StaticPeer>, PeerSpecError> {
    let mut peers: Vec<StaticPeer> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (id, addr) = entry.split_once('=').ok_or_else(|| PeerSpecError::BadEntry { entry: entry.into() })?;
        let id = parse_id(id.trim()).ok_or_else(|| PeerSpecError::BadId { entry: entry.into() })?;
        let addr: HostPort = addr.trim().parse()?;
        if peers.iter().any(|peer| peer.id == id) {
            return Err(PeerSpecError::DuplicateId { id });
        }
        // Two members at one address: each dials the other and reaches
        // itself or the wrong node, warning about it forever.
        if let Some(other) = peers.iter().find(|peer| peer.addr == addr) {
            return Err(PeerSpecError::DuplicateAddress { first: other.id, second: id, addr: addr.to_string() });
        }
        peers.push(StaticPeer { id, addr });
    }
    if peers.is_empty() {
        return Err(PeerSpecError::Empty);
    }
    peers.sort_by_key(|peer| peer.id);
    Ok(peers)
}

/// Parses `NAME,ID@NAME,...` for DNS discovery.
pub fn parse_dns_names(list: &str) -> Result<Vec<DnsName>, PeerSpecError> {
    let mut names = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (id, name) = match entry.split_once('@') {
            Some((id, name)) => {
                (Some(parse_id(id.trim()).ok_or_else(|| PeerSpecError::BadId { entry: entry.into() })?), name.trim())
            }
            None => (None, entry),
        };
        check_host_name(name).map_err(|reason| PeerSpecError::BadName { entry: entry.into(), reason })?;
        if id.is_some() && name.starts_with('_') {
            return Err(PeerSpecError::BadName {
                entry: entry.into(),
                reason: "an SRV name lists several members: their ids come from the targets' names",
            });
        }
        names.push(DnsName { id, name: name.into() });
    }
    if names.is_empty() {
        return Err(PeerSpecError::Empty);
    }
    Ok(names)
}

fn parse_id(text: &str) -> Option<NodeId> {
    text.parse::<NodeId>().ok().filter(|&id| id != engine::NODE_NONE)
}

/// The node id in a host name: the number at the end of its first label
/// (`node-3.db.local` → 3), or `None`.
pub fn id_from_host(host: &str) -> Option<NodeId> {
    let label = host.split('.').next().unwrap_or("");
    let digits_start = label.rfind(|c: char| !c.is_ascii_digit()).map_or(0, |position| position + 1);
    parse_id(&label[digits_start..])
}

/// Resolves the members. Static lists with IP addresses need no DNS; any
/// host name is looked up with the system's resolver (static lists) or the
/// configured one (DNS discovery). Runs on a tokio runtime (tokio-uring's
/// runtime is one).
pub async fn discover(source: &PeerSource) -> Result<Vec<Peer>, DiscoveryError> {
    let found = match source {
        PeerSource::Static(peers) => {
            let mut resolver = None;
            let mut found = Vec::with_capacity(peers.len());
            for peer in peers {
                let addr = match peer.addr.socket_addr() {
                    Some(addr) => addr,
                    None => {
                        if resolver.is_none() {
                            resolver = Some(build_resolver(None, Duration::from_secs(2))?);
                        }
                        let resolver = resolver.as_ref().expect("just built");
                        SocketAddr::new(lookup_ip(resolver, None, &peer.addr.host).await?, peer.addr.port)
                    }
                };
                found.push((peer.id, addr, peer.addr.to_string()));
            }
            found
        }
        PeerSource::Dns(dns) => discover_dns(dns).await?,
    };
    let mut by_id: BTreeMap<NodeId, (SocketAddr, String)> = BTreeMap::new();
    for (id, addr, origin) in found {
        if let Some((_, first)) = by_id.get(&id) {
            return Err(DiscoveryError::DuplicateId { id, first: first.clone(), second: origin });
        }
        by_id.insert(id, (addr, origin));
    }
    Ok(by_id.into_iter().map(|(id, (addr, _))| Peer { id, addr }).collect())
}

/// [`discover`] on a runtime of its own, for callers outside any runtime
/// (the command line, before the per-core runtimes start).
pub fn discover_blocking(source: &PeerSource) -> Result<Vec<Peer>, DiscoveryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| DiscoveryError::Resolver(format!("cannot start a runtime for DNS: {error}")))?;
    runtime.block_on(discover(source))
}

/// Checks that the members include this node.
pub fn check_members(node_id: NodeId, peers: &[Peer]) -> Result<(), DiscoveryError> {
    if peers.iter().any(|peer| peer.id == node_id) {
        Ok(())
    } else {
        Err(DiscoveryError::SelfNotFound { node_id, found: peers.iter().map(|peer| peer.id).collect() })
    }
}

fn build_resolver(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match nameserver {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => TokioResolver::builder_tokio().map_err(|error| DiscoveryError::Resolver(error.to_string()))?,
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 2;
    // Every lookup must see the records as they are now (a changed
    // address, a new name): a cache would only hide a change.
    options.cache_size = 0;
    Ok(builder.build())
}

/// A name as an absolute name, so that no search domain is appended.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.into()
    } else {
        format!("{name}.")
    }
}

/// Names the failure and the server that was asked, so that "the server did
/// not answer" reads differently from "the name does not exist".
fn unresolvable(name: &str, error: &ResolveError, nameserver: Option<SocketAddr>) -> DiscoveryError {
    let server = nameserver.map_or_else(|| "the system's DNS servers".to_string(), |addr| format!("DNS server {addr}"));
    let reason = if error.is_nx_domain() {
        format!("no such name (NXDOMAIN from {server})")
    } else if error.is_no_records_found() {
        format!("no records (asked {server})")
    } else {
        format!("{error} (asked {server})")
    };
    DiscoveryError::Unresolvable { name: name.into(), reason }
}

async fn lookup_ip(
    resolver: &TokioResolver,
    nameserver: Option<SocketAddr>,
    host: &str,
) -> Result<IpAddr, DiscoveryError> {
    let lookup = resolver.lookup_ip(absolute(host)).await.map_err(|error| unresolvable(host, &error, nameserver))?;
    // The lowest address, so that every node picks the same one.
    lookup.iter().min().ok_or_else(|| DiscoveryError::Unresolvable { name: host.into(), reason: "no addresses".into() })
}

async fn discover_dns(dns: &DnsDiscovery) -> Result<Vec<(NodeId, SocketAddr, String)>, DiscoveryError> {
    let resolver = build_resolver(dns.nameserver, dns.timeout)?;
    let mut found = Vec::new();
    for name in &dns.names {
        let srv_name =
            if name.name.starts_with('_') { name.name.clone() } else { format!("{SRV_PREFIX}{}", name.name) };
        let srv = match resolver.srv_lookup(absolute(&srv_name)).await {
            Ok(lookup) => lookup.iter().map(|record| (record.target().to_utf8(), record.port())).collect(),
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => Vec::new(),
            Err(error) => return Err(unresolvable(&srv_name, &error, dns.nameserver)),
        };
        if srv.is_empty() && name.name.starts_with('_') {
            return Err(DiscoveryError::Unresolvable { name: srv_name, reason: "no SRV records".into() });
        }
        if srv.is_empty() {
            let port = dns.port.ok_or_else(|| DiscoveryError::PortMissing { name: name.name.clone() })?;
            let ip = lookup_ip(&resolver, dns.nameserver, &name.name).await?;
            let id = name.id.or_else(|| id_from_host(&name.name));
            let id = id.ok_or_else(|| DiscoveryError::NoIdInName { host: name.name.clone() })?;
            found.push((id, SocketAddr::new(ip, port), name.name.clone()));
            continue;
        }
        let mut targets: Vec<(String, u16)> = srv;
        targets.sort();
        for (target, port) in targets {
            let target = target.trim_end_matches('.').to_string();
            let id = id_from_host(&target).ok_or_else(|| DiscoveryError::NoIdInName { host: target.clone() })?;
            let ip = lookup_ip(&resolver, dns.nameserver, &target).await?;
            found.push((id, SocketAddr::new(ip, port), format!("{target} (SRV {srv_name})")));
        }
    }
    Ok(found)
}
