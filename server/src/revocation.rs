//! The revocation lists a server enforces (`--revoked`, one per issuer): signed by the hospital,
//! checked fail-closed.
//!
//! * At start every configured list must exist and verify, or the server refuses to start.
//! * While serving, a list is re-read when its metadata changes (checked on every request, one
//!   `stat`) and in any case every [`ServerLimits::revocation_recheck`](crate::ServerLimits), and
//!   compared by content hash, so a change inside one clock tick is not missed.
//! * A list that goes missing, stops verifying (an edit, another key), changes issuer, or comes
//!   back with a lower serial (a rollback) or the same serial and other content (a fork) stops
//!   the server from serving any token (`revocation_unavailable`, 503) until a valid list is back.
//! * Every id the server has acted on is also in the token store, so a revocation outlives the
//!   process and any later list.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use blindkd_engine::token::{Issuers, RevocationList, MAX_LIST_BYTES};

use crate::store::TokenStore;
use crate::ApiError;

/// A file's (modified, length, inode): a change triggers a re-read at once.
type Stamp = (SystemTime, u64, u64);

/// One watched list.
struct Watched {
    path: PathBuf,
    issuer: String,
    serial: u64,
    hash: [u8; 32],
    /// The file's stamp at the last read.
    stamp: Option<Stamp>,
}

/// Every revoked token id the server knows, and the lists it watches.
pub(crate) struct Revocations {
    issuers: Issuers,
    lists: Vec<Watched>,
    set: HashSet<[u8; 16]>,
    /// Why the lists cannot be trusted right now (fail closed), if so.
    failure: Option<String>,
    last_full_check: Instant,
    recheck: Duration,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// Reads and verifies one list: the list, its content hash and its metadata stamp.
fn read(
    path: &Path,
    issuers: &Issuers,
) -> Result<(RevocationList, [u8; 32], Option<Stamp>), String> {
    let st = stamp(path);
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_LIST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let list = RevocationList::parse_verified(&bytes, issuers)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((list, *blake3::hash(&bytes).as_bytes(), st))
}

impl Revocations {
    /// Loads every configured list (each must exist and verify) and the store's revocations.
    pub(crate) fn load(
        paths: &[PathBuf],
        issuers: &Issuers,
        store: &Arc<dyn TokenStore>,
        recheck: Duration,
    ) -> anyhow::Result<Self> {
        let mut set: HashSet<[u8; 16]> = store.revoked()?.into_iter().collect();
        let mut lists: Vec<Watched> = Vec::new();
        for path in paths {
            let (list, hash, stamp) = read(path, issuers).map_err(|e| {
                anyhow::anyhow!(
                    "revocation list: {e}. The server does not start without the lists it was \
                     given (the hospital's `blindkd keygen` writes an empty signed one)"
                )
            })?;
            if let Some(w) = lists.iter().find(|w| w.issuer == list.issuer) {
                anyhow::bail!(
                    "{} and {} are both revocation lists of {:?}; give one per issuer",
                    w.path.display(),
                    path.display(),
                    list.issuer
                );
            }
            let ids: Vec<[u8; 16]> = list.entries.iter().map(|e| e.cti).collect();
            store.revoke(&ids)?;
            set.extend(ids);
            tracing::info!(path = %path.display(), issuer = %list.issuer, serial = list.serial,
                entries = list.entries.len(), hash = %hex::encode(&hash[..8]), "revocation list loaded");
            lists.push(Watched {
                path: path.clone(),
                issuer: list.issuer,
                serial: list.serial,
                hash,
                stamp,
            });
        }
        if paths.is_empty() {
            tracing::warn!("no revocation list configured (--revoked): a token cannot be revoked before it expires");
        }
        Ok(Revocations {
            issuers: issuers.clone(),
            lists,
            set,
            failure: None,
            last_full_check: Instant::now(),
            recheck,
        })
    }

    /// Whether `cti` is revoked; an error (`revocation_unavailable`) while any list is missing,
    /// unverifiable or rolled back.
    pub(crate) fn is_revoked(
        &mut self,
        cti: &[u8; 16],
        store: &Arc<dyn TokenStore>,
    ) -> Result<bool, ApiError> {
        self.refresh(store);
        // The reason (paths, serials) is in the server log, not in the reply.
        if self.failure.is_some() {
            return Err(ApiError::new(
                "revocation_unavailable",
                "the server's revocation list is unavailable, so it serves no token until the \
                 operator restores it; try again later",
            ));
        }
        Ok(self.set.contains(cti))
    }

    fn refresh(&mut self, store: &Arc<dyn TokenStore>) {
        let full = self.failure.is_some() || self.last_full_check.elapsed() >= self.recheck;
        let mut failure = None;
        for i in 0..self.lists.len() {
            if !full && stamp(&self.lists[i].path) == self.lists[i].stamp {
                continue;
            }
            if let Err(why) = self.reload(i, store) {
                failure.get_or_insert(why);
            }
        }
        if full {
            self.last_full_check = Instant::now();
        }
        if failure != self.failure {
            match &failure {
                Some(why) => {
                    tracing::error!(reason = %why, "revocation list rejected: refusing every token until it is fixed")
                }
                None => tracing::info!("revocation lists valid again"),
            }
            self.failure = failure;
        }
    }

    fn reload(&mut self, i: usize, store: &Arc<dyn TokenStore>) -> Result<(), String> {
        let (list, hash, st) = read(&self.lists[i].path, &self.issuers)?;
        let w = &mut self.lists[i];
        w.stamp = st;
        if hash == w.hash {
            return Ok(());
        }
        if list.issuer != w.issuer {
            return Err(format!(
                "{} now holds {:?}'s list, not {:?}'s",
                w.path.display(),
                list.issuer,
                w.issuer
            ));
        }
        if list.serial <= w.serial {
            return Err(format!(
                "{}: serial {} after serial {} (a rolled-back or forked list)",
                w.path.display(),
                list.serial,
                w.serial
            ));
        }
        let new: Vec<[u8; 16]> = list
            .entries
            .iter()
            .map(|e| e.cti)
            .filter(|c| !self.set.contains(c))
            .collect();
        // Durable first: a revocation the server acted on survives a restart even if the list
        // is later lost.
        store
            .revoke(&new)
            .map_err(|e| format!("cannot record revocations: {e}"))?;
        self.set.extend(new);
        w.serial = list.serial;
        w.hash = hash;
        tracing::info!(path = %w.path.display(), issuer = %w.issuer, serial = w.serial,
            entries = list.entries.len(), "revocation list reloaded");
        Ok(())
    }
}
