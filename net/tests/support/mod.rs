//! Fixtures for the transport tests: a runtime with a deadline, throwaway
//! credentials in a scratch directory, listeners, and a hostile TLS caller
//! that sends whatever handshake and certificate a test gives it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use net::frame::decode_raw;
use net::tls::{CertificateAuthority, DevCertificates, IssuedCertificate, Validity};
use net::{
    ClientConfig, ClientTls, ClientTokens, Frame, Handshake, Inbound, Limits, Listener, ListenerConfig, ListenerHandle,
    ListenerRole, NodeSecurity, NodeSecurityConfig, Payload, Role, Roles, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

pub const CLUSTER: u64 = 42;
pub const WAIT: Duration = Duration::from_secs(10);

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs a test body on a fresh tokio-uring runtime with an overall deadline,
/// so a hang fails the test instead of stalling the suite.
pub fn run(test: impl std::future::Future<Output = ()>) {
    tokio_uring::start(async {
        tokio::time::timeout(Duration::from_secs(60), test).await.expect("test timed out");
    });
}

pub async fn next_inbound(receiver: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, receiver.recv()).await.expect("no inbound event in time").expect("channel closed")
}

pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn start(config: ListenerConfig) -> (ListenerHandle, mpsc::Receiver<Inbound>) {
    let listener = Listener::bind(config).expect("bind");
    let (sender, receiver) = mpsc::channel(1024);
    (listener.spawn(sender), receiver)
}

/// Throwaway certificates and a token file for one test, removed on drop.
pub struct Credentials {
    pub dir: PathBuf,
    pub certificates: DevCertificates,
}

impl Credentials {
    /// Nodes 1 to 3; users `ops` (every role), `reader` (read) and `writer`
    /// (read, write).
    pub fn new(test: &str) -> Credentials {
        let dir = std::env::temp_dir().join(format!("net-test-{test}-{}", std::process::id()));
        let users = [("ops", Roles::ALL), ("reader", Roles::READ), ("writer", Roles::READ | Roles::WRITE)];
        let certificates = net::tls::dev_certificates(&dir, CLUSTER, &[1, 2, 3], &users).expect("certificates");
        Credentials { dir, certificates }
    }

    /// Node `node_id`'s credentials: TLS, client certificates or tokens.
    pub fn node(&self, node_id: u64) -> NodeSecurity {
        NodeSecurity::load(NodeSecurityConfig {
            cluster_id: CLUSTER,
            node_id,
            tls: self.certificates.node_tls(node_id),
            peer_token: None,
            client_tokens: ClientTokens::File(self.certificates.token_file.clone()),
            history: net::History::FRESH,
        })
        .expect("node credentials")
    }

    /// A client presenting `user`'s certificate.
    pub fn client(&self, user: &str) -> ClientConfig {
        let tls = ClientTls::load(CLUSTER, &self.certificates.client_tls(user).unwrap()).expect("client credentials");
        ClientConfig::with_tls(CLUSTER, tls, Bytes::new())
    }

    /// A TLS client without a certificate, presenting `user`'s token.
    pub fn token_client(&self, user: &str) -> ClientConfig {
        let tls = ClientTls::load(CLUSTER, &self.certificates.client_tls_without_certificate()).unwrap();
        ClientConfig::with_tls(CLUSTER, tls, Bytes::from(self.certificates.tokens[user].clone()))
    }

    /// The node CA, to issue certificates the dev set does not have.
    pub fn node_authority(&self) -> CertificateAuthority {
        let ca = &self.certificates.node_ca;
        CertificateAuthority::load(&ca.certificate, &ca.private_key).unwrap()
    }

    /// Writes `issued` as `name.pem` and `name.key`; returns their paths.
    pub fn write(&self, name: &str, issued: &IssuedCertificate) -> (PathBuf, PathBuf) {
        let files = issued.write(&self.dir.join(format!("{name}.pem")), &self.dir.join(format!("{name}.key"))).unwrap();
        (files.certificate, files.private_key)
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Validity that ended yesterday.
pub fn expired() -> Validity {
    let now = std::time::SystemTime::now();
    Validity { not_before: now - Duration::from_secs(3 * 86_400), not_after: now - Duration::from_secs(86_400) }
}

pub fn peer_handshake(node_id: u64) -> Handshake {
    Handshake {
        cluster_id: CLUSTER,
        node_id,
        role: Role::Peer,
        protocol_version: u16::from(PROTOCOL_VERSION),
        token: Bytes::new(),
        history: net::History::FRESH,
    }
}

/// A verifier that trusts any server: the hostile caller wants to reach the
/// acceptor's checks whatever the acceptor presents.
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the hostile caller saw.
#[derive(Debug)]
pub enum HostileOutcome {
    /// The acceptor answered the handshake frame.
    Answer(Payload),
    /// TLS failed (the text is rustls's error: an alert from the acceptor).
    TlsError(String),
    /// The connection ended without an answer.
    Closed,
}

/// Connects to `addr` with TLS, presenting the certificate and key in the
/// given PEM files (trusting any server), sends `handshake` and returns the
/// answer. Blocking: run it on a thread of its own.
pub fn hostile_tls_call(addr: SocketAddr, certificate: &Path, key: &Path, handshake: Handshake) -> HostileOutcome {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> = CertificateDer::pem_file_iter(certificate).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![net::tls::ALPN_PROTOCOL.to_vec()];
    let session = rustls::ClientConnection::new(Arc::new(config), "hostile.invalid".try_into().unwrap()).unwrap();
    let socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(session, socket);
    let frame = Frame { cluster_id: CLUSTER, shard_id: 0, payload: Payload::Handshake(handshake) };
    let tls_error = |error: std::io::Error| match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls) => HostileOutcome::TlsError(tls.to_string()),
        None => HostileOutcome::Closed,
    };
    if let Err(error) = tls.write_all(&frame.to_bytes()) {
        return tls_error(error);
    }
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok((raw, _)) = decode_raw(&Bytes::from(received.clone()), &Limits::default()) {
            return HostileOutcome::Answer(Frame::decode(raw).unwrap().payload);
        }
        match tls.read(&mut chunk) {
            Ok(0) => return HostileOutcome::Closed,
            Ok(read) => received.extend_from_slice(&chunk[..read]),
            Err(error) => return tls_error(error),
        }
    }
}

/// The refusal reasons and TLS failures a listener recorded, in order.
pub fn refusals(handle: &ListenerHandle) -> Vec<net::Refusal> {
    handle.recent_refusals().into_iter().map(|record| record.refusal).collect()
}

/// A listener of `role` for node `node_id` with `security`.
pub fn listener(role: ListenerRole, security: NodeSecurity) -> (ListenerHandle, mpsc::Receiver<Inbound>) {
    start(ListenerConfig::new(loopback(), role, security))
}
