//! A node's credentials, loaded from files and reloadable while it runs, and
//! a client's TLS settings.
//!
//! [`NodeSecurity`] is what a node gives each of its listeners and links. It
//! is one handle for the whole process (`Send + Sync`, cheap to clone), so
//! every core sees the same credentials: on SIGHUP the node calls
//! [`NodeSecurity::reload`], which reads every file again and swaps the new
//! credentials in only if all of them load. Connections accepted or dialled
//! afterwards use the new ones; established connections are not touched (a
//! TLS session keeps the keys it negotiated).
//!
//! Plaintext is the default and is easy to detect
//! ([`NodeSecurity::is_plaintext`], [`NodeSecurity::warnings`]): the node
//! should log each warning at start and after each reload.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use engine::NodeId;
use rustls::pki_types::pem;

use crate::identity::{certificate_identity, AuthMethod, CertIdentity, Identity, NodeName, Roles, SHARED_TOKEN_USER};
use crate::tls;
use crate::tokens::{token_matches, TokenFileError, UserTokens};

/// Why credentials could not be loaded. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid PEM: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no private key")]
    NoPrivateKey { path: PathBuf },
    #[error("{what}: {source}")]
    Tls { what: String, source: rustls::Error },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("token file {path}: {source}")]
    TokenFile { path: PathBuf, source: TokenFileError },
    #[error("{path}: this node's certificate must name {expected} ({found})")]
    WrongIdentity { path: PathBuf, expected: String, found: String },
    #[error("without TLS, peers authenticate with a token: set a non-empty peer token")]
    NoPeerCredentials,
    #[error("a client certificate needs its private key, and the reverse")]
    IncompleteClientCertificate,
}

/// A node's TLS files (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTlsFiles {
    /// The CA that signs node certificates: trusted for peers (both ways)
    /// and presented by clients' verifiers.
    pub node_ca: PathBuf,
    /// The CA that signs client certificates. `None`: clients authenticate
    /// with tokens only (they still verify the node's certificate).
    pub client_ca: Option<PathBuf>,
    /// This node's certificate chain, leaf first, naming
    /// `raft-node://CLUSTER_ID/NODE_ID`. Served on both listeners and
    /// presented on this node's links.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// How clients without a certificate authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTokens {
    /// Not at all: a client needs a certificate.
    None,
    /// One token for everyone, who all get every role (user
    /// [`crate::identity::SHARED_TOKEN_USER`]): development mode.
    Shared(Bytes),
    /// Per-user tokens and roles from a token file ([`crate::tokens`]),
    /// re-read on reload.
    File(PathBuf),
}

/// What a node's credentials are made of.
#[derive(Clone, Debug)]
pub struct NodeSecurityConfig {
    pub cluster_id: u64,
    pub node_id: NodeId,
    /// TLS material; `None` runs plaintext.
    pub tls: Option<NodeTlsFiles>,
    /// The secret peers present in their handshake. Required without TLS
    /// (it is then the peers' only credential); with TLS, optional and
    /// checked in addition to the certificate.
    pub peer_token: Option<Bytes>,
    pub client_tokens: ClientTokens,
    /// Which history of the cluster this node's data continues: peers of
    /// another are refused ([`crate::History`]).
    pub history: crate::History,
}

/// Something an operator should hear about at start and after a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecurityWarning {
    /// No TLS: tokens and all traffic cross the network in the clear, and a
    /// peer is whoever knows the peer token.
    Plaintext,
    /// The peer token is also a client's token: without TLS any such client
    /// can connect to the peer port as a node and inject Raft messages.
    PeerTokenIsClientToken,
    /// No client can authenticate: no client CA and no tokens.
    NoClientAuthentication,
}

impl std::fmt::Display for SecurityWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecurityWarning::Plaintext => {
                "TLS is off: peer and client traffic, tokens included, is plaintext; anyone with the peer token can act as a node"
            }
            SecurityWarning::PeerTokenIsClientToken => {
                "the peer token is also a client token: a client can connect to the peer port as a node"
            }
            SecurityWarning::NoClientAuthentication => {
                "no client can authenticate: configure a client CA or client tokens"
            }
        })
    }
}

