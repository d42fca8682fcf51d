//! The client side of the client protocol: connect, handshake as a client,
//! send pipelined requests, receive responses in whatever order the node
//! answers them. Used by the load generator and the CLI; async on tokio-uring.
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
use tokio_uring::net::TcpStream;

use crate::client::{ClientRequest, ClientResponse};
use crate::codec::{encode_request, Payload};
use crate::conn::{connect, initiate_handshake, Coalescer, ConnError, FrameReader};
use crate::frame::{FrameKind, Limits, PROTOCOL_VERSION};
use crate::handshake::{Handshake, HandshakeError, Role};

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub cluster_id: u64,
    /// The cluster's shared secret.
    pub token: Bytes,
    /// Bound on connect plus handshake.
    pub connect_timeout: Duration,
    pub limits: Limits,
}

impl ClientConfig {
    pub fn new(cluster_id: u64, token: Bytes) -> ClientConfig {
        ClientConfig { cluster_id, token, connect_timeout: Duration::from_secs(5), limits: Limits::default() }
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
}

/// The sending half: encodes requests into a reusable buffer and writes them
/// coalesced.
pub struct ClientSender {
    stream: Rc<TcpStream>,
    cluster_id: u64,
    coalescer: Coalescer,
}

/// The receiving half: reads responses from a reusable buffer.
pub struct ClientReceiver {
    stream: Rc<TcpStream>,
    cluster_id: u64,
    reader: FrameReader,
}

impl ClientConnection {
    /// Connects to `addr` and completes the client handshake.
    pub async fn connect(addr: SocketAddr, config: &ClientConfig) -> Result<ClientConnection, ClientError> {
        let stream =
            connect(addr, config.connect_timeout).await.map_err(|source| ClientError::Connect { addr, source })?;
        let mut reader = FrameReader::new(config.limits);
        let handshake = Handshake {
            cluster_id: config.cluster_id,
            node_id: 0,
            role: Role::Client,
            protocol_version: u16::from(PROTOCOL_VERSION),
            token: config.token.clone(),
        };
        let accept = initiate_handshake(&stream, &mut reader, handshake, config.connect_timeout).await?;
        let stream = Rc::new(stream);
        Ok(ClientConnection {
            sender: ClientSender { stream: stream.clone(), cluster_id: config.cluster_id, coalescer: Coalescer::new() },
            receiver: ClientReceiver { stream, cluster_id: config.cluster_id, reader },
            server_node_id: accept.node_id,
        })
    }

    /// The node id the server announced in its handshake answer.
    pub fn server_node_id(&self) -> NodeId {
        self.server_node_id
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
        self.coalescer.flush(&self.stream).await.map_err(ConnError::Io)?;
        Ok(())
    }

    /// Queues and writes one request.
    pub async fn send(&mut self, shard_id: u32, request: &ClientRequest) -> Result<(), ClientError> {
        self.queue(shard_id, request);
        self.flush().await
    }

    /// Closes the write direction: the node sees the end of the requests and
    /// still sends the answers to those in flight.
    pub fn finish(&self) -> Result<(), ClientError> {
        self.stream.shutdown(Shutdown::Write).map_err(ConnError::Io)?;
        Ok(())
    }
}

impl ClientReceiver {
    /// The next response.
    pub async fn recv(&mut self) -> Result<ClientResponse, ClientError> {
        let Some(raw) = self.reader.next(&self.stream).await? else {
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
