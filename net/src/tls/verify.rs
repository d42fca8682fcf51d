//! The caller's check of the certificate an acceptor presents: webpki's
//! chain, date and key-usage checks, then this crate's identity rule (the
//! certificate must name a node of the expected cluster, and the node that was
//! dialled when one was).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme};

use crate::identity::{certificate_identity, CertIdentity, IdentityError, NodeName};
use engine::NodeId;

/// The acceptor's certificate is valid but names someone else.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerIdentityError {
    #[error(
        "the node's certificate names node {} of cluster {}, not a node of cluster {expected_cluster} (is --cluster-id right?)",
        found.node_id,
        found.cluster_id
    )]
    OtherCluster { expected_cluster: u64, found: NodeName },
    #[error("reached node {found} (by its certificate) where node {expected} was dialled")]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("the server presented a client certificate ({uri})")]
    NotANode { uri: String },
    #[error("the server certificate: {0}")]
    Identity(IdentityError),
}

fn refuse(error: ServerIdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

#[derive(Debug)]
pub(crate) struct NodeCertificateVerifier {
    cluster_id: u64,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl NodeCertificateVerifier {
    pub(crate) fn new(cluster_id: u64, roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>) -> Self {
        NodeCertificateVerifier { cluster_id, roots, provider }
    }
}

impl ServerCertVerifier for NodeCertificateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let expected_node = match server_name {
            ServerName::DnsName(name) => match NodeName::parse_server_name(name.as_ref()) {
                Some((cluster_id, node_id)) if cluster_id == self.cluster_id => node_id,
                _ => return Err(Error::General(format!("internal: unexpected server name {name:?}"))),
            },
            other => return Err(Error::General(format!("internal: unexpected server name {other:?}"))),
        };
        match certificate_identity(end_entity) {
            Ok(CertIdentity::Node(found)) if found.cluster_id != self.cluster_id => {
                Err(refuse(ServerIdentityError::OtherCluster { expected_cluster: self.cluster_id, found }))
            }
            Ok(CertIdentity::Node(found)) => match expected_node {
                Some(expected) if expected != found.node_id => {
                    Err(refuse(ServerIdentityError::WrongNode { expected, found: found.node_id }))
                }
                _ => Ok(ServerCertVerified::assertion()),
            },
            Ok(CertIdentity::Client(client)) => Err(refuse(ServerIdentityError::NotANode { uri: client.uri() })),
            Err(error) => Err(refuse(ServerIdentityError::Identity(error))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The identity error inside a TLS error raised by this verifier, if it is one.
pub(crate) fn server_identity_error(error: &Error) -> Option<&ServerIdentityError> {
    match error {
        Error::InvalidCertificate(CertificateError::Other(other)) => other.0.downcast_ref::<ServerIdentityError>(),
        _ => None,
    }
}