/// TLS configurations built from the node's files.
pub(crate) struct NodeTls {
    /// For the peer listener: callers must present a node certificate.
    pub(crate) peer_acceptor: Arc<rustls::ServerConfig>,
    /// For the client listener: a client certificate or none (then a token).
    pub(crate) client_acceptor: Arc<rustls::ServerConfig>,
    /// For this node's links: presents the node certificate, expects the
    /// dialled node's.
    pub(crate) link_caller: Arc<rustls::ClientConfig>,
}

pub(crate) enum ClientAuth {
    None,
    Shared(Bytes),
    Users(UserTokens),
}

impl ClientAuth {
    /// The identity a client token stands for, if any: the shared token's
    /// user with every role, or the token file's user with its roles.
    pub(crate) fn identity(&self, token: &[u8]) -> Option<Identity> {
        match self {
            ClientAuth::None => None,
            ClientAuth::Shared(expected) => token_matches(token, expected).then(|| Identity {
                user: SHARED_TOKEN_USER.into(),
                roles: Roles::ALL,
                method: AuthMethod::SharedToken,
            }),
            ClientAuth::Users(users) => users.authenticate(token),
        }
    }
}

/// One loaded generation of credentials. Immutable: a reload builds a new one.
pub(crate) struct Credentials {
    pub(crate) cluster_id: u64,
    pub(crate) node_id: NodeId,
    pub(crate) generation: u64,
    pub(crate) tls: Option<NodeTls>,
    pub(crate) peer_token: Option<Bytes>,
    pub(crate) client_auth: ClientAuth,
    pub(crate) warnings: Vec<SecurityWarning>,
    pub(crate) history: crate::History,
}

impl Credentials {
    fn load(config: &NodeSecurityConfig, generation: u64) -> Result<Credentials, CredentialsError> {
        let tls = match &config.tls {
            Some(files) => Some(load_node_tls(config, files)?),
            None => None,
        };
        let peer_token = config.peer_token.clone().filter(|token| !token.is_empty());
        if tls.is_none() && peer_token.is_none() {
            return Err(CredentialsError::NoPeerCredentials);
        }
        let client_auth = match &config.client_tokens {
            ClientTokens::None => ClientAuth::None,
            ClientTokens::Shared(token) => ClientAuth::Shared(token.clone()),
            ClientTokens::File(path) => ClientAuth::Users(UserTokens::load(path)?),
        };
        let mut warnings = Vec::new();
        if tls.is_none() {
            warnings.push(SecurityWarning::Plaintext);
        }
        let shared_with_clients = peer_token.as_ref().is_some_and(|peer| match &client_auth {
            ClientAuth::None => false,
            ClientAuth::Shared(token) => token_matches(peer, token),
            ClientAuth::Users(users) => users.contains_token(peer),
        });
        if shared_with_clients {
            warnings.push(SecurityWarning::PeerTokenIsClientToken);
        }
        let client_ca = config.tls.as_ref().is_some_and(|files| files.client_ca.is_some());
        let tokens = match &client_auth {
            ClientAuth::None => false,
            ClientAuth::Shared(token) => !token.is_empty(),
            ClientAuth::Users(users) => !users.is_empty(),
        };
        if !client_ca && !tokens {
            warnings.push(SecurityWarning::NoClientAuthentication);
        }
        Ok(Credentials {
            cluster_id: config.cluster_id,
            node_id: config.node_id,
            generation,
            tls,
            peer_token,
            client_auth,
            warnings,
            history: config.history,
        })
    }
}

