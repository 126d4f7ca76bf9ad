//! `token revoke` and the signed revocation list the hospital keeps (see
//! `blindkd_engine::token::RevocationList`).
//!
//! A revoke takes an exclusive lock on `<list>.lock`, reads and verifies the current list (an
//! unreadable or forged list is an error, never silently replaced), appends the entry with the
//! next serial, signs, writes atomically, and reads the file back before reporting success. Two
//! revokes at once therefore serialise instead of losing one.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use blindkd_keys::owner::OwnerKey;
use blindkd_keys::token::{self, IssuerKey, Issuers, RevocationList, RevokedToken};

use crate::{now_unix, read_token, TokenRevokeArgs};

/// `X.revoked` next to the owner key `X`: the empty list `keygen` writes.
pub(crate) fn list_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".revoked");
    PathBuf::from(s)
}

/// The current signing key, and every key of this issuer still pinned (a list or token signed
/// before a rotation still verifies).
fn issuers_of(owner: &OwnerKey) -> anyhow::Result<(IssuerKey, Issuers)> {
    let key = IssuerKey::from_bytes(owner.signing_seed());
    let issuers = owner
        .issuer_publics()?
        .into_iter()
        .map(|k| (owner.issuer().to_string(), k))
        .collect();
    Ok((key, issuers))
}

/// Writes an empty signed list (serial 0) for a new owner key.
pub(crate) fn write_empty(owner: &OwnerKey, path: &Path) -> anyhow::Result<()> {
    let (key, _) = issuers_of(owner)?;
    let text = key.sign_revocation_list(&RevocationList::new(owner.issuer()))?;
    blindkd_engine::atomic::write(path, text.as_bytes())?;
    Ok(())
}

/// Holds an exclusive advisory lock on `<path>.lock` until dropped.
fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    let lock_path = PathBuf::from(s);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    f.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    Ok(f)
}

pub(crate) fn token_revoke(a: &TokenRevokeArgs) -> anyhow::Result<()> {
    let owner = OwnerKey::load(&a.key)?;
    let (key, issuers) = issuers_of(&owner)?;
    let text = read_token(&a.token)?;
    let claims = token::decode_unverified(&text)?;
    // Check the signature only; an expired token may still be revoked.
    if let Err(e) = token::verify(&text, &issuers, claims.iat, &claims.aud) {
        bail!("this token was not issued with {}: {e}", a.key.display());
    }
    let _lock = lock(&a.list)?;
    let mut list = match std::fs::read(&a.list) {
        Ok(bytes) => RevocationList::parse_verified(&bytes, &issuers).with_context(|| {
            format!(
                "{} is not a valid revocation list of {}; it was left untouched (restore it \
                 from a backup)",
                a.list.display(),
                a.key.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevocationList::new(owner.issuer()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", a.list.display())),
    };
    let id = hex::encode(claims.cti);
    if list.contains(&claims.cti) {
        println!("token {id} is already revoked in {}", a.list.display());
        return Ok(());
    }
    list.serial += 1;
    list.issued = now_unix();
    list.entries.push(RevokedToken {
        cti: claims.cti,
        revoked_at: list.issued,
        subject: claims.sub.clone(),
    });
    blindkd_engine::atomic::write(&a.list, key.sign_revocation_list(&list)?.as_bytes())?;
    // Read back: success is reported only for what is on disk.
    let back = std::fs::read(&a.list)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(RevocationList::parse_verified(&b, &issuers)?))
        .with_context(|| format!("reading {} back", a.list.display()))?;
    if back.serial != list.serial || !back.contains(&claims.cti) {
        bail!(
            "{} changed under the lock; run the revoke again",
            a.list.display()
        );
    }
    println!(
        "revoked token {id} (subject {}); {} is now serial {} with {} entries; servers pick it \
         up within a second",
        claims.sub,
        a.list.display(),
        back.serial,
        back.entries.len()
    );
    Ok(())
}
