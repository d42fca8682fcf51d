//! Per-user client tokens: the token file format and a lookup that takes the
//! same time whichever entry (if any) matches.
//!
//! # The token file
//!
//! UTF-8 text, one user per line:
//!
//! ```text
//! # name:roles:token
//! alice:read,write:2f6bd0c1e4a8a7a1b9c3d5e7f9a1b3c5
//! ops:read,write,admin:9a0e33c1d2b4f6a8c0e2d4f6a8b0c2d4
//! dashboard:read:0c2d4f6a8b0c2d4e6f8a0b2c4d6e8f0a
//! ```
//!
//! - `name` follows the user name rule of [`crate::identity`];
//! - `roles` is a comma-separated list of `read`, `write`, `admin`;
//! - `token` is everything after the second colon, without surrounding
//!   spaces: [`TOKEN_SIZE_MIN`] to [`TOKEN_SIZE_MAX`] printable ASCII
//!   characters (no spaces). Tokens must be distinct, because the token alone
//!   says who the caller is: the handshake carries no user name.
//!
//! Blank lines and lines starting with `#` are ignored. A malformed line makes
//! the whole file invalid (the error names the line, never the token), so a
//! typo cannot silently lock a user out or let a half-parsed entry in.
//!
//! `net::tokens::generate_token` makes a token from the operating system's
//! random source; `net::tls::dev_certificates` writes a file for its users.

use std::path::Path;
use std::sync::Arc;

use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::handshake::TOKEN_SIZE_MAX;
use crate::identity::{check_user_name, AuthMethod, Identity, Roles};

/// The shortest token accepted in a token file: 16 characters of a random
/// hex or base64 string are 64 to 96 bits, beyond online guessing.
pub const TOKEN_SIZE_MIN: usize = 16;

/// A token file that does not follow the format. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TokenFileError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

struct Entry {
    identity: Identity,
    token: Box<[u8]>,
}

/// The users of a token file.
pub struct UserTokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: a token must never reach a log.
        let users: Vec<_> = self.entries.iter().map(|entry| (&*entry.identity.user, entry.identity.roles)).collect();
        f.debug_struct("UserTokens").field("users", &users).finish()
    }
}

impl UserTokens {
    /// Parses a token file's text.
    pub fn parse(text: &str) -> Result<UserTokens, TokenFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |reason: String| TokenFileError { line, reason };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut parts = trimmed.splitn(3, ':');
            let (Some(name), Some(roles), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(error("expected name:roles:token".into()));
            };
            let (name, roles, token) = (name.trim(), roles.trim(), token.trim());
            check_user_name(name).map_err(|e| error(e.to_string()))?;
            let roles = Roles::parse(roles).map_err(|e| error(e.to_string()))?;
            if !(TOKEN_SIZE_MIN..=TOKEN_SIZE_MAX).contains(&token.len()) {
                return Err(error(format!("the token must be {TOKEN_SIZE_MIN} to {TOKEN_SIZE_MAX} characters")));
            }
            if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
                return Err(error("the token must be printable ASCII without spaces".into()));
            }
            if entries.iter().any(|entry| &*entry.identity.user == name) {
                return Err(error(format!("user {name} appears twice")));
            }
            if entries.iter().any(|entry| *entry.token == *token.as_bytes()) {
                return Err(error(format!("user {name} has the same token as another user")));
            }
            let identity = Identity { user: Arc::from(name), roles, method: AuthMethod::UserToken };
            entries.push(Entry { identity, token: token.as_bytes().into() });
        }
        Ok(UserTokens { entries })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<UserTokens, crate::security::CredentialsError> {
        use crate::security::CredentialsError;
        let text = std::fs::read_to_string(path)
            .map_err(|source| CredentialsError::Read { path: path.to_path_buf(), source })?;
        UserTokens::parse(&text).map_err(|source| CredentialsError::TokenFile { path: path.to_path_buf(), source })
    }

    /// The identity whose token equals `presented`, if any. Every entry is
    /// compared, each in time that does not depend on where the bytes
    /// differ (`subtle`), and the match is selected without a branch, so the
    /// answer's timing says nothing about which token, or how much of one,
    /// matched. Only the lengths of the tokens are not hidden.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Identity> {
        let mut found = 0u32; // 1 + the index of the match, 0 for none.
        for (index, entry) in self.entries.iter().enumerate() {
            let equal = entry.token.as_ref().ct_eq(presented);
            found.conditional_assign(&(index as u32 + 1), equal);
        }
        let found = std::hint::black_box(found);
        (found > 0).then(|| self.entries[found as usize - 1].identity.clone())
    }

    /// Whether some user's token is `token` (to warn that a peer token is
    /// also a client's).
    pub fn contains_token(&self, token: &[u8]) -> bool {
        self.authenticate(token).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Compares a presented secret with the expected one in time that depends
/// only on their lengths.
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    bool::from(presented.ct_eq(expected))
}

