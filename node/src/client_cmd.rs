//! `node kv ...` and `node admin ...`: one request to the cluster, following
//! the leader's address when a follower answers `NotLeader`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::{ClientConfig as NetClientConfig, ClientConnection, ClientRequest, RequestBody, ResponseStatus};

use crate::config::{AdminCommand, ClientConfig, KvCommand};
use crate::kv::{KvOp, KvResponse};

/// Why a command-line request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientCmdError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("no node answered within {0:?}: {1}")]
    Unreachable(Duration, String),
    #[error("the cluster refused the request: {0}")]
    Refused(String),
    #[error("io_uring is unavailable: {0}")]
    IoUring(String),
}

fn resolve(client: &ClientConfig) -> Result<Vec<SocketAddr>, ClientCmdError> {
    let mut addrs = Vec::new();
    for host_port in &client.addrs {
        let text = host_port.to_string();
        let found = text.to_socket_addrs().map_err(|_| ClientCmdError::Resolve(text.clone()))?;
        addrs.extend(found);
    }
    if addrs.is_empty() {
        return Err(ClientCmdError::Resolve("no address given".into()));
    }
    Ok(addrs)
}

/// Sends `body` until a node other than a follower answers, or time runs out.
pub fn call(client: &ClientConfig, client_id: u64, body: RequestBody) -> Result<ResponseStatus, ClientCmdError> {
    call_in_session(client, client_id, 1, body)
}

/// Like [`call`], as write `sequence` of session `client_id` (retrying the
/// same sequence is applied once).
pub fn call_in_session(
    client: &ClientConfig,
    client_id: u64,
    sequence: u64,
    body: RequestBody,
) -> Result<ResponseStatus, ClientCmdError> {
    let addrs = resolve(client)?;
    wal::io_uring_available().map_err(|error| ClientCmdError::IoUring(error.to_string()))?;
    let config = NetClientConfig::new(client.cluster_id, client.token.0.clone());
    let timeout = client.timeout;
    let shard = client.shard;
    tokio_uring::start(async move {
        let deadline = Instant::now() + timeout;
        let mut candidates: Vec<SocketAddr> = addrs.clone();
        let mut last_error = String::from("no attempt");
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let addr = candidates[attempt % candidates.len()];
            attempt += 1;
            let request = ClientRequest { request_id: attempt as u64, client_id, sequence, body: body.clone() };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = tokio::time::timeout(remaining, async {
                let mut connection = ClientConnection::connect(addr, &config).await?;
                connection.call(shard, &request).await
            })
            .await;
            match result {
                Ok(Ok(response)) => match response.status {
                    ResponseStatus::NotLeader { leader_addr: Some(leader), .. } => {
                        if let Ok(leader) = leader.parse::<SocketAddr>() {
                            candidates = vec![leader];
                            attempt = 0;
                            continue;
                        }
                        last_error = format!("{addr} is not the leader");
                    }
                    ResponseStatus::NotLeader { .. } | ResponseStatus::Busy => {
                        last_error = format!("{addr}: {:?}", response.status);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        candidates = addrs.clone();
                    }
                    status => return Ok(status),
                },
                Ok(Err(error)) => {
                    last_error = format!("{addr}: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => last_error = format!("{addr}: timed out"),
            }
        }
        Err(ClientCmdError::Unreachable(timeout, last_error))
    })
}

/// Runs `node kv ...` and prints the outcome.
pub fn run_kv(command: KvCommand) -> Result<(), ClientCmdError> {
    let body = if command.op.is_write() {
        RequestBody::Write { command: command.op.encode() }
    } else {
        RequestBody::Read {
            query: command.op.encode(),
            consistency: command.consistency.unwrap_or(net::ReadConsistency::NodeDefault),
        }
    };
    // A fresh session per command: sequence 1 opens it. The id is 64 random
    // bits from the operating system: an id derived from the process id
    // repeats in every fresh pid namespace (each `docker exec`), and a
    // repeated id had the write answered from another command's session
    // without being applied.
    let client_id = rand::random::<u64>() | 1;
    let client_id = if command.op.is_write() { client_id } else { 0 };
    match call(&command.client, client_id, body)? {
        ResponseStatus::Ok(bytes) => {
            print_kv(&command.op, &bytes);
            Ok(())
        }
        other => Err(ClientCmdError::Refused(format!("{other:?}"))),
    }
}

fn show(value: &Bytes) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// `Ok` carries the state machine's bare response: the node already turned
/// session outcomes (expired, stale) into typed statuses.
fn print_kv(op: &KvOp, bytes: &Bytes) {
    match KvResponse::decode(bytes) {
        Ok(KvResponse::Value(Some(value))) => println!("{}", show(&value)),
        Ok(KvResponse::Value(None)) => println!("(absent)"),
        Ok(KvResponse::Written) => println!("OK"),
        Ok(KvResponse::Deleted { existed }) => println!("{}", if existed { "deleted" } else { "(was absent)" }),
        Ok(KvResponse::CasSucceeded) => println!("swapped"),
        Ok(KvResponse::CasFailed { current }) => {
            println!("not swapped; current value: {}", current.as_ref().map_or("(absent)".to_string(), show))
        }
        Err(error) => println!("{op:?}: undecodable answer: {error}"),
    }
}

/// Runs `node admin ...` and prints the JSON answer.
pub fn run_admin(command: AdminCommand) -> Result<(), ClientCmdError> {
    match call(&command.client, 0, command.body)? {
        ResponseStatus::Ok(bytes) if bytes.is_empty() => {
            println!("OK");
            Ok(())
        }
        ResponseStatus::Ok(bytes) => {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(value) => println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default()),
                Err(_) => println!("{}", show(&bytes)),
            }
            Ok(())
        }
        other => Err(ClientCmdError::Refused(format!("{other:?}"))),
    }
}
