//! The client side of the client protocol: connect (with TLS when
//! configured, verifying that the node's certificate names a node of the
//! cluster), handshake as a client, send pipelined requests, receive
//! responses in whatever order the node answers them. Used by the load
//! generator and the CLI; async on tokio-uring.
//!
//! For one request at a time, [`ClientConnection::call`]. For pipelining,
//! [`ClientConnection::queue`] many requests then [`ClientConnection::flush`]
//! them in one write, or [`ClientConnection::split`] into a sender and a
//! receiver driven by two tasks.

use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use engine::NodeId;

use crate::client::{ClientRequest, ClientResponse};
use crate::codec::{encode_request, Payload};
use crate::conn::{call, CallError, CallerTls, Coalescer, ConnError, FrameReader};
use crate::frame::{FrameKind, Limits, PROTOCOL_VERSION};
use crate::handshake::{Handshake, HandshakeError, Role};
use crate::security::ClientTls;
use crate::stream::Stream;

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub cluster_id: u64,
    /// The client's token (a per-user token, or the shared token of a
    /// plaintext development cluster); empty when a client certificate
    /// authenticates it.
    pub token: Bytes,
    /// TLS settings; `None` connects in plaintext.
    pub tls: Option<ClientTls>,
    /// The node the client means to reach, if it knows it: the connection
    /// fails with [`HandshakeError::WrongNode`] if another node answers. With
    /// TLS the node's certificate must name it too.
    pub expected_node: Option<NodeId>,
    /// Bound on connect, and separately on TLS plus the handshake.
    pub connect_timeout: Duration,
    pub limits: Limits,
}

impl ClientConfig {
    /// A plaintext client with a token.
    pub fn new(cluster_id: u64, token: Bytes) -> ClientConfig {
        ClientConfig {
            cluster_id,
            token,
            tls: None,
            expected_node: None,
            connect_timeout: Duration::from_secs(5),
            limits: Limits::default(),
        }
    }

    /// A TLS client: with a client certificate in `tls`, `token` may be
    /// empty.
    pub fn with_tls(cluster_id: u64, tls: ClientTls, token: Bytes) -> ClientConfig {
        ClientConfig { tls: Some(tls), ..ClientConfig::new(cluster_id, token) }
    }
}

/// What went wrong on a client connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("the node closed the connection")]
    Closed,
}

/// A client connection to one node.
pub struct ClientConnection {
    sender: ClientSender,
    receiver: ClientReceiver,
    server_node_id: NodeId,
    server_shards: u32,
}

/// The sending half: encodes requests into a reusable buffer and writes them
/// coalesced.
pub struct ClientSender {
    stream: Rc<Stream>,
    cluster_id: u64,
    coalescer: Coalescer,
}

/// The receiving half: reads responses from a reusable buffer.
pub struct ClientReceiver {
    stream: Rc<Stream>,
    cluster_id: u64,
    reader: FrameReader,
}

impl ClientConnection {
    /// Connects to `addr` and completes the client handshake.
    pub async fn connect(addr: SocketAddr, config: &ClientConfig) -> Result<ClientConnection, ClientError> {
        let handshake = Handshake {
            cluster_id: config.cluster_id,
            node_id: 0,
            role: Role::Client,
            protocol_version: u16::from(PROTOCOL_VERSION),
            token: config.token.clone(),
            history: crate::History::FRESH,
        };
        let tls = config.tls.as_ref().map(|tls| CallerTls {
            config: tls.config.clone(),
            server_name: crate::tls::server_name(config.cluster_id, config.expected_node),
        });
        let (stream, reader, accept) =
            call(addr, tls, handshake, config.expected_node, config.limits, config.connect_timeout, None)
                .await
                .map_err(|error| match error {
                    CallError::Connect(source) => ClientError::Connect { addr, source },
                    CallError::Handshake(error) => ClientError::Handshake(error),
                })?;
        let stream = Rc::new(stream);
        Ok(ClientConnection {
            sender: ClientSender { stream: stream.clone(), cluster_id: config.cluster_id, coalescer: Coalescer::new() },
            receiver: ClientReceiver { stream, cluster_id: config.cluster_id, reader },
            server_node_id: accept.node_id,
            server_shards: accept.shards,
        })
    }

    /// The node id the server announced in its handshake answer.
    pub fn server_node_id(&self) -> NodeId {
        self.server_node_id
    }

    /// The shard count the server announced (0: not said).
    pub fn server_shards(&self) -> u32 {
        self.server_shards
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.sender.stream.is_tls()
    }

    /// Encodes `request` for the next [`ClientConnection::flush`].
    pub fn queue(&mut self, shard_id: u32, request: &ClientRequest) {
        self.sender.queue(shard_id, request);
    }

    /// Writes every queued request.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.sender.flush().await
    }

    /// Queues and writes one request.
    pub async fn send(&mut self, shard_id: u32, request: &ClientRequest) -> Result<(), ClientError> {
        self.sender.send(shard_id, request).await
    }

    /// The next response, in the order the node sent them.
    pub async fn recv(&mut self) -> Result<ClientResponse, ClientError> {
        self.receiver.recv().await
    }

    /// Sends one request and waits for a response. Only for callers with
    /// nothing else in flight: the next response is taken as the answer.
    pub async fn call(&mut self, shard_id: u32, request: &ClientRequest) -> Result<ClientResponse, ClientError> {
        self.send(shard_id, request).await?;
        self.recv().await
    }

    /// Splits into halves that two tasks can drive at once.
    pub fn split(self) -> (ClientSender, ClientReceiver) {
        (self.sender, self.receiver)
    }
}

impl ClientSender {
    /// Encodes `request` for the next [`ClientSender::flush`].
    pub fn queue(&mut self, shard_id: u32, request: &ClientRequest) {
        let cluster_id = self.cluster_id;
        self.coalescer.push(|out| encode_request(cluster_id, shard_id, request, out));
    }

    /// Requests queued and not yet written.
    pub fn queued(&self) -> usize {
        self.coalescer.len_frames()
    }

    /// Writes every queued request in as few writes as possible.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.coalescer.flush(&*self.stream).await.map_err(ConnError::from)?;
        Ok(())
    }

    /// Queues and writes one request.
    pub async fn send(&mut self, shard_id: u32, request: &ClientRequest) -> Result<(), ClientError> {
        self.queue(shard_id, request);
        self.flush().await
    }

    /// Closes the write direction: the node sees the end of the requests and
    /// still sends the answers to those in flight. (With TLS no close_notify
    /// is sent: the node takes the end of the TCP stream as the end, which
    /// is safe because frames delimit themselves.)
    pub fn finish(&self) -> Result<(), ClientError> {
        self.stream.shutdown(Shutdown::Write).map_err(ConnError::Io)?;
        Ok(())
    }
}

impl ClientReceiver {
    /// The next response.
    pub async fn recv(&mut self) -> Result<ClientResponse, ClientError> {
        let Some(raw) = self.reader.next(&*self.stream).await? else {
            return Err(ClientError::Closed);
        };
        if raw.cluster_id != self.cluster_id {
            return Err(ConnError::ClusterMismatch { expected: self.cluster_id, found: raw.cluster_id }.into());
        }
        if raw.kind != FrameKind::ClientResponse {
            return Err(ConnError::UnexpectedKind { kind: raw.kind }.into());
        }
        match crate::codec::Frame::decode(raw).map_err(ConnError::Decode)?.payload {
            Payload::Response(response) => Ok(response),
            other => unreachable!("a response kind decoded to {:?}", other.kind()),
        }
    }
}
