//! Who is at the other end of a connection, and what it may do.
//!
//! With TLS, identities are bound to certificates by one URI subject
//! alternative name (SAN) of the end-entity certificate:
//!
//! - a node: `raft-node://CLUSTER_ID/NODE_ID`, both decimal, `NODE_ID >= 1`;
//! - a client: `raft-client://CLUSTER_ID/USER?roles=ROLE[,ROLE...]`, with
//!   `USER` made of 1 to 64 characters from `A-Z a-z 0-9 . _ -` and each
//!   `ROLE` one of `read`, `write`, `admin`.
//!
//! Numbers are written in canonical decimal (no sign, no leading zeros), so
//! one identity has exactly one spelling. A certificate must carry exactly one
//! SAN of these two schemes (other SANs, such as DNS names for other tools,
//! are ignored); none or two is refused. The cluster id is part of both forms
//! so a certificate authority shared by several clusters cannot let a
//! certificate of one cluster into another.
//!
//! Without a client certificate, a client's identity comes from its token
//! ([`crate::tokens`]). Either way every request is delivered to the node
//! with the connection's [`Identity`], and [`Identity::authorize`] says
//! whether its roles allow the request.

use std::fmt;
use std::sync::Arc;

use engine::NodeId;

use crate::client::{RequestBody, ResponseStatus};

/// The URI scheme of a node's identity.
pub const NODE_URI_SCHEME: &str = "raft-node";
/// The URI scheme of a client's identity.
pub const CLIENT_URI_SCHEME: &str = "raft-client";
/// The longest user name. User names end up in logs and in the URI SAN of a
/// certificate, so they are short and made of a few safe characters.
pub const USER_NAME_SIZE_MAX: usize = 64;

/// A set of client roles. A request needs one role
/// ([`Identity::required_roles`]); an identity holds any number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);
    /// Reads (`ClientRead`) and the node's status (`ClientStatus`).
    pub const READ: Roles = Roles(1);
    /// Writes (`ClientWrite`).
    pub const WRITE: Roles = Roles(2);
    /// Cluster administration (`ClientAdmin`: membership, leadership,
    /// snapshots, stats).
    pub const ADMIN: Roles = Roles(4);
    pub const ALL: Roles = Roles(7);

    const NAMES: [(Roles, &'static str); 3] = [(Roles::READ, "read"), (Roles::WRITE, "write"), (Roles::ADMIN, "admin")];

    /// Whether every role of `other` is in `self`.
    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses a comma-separated list such as `read,write`. Every name must be
    /// known and appear once; an empty list is an error (an identity that may
    /// do nothing is a configuration mistake).
    pub fn parse(text: &str) -> Result<Roles, IdentityError> {
        let mut roles = Roles::NONE;
        for name in text.split(',') {
            let Some((role, _)) = Roles::NAMES.iter().find(|(_, known)| *known == name) else {
                return Err(IdentityError::BadRoles { text: text.to_string() });
            };
            if roles.contains(*role) {
                return Err(IdentityError::BadRoles { text: text.to_string() });
            }
            roles = roles | *role;
        }
        if roles.is_empty() {
            return Err(IdentityError::BadRoles { text: text.to_string() });
        }
        Ok(roles)
    }
}

impl std::ops::BitOr for Roles {
    type Output = Roles;
    fn bitor(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }
}

/// `read,write,admin` order; `none` for the empty set.
impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (role, name) in Roles::NAMES {
            if self.contains(role) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({self})")
    }
}

/// How a client proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A client certificate (mutual TLS) with a `raft-client://` SAN.
    Certificate,
    /// A per-user token from the node's token file.
    UserToken,
    /// The cluster-wide shared token of plaintext development mode: every
    /// holder is the same user, [`SHARED_TOKEN_USER`], with every role.
    SharedToken,
}

/// The user name given to holders of the shared token.
pub const SHARED_TOKEN_USER: &str = "shared-token";

/// The authenticated identity of a client connection, delivered with each of
/// its requests. Cheap to clone (the name is shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    pub roles: Roles,
    pub method: AuthMethod,
}

/// A request the identity's roles do not allow. Its text is what the client
/// is told in a [`ResponseStatus::Forbidden`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("user {user} has roles {has}; this request needs {needed}")]
pub struct Forbidden {
    pub user: Arc<str>,
    pub needed: Roles,
    pub has: Roles,
}

impl Forbidden {
    /// The answer to send to the client.
    pub fn status(&self) -> ResponseStatus {
        ResponseStatus::Forbidden(self.to_string())
    }
}

impl Identity {
    /// The role a request needs: `write` for a write and for opening or
    /// closing a session (sessions exist for writes), `read` for a read or a
    /// status request, `admin` for any admin operation (stats included: they
    /// describe every client's traffic).
    pub fn required_roles(body: &RequestBody) -> Roles {
        match body {
            RequestBody::Write { .. } | RequestBody::OpenSession | RequestBody::CloseSession => Roles::WRITE,
            RequestBody::Read { .. } | RequestBody::Status => Roles::READ,
            RequestBody::Admin(_) => Roles::ADMIN,
        }
    }