fn load_node_tls(config: &NodeSecurityConfig, files: &NodeTlsFiles) -> Result<NodeTls, CredentialsError> {
    let node_roots = tls::load_roots(&files.node_ca)?;
    let chain = tls::load_certificates(&files.certificate)?;
    let key = tls::load_private_key(&files.private_key)?;
    let expected = NodeName { cluster_id: config.cluster_id, node_id: config.node_id };
    let wrong = |found: String| CredentialsError::WrongIdentity {
        path: files.certificate.clone(),
        expected: expected.uri(),
        found,
    };
    match certificate_identity(&chain[0]) {
        Ok(CertIdentity::Node(name)) if name == expected => {}
        Ok(CertIdentity::Node(name)) => return Err(wrong(format!("it names {}", name.uri()))),
        Ok(CertIdentity::Client(name)) => return Err(wrong(format!("it is a client certificate, {}", name.uri()))),
        Err(error) => return Err(wrong(error.to_string())),
    }
    tls::check_chain(
        &chain,
        &node_roots,
        &format!("{} against {}", files.certificate.display(), files.node_ca.display()),
    )?;
    let client_roots = match &files.client_ca {
        Some(path) => Some(tls::load_roots(path)?),
        None => None,
    };
    Ok(NodeTls {
        peer_acceptor: tls::server_config(chain.clone(), key.clone_key(), Some(node_roots.clone()), true)?,
        client_acceptor: tls::server_config(chain.clone(), key.clone_key(), client_roots, false)?,
        link_caller: tls::client_config(config.cluster_id, node_roots, Some((chain, key)))?,
    })
}

struct Inner {
    config: NodeSecurityConfig,
    current: RwLock<Arc<Credentials>>,
}

/// A node's credentials: a reloadable handle shared by every listener and
/// link of the process (see the module documentation).
#[derive(Clone)]
pub struct NodeSecurity {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        f.debug_struct("NodeSecurity")
            .field("cluster_id", &current.cluster_id)
            .field("node_id", &current.node_id)
            .field("tls", &current.tls.is_some())
            .field("generation", &current.generation)
            .finish_non_exhaustive()
    }
}

impl NodeSecurity {
    /// Loads every file `config` names; fails (naming the file) if any is
    /// missing, malformed, expired, or names another node.
    pub fn load(config: NodeSecurityConfig) -> Result<NodeSecurity, CredentialsError> {
        let credentials = Credentials::load(&config, 1)?;
        Ok(NodeSecurity { inner: Arc::new(Inner { config, current: RwLock::new(Arc::new(credentials)) }) })
    }

    /// Plaintext development mode with one token for peers and clients (all
    /// roles): what every node did before TLS. Its warnings say why not to
    /// use it beyond a laptop.
    ///
    /// # Panics
    ///
    /// If `token` is empty (a configuration bug the caller checks first).
    pub fn plaintext(cluster_id: u64, node_id: NodeId, token: Bytes) -> NodeSecurity {
        let config = NodeSecurityConfig {
            cluster_id,
            node_id,
            tls: None,
            peer_token: Some(token.clone()),
            client_tokens: ClientTokens::Shared(token),
            history: crate::History::FRESH,
        };
        match NodeSecurity::load(config) {
            Ok(security) => security,
            // Only an empty token fails, and that is the caller's bug.
            Err(error) => panic!("plaintext credentials: {error}"),
        }
    }

    /// Reads every file again and, if all load, makes them the credentials
    /// of new connections; otherwise keeps the current ones and says why.
    /// Returns the new generation number.
    pub fn reload(&self) -> Result<u64, CredentialsError> {
        let generation = self.current().generation + 1;
        let credentials = Credentials::load(&self.inner.config, generation)?;
        *self.inner.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(credentials);
        Ok(generation)
    }

