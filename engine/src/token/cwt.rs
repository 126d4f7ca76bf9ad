//! The signed token: CWT claims in a COSE_Sign1, Base45 behind [`TOKEN_PREFIX`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use coset::cwt::ClaimsSet;
use coset::{
    iana, CborSerializable, CoseSign1, RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use ed25519_dalek::{Signature, VerifyingKey};

use super::claims::Claims;
use super::{canonical_text, codes, refuse, CLOCK_SKEW_SECS, MAX_TOKEN_CHARS, TOKEN_PREFIX};
use crate::{Error, Result};

/// The text prefix of an [`IssuerPublic`].
const ISSUER_PUBLIC_PREFIX: &str = "bkd-issuer:";

/// An issuer's (hospital's) Ed25519 token-verification key. Text form `bkd-issuer:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IssuerPublic([u8; 32]);

impl IssuerPublic {
    /// Wraps 32 bytes, refusing those that are not an Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(&bytes).map_err(|e| Error::malformed("issuer public key", e))?;
        Ok(IssuerPublic(bytes))
    }

    /// The key of an Ed25519 verifying key (always a curve point), for `blindkd-keys`' issuer key.
    #[doc(hidden)]
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        IssuerPublic(key.to_bytes())
    }

    /// The 32 key bytes.
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).map_err(|e| Error::malformed("issuer public key", e))
    }

    /// Verifies a detached signature made by `IssuerKey::sign_document` over `context ‖ body`.
    /// Strict Ed25519 verification (no malleable or small-order signatures).
    pub fn verify_document(&self, context: &[u8], body: &[u8], sig: &[u8; 64]) -> Result<()> {
        let mut msg = Vec::with_capacity(context.len() + body.len());
        msg.extend_from_slice(context);
        msg.extend_from_slice(body);
        self.verifying_key()?
            .verify_strict(&msg, &Signature::from_bytes(sig))
            .map_err(|_| refuse(codes::BAD_SIGNATURE, "the signature does not verify"))
    }
}

impl fmt::Display for IssuerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ISSUER_PUBLIC_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for IssuerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerPublic({self})")
    }
}

impl FromStr for IssuerPublic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let hex_part = s.trim().strip_prefix(ISSUER_PUBLIC_PREFIX).ok_or_else(|| {
            Error::malformed(
                "issuer public key",
                format!("expected the prefix {ISSUER_PUBLIC_PREFIX}"),
            )
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|e| Error::malformed("issuer public key", e))?;
        IssuerPublic::from_bytes(bytes)
    }
}

/// The pinned issuer keys a verifier trusts, by issuer name (the token's `kid` and `iss`). An
/// issuer may have several keys at once: its current signing key and the previous ones whose
/// tokens have not expired yet (`blindkd rotate signing-key`, issue 17 B2).
#[derive(Clone, Debug, Default)]
pub struct Issuers {
    keys: BTreeMap<String, Vec<IssuerPublic>>,
}

impl Issuers {
    /// No trusted issuers: every token is refused as `unknown_issuer`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `key` for issuer `name`, next to the keys pinned for that name before (a key pinned
    /// twice is kept once).
    pub fn insert(&mut self, name: impl Into<String>, key: IssuerPublic) {
        let keys = self.keys.entry(name.into()).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// The newest key pinned for `name`.
    pub fn get(&self, name: &str) -> Option<&IssuerPublic> {
        self.keys.get(name).and_then(|k| k.last())
    }

    /// Every key pinned for `name`, oldest first.
    pub fn keys_of(&self, name: &str) -> &[IssuerPublic] {
        self.keys.get(name).map_or(&[], Vec::as_slice)
    }

    /// Verifies a detached document signature under any key pinned for `name`.
    pub fn verify_document(
        &self,
        name: &str,
        context: &[u8],
        body: &[u8],
        sig: &[u8; 64],
    ) -> Result<()> {
        let keys = self.keys_of(name);
        if keys.is_empty() {
            return Err(refuse(
                codes::UNKNOWN_ISSUER,
                format!("{name:?} is not a pinned issuer"),
            ));
        }
        if keys
            .iter()
            .any(|k| k.verify_document(context, body, sig).is_ok())
        {
            return Ok(());
        }
        Err(refuse(
            codes::BAD_SIGNATURE,
            format!("the signature does not verify under any key pinned for {name:?}"),
        ))
    }

    /// All pinned (issuer, key) pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &IssuerPublic)> {
        self.keys
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |key| (k.as_str(), key)))
    }

    /// How many issuers are pinned.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no issuer is pinned.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl<S: Into<String>> FromIterator<(S, IssuerPublic)> for Issuers {
    fn from_iter<I: IntoIterator<Item = (S, IssuerPublic)>>(iter: I) -> Self {
        let mut issuers = Issuers::new();
        for (name, key) in iter {
            issuers.insert(name, key);
        }
        issuers
    }
}

