//! API keys: stored only as SHA-256 hashes, compared in constant time.

use std::collections::HashMap;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AdminConfig, AdminRole, LEGACY_ADMIN_TOKEN};

/// The SHA-256 of a key, as 64 lowercase hex characters (what the config stores).
///
/// ```
/// let h = tollgate_gateway::auth::hash_key("sk-demo");
/// assert_eq!(h.len(), 64);
/// ```
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Hex (either case) as bytes.
pub(crate) fn parse_hex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    h.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// Parses 64 hex characters (either case) into a digest, without
/// allocating: the registry parses one per key at start.
pub(crate) fn parse_hash(h: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let h = h.as_bytes();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(h.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The bearer token of a request (`Authorization: Bearer KEY`), if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What a key hash leads to: a config file key's client, or a key issued
/// through the admin API (which names its client).
#[derive(Debug, Clone)]
pub enum KeyEntry {
    /// A `key_sha256` of the config file: its client's id.
    File(Box<str>),
    /// A key issued through the admin API.
    Issued(std::sync::Arc<crate::registry::Key>),
}

impl KeyEntry {
    /// The client's id.
    pub fn client(&self) -> &str {
        match self {
            KeyEntry::File(client) => client,
            KeyEntry::Issued(key) => &key.client,
        }
    }

    /// The issued key (`None`: a `key_sha256` of the config file).
    pub fn key(&self) -> Option<&std::sync::Arc<crate::registry::Key>> {
        match self {
            KeyEntry::File(_) => None,
            KeyEntry::Issued(key) => Some(key),
        }
    }
}

/// Finds the client a key belongs to.
///
/// The presented key is hashed first and the map is indexed by that hash, so
/// lookup timing depends only on a SHA-256 of the key, which tells an attacker
/// nothing about any stored key; the final comparison is constant-time anyway.
/// Each key's hash is kept once, as its 32 bytes.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    by_hash: HashMap<[u8; 32], KeyEntry>,
}

impl KeyIndex {
    /// Adds a key hash (hex) for a client; ignores malformed hashes (the
    /// config validation has already refused them).
    pub fn insert(&mut self, hash_hex: &str, client: &str) {
        if let Some(h) = parse_hash(hash_hex) {
            self.insert_hash(h, KeyEntry::File(client.into()));
        }
    }

    /// Adds (or replaces) what a key hash leads to.
    pub fn insert_hash(&mut self, hash: [u8; 32], entry: KeyEntry) {
        self.by_hash.insert(hash, entry);
    }

    /// Removes the issued key `id` under `hash`, and answers whether it was
    /// there (a config file key under the same hash stays).
    pub fn remove_issued(&mut self, hash: &[u8; 32], id: &str) -> bool {
        let issued = matches!(self.by_hash.get(hash), Some(KeyEntry::Issued(k)) if &*k.id == id);
        if issued {
            self.by_hash.remove(hash);
        }
        issued
    }

    /// The hash under which issued key `id` is, found by looking at every
    /// entry: only for a key whose row has gone from the database, which
    /// the admin API never does.
    pub fn find_issued(&self, id: &str) -> Option<[u8; 32]> {
        self.by_hash.iter().find_map(|(h, e)| match e {
            KeyEntry::Issued(k) if &*k.id == id => Some(*h),
            _ => None,
        })
    }

    /// How many key hashes it holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// What a presented key leads to.
    pub fn entry(&self, key: &str) -> Option<&KeyEntry> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let (stored, entry) = self.by_hash.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(entry)
    }

    /// The client id of a presented key.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.entry(key).map(KeyEntry::client)
    }
}

/// An admin token the gateway accepts: its name and role (the token itself
/// only as its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Its name (what the audit table records).
    pub name: String,
    /// What it may do.
    pub role: AdminRole,
    hash: [u8; 32],
}

/// Every admin token of the config: `admin.token_sha256` (named
/// [`LEGACY_ADMIN_TOKEN`], read-write) and `[[admin.tokens]]`.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens(Vec<AdminToken>);

impl AdminTokens {
    /// The tokens of `[admin]` (validated already).
    pub fn from_config(admin: &AdminConfig) -> AdminTokens {
        let legacy = admin
            .token_sha256
            .iter()
            .map(|h| (LEGACY_ADMIN_TOKEN, h.as_str(), AdminRole::ReadWrite));
        let listed = admin
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.sha256.as_str(), t.role));
        AdminTokens(
            legacy
                .chain(listed)
                .filter_map(|(name, h, role)| {
                    Some(AdminToken {
                        name: name.to_string(),
                        role,
                        hash: parse_hash(h)?,
                    })
                })
                .collect(),
        )
    }

    /// Whether there is none (the admin API is off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token `presented` is, compared with every one in constant time.
    pub fn find(&self, presented: Option<&str>) -> Option<&AdminToken> {
        let digest: [u8; 32] = Sha256::digest(presented?.as_bytes()).into();
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.hash.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_clients_by_key_hash_only() {
        let mut idx = KeyIndex::default();
        idx.insert(&hash_key("sk-a"), "a");
        assert_eq!(idx.lookup("sk-a"), Some("a"));
        assert_eq!(idx.lookup("sk-b"), None);
        assert_eq!(
            parse_hash(&hash_key("x")).map(|h| hex(&h)),
            Some(hash_key("x"))
        );
        let upper = hash_key("x").to_ascii_uppercase();
        assert_eq!(parse_hash(&upper), parse_hash(&hash_key("x")));
        for bad in [
            "",
            "ab",
            &hash_key("x")[1..],
            &format!("+{}", &hash_key("x")[1..]),
        ] {
            assert_eq!(parse_hash(bad), None, "{bad:?}");
        }
        let tokens = AdminTokens::from_config(&AdminConfig {
            token_sha256: Some(hash_key("t")),
            tokens: vec![crate::config::AdminTokenConfig {
                name: "viewer".into(),
                sha256: hash_key("v").to_ascii_uppercase(),
                role: AdminRole::ReadOnly,
            }],
        });
        let t = tokens.find(Some("t")).unwrap();
        assert_eq!((t.name.as_str(), t.role), ("admin", AdminRole::ReadWrite));
        assert_eq!(tokens.find(Some("v")).unwrap().role, AdminRole::ReadOnly);
        assert!(tokens.find(Some("u")).is_none());
        assert!(tokens.find(None).is_none());
        assert!(AdminTokens::default().find(Some("t")).is_none());
    }
}