    /// The credentials new connections use now.
    pub(crate) fn current(&self) -> Arc<Credentials> {
        self.inner.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The stream of a connection accepted by another front door (the RESP
    /// port), under the current credentials, and who its client
    /// certificate says the caller is: TLS as on the client listener when
    /// the node has TLS (a client certificate is optional; without one the
    /// protocol's own `AUTH` names the user), else the socket itself. A
    /// plaintext caller at a TLS port is sent `plaintext_answer` first; a
    /// certificate of another cluster or of a node is refused, as on the
    /// client port.
    pub async fn accept_front_door(
        &self,
        tcp: tokio_uring::net::TcpStream,
        plaintext_answer: &[u8],
    ) -> Result<(crate::stream::Stream, Option<Identity>), String> {
        let credentials = self.current();
        let acceptor = match &credentials.tls {
            None => return Ok((crate::stream::Stream::Plain(tcp), None)),
            Some(tls) => tls.client_acceptor.clone(),
        };
        let stream = crate::stream::accept_tls(tcp, acceptor, plaintext_answer).await?;
        let Some(der) = stream.peer_certificate() else { return Ok((stream, None)) };
        match certificate_identity(&der) {
            Ok(CertIdentity::Client(name)) if name.cluster_id == credentials.cluster_id => {
                Ok((stream, Some(name.identity())))
            }
            Ok(CertIdentity::Client(name)) => {
                Err(format!("the certificate names {}, a client of another cluster", name.uri()))
            }
            Ok(CertIdentity::Node(name)) => {
                Err(format!("a node certificate ({}) cannot connect as a client", name.uri()))
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Whether clients can authenticate with a certificate (TLS with a
    /// client CA).
    pub fn accepts_client_certificates(&self) -> bool {
        self.inner.config.tls.as_ref().is_some_and(|files| files.client_ca.is_some())
    }

    /// The identity a client token stands for under the current
    /// credentials (the shared token or the token file), if any: for
    /// front doors whose clients present a token in their own protocol
    /// (the RESP front door's `AUTH`).
    pub fn authenticate_token(&self, token: &[u8]) -> Option<Identity> {
        self.current().client_auth.identity(token)
    }

    /// Whether clients can authenticate with a token at all.
    pub fn accepts_client_tokens(&self) -> bool {
        !matches!(self.current().client_auth, ClientAuth::None)
    }

    /// Whether connections run without TLS.
    pub fn is_plaintext(&self) -> bool {
        self.current().tls.is_none()
    }

    /// What the operator should be told (log each at warning level).
    pub fn warnings(&self) -> Vec<SecurityWarning> {
        self.current().warnings.clone()
    }

    /// 1 after [`NodeSecurity::load`], one more after each successful reload.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.config.cluster_id
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Which history of the cluster the node's data continues.
    pub fn history(&self) -> crate::History {
        self.inner.config.history
    }
}

/// A client's TLS files (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA that signs node certificates.
    pub node_ca: PathBuf,
    /// A client certificate (`raft-client://CLUSTER/USER?roles=...`) and its
    /// key; `None` to authenticate with a token instead.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// The command-line option (and environment variable) that gave the
    /// file `error` is about, as the `node` and `bench` clients name them:
    /// a path set in the environment and forgotten is hard to trace from
    /// the path alone.
    pub fn option_of(&self, error: &CredentialsError) -> Option<&'static str> {
        let path = error.path()?;
        if path == self.node_ca {
            Some("--tls-ca (or NODE_TLS_CA)")
        } else if self.certificate.as_deref() == Some(path) {
            Some("--tls-cert (or NODE_TLS_CERT)")
        } else if self.private_key.as_deref() == Some(path) {
            Some("--tls-key (or NODE_TLS_KEY)")
        } else {
            None
        }
    }
}

impl CredentialsError {
    /// The file this error is about, if it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        use CredentialsError::{NoCertificate, NoPrivateKey, Pem, Read, TokenFile, WrongIdentity};
        match self {
            Read { path, .. } | Pem { path, .. } | NoCertificate { path } | NoPrivateKey { path } => Some(path),
            TokenFile { path, .. } | WrongIdentity { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// A client's TLS settings, built once and shared by its connections.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    pub fn load(cluster_id: u64, files: &ClientTlsFiles) -> Result<ClientTls, CredentialsError> {
        let roots = tls::load_roots(&files.node_ca)?;
        let identity = match (&files.certificate, &files.private_key) {
            (Some(certificate), Some(key)) => Some((tls::load_certificates(certificate)?, tls::load_private_key(key)?)),
            (None, None) => None,
            _ => return Err(CredentialsError::IncompleteClientCertificate),
        };
        Ok(ClientTls { config: tls::client_config(cluster_id, roots, identity)? })
    }
}