/// Decodes a token's claims **without checking its signature or times**, for display only
/// (`token show`). Never base an access decision on the result; use [`verify`].
pub fn decode_unverified(text: &str) -> Result<Claims> {
    let parsed = parse(text)?;
    claims_of(&parsed)
}

/// Verifies a token and returns its claims.
///
/// Checks, in order, each failure giving its own [`crate::Error::Token`] code: the format
/// (`malformed_token`), the issuer named by `kid` is pinned in `issuers` (`unknown_issuer`), the
/// Ed25519 signature under that pinned key (`bad_signature`), `iss` equals `kid`
/// (`bad_signature`: the signer vouched for another name), `exp` (`expired`), `nbf` and `iat`
/// (`not_yet_valid`), each with [`CLOCK_SKEW_SECS`] of tolerance, and `aud` equals `audience`
/// (`wrong_audience`).
///
/// It does not check revocation, proof of possession or the scope of a request.
pub fn verify(text: &str, issuers: &Issuers, now_unix: i64, audience: &str) -> Result<Claims> {
    let parsed = parse(text)?;
    let keys = issuers.keys_of(&parsed.kid);
    if keys.is_empty() {
        return Err(refuse(
            codes::UNKNOWN_ISSUER,
            format!("issuer {:?} is not pinned", parsed.kid),
        ));
    }
    // Any of the issuer's pinned keys (its current one, or a previous one while its tokens live).
    let verifying_keys = keys
        .iter()
        .map(IssuerPublic::verifying_key)
        .collect::<Result<Vec<_>>>()?;
    parsed
        .sign1
        .verify_signature(b"", |sig, tbs| {
            let sig = Signature::from_slice(sig).map_err(|_| ())?;
            if verifying_keys
                .iter()
                .any(|k| k.verify_strict(tbs, &sig).is_ok())
            {
                Ok(())
            } else {
                Err(())
            }
        })
        .map_err(|()| {
            refuse(
                codes::BAD_SIGNATURE,
                format!(
                    "signature does not verify under the key pinned for {:?}",
                    parsed.kid
                ),
            )
        })?;
    let claims = claims_of(&parsed)?;
    if claims.iss != parsed.kid {
        return Err(refuse(
            codes::BAD_SIGNATURE,
            format!("iss {:?} differs from kid {:?}", claims.iss, parsed.kid),
        ));
    }
    if now_unix >= claims.exp.saturating_add(CLOCK_SKEW_SECS) {
        return Err(refuse(
            codes::EXPIRED,
            format!("expired at {} (now {now_unix})", claims.exp),
        ));
    }
    let starts = claims.nbf.max(claims.iat);
    if now_unix < starts.saturating_sub(CLOCK_SKEW_SECS) {
        return Err(refuse(
            codes::NOT_YET_VALID,
            format!("valid from {starts} (now {now_unix})"),
        ));
    }
    if claims.aud != audience {
        return Err(refuse(
            codes::WRONG_AUDIENCE,
            format!("token is for {:?}, not {audience:?}", claims.aud),
        ));
    }
    Ok(claims)
}

struct Parsed {
    sign1: CoseSign1,
    kid: String,
}

fn parse(text: &str) -> Result<Parsed> {
    let malformed = |detail: String| refuse(codes::MALFORMED_TOKEN, detail);
    let text = canonical_text(text);
    if text.len() > MAX_TOKEN_CHARS {
        return Err(malformed(format!(
            "token is longer than {MAX_TOKEN_CHARS} characters"
        )));
    }
    let body = text
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| malformed(format!("token must start with {TOKEN_PREFIX}")))?;
    let bytes = base45::decode(body).map_err(|e| malformed(format!("bad Base45: {e}")))?;
    let sign1 = CoseSign1::from_tagged_slice(&bytes)
        .map_err(|e| malformed(format!("not a tagged COSE_Sign1: {e}")))?;
    let header = &sign1.protected.header;
    if header.alg != Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA)) {
        return Err(malformed("protected alg must be EdDSA".into()));
    }
    if !header.crit.is_empty() || !sign1.unprotected.is_empty() {
        return Err(malformed(
            "unexpected crit or unprotected header parameters".into(),
        ));
    }
    let kid = String::from_utf8(header.key_id.clone())
        .map_err(|_| malformed("kid must be UTF-8".into()))?;
    if kid.is_empty() {
        return Err(malformed("protected kid missing".into()));
    }
    if sign1.payload.is_none() {
        return Err(malformed("payload missing".into()));
    }
    Ok(Parsed { sign1, kid })
}

fn claims_of(parsed: &Parsed) -> Result<Claims> {
    let payload = parsed.sign1.payload.as_deref().unwrap_or_default();
    let set = ClaimsSet::from_slice(payload)
        .map_err(|e| refuse(codes::MALFORMED_TOKEN, format!("bad CWT claims: {e}")))?;
    Claims::from_cwt(set)
}
