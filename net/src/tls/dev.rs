//! Throwaway certificates for development clusters and tests (rcgen):
//! a node CA, a client CA, node certificates that bind their ids and client
//! certificates that carry their roles, written as PEM files.
//!
//! [`dev_certificates`] is the one call behind a node's `node certs` and
//! `node dev --tls`; [`CertificateAuthority`] issues single certificates with
//! any validity window (tests make expired ones with it). Keys are ECDSA
//! P-256. Private key files are created with mode 0600.
//!
//! These are for development: the CA keys are written next to the
//! certificates. A production cluster keeps its CA keys offline and issues
//! certificates with the same names and key usages (see `net/README.md`).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::identity::{check_user_name, ClientName, IdentityError, NodeName, Roles};
use crate::security::{ClientTlsFiles, NodeTlsFiles};
use crate::tokens::generate_token;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("node id 0 means none; node ids start at 1")]
    NodeIdZero,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks of a cluster differ a little) to `days` days
    /// from now.
    pub fn days(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity { not_before: now - Duration::from_secs(3600), not_after: now + Duration::from_secs(days * 86_400) }
    }

    fn apply(&self, params: &mut CertificateParams) {
        let since_epoch = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(self.not_before);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(self.not_after);
    }
}

/// How long [`dev_certificates`] makes its certificates valid.
pub const DEV_VALIDITY_DAYS: u64 = 365;
/// How long a generated CA is valid.
pub const CA_VALIDITY_DAYS: u64 = 3650;

/// A certificate and its private key, as PEM text.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate").field("certificate_pem", &self.certificate_pem).finish_non_exhaustive()
    }
}

/// Where a certificate and its key were written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl CertificateFiles {
    /// `dir/NAME.pem` and `dir/NAME.key`.
    fn of(dir: &Path, name: &str) -> CertificateFiles {
        CertificateFiles { certificate: dir.join(format!("{name}.pem")), private_key: dir.join(format!("{name}.key")) }
    }

    /// Whether both files are there.
    fn exist(&self) -> bool {
        self.certificate.is_file() && self.private_key.is_file()
    }
}

impl IssuedCertificate {
    /// Writes the certificate (mode 0644) and the key (mode 0600).
    pub fn write(&self, certificate: &Path, private_key: &Path) -> Result<CertificateFiles, DevCertError> {
        write_file(certificate, self.certificate_pem.as_bytes(), 0o644)?;
        write_file(private_key, self.private_key_pem.as_bytes(), 0o600)?;
        Ok(CertificateFiles { certificate: certificate.to_path_buf(), private_key: private_key.to_path_buf() })
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevCertError> {
    let error = |source| DevCertError::Write { path: path.to_path_buf(), source };
    // Replace, not truncate: an existing key file may have looser permissions.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(error(source)),
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)
}

/// A certificate authority that signs node or client certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name`, valid for [`CA_VALIDITY_DAYS`].
    pub fn generate(common_name: &str) -> Result<CertificateAuthority, DevCertError> {
        CertificateAuthority::generate_with(common_name, Validity::days(CA_VALIDITY_DAYS))
    }

