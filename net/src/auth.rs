//! The acceptor's decision on a caller: its handshake frame, checked against
//! what the listener serves, the caller's certificate (TLS) and the node's
//! credentials. Pure, so every refusal is a unit test.

use engine::NodeId;

use crate::frame::PROTOCOL_VERSION;
use crate::handshake::{Handshake, HandshakeRefusal, RefusalReason, Role};
use crate::identity::{CertIdentity, Identity, IdentityError};
use crate::listener::ListenerRole;
use crate::security::Credentials;
use crate::tokens::token_matches;

/// Who the caller turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Authenticated {
    Peer { node_id: NodeId },
    Client { identity: Identity },
}

fn refuse<T>(reason: RefusalReason, message: String) -> Result<T, HandshakeRefusal> {
    Err(HandshakeRefusal { reason, message })
}

/// Decides on a caller. `certificate` is the identity read from the caller's
/// verified certificate: `None` without TLS or when a client presented none.
pub(crate) fn authenticate(
    handshake: &Handshake,
    listener: ListenerRole,
    certificate: Option<Result<CertIdentity, IdentityError>>,
    credentials: &Credentials,
) -> Result<Authenticated, HandshakeRefusal> {
    if handshake.protocol_version != u16::from(PROTOCOL_VERSION) {
        return refuse(
            RefusalReason::VersionUnsupported,
            format!("protocol version {} unsupported, this node speaks {PROTOCOL_VERSION}", handshake.protocol_version),
        );
    }
    if handshake.cluster_id != credentials.cluster_id {
        return refuse(
            RefusalReason::ClusterMismatch,
            format!("cluster id {} does not match this node's {}", handshake.cluster_id, credentials.cluster_id),
        );
    }
    match (listener, handshake.role) {
        (ListenerRole::Peers, Role::Peer) => authenticate_peer(handshake, certificate, credentials),
        (ListenerRole::Clients, Role::Client) => authenticate_client(handshake, certificate, credentials),
        (listener, role) => refuse(
            RefusalReason::RoleNotAccepted,
            format!("this listener takes only {listener:?}; {role:?} connections go to the other listener"),
        ),
    }
}

fn authenticate_peer(
    handshake: &Handshake,
    certificate: Option<Result<CertIdentity, IdentityError>>,
    credentials: &Credentials,
) -> Result<Authenticated, HandshakeRefusal> {
    let claimed = handshake.node_id;
    if claimed == 0 {
        return refuse(RefusalReason::Malformed, "a peer must give its node id".into());
    }
    if credentials.tls.is_some() {
        match certificate {
            Some(Ok(CertIdentity::Node(name))) if name.cluster_id != credentials.cluster_id => {
                return refuse(
                    RefusalReason::IdentityMismatch,
                    format!("the certificate names {}, a node of another cluster", name.uri()),
                );
            }
            Some(Ok(CertIdentity::Node(name))) if name.node_id != claimed => {
                return refuse(
                    RefusalReason::IdentityMismatch,
                    format!("the handshake claims node {claimed} but the certificate names {}", name.uri()),
                );
            }
            Some(Ok(CertIdentity::Node(_))) => {}
            Some(Ok(CertIdentity::Client(name))) => {
                return refuse(
                    RefusalReason::IdentityMismatch,
                    format!("a client certificate ({}) cannot connect as a peer", name.uri()),
                );
            }
            Some(Err(error)) => return refuse(RefusalReason::IdentityMismatch, error.to_string()),
            None => return refuse(RefusalReason::IdentityMismatch, "a peer must present a node certificate".into()),
        }
    }
    if let Some(expected) = &credentials.peer_token {
        if !token_matches(&handshake.token, expected) {
            return refuse(RefusalReason::BadToken, "the peer token does not match".into());
        }
    }
    if handshake.history != credentials.history {
        return refuse(
            RefusalReason::OtherHistory,
            format!(
                "node {claimed}'s data continues {}, and this node's (node {}) continues {}: a node that was \
                 restored from a backup works only with nodes restored from the same backup, and a node added to a \
                 restored cluster joins it with --join (restore every node before starting any, or wipe the odd \
                 ones out and restore them)",
                handshake.history, credentials.node_id, credentials.history
            ),
        );
    }
    Ok(Authenticated::Peer { node_id: claimed })
}

