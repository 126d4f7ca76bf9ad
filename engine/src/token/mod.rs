//! QR access tokens, device keys, proof of possession and the sealed key bundle (DESIGN §5).
//!
//! # Token format
//!
//! `BKD1:` followed by the Base45 (RFC 9285) encoding of a tagged `COSE_Sign1` (RFC 9052,
//! CBOR tag 18) signed with Ed25519 (`alg` = EdDSA, −8). The protected header carries `alg`
//! and `kid` = the issuer name (UTF-8 bytes), which must equal the `iss` claim. The payload is
//! a CWT claims set (RFC 8392):
//!
//! | label | claim | encoding |
//! |---|---|---|
//! | 1 | `iss` | tstr, the issuer (hospital) name |
//! | 2 | `sub` | tstr, the doctor |
//! | 3 | `aud` | tstr, the index id |
//! | 4, 5, 6 | `exp`, `nbf`, `iat` | int, whole Unix seconds |
//! | 7 | `cti` | bstr of exactly 16 bytes (revocation handle) |
//! | 8 | `cnf` | RFC 8747 `{1: COSE_Key}` with an OKP/Ed25519 key `{1: 1, -1: 6, -2: x}` |
//! | −65537 | `scope` | private-use claim, a map, see [`Scope`] |
//!
//! Claims outside this table are refused, so a token's meaning cannot silently grow.
//!
//! The `cnf` claim uses the standard `COSE_Key` form rather than a bare byte string: it costs
//! nine bytes and keeps the token readable by any CWT tool.
//!
//! # What verification does and does not do
//!
//! [`verify`] checks the issuer signature against pinned keys, the time claims (with
//! [`CLOCK_SKEW_SECS`] of tolerance) and the audience. It does **not** check revocation (the
//! server holds the list, keyed by `cti`), the proof of possession ([`verify_pop`]) or the scope
//! of a particular request; the caller does those. A token alone is useless without the device
//! key named in `cnf`, so a photographed QR code does not grant access.
//!
//! # Key-holding parts
//!
//! Signing keys (`issue`), device secrets and the sealing and opening of bundles are in the
//! `blindkd-keys` crate. This module decodes and verifies tokens
//! and proofs, and scans and renders QR codes: all the server needs.

mod claims;
mod cwt;
mod device;
mod pop;
mod qr;
mod revocation;

mod issuer_file;
pub use claims::{random_cti, Claims, QueryKind, Scope};
pub use cwt::{decode_unverified, verify, IssuerPublic, Issuers};
pub use device::DevicePublic;
pub use issuer_file::{issuer_line, parse_issuer_lines};
pub use pop::{pop_message, verify_pop, MIN_POP_NONCE_LEN};
#[doc(hidden)]
pub use qr::stages as qr_stages;
pub use qr::{qr_version, render_qr_png, render_qr_svg, scan_qr, SCAN_BUDGET};
pub use revocation::{RevocationList, RevokedToken, MAX_LIST_BYTES};

/// The text prefix of every access token; the `1` is the token format version.
pub const TOKEN_PREFIX: &str = "BKD1:";

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
///
/// A token is accepted until `exp + CLOCK_SKEW_SECS` and from `nbf - CLOCK_SKEW_SECS`.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// The longest token text accepted, in characters; longer input is refused before decoding.
pub const MAX_TOKEN_CHARS: usize = 2048;

/// Stable refusal codes carried in [`crate::Error::Token`].
pub mod codes {
    /// The token text is not a well-formed `BKD1:` token (prefix, Base45, CBOR, COSE, claims).
    pub const MALFORMED_TOKEN: &str = "malformed_token";
    /// The `kid`/`iss` names no pinned issuer.
    pub const UNKNOWN_ISSUER: &str = "unknown_issuer";
    /// The issuer signature does not verify under the pinned key.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// `exp` (plus skew) has passed.
    pub const EXPIRED: &str = "expired";
    /// `nbf` or `iat` (minus skew) is still in the future.
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    /// `aud` is not this index.
    pub const WRONG_AUDIENCE: &str = "wrong_audience";
    /// No proof-of-possession signature was presented.
    pub const MISSING_POP: &str = "missing_pop";
    /// The proof-of-possession signature does not verify under the `cnf` key.
    pub const BAD_POP: &str = "bad_pop";
}

/// A refusal with a stable code.
fn refuse(code: &'static str, detail: impl Into<String>) -> crate::Error {
    crate::Error::Token {
        code,
        detail: detail.into(),
    }
}

/// Tokens are compared and hashed on their trimmed text, so a trailing newline from a file or
/// a scanner does not change the token.
fn canonical_text(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}
