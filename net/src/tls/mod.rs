//! TLS 1.3 for peer links and client connections, with rustls.
//!
//! rustls's connection is sans-I/O: this crate feeds it the ciphertext that a
//! tokio-uring read returned and writes the ciphertext it produces with
//! tokio-uring writes, on the connection's own thread (`crate::stream`). No
//! second runtime, no `tokio-rustls`.
//!
//! What is configured here, and why:
//!
//! - **TLS 1.3 only**, with the `ring` crypto provider (no C toolchain beyond
//!   what `ring` needs; `aws-lc-rs` would need cmake). Every party is this
//!   project's own code, so there is no older peer to be compatible with.
//! - **Two certificate authorities.** The *node CA* signs node certificates
//!   (`raft-node://CLUSTER/NODE`, extended key usages serverAuth and
//!   clientAuth: a node is a server to its callers and a client on its own
//!   links). The *client CA* signs client certificates
//!   (`raft-client://CLUSTER/USER?roles=...`, clientAuth only). The peer
//!   listener trusts only the node CA for callers; the client listener trusts
//!   only the client CA. So a client certificate fails the TLS handshake on
//!   the peer port (unknown issuer) and a node certificate fails on the
//!   client port. The identity rule is checked as well, after the TLS
//!   handshake, so even an operator who signs both kinds with one CA gets a
//!   typed refusal ([`crate::RefusalReason::IdentityMismatch`]) instead of a
//!   client joining as a peer.
//! - **The caller checks whom it reached.** A link verifies that the
//!   acceptor's certificate chains to the node CA and names the node id it
//!   dialled; a client verifies a node certificate of its cluster (and a
//!   given node id if it names one). This is a verifier of this crate
//!   (`verify.rs`) because the identity is a URI SAN, which webpki's name
//!   check does not cover; the chain, validity dates and key usage are
//!   checked by webpki as usual.
//! - **No session resumption, no tickets, no SNI.** Connections live long, so
//!   resumption would save little, and a resumed session would skip the
//!   certificate checks that a credentials reload may have changed.
//! - **ALPN `rnet/2`**, so a TLS client of another protocol fails the TLS
//!   handshake instead of sending it frames it cannot read.
//!
//! Revocation lists are not checked: revoke by reissuing from a new CA and
//! reloading (see the operator's notes in `net/README.md`).

pub mod dev;
pub(crate) mod verify;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use dev::{
    dev_certificates, CertificateAuthority, CertificateFiles, DevCertError, DevCertificates, IssuedCertificate,
    Validity,
};
pub use verify::ServerIdentityError;

use crate::identity::NodeName;
use crate::security::CredentialsError;
use engine::NodeId;

/// The application protocol negotiated in TLS (ALPN).
pub const ALPN_PROTOCOL: &[u8] = b"rnet/2";

/// The crypto provider every TLS configuration of this crate uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Every certificate of a PEM file, in file order (a chain: leaf first).
pub(crate) fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let pem_error = |source| pem_error(path, source);
    let certificates =
        CertificateDer::pem_file_iter(path).map_err(pem_error)?.collect::<Result<Vec<_>, _>>().map_err(pem_error)?;
    if certificates.is_empty() {
        return Err(CredentialsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => CredentialsError::NoPrivateKey { path: path.to_path_buf() },
        source => pem_error(path, source),
    })
}

/// A file that could not be read is `Read` (a missing key file said "not
/// valid PEM: I/O error: No such file or directory"); one that was read
/// and is not PEM is `Pem`.
fn pem_error(path: &Path, source: rustls::pki_types::pem::Error) -> CredentialsError {
    match source {
        rustls::pki_types::pem::Error::Io(source) => CredentialsError::Read { path: path.to_path_buf(), source },
        source => CredentialsError::Pem { path: path.to_path_buf(), source },
    }
}

/// The trust anchors of a CA file.
pub(crate) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, CredentialsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|source| CredentialsError::Tls { what: format!("CA {}", path.display()), source })?;
    }
    Ok(Arc::new(roots))
}

/// An acceptor's configuration. `client_roots`: whom to trust for callers'
/// certificates; `required`: whether a caller must present one (peers) or may
/// authenticate with a token instead (clients). `None` takes no client
/// certificates at all.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<Arc<RootCertStore>>,
    required: bool,
) -> Result<Arc<ServerConfig>, CredentialsError> {
    let tls_error = |what: &str| {
        let what = what.to_string();
        move |source| CredentialsError::Tls { what, source }
    };
    let verifier = match client_roots {
        Some(roots) => {
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let builder = if required { builder } else { builder.allow_unauthenticated() };
            builder.build().map_err(|error| CredentialsError::Verifier(error.to_string()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error("this node's certificate and key"))?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A caller's configuration: trusts node certificates of `cluster_id` signed
/// by `node_roots`, and presents `identity` (a certificate chain and its key)
/// if given.
pub(crate) fn client_config(
    cluster_id: u64,
    node_roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, CredentialsError> {
    let verifier = Arc::new(verify::NodeCertificateVerifier::new(cluster_id, node_roots, provider()));
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| CredentialsError::Tls { what: "protocol versions".into(), source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| CredentialsError::Tls { what: "the client certificate and key".into(), source })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The name handed to rustls when dialling: it carries the expected identity
/// to the verifier (see `NodeName::server_name`).
pub(crate) fn server_name(cluster_id: u64, node_id: Option<NodeId>) -> ServerName<'static> {
    ServerName::try_from(NodeName::server_name(cluster_id, node_id)).expect("a valid DNS name by construction")
}

/// Checks at load time that `chain` chains to `roots` and is valid now, so a
/// node with a wrong or expired certificate fails at start (or its reload is
/// refused) instead of being refused by every peer.
pub(crate) fn check_chain(
    chain: &[CertificateDer<'static>],
    roots: &RootCertStore,
    what: &str,
) -> Result<(), CredentialsError> {
    let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])
        .map_err(|source| CredentialsError::Tls { what: what.to_string(), source })?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
    .map_err(|source| CredentialsError::Tls { what: what.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing file is a file that cannot be read, not "not valid PEM:
    /// I/O error" (what a user with a typo in a path was told).
    #[test]
    fn a_missing_file_cannot_be_read_and_a_file_of_other_bytes_is_no_pem() {
        let missing = Path::new("/nonexistent/node-1.key");
        let error = load_private_key(missing).unwrap_err();
        assert!(matches!(error, CredentialsError::Read { .. }), "{error:?}");
        assert!(error.to_string().starts_with("cannot read /nonexistent/node-1.key"), "{error}");
        let error = load_certificates(Path::new("/nonexistent/node-1.pem")).unwrap_err();
        assert!(matches!(error, CredentialsError::Read { .. }), "{error:?}");
        let dir = std::env::temp_dir().join(format!("net-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.key");
        std::fs::write(&junk, "not a key\n").unwrap();
        assert!(matches!(load_private_key(&junk), Err(CredentialsError::NoPrivateKey { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
