//! A server that speaks the client protocol and answers every write or read
//! at once, without Raft, disk or state machine: `bench run` against it
//! measures the load generator's own floor (client, loopback TCP and the
//! net crate's listener) that every cluster figure includes.
//!
//! ```sh
//! cargo run --release -p bench --example null_server -- 127.0.0.1:7401 &
//! cargo run --release -p bench -- run --addr 127.0.0.1:7401 --inflight 1 --no-status
//! ```
//!
//! It accepts `node dev`'s token and cluster id 1.

use bytes::Bytes;
use net::kv::KvResponse;
use net::{inbound_channel, Inbound, Listener, ListenerConfig, NodeSecurity, RequestBody, ResponseStatus};

/// Answers every request at once: the load generator's own floor.
#[derive(clap::Parser)]
#[command(name = "null_server")]
struct Args {
    /// Where to listen for clients.
    #[arg(default_value = "127.0.0.1:7401")]
    addr: std::net::SocketAddr,
}

fn main() {
    let addr = <Args as clap::Parser>::parse().addr;
    tokio_uring::start(async move {
        let security = NodeSecurity::plaintext(1, 1, Bytes::from_static(b"dev-cluster-token"));
        let listener = Listener::bind(ListenerConfig::clients(addr, security)).expect("bind the address");
        let (sender, mut inbound) = inbound_channel(4_096);
        let _listener = listener.spawn(sender);
        eprintln!("null server on {addr}");
        let written = KvResponse::Written.encode();
        let absent = KvResponse::Value(None).encode();
        while let Some(event) = inbound.recv().await {
            let Inbound::Request { request, reply, .. } = event else { continue };
            let status = match request.body {
                RequestBody::Write { .. } => ResponseStatus::Ok(written.clone()),
                RequestBody::Read { .. } => ResponseStatus::Ok(absent.clone()),
                RequestBody::Status => ResponseStatus::Ok(Bytes::from_static(b"{\"null_server\":true}")),
                RequestBody::Admin(_) => ResponseStatus::BadRequest("the null server has no admin".into()),
                RequestBody::OpenSession => ResponseStatus::Ok(
                    net::session::OpenedSession { client_id: 1, timeout_ms: 60_000, window: 1024 }.encode(),
                ),
                RequestBody::CloseSession => ResponseStatus::Ok(Bytes::new()),
            };
            let _ = reply.send(status);
        }
    });
}