/// A fresh token: 32 random bytes from the operating system's generator (via
/// the TLS crypto provider), hex-encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    crate::tls::provider().secure_random.fill(&mut bytes).expect("the system random generator failed");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# name:roles:token
alice:read,write:aaaaaaaaaaaaaaaa1
  bob : read : bbbbbbbbbbbbbbbb:with:colons

ops:read,write,admin:cccccccccccccccc
";

    #[test]
    fn a_token_names_its_user_and_roles() {
        let tokens = UserTokens::parse(FILE).unwrap();
        assert_eq!(tokens.len(), 3);
        let alice = tokens.authenticate(b"aaaaaaaaaaaaaaaa1").unwrap();
        assert_eq!(
            (&*alice.user, alice.roles, alice.method),
            ("alice", Roles::READ | Roles::WRITE, AuthMethod::UserToken)
        );
        let bob = tokens.authenticate(b"bbbbbbbbbbbbbbbb:with:colons").unwrap();
        assert_eq!((&*bob.user, bob.roles), ("bob", Roles::READ));
        assert_eq!(&*tokens.authenticate(b"cccccccccccccccc").unwrap().user, "ops");
        for wrong in [&b""[..], b"aaaaaaaaaaaaaaaa", b"aaaaaaaaaaaaaaaa12", b"Aaaaaaaaaaaaaaaa1"] {
            assert_eq!(tokens.authenticate(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn malformed_files_name_the_line_and_never_the_token() {
        let cases = [
            ("alice:read", 1),
            ("alice:read:short", 1),
            ("# ok\nalice:read:aaaaaaaaaaaaaaaa\nalice:write:bbbbbbbbbbbbbbbb", 3),
            ("alice:read:aaaaaaaaaaaaaaaa\nbob:write:aaaaaaaaaaaaaaaa", 2),
            ("alice:root:aaaaaaaaaaaaaaaa", 1),
            ("al ice:read:aaaaaaaaaaaaaaaa", 1),
            ("alice:read:aaaaaaaa aaaaaaaa", 1),
            ("alice::aaaaaaaaaaaaaaaa", 1),
        ];
        for (text, line) in cases {
            let error = UserTokens::parse(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(!error.to_string().contains("aaaaaaaa"), "the error shows a token: {error}");
        }
        assert!(format!("{:?}", UserTokens::parse(FILE).unwrap()).find("aaaa").is_none());
    }

    #[test]
    fn token_matches_agrees_with_equality() {
        let cases: [(&[u8], &[u8]); 5] =
            [(b"", b""), (b"a", b""), (b"secret", b"secret"), (b"secreT", b"secret"), (b"secretsecret", b"secret")];
        for (a, b) in cases {
            assert_eq!(token_matches(a, b), a == b, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn generated_tokens_are_long_distinct_and_valid_in_a_file() {
        let (first, second) = (generate_token(), generate_token());
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
        let tokens = UserTokens::parse(&format!("u:read:{first}")).unwrap();
        assert!(tokens.contains_token(first.as_bytes()));
    }
}
