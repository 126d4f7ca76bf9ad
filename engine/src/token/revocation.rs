//! The hospital's signed revocation list.
//!
//! A text file the hospital (`blindkd token revoke`) writes and query servers (`--revoked`) read:
//!
//! ```text
//! blindkd revocation list v1
//! issuer st-marys
//! serial 3
//! issued 1764513600
//! revoked 5f0c…16 bytes hex… 1764513000 dr-who
//! signature <128 hex: Ed25519 over REVOCATION_LIST ‖ every byte above this line>
//! ```
//!
//! The serial grows by one with every change, so a server can refuse a list older than one it
//! has seen (a rollback); the signature means whoever can write the file cannot un-revoke a token
//! by deleting its line. Parsing is strict: a line out of place, a second signature or trailing
//! bytes are refused, never skipped. A leading UTF-8 byte-order mark (an editor's) is ignored.

use std::fmt::Write as _;

use super::Issuers;
use crate::crypto::domain;
use crate::{Error, Result};

const MAGIC: &str = "blindkd revocation list v1";
/// The largest list accepted (about 150 000 entries).
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// One revoked token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedToken {
    /// The token id (`cti`).
    pub cti: [u8; 16],
    /// When the hospital revoked it (Unix seconds).
    pub revoked_at: i64,
    /// The token's subject, for people reading the list (names carry no control characters).
    pub subject: String,
}

/// A revocation list (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// The issuer whose tokens it revokes, and whose key signs it.
    pub issuer: String,
    /// Grows by one with every signed change.
    pub serial: u64,
    /// When this version was signed (Unix seconds).
    pub issued: i64,
    /// Revoked tokens, oldest first.
    pub entries: Vec<RevokedToken>,
}

fn bad(detail: impl std::fmt::Display) -> Error {
    Error::malformed("revocation list", detail)
}

impl RevocationList {
    /// An empty list (serial 0) for `issuer`.
    pub fn new(issuer: impl Into<String>) -> Self {
        RevocationList {
            issuer: issuer.into(),
            serial: 0,
            issued: 0,
            entries: Vec::new(),
        }
    }

    /// Whether `cti` is on the list.
    pub fn contains(&self, cti: &[u8; 16]) -> bool {
        self.entries.iter().any(|e| &e.cti == cti)
    }

    /// The signed part: every line but the signature.
    pub fn body(&self) -> Result<String> {
        let plain = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
        if !plain(&self.issuer) || self.issuer.contains(char::is_whitespace) {
            return Err(Error::InvalidInput(format!(
                "issuer {:?} cannot name a revocation list",
                self.issuer
            )));
        }
        let mut s = format!(
            "{MAGIC}\nissuer {}\nserial {}\nissued {}\n",
            self.issuer, self.serial, self.issued
        );
        for e in &self.entries {
            if e.subject.chars().any(char::is_control) {
                return Err(Error::InvalidInput(
                    "a subject with control characters".into(),
                ));
            }
            // Infallible: writing to a String.
            let _ = writeln!(
                s,
                "revoked {} {} {}",
                hex::encode(e.cti),
                e.revoked_at,
                e.subject
            );
        }
        Ok(s)
    }

    /// Parses `bytes` and verifies the signature under the key pinned for the list's issuer.
    /// Any edit, a list of an issuer not in `issuers`, or malformed text is an error.
    pub fn parse_verified(bytes: &[u8], issuers: &Issuers) -> Result<Self> {
        let (list, body, sig) = Self::parse(bytes)?;
        if issuers.keys_of(&list.issuer).is_empty() {
            return Err(super::refuse(
                super::codes::UNKNOWN_ISSUER,
                format!(
                    "the revocation list is signed by {:?}, which is not a pinned issuer",
                    list.issuer
                ),
            ));
        }
        issuers
            .verify_document(&list.issuer, domain::REVOCATION_LIST, body, &sig)
            .map_err(|_| {
                super::refuse(
                    super::codes::BAD_SIGNATURE,
                    format!(
                        "the revocation list's signature does not verify under {:?}'s keys: it \
                         was edited or signed by another key",
                        list.issuer
                    ),
                )
            })?;
        Ok(list)
    }

    /// Splits and parses; returns the list, the signed bytes and the signature.
    fn parse(bytes: &[u8]) -> Result<(Self, &[u8], [u8; 64])> {
        if bytes.len() > MAX_LIST_BYTES {
            return Err(Error::LimitExceeded(format!(
                "revocation list of {} bytes, over {MAX_LIST_BYTES}",
                bytes.len()
            )));
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let sig_at = text
            .rfind("\nsignature ")
            .ok_or_else(|| bad("no signature line"))?
            + 1;
        let (body, sig_line) = text.split_at(sig_at);
        let sig_hex = sig_line
            .strip_prefix("signature ")
            .and_then(|s| s.strip_suffix('\n'))
            .ok_or_else(|| bad("the signature line must be the last line"))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(sig_hex, &mut sig).map_err(|e| bad(format!("signature: {e}")))?;
        let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
        let mut next = |what: &str| {
            lines
                .next()
                .ok_or_else(|| bad(format!("missing the {what} line")))
        };
        let (_, magic) = next("header")?;
        if magic != MAGIC {
            return Err(bad(format!("line 1 must be {MAGIC:?}")));
        }
        let field = |(n, line): (usize, &str), key: &str| -> Result<String> {
            line.strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(format!("line {n} must be `{key} …`")))
        };
        let issuer = field(next("issuer")?, "issuer")?;
        let number =
            |n: usize, s: &str| s.parse::<i64>().map_err(|e| bad(format!("line {n}: {e}")));
        let serial_line = next("serial")?;
        let serial = field(serial_line, "serial")?
            .parse::<u64>()
            .map_err(|e| bad(format!("line {}: {e}", serial_line.0)))?;
        let issued_line = next("issued")?;
        let issued = number(issued_line.0, &field(issued_line, "issued")?)?;
        let mut entries: Vec<RevokedToken> = Vec::new();
        for (n, line) in lines {
            let rest = field((n, line), "revoked")?;
            let mut parts = rest.splitn(3, ' ');
            let (Some(id), Some(at)) = (parts.next(), parts.next()) else {
                return Err(bad(format!(
                    "line {n}: expected `revoked <id> <time> <subject>`"
                )));
            };
            let mut cti = [0u8; 16];
            hex::decode_to_slice(id, &mut cti).map_err(|e| bad(format!("line {n}: {e}")))?;
            if entries.iter().any(|e| e.cti == cti) {
                return Err(bad(format!("line {n}: token {id} is listed twice")));
            }
            entries.push(RevokedToken {
                cti,
                revoked_at: number(n, at)?,
                subject: parts.next().unwrap_or("").to_string(),
            });
        }
        let list = RevocationList {
            issuer,
            serial,
            issued,
            entries,
        };
        // Canonical form only: what we would write is exactly what was signed.
        if list.body()? != body {
            return Err(bad(
                "not in canonical form (extra spaces, CR line ends or blank lines)",
            ));
        }
        Ok((list, body.as_bytes(), sig))
    }
}