    /// Whether this identity may make the request.
    pub fn authorize(&self, body: &RequestBody) -> Result<(), Forbidden> {
        let needed = Identity::required_roles(body);
        if self.roles.contains(needed) {
            Ok(())
        } else {
            Err(Forbidden { user: self.user.clone(), needed, has: self.roles })
        }
    }
}

/// A node's identity as a certificate names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeName {
    pub cluster_id: u64,
    pub node_id: NodeId,
}

/// A client's identity as a certificate names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientName {
    pub cluster_id: u64,
    pub user: String,
    pub roles: Roles,
}

/// What a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    Node(NodeName),
    Client(ClientName),
}

/// A certificate or a name that does not follow the identity rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the certificate has no raft-node:// or raft-client:// subject alternative name")]
    NoIdentity,
    #[error(
        "the certificate has {count} raft-node:// or raft-client:// subject alternative names; exactly one is allowed"
    )]
    Ambiguous { count: usize },
    #[error("identity URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: &'static str },
    #[error("roles {text:?}: expected a comma-separated list of distinct read, write, admin")]
    BadRoles { text: String },
    #[error("user name {name:?}: 1 to {USER_NAME_SIZE_MAX} characters from A-Z a-z 0-9 . _ -")]
    BadUserName { name: String },
}

/// Checks a user name against the rule in the module documentation.
pub fn check_user_name(name: &str) -> Result<(), IdentityError> {
    let valid = !name.is_empty()
        && name.len() <= USER_NAME_SIZE_MAX
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(IdentityError::BadUserName { name: name.to_string() })
    }
}

/// Parses canonical decimal: digits only, no leading zero unless the number
/// is 0, within u64.
fn canonical_u64(text: &str) -> Option<u64> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl NodeName {
    /// `raft-node://CLUSTER_ID/NODE_ID`.
    pub fn uri(&self) -> String {
        format!("{NODE_URI_SCHEME}://{}/{}", self.cluster_id, self.node_id)
    }

    pub fn parse_uri(uri: &str) -> Result<NodeName, IdentityError> {
        let bad = |reason| IdentityError::BadUri { uri: uri.to_string(), reason };
        let rest = uri
            .strip_prefix(NODE_URI_SCHEME)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or(bad("not raft-node://"))?;
        let (cluster, node) = rest.split_once('/').ok_or(bad("expected raft-node://CLUSTER_ID/NODE_ID"))?;
        let cluster_id = canonical_u64(cluster).ok_or(bad("the cluster id is not a canonical decimal number"))?;
        let node_id = canonical_u64(node).ok_or(bad("the node id is not a canonical decimal number"))?;
        if node_id == 0 {
            return Err(bad("node id 0 means none"));
        }
        Ok(NodeName { cluster_id, node_id })
    }

    /// The name a caller gives rustls for the node it dials. It is never
    /// resolved and never sent (SNI is off): it carries the expected identity
    /// to this crate's certificate verifier, which checks it against the URI
    /// SAN. `None` accepts any node of the cluster (a client that knows only
    /// an address).
    pub(crate) fn server_name(cluster_id: u64, node_id: Option<NodeId>) -> String {
        match node_id {
            Some(node_id) => format!("node-{node_id}.cluster-{cluster_id}.raft"),
            None => format!("any-node.cluster-{cluster_id}.raft"),
        }
    }

    /// The inverse of [`NodeName::server_name`]: the cluster and, if one was
    /// named, the node.
    pub(crate) fn parse_server_name(name: &str) -> Option<(u64, Option<NodeId>)> {
        let rest = name.strip_suffix(".raft")?;
        let (node, cluster) = rest.split_once(".cluster-")?;
        let cluster_id = canonical_u64(cluster)?;
        if node == "any-node" {
            return Some((cluster_id, None));
        }
        let node_id = canonical_u64(node.strip_prefix("node-")?)?;
        Some((cluster_id, Some(node_id)))
    }
}

impl ClientName {
    /// `raft-client://CLUSTER_ID/USER?roles=ROLES`.
    pub fn uri(&self) -> String {
        format!("{CLIENT_URI_SCHEME}://{}/{}?roles={}", self.cluster_id, self.user, self.roles)
    }

    pub fn parse_uri(uri: &str) -> Result<ClientName, IdentityError> {
        let bad = |reason| IdentityError::BadUri { uri: uri.to_string(), reason };
        let rest = uri
            .strip_prefix(CLIENT_URI_SCHEME)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or(bad("not raft-client://"))?;
        let (cluster, rest) = rest.split_once('/').ok_or(bad("expected raft-client://CLUSTER_ID/USER?roles=..."))?;
        let cluster_id = canonical_u64(cluster).ok_or(bad("the cluster id is not a canonical decimal number"))?;
        let (user, query) = rest.split_once('?').ok_or(bad("no ?roles= query"))?;
        check_user_name(user)?;
        let roles = query.strip_prefix("roles=").ok_or(bad("the query must be exactly roles=..."))?;
        let roles = Roles::parse(roles)?;
        Ok(ClientName { cluster_id, user: user.to_string(), roles })
    }