    /// A new self-signed CA with the given validity.
    pub fn generate_with(common_name: &str, validity: Validity) -> Result<CertificateAuthority, DevCertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity.apply(&mut params);
        let certificate = params.self_signed(&key)?;
        Ok(CertificateAuthority { certificate_pem: certificate.pem(), issuer: Issuer::new(params, key) })
    }

    /// An existing CA from its certificate and private key (PEM files), to
    /// issue more certificates (a node added to a dev cluster).
    pub fn load(certificate: &Path, private_key: &Path) -> Result<CertificateAuthority, DevCertError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| DevCertError::Read { path: path.to_path_buf(), source })
        };
        let (certificate_pem, key_pem) = (read(certificate)?, read(private_key)?);
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)?;
        Ok(CertificateAuthority { issuer, certificate_pem })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn private_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes the CA certificate (0644) and its key (0600).
    pub fn write(&self, certificate: &Path, private_key: &Path) -> Result<CertificateFiles, DevCertError> {
        IssuedCertificate { certificate_pem: self.certificate_pem.clone(), private_key_pem: self.private_key_pem() }
            .write(certificate, private_key)
    }

    /// A node certificate: `raft-node://CLUSTER/NODE`, serverAuth and
    /// clientAuth.
    pub fn issue_node(&self, name: NodeName, validity: Validity) -> Result<IssuedCertificate, DevCertError> {
        if name.node_id == 0 {
            return Err(DevCertError::NodeIdZero);
        }
        let usages = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&format!("node {} of cluster {}", name.node_id, name.cluster_id), name.uri(), &usages, validity)
    }

    /// A client certificate: `raft-client://CLUSTER/USER?roles=...`,
    /// clientAuth only (it cannot serve as a node's server certificate).
    pub fn issue_client(&self, name: &ClientName, validity: Validity) -> Result<IssuedCertificate, DevCertError> {
        check_user_name(&name.user)?;
        let usages = [ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&format!("client {} of cluster {}", name.user, name.cluster_id), name.uri(), &usages, validity)
    }

    /// A certificate with exactly the given identity URI (tests use it for
    /// names that break the rule).
    pub fn issue_with_uri(
        &self,
        common_name: &str,
        uri: String,
        extended_key_usages: &[ExtendedKeyUsagePurpose],
        validity: Validity,
    ) -> Result<IssuedCertificate, DevCertError> {
        self.issue(common_name, uri, extended_key_usages, validity)
    }

    fn issue(
        &self,
        common_name: &str,
        uri: String,
        extended_key_usages: &[ExtendedKeyUsagePurpose],
        validity: Validity,
    ) -> Result<IssuedCertificate, DevCertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = extended_key_usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate { certificate_pem: certificate.pem(), private_key_pem: key.serialize_pem() })
    }
}

/// What [`dev_certificates`] wrote.
#[derive(Clone, Debug)]
pub struct DevCertificates {
    pub cluster_id: u64,
    /// `node-ca.pem` and `node-ca.key`.
    pub node_ca: CertificateFiles,
    /// `client-ca.pem` and `client-ca.key`.
    pub client_ca: CertificateFiles,
    /// `node-ID.pem` and `node-ID.key` per node.
    pub nodes: BTreeMap<NodeId, CertificateFiles>,
    /// `client-USER.pem` and `client-USER.key` per user.
    pub users: BTreeMap<String, CertificateFiles>,
    /// `client-tokens`: a token file (`crate::tokens`) giving each user the
    /// same roles as its certificate, for clients without a certificate.
    pub token_file: PathBuf,
    /// The tokens of the users asked for, by user.
    pub tokens: BTreeMap<String, String>,
    /// The CAs were in the directory already and were reused.
    pub reused_cas: bool,
}

impl DevCertificates {
    /// The files node `node_id` serves with (client certificates from the
    /// client CA, tokens from the token file).
    pub fn node_tls(&self, node_id: NodeId) -> Option<NodeTlsFiles> {
        let node = self.nodes.get(&node_id)?;
        Some(NodeTlsFiles {
            node_ca: self.node_ca.certificate.clone(),
            client_ca: Some(self.client_ca.certificate.clone()),
            certificate: node.certificate.clone(),
            private_key: node.private_key.clone(),
        })
    }

    /// The files a client connecting as `user` with its certificate uses.
    pub fn client_tls(&self, user: &str) -> Option<ClientTlsFiles> {
        let files = self.users.get(user)?;
        Some(ClientTlsFiles {
            node_ca: self.node_ca.certificate.clone(),
            certificate: Some(files.certificate.clone()),
            private_key: Some(files.private_key.clone()),
        })
    }

    /// The files a client that authenticates with a token uses (it still
    /// verifies the node's certificate).
    pub fn client_tls_without_certificate(&self) -> ClientTlsFiles {
        ClientTlsFiles { node_ca: self.node_ca.certificate.clone(), certificate: None, private_key: None }
    }
}

