//! Issuing access tokens: the hospital's Ed25519 signing key and [`issue`].

use std::fmt;

use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use zeroize::Zeroizing;

use super::{Claims, IssuerPublic, RevocationList, MAX_TOKEN_CHARS, TOKEN_PREFIX};
use crate::{Error, Result};

/// An issuer's (hospital's) Ed25519 token-signing key.
///
/// Not `Clone`, not `Serialize`; zeroized on drop; `Debug` shows only the public key.
pub struct IssuerKey {
    signing: SigningKey,
}

impl IssuerKey {
    /// The key from its 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        IssuerKey {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// A fresh random key.
    pub fn random() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(secret.as_mut());
        Self::from_bytes(&secret)
    }

    /// The 32 secret bytes, for storing in the owner key.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The verification key to pin at servers.
    pub fn public(&self) -> IssuerPublic {
        IssuerPublic::from_verifying_key(&self.signing.verifying_key())
    }

    /// A detached signature over `context ‖ body`, for documents other than tokens (revocation
    /// lists, index manifests), checked by [`IssuerPublic::verify_document`]. `context` is a
    /// domain string from [`crate::crypto::domain`]; a token's COSE signature input starts with a
    /// CBOR array, so the two cannot be confused.
    pub fn sign_document(&self, context: &[u8], body: &[u8]) -> [u8; 64] {
        let mut msg = Vec::with_capacity(context.len() + body.len());
        msg.extend_from_slice(context);
        msg.extend_from_slice(body);
        self.signing.sign(&msg).to_bytes()
    }

    /// The signed text of a revocation list, ready to write.
    pub fn sign_revocation_list(&self, list: &RevocationList) -> Result<String> {
        let body = list.body()?;
        let sig = self.sign_document(crate::crypto::domain::REVOCATION_LIST, body.as_bytes());
        Ok(format!("{body}signature {}\n", hex::encode(sig)))
    }
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// Signs `claims` into token text `BKD1:…`, with `kid` = `claims.iss`.
///
/// Refuses claims that fail [`Claims::validate`].
pub fn issue(key: &IssuerKey, claims: &Claims) -> Result<String> {
    claims.validate()?;
    let payload = claims
        .to_cwt()
        .to_vec()
        .map_err(|e| Error::Crypto(format!("encoding CWT claims: {e}")))?;
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(claims.iss.as_bytes().to_vec())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |tbs| key.signing.sign(tbs).to_bytes().to_vec())
        .build();
    let bytes = sign1
        .to_tagged_vec()
        .map_err(|e| Error::Crypto(format!("encoding COSE_Sign1: {e}")))?;
    let text = format!("{TOKEN_PREFIX}{}", base45::encode(&bytes));
    if text.len() > MAX_TOKEN_CHARS {
        return Err(Error::LimitExceeded(format!(
            "token would be {} characters, over {MAX_TOKEN_CHARS}; shorten names or classes",
            text.len()
        )));
    }
    Ok(text)
}