    /// The identity a connection presenting this certificate has.
    pub fn identity(&self) -> Identity {
        Identity { user: Arc::from(self.user.as_str()), roles: self.roles, method: AuthMethod::Certificate }
    }
}

/// Reads the identity a DER certificate carries (see the module
/// documentation for the rule). Only call it on a certificate whose chain was
/// already verified: the identity is only as good as the signature on it.
pub fn certificate_identity(der: &[u8]) -> Result<CertIdentity, IdentityError> {
    let (rest, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|error| IdentityError::Certificate(error.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Certificate(format!("{} bytes after the certificate", rest.len())));
    }
    let names =
        certificate.subject_alternative_name().map_err(|error| IdentityError::Certificate(error.to_string()))?;
    let mut found = Vec::new();
    for name in names.iter().flat_map(|extension| extension.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if uri.starts_with(&format!("{NODE_URI_SCHEME}:")) {
                found.push(NodeName::parse_uri(uri).map(CertIdentity::Node));
            } else if uri.starts_with(&format!("{CLIENT_URI_SCHEME}:")) {
                found.push(ClientName::parse_uri(uri).map(CertIdentity::Client));
            }
        }
    }
    match found.len() {
        0 => Err(IdentityError::NoIdentity),
        1 => found.pop().expect("one element"),
        count => Err(IdentityError::Ambiguous { count }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::client::{AdminRequest, ReadConsistency};

    #[test]
    fn node_uris_round_trip_and_refuse_non_canonical_forms() {
        let name = NodeName { cluster_id: 42, node_id: 7 };
        assert_eq!(name.uri(), "raft-node://42/7");
        assert_eq!(NodeName::parse_uri(&name.uri()), Ok(name));
        for bad in [
            "raft-node://42/0",
            "raft-node://42/07",
            "raft-node://042/7",
            "raft-node://42/+7",
            "raft-node://42/7/",
            "raft-node://42",
            "raft-node:42/7",
            "raft-client://42/7",
            "raft-node://42/18446744073709551616",
        ] {
            assert!(NodeName::parse_uri(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn client_uris_round_trip_and_refuse_bad_users_and_roles() {
        let name = ClientName { cluster_id: 3, user: "alice.b-c_d".into(), roles: Roles::READ | Roles::ADMIN };
        assert_eq!(name.uri(), "raft-client://3/alice.b-c_d?roles=read,admin");
        assert_eq!(ClientName::parse_uri(&name.uri()), Ok(name));
        for bad in [
            "raft-client://3/alice",
            "raft-client://3/alice?roles=",
            "raft-client://3/alice?roles=read,read",
            "raft-client://3/alice?roles=root",
            "raft-client://3/alice?role=read",
            "raft-client://3/al ice?roles=read",
            "raft-client://3/?roles=read",
            "raft-client://3/alice/x?roles=read",
        ] {
            assert!(ClientName::parse_uri(bad).is_err(), "{bad} was accepted");
        }
        let long = format!("raft-client://3/{}?roles=read", "a".repeat(USER_NAME_SIZE_MAX + 1));
        assert!(ClientName::parse_uri(&long).is_err());
    }

    #[test]
    fn server_names_carry_the_expected_node() {
        assert_eq!(NodeName::parse_server_name(&NodeName::server_name(42, Some(7))), Some((42, Some(7))));
        assert_eq!(NodeName::parse_server_name(&NodeName::server_name(42, None)), Some((42, None)));
        assert_eq!(NodeName::parse_server_name("node-7.cluster-42.example"), None);
        assert_eq!(NodeName::parse_server_name("localhost"), None);
    }

    #[test]
    fn roles_parse_and_print_in_a_fixed_order() {
        assert_eq!(Roles::parse("admin,read"), Ok(Roles::READ | Roles::ADMIN));
        assert_eq!((Roles::ADMIN | Roles::READ).to_string(), "read,admin");
        assert_eq!(Roles::ALL.to_string(), "read,write,admin");
        assert_eq!(Roles::NONE.to_string(), "none");
        assert!(Roles::parse("").is_err());
        assert!(Roles::parse("read,").is_err());
    }

    #[test]
    fn each_request_needs_its_role() {
        let reader = Identity { user: Arc::from("r"), roles: Roles::READ, method: AuthMethod::UserToken };
        let write = RequestBody::Write { command: Bytes::new() };
        let read = RequestBody::Read { query: Bytes::new(), consistency: ReadConsistency::NodeDefault };
        let admin = RequestBody::Admin(AdminRequest::Stats);
        assert_eq!(reader.authorize(&read), Ok(()));
        assert_eq!(reader.authorize(&RequestBody::Status), Ok(()));
        let refused = reader.authorize(&write).unwrap_err();
        assert_eq!((refused.needed, refused.has), (Roles::WRITE, Roles::READ));
        assert!(matches!(refused.status(), ResponseStatus::Forbidden(text) if text.contains("needs write")));
        assert!(reader.authorize(&admin).is_err());
        let admin_only = Identity { roles: Roles::ADMIN, ..reader };
        assert!(admin_only.authorize(&admin).is_ok());
        assert!(admin_only.authorize(&read).is_err());
    }
}