/// Writes a development cluster's credentials into `dir` (created if
/// missing): a node CA and a client CA, a certificate per node naming its id,
/// a certificate per user carrying its roles, and a token file for the same
/// users. Existing certificates of these names are replaced, but CAs that
/// `dir` already holds are reused, never replaced (adding a node to a
/// running cluster must not replace the CA its members trust: the new
/// CA's certificates were refused by them, and theirs by the new node), and
/// a user already in the token file keeps its token (with the roles given
/// now); other users there stay.
pub fn dev_certificates(
    dir: &Path,
    cluster_id: u64,
    node_ids: &[NodeId],
    users: &[(&str, Roles)],
) -> Result<DevCertificates, DevCertError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write { path: dir.to_path_buf(), source })?;
    let validity = Validity::days(DEV_VALIDITY_DAYS);
    let (node_ca, client_ca) = (CertificateFiles::of(dir, "node-ca"), CertificateFiles::of(dir, "client-ca"));
    let reused_cas = node_ca.exist() && client_ca.exist();
    let (node_authority, client_authority) = if reused_cas {
        let load = |files: &CertificateFiles| CertificateAuthority::load(&files.certificate, &files.private_key);
        (load(&node_ca)?, load(&client_ca)?)
    } else {
        // A random tag tells CA generations apart (after a rotation, or two
        // dev clusters with the same id): a certificate of the other is then
        // refused as "unknown issuer", not as a bad signature from a namesake.
        let tag = &generate_token()[..8];
        let node_authority = CertificateAuthority::generate(&format!("node CA of cluster {cluster_id} ({tag})"))?;
        let client_authority = CertificateAuthority::generate(&format!("client CA of cluster {cluster_id} ({tag})"))?;
        node_authority.write(&node_ca.certificate, &node_ca.private_key)?;
        client_authority.write(&client_ca.certificate, &client_ca.private_key)?;
        (node_authority, client_authority)
    };
    let mut nodes = BTreeMap::new();
    for &node_id in node_ids {
        let issued = node_authority.issue_node(NodeName { cluster_id, node_id }, validity)?;
        let files = issued.write(&dir.join(format!("node-{node_id}.pem")), &dir.join(format!("node-{node_id}.key")))?;
        nodes.insert(node_id, files);
    }
    let mut written_users = BTreeMap::new();
    let token_file = dir.join("client-tokens");
    // Users already in the file, in its order: (name, roles, token).
    let mut lines: Vec<(String, String, String)> = match reused_cas {
        true => std::fs::read_to_string(&token_file).map(|text| token_lines(&text)).unwrap_or_default(),
        false => Vec::new(),
    };
    let mut tokens = BTreeMap::new();
    for &(user, roles) in users {
        let name = ClientName { cluster_id, user: user.to_string(), roles };
        let issued = client_authority.issue_client(&name, validity)?;
        let files = issued.write(&dir.join(format!("client-{user}.pem")), &dir.join(format!("client-{user}.key")))?;
        written_users.insert(user.to_string(), files);
        let token = match lines.iter_mut().find(|(known, _, _)| known == user) {
            Some(line) => {
                line.1 = roles.to_string();
                line.2.clone()
            }
            None => {
                let token = generate_token();
                lines.push((user.to_string(), roles.to_string(), token.clone()));
                token
            }
        };
        tokens.insert(user.to_string(), token);
    }
    let mut token_text = String::from("# name:roles:token (net/src/tokens.rs)\n");
    for (user, roles, token) in &lines {
        token_text.push_str(&format!("{user}:{roles}:{token}\n"));
    }
    write_file(&token_file, token_text.as_bytes(), 0o600)?;
    Ok(DevCertificates { cluster_id, node_ca, client_ca, nodes, users: written_users, token_file, tokens, reused_cas })
}