fn authenticate_client(
    handshake: &Handshake,
    certificate: Option<Result<CertIdentity, IdentityError>>,
    credentials: &Credentials,
) -> Result<Authenticated, HandshakeRefusal> {
    match certificate {
        // A certificate is the identity; a token sent along is not looked at.
        Some(Ok(CertIdentity::Client(name))) if name.cluster_id != credentials.cluster_id => refuse(
            RefusalReason::IdentityMismatch,
            format!("the certificate names {}, a client of another cluster", name.uri()),
        ),
        Some(Ok(CertIdentity::Client(name))) => Ok(Authenticated::Client { identity: name.identity() }),
        Some(Ok(CertIdentity::Node(name))) => refuse(
            RefusalReason::IdentityMismatch,
            format!("a node certificate ({}) cannot connect as a client", name.uri()),
        ),
        Some(Err(error)) => refuse(RefusalReason::IdentityMismatch, error.to_string()),
        None => match credentials.client_auth.identity(&handshake.token) {
            Some(identity) => Ok(Authenticated::Client { identity }),
            None => refuse(RefusalReason::BadToken, "no client certificate and no valid token".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::handshake::History;
    use crate::identity::{AuthMethod, Roles};
    use crate::identity::{ClientName, NodeName};
    use crate::security::{ClientAuth, ClientTokens, NodeSecurity, NodeSecurityConfig};
    use crate::tokens::UserTokens;

    const TOKEN: &[u8] = b"peer-secret-peer-secret";

    fn plaintext(client_auth: ClientAuth) -> Credentials {
        Credentials {
            cluster_id: 9,
            node_id: 1,
            generation: 1,
            tls: None,
            peer_token: Some(Bytes::from_static(TOKEN)),
            client_auth,
            warnings: Vec::new(),
            history: History::FRESH,
        }
    }

    fn handshake(role: Role, node_id: NodeId, token: &'static [u8]) -> Handshake {
        Handshake {
            cluster_id: 9,
            node_id,
            role,
            protocol_version: u16::from(PROTOCOL_VERSION),
            token: Bytes::from_static(token),
            history: History::FRESH,
        }
    }

    fn reason(result: Result<Authenticated, HandshakeRefusal>) -> RefusalReason {
        result.expect_err("refused").reason
    }

    #[test]
    fn plaintext_peers_need_the_peer_token_on_the_peer_listener() {
        let credentials = plaintext(ClientAuth::None);
        let good = handshake(Role::Peer, 2, TOKEN);
        assert_eq!(
            authenticate(&good, ListenerRole::Peers, None, &credentials),
            Ok(Authenticated::Peer { node_id: 2 })
        );
        let check = |handshake: Handshake, listener| reason(authenticate(&handshake, listener, None, &credentials));
        assert_eq!(
            check(Handshake { cluster_id: 8, ..good.clone() }, ListenerRole::Peers),
            RefusalReason::ClusterMismatch
        );
        assert_eq!(
            check(handshake(Role::Peer, 2, b"peer-secret-peer-secreT"), ListenerRole::Peers),
            RefusalReason::BadToken
        );
        assert_eq!(
            check(Handshake { protocol_version: 1, ..good.clone() }, ListenerRole::Peers),
            RefusalReason::VersionUnsupported
        );
        assert_eq!(check(good.clone(), ListenerRole::Clients), RefusalReason::RoleNotAccepted);
        assert_eq!(check(handshake(Role::Peer, 0, TOKEN), ListenerRole::Peers), RefusalReason::Malformed);
    }

    /// A node restored from a backup and a node that started empty (or one
    /// restored from another backup) refuse each other: see [`History`].
    #[test]
    fn peers_of_another_history_are_refused_with_both_histories_named() {
        let restored = Credentials { history: History(0xfeed), ..plaintext(ClientAuth::None) };
        let fresh = plaintext(ClientAuth::None);
        let from = |history| Handshake { history: History(history), ..handshake(Role::Peer, 2, TOKEN) };
        let accepted = Ok(Authenticated::Peer { node_id: 2 });
        assert_eq!(authenticate(&from(0xfeed), ListenerRole::Peers, None, &restored), accepted);
        assert_eq!(authenticate(&from(0), ListenerRole::Peers, None, &fresh), accepted);
        for (caller, credentials) in [(0, &restored), (0xbeef, &restored), (0xfeed, &fresh)] {
            let refusal = authenticate(&from(caller), ListenerRole::Peers, None, credentials).expect_err("refused");
            assert_eq!(refusal.reason, RefusalReason::OtherHistory);
            assert!(refusal.message.contains(&History(caller).to_string()), "{}", refusal.message);
            assert!(refusal.message.contains(&credentials.history.to_string()), "{}", refusal.message);
        }
        // Clients carry no history.
        let client = authenticate(
            &handshake(Role::Client, 0, TOKEN),
            ListenerRole::Clients,
            None,
            &Credentials { client_auth: ClientAuth::Shared(Bytes::from_static(TOKEN)), ..restored },
        );
        assert!(matches!(client, Ok(Authenticated::Client { .. })), "{client:?}");
    }

    #[test]
    fn clients_authenticate_by_user_token_or_shared_token_on_the_client_listener_only() {
        let users =
            UserTokens::parse("reader:read:reader-token-0123456\nwriter:read,write:writer-token-012345").unwrap();
        let credentials = plaintext(ClientAuth::Users(users));
        let identity =
            |token| match authenticate(&handshake(Role::Client, 0, token), ListenerRole::Clients, None, &credentials) {
                Ok(Authenticated::Client { identity }) => {
                    Some((identity.user.to_string(), identity.roles, identity.method))
                }
                Ok(other) => panic!("{other:?}"),
                Err(refusal) => {
                    assert_eq!(refusal.reason, RefusalReason::BadToken);
                    None
                }
            };
        assert_eq!(identity(b"reader-token-0123456"), Some(("reader".into(), Roles::READ, AuthMethod::UserToken)));
        assert_eq!(
            identity(b"writer-token-012345"),
            Some(("writer".into(), Roles::READ | Roles::WRITE, AuthMethod::UserToken))
        );
        assert_eq!(identity(b"reader-token-0123457"), None);
        // The peer token is not a client token, and the client role is refused on the peer listener.
        assert_eq!(identity(TOKEN), None);
        let on_peers =
            authenticate(&handshake(Role::Client, 0, b"reader-token-0123456"), ListenerRole::Peers, None, &credentials);
        assert_eq!(reason(on_peers), RefusalReason::RoleNotAccepted);

        let shared = plaintext(ClientAuth::Shared(Bytes::from_static(b"shared")));
        match authenticate(&handshake(Role::Client, 0, b"shared"), ListenerRole::Clients, None, &shared) {
            Ok(Authenticated::Client { identity }) => {
                assert_eq!((identity.roles, identity.method), (Roles::ALL, AuthMethod::SharedToken))
            }
            other => panic!("{other:?}"),
        }
    }

    fn tls_credentials() -> (Credentials, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("net-auth-{}-{:?}", std::process::id(), std::thread::current().id()));
        let certificates = crate::tls::dev_certificates(&dir, 9, &[1], &[("ops", Roles::ALL)]).unwrap();
        let security = NodeSecurity::load(NodeSecurityConfig {
            cluster_id: 9,
            node_id: 1,
            tls: certificates.node_tls(1),
            peer_token: None,
            client_tokens: ClientTokens::None,
            history: History::FRESH,
        })
        .unwrap();
        let current = security.current();
        let credentials = Credentials {
            cluster_id: 9,
            node_id: 1,
            generation: 1,
            tls: current.tls.as_ref().map(|tls| crate::security::NodeTls {
                peer_acceptor: tls.peer_acceptor.clone(),
                client_acceptor: tls.client_acceptor.clone(),
                link_caller: tls.link_caller.clone(),
            }),
            peer_token: None,
            client_auth: ClientAuth::None,
            warnings: Vec::new(),
            history: History::FRESH,
        };
        (credentials, dir)
    }

    #[test]
    fn with_tls_the_certificate_must_name_the_claimed_node_of_this_cluster() {
        let (credentials, dir) = tls_credentials();
        let peer = handshake(Role::Peer, 2, b"");
        let node = |cluster_id, node_id| Some(Ok(CertIdentity::Node(NodeName { cluster_id, node_id })));
        assert_eq!(
            authenticate(&peer, ListenerRole::Peers, node(9, 2), &credentials),
            Ok(Authenticated::Peer { node_id: 2 })
        );
        let check = |certificate| reason(authenticate(&peer, ListenerRole::Peers, certificate, &credentials));
        assert_eq!(check(node(9, 3)), RefusalReason::IdentityMismatch);
        assert_eq!(check(node(8, 2)), RefusalReason::IdentityMismatch);
        assert_eq!(check(None), RefusalReason::IdentityMismatch);
        assert_eq!(check(Some(Err(IdentityError::NoIdentity))), RefusalReason::IdentityMismatch);
        let client = ClientName { cluster_id: 9, user: "ops".into(), roles: Roles::ALL };
        assert_eq!(check(Some(Ok(CertIdentity::Client(client.clone())))), RefusalReason::IdentityMismatch);

        let caller = handshake(Role::Client, 0, b"");
        match authenticate(&caller, ListenerRole::Clients, Some(Ok(CertIdentity::Client(client.clone()))), &credentials)
        {
            Ok(Authenticated::Client { identity }) => assert_eq!(identity, client.identity()),
            other => panic!("{other:?}"),
        }
        let node_as_client = authenticate(&caller, ListenerRole::Clients, node(9, 2), &credentials);
        assert_eq!(reason(node_as_client), RefusalReason::IdentityMismatch);
        let other_cluster = ClientName { cluster_id: 8, ..client };
        let refused =
            authenticate(&caller, ListenerRole::Clients, Some(Ok(CertIdentity::Client(other_cluster))), &credentials);
        assert_eq!(reason(refused), RefusalReason::IdentityMismatch);
        // No certificate and no token configured: nothing to authenticate with.
        assert_eq!(reason(authenticate(&caller, ListenerRole::Clients, None, &credentials)), RefusalReason::BadToken);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
