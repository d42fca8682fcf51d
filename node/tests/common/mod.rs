//! What the node's multi-process tests share: a client of local nodes and
//! the `admin status` query. Each test binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use net::{RequestBody, ResponseStatus};
use node::client_cmd::call;
use node::config::{ClientConfig, Token};
use node::discovery::HostPort;

/// A client of the local nodes listening on these client ports (15 s
/// timeout, shard 0, no TLS).
pub fn local_client(ports: impl IntoIterator<Item = u16>, cluster_id: u64, token: &'static str) -> ClientConfig {
    ClientConfig {
        addrs: ports.into_iter().map(|port| HostPort { host: "127.0.0.1".into(), port }).collect(),
        cluster_id,
        token: Some(Token(Bytes::from_static(token.as_bytes()))),
        tls: None,
        timeout: Duration::from_secs(15),
        shard: 0,
    }
}

/// The `admin status` of the node `client` names, or `None` if it does not
/// answer within 2 s.
pub fn status(mut client: ClientConfig) -> Option<serde_json::Value> {
    client.timeout = Duration::from_secs(2);
    match call(&client, RequestBody::Status) {
        Ok(ResponseStatus::Ok(bytes)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    }
}