/// The `name:roles:token` lines of a token file, comments and blank lines
/// left out.
fn token_lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            Some((fields.next()?.to_string(), fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{certificate_identity, CertIdentity};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn identity_of(pem: &str) -> CertIdentity {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        certificate_identity(&der).unwrap()
    }

    #[test]
    fn issued_certificates_carry_the_identity_rule() {
        let authority = CertificateAuthority::generate("test CA").unwrap();
        let node = authority.issue_node(NodeName { cluster_id: 9, node_id: 4 }, Validity::days(1)).unwrap();
        assert_eq!(identity_of(&node.certificate_pem), CertIdentity::Node(NodeName { cluster_id: 9, node_id: 4 }));
        let name = ClientName { cluster_id: 9, user: "reader".into(), roles: Roles::READ };
        let client = authority.issue_client(&name, Validity::days(1)).unwrap();
        assert_eq!(identity_of(&client.certificate_pem), CertIdentity::Client(name));
        assert!(matches!(
            authority.issue_node(NodeName { cluster_id: 9, node_id: 0 }, Validity::days(1)),
            Err(DevCertError::NodeIdZero)
        ));
    }

    #[test]
    fn dev_certificates_writes_every_file_with_private_keys_unreadable_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("net-dev-certs-{}", std::process::id()));
        let written = dev_certificates(&dir, 5, &[1, 2], &[("ops", Roles::ALL), ("viewer", Roles::READ)]).unwrap();
        assert_eq!(written.nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        for files in written.nodes.values().chain(written.users.values()).chain([&written.node_ca, &written.client_ca])
        {
            assert!(files.certificate.is_file());
            let mode = std::fs::metadata(&files.private_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", files.private_key.display());
        }
        let tokens = crate::tokens::UserTokens::load(&written.token_file).unwrap();
        let viewer = tokens.authenticate(written.tokens["viewer"].as_bytes()).unwrap();
        assert_eq!(viewer.roles, Roles::READ);
        let reloaded = CertificateAuthority::load(&written.node_ca.certificate, &written.node_ca.private_key).unwrap();
        let third = reloaded.issue_node(NodeName { cluster_id: 5, node_id: 3 }, Validity::days(1)).unwrap();
        assert_eq!(identity_of(&third.certificate_pem), CertIdentity::Node(NodeName { cluster_id: 5, node_id: 3 }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Adding a node to a running cluster the way README says (`node certs
    /// --dir tls --node-ids 4`, into the cluster's directory) must not
    /// replace the CAs the members trust, nor the tokens clients use: both
    /// were regenerated, so the members refused the new node and every
    /// client token stopped working once the nodes reloaded the file.
    #[test]
    fn writing_into_a_directory_with_cas_reuses_them_and_keeps_the_tokens() {
        let dir = std::env::temp_dir().join(format!("net-dev-certs-again-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = dev_certificates(&dir, 7, &[1, 2, 3], &[("admin", Roles::ALL), ("viewer", Roles::READ)]).unwrap();
        assert!(!first.reused_cas);
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        let (node_ca, client_ca) = (read(&first.node_ca.certificate), read(&first.client_ca.certificate));
        let second = dev_certificates(&dir, 7, &[4], &[("admin", Roles::ALL), ("ops", Roles::READ)]).unwrap();
        assert!(second.reused_cas);
        assert_eq!(read(&second.node_ca.certificate), node_ca, "the node CA was replaced");
        assert_eq!(read(&second.client_ca.certificate), client_ca, "the client CA was replaced");
        // Node 4's certificate is signed by the CA nodes 1-3 trust.
        let roots = crate::tls::load_certificates(&first.node_ca.certificate).unwrap();
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root).unwrap();
        }
        let node_4 = CertificateDer::from_pem_slice(read(&second.nodes[&4].certificate).as_bytes()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(store)).build().unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier.verify_client_cert(&node_4, &[], now).expect("node 4's certificate verifies against the old CA");
        let tokens = crate::tokens::UserTokens::load(&second.token_file).unwrap();
        assert_eq!(second.tokens["admin"], first.tokens["admin"], "admin's token changed");
        assert!(tokens.authenticate(first.tokens["viewer"].as_bytes()).is_some(), "viewer's token is gone");
        assert!(tokens.authenticate(second.tokens["ops"].as_bytes()).is_some(), "the new user has a token");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
