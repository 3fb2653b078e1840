//! `Idempotency-Key` on key issuance and rotation (`registry_idempotency`,
//! migration 5): a retry of `POST /admin/clients/{id}/keys` or `POST
//! /admin/keys/{id}/rotate` with the same header and body gets the same
//! answer, key included, and never a second key.
//!
//! The row is written in the key's own transaction, keyed by the header's
//! SHA-256: of two issuances racing with one header, the second fails on
//! that key, its transaction (and its key) rolled back, and it answers the
//! first's. The key is kept for the retry only [`KEEP_MS`], and only
//! sealed by the header itself (XOR with a SHA-256 stream of it): the
//! database alone does not tell it, so pick a random header (a UUID).

use sha2::{Digest, Sha256};

use super::db::THIS_VERSION;
use super::issue::{Issued, Refused};
use super::Registry;
use crate::ledger::row::now_ms;
use crate::ledger::store::sql::{Statement, Value};

/// How long a retry gets the first answer (24 hours).
pub const KEEP_MS: i64 = 24 * 3600 * 1000;
/// The longest header.
pub const MAX_LEN: usize = 255;

/// One request's `Idempotency-Key` and what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    key: String,
    /// SHA-256 of the scope and the body, hex.
    request: String,
}

impl Idempotency {
    /// The header `key` of a request for `scope` (the client a key is
    /// issued to, or `rotate ID` for key `ID`'s rotation) with `body`.
    pub fn new(key: &str, scope: &str, body: &[u8]) -> Result<Idempotency, Refused> {
        if key.is_empty() || key.len() > MAX_LEN {
            return Err(Refused::Invalid(format!(
                "Idempotency-Key: 1 to {MAX_LEN} characters (a UUID is best)"
            )));
        }
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(body);
        Ok(Idempotency {
            key: key.to_string(),
            request: crate::auth::hex(&h.finalize()),
        })
    }

    fn id(&self) -> String {
        crate::auth::hash_key(&self.key)
    }

    /// `len` bytes of the stream that seals key `key_id`'s secret.
    fn stream(&self, key_id: &str, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = 0u32;
        while out.len() < len {
            let mut h = Sha256::new();
            h.update(b"tollgate idempotency\0");
            h.update(self.key.as_bytes());
            h.update([0]);
            h.update(key_id.as_bytes());
            h.update(block.to_be_bytes());
            out.extend_from_slice(&h.finalize());
            block += 1;
        }
        out.truncate(len);
        out
    }

    fn seal(&self, key_id: &str, secret: &str) -> String {
        let s = secret.as_bytes();
        let sealed: Vec<u8> = s
            .iter()
            .zip(self.stream(key_id, s.len()))
            .map(|(a, b)| a ^ b)
            .collect();
        crate::auth::hex(&sealed)
    }

    fn unseal(&self, key_id: &str, sealed: &str) -> Option<String> {
        let bytes = crate::auth::parse_hex(sealed)?;
        let plain: Vec<u8> = bytes
            .iter()
            .zip(self.stream(key_id, bytes.len()))
            .map(|(a, b)| a ^ b)
            .collect();
        String::from_utf8(plain).ok()
    }

    /// The statements that record key `key_id` (with `secret`) as this
    /// request's answer, in the key's transaction: the first fails when the
    /// header was used already, rolling the key back.
    pub(crate) fn record(&self, key_id: &str, secret: &str) -> Vec<Statement> {
        let now = now_ms();
        vec![
            Statement::new(
                format!(
                    "INSERT INTO registry_idempotency (id, request, key_id, sealed, version, at_ms) \
                     VALUES ($1, $2, $3, $4, {THIS_VERSION}, $5)"
                ),
                vec![
                    self.id().into(),
                    self.request.as_str().into(),
                    key_id.into(),
                    self.seal(key_id, secret).into(),
                    Value::Int(now),
                ],
            ),
            Statement::new(
                "DELETE FROM registry_idempotency WHERE at_ms < $1",
                vec![Value::Int(now - KEEP_MS)],
            ),
        ]
    }
}

impl Registry {
    /// The answer a request with this header had, within [`KEEP_MS`];
    /// a conflict when the header came with another request.
    pub(crate) async fn replay(&self, idem: &Idempotency) -> Result<Option<Issued>, Refused> {
        let rows = self
            .db()
            .query(Statement::new(
                "SELECT request, key_id, sealed, version FROM registry_idempotency \
                 WHERE id = $1 AND at_ms >= $2",
                vec![idem.id().into(), Value::Int(now_ms() - KEEP_MS)],
            ))
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        if r[0].text() != Some(idem.request.as_str()) {
            return Err(Refused::Conflict(
                "This Idempotency-Key came with another request (another client or body); use a new one for a new key.".into(),
            ));
        }
        let key_id = r[1].text().unwrap_or_default();
        let info = self.key_info(key_id).await?;
        let key = idem.unseal(key_id, r[2].text().unwrap_or_default());
        match (info, key) {
            (Some(info), Some(key)) => Ok(Some(Issued {
                key,
                info,
                version: r[3].int().unwrap_or(0).max(0) as u64,
                replayed: true,
            })),
            _ => Err(Refused::Conflict(format!(
                "This Idempotency-Key issued key {key_id:?}, which cannot be shown again."
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_with_its_header_only() {
        let a = Idempotency::new("4c1d-uuid", "acme", b"{}").unwrap();
        let sealed = a.seal("key_1", "tg-secretsecretsecretsecretsecretsecret12");
        assert!(!sealed.contains("secret"));
        assert_eq!(
            a.unseal("key_1", &sealed).as_deref(),
            Some("tg-secretsecretsecretsecretsecretsecret12")
        );
        let b = Idempotency::new("other", "acme", b"{}").unwrap();
        assert_ne!(
            b.unseal("key_1", &sealed).as_deref(),
            Some("tg-secretsecretsecretsecretsecretsecret12")
        );
        assert_ne!(
            a.request,
            Idempotency::new("4c1d-uuid", "beta", b"{}")
                .unwrap()
                .request
        );
        assert!(Idempotency::new("", "acme", b"").is_err());
        assert!(Idempotency::new(&"x".repeat(256), "acme", b"").is_err());
    }
}
