//! Token state that must outlive the process: budget use per token, consumed proof-of-possession
//! nonces, revocations, and the server secrets that make nonces stateless until used.
//!
//! Everything goes through [`TokenStore`], a small trait, so a shared database can replace the
//! embedded one when several query servers serve one index: every bound a token carries is then
//! enforced across all of them, because each charge is one atomic read-modify-write in the store.
//! [`RedbStore`] is the embedded default (one file, ACID, fsync on commit); [`MemoryStore`] is for
//! tests and for `--ephemeral-state`, and says so in the log.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use rand::RngCore;
use redb::ReadableTable;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The charge would exceed the budget; nothing was charged.
    #[error("the token's budget is used up: {left} units left, {wanted} needed")]
    Exhausted {
        /// Units still left.
        left: u64,
        /// Units the refused work needed.
        wanted: u64,
    },
    /// The backend failed (I/O, corruption); the operation did not happen.
    #[error("token store: {0}")]
    Backend(String),
}

/// Durable per-token state. Every method is atomic; a method that returns `Ok` has made its change
/// durable (a crash afterwards loses nothing it acknowledged).
pub trait TokenStore: Send + Sync {
    /// Charges `units` to token `cti` (valid until `exp`, Unix seconds) against `budget`, all or
    /// nothing. Returns the units left after the charge.
    fn charge(&self, cti: &[u8; 16], exp: i64, budget: u64, units: u64) -> Result<u64, StoreError>;
    /// Units charged to `cti` so far.
    fn used(&self, cti: &[u8; 16]) -> Result<u64, StoreError>;
    /// Records `nonce` as used until `exp`. `Ok(false)` if it had been used already.
    fn consume_nonce(&self, nonce: &[u8; 32], exp: i64) -> Result<bool, StoreError>;
    /// Adds revoked token ids. Revocations are never removed: deleting a line from the list does
    /// not un-revoke a token.
    fn revoke(&self, ctis: &[[u8; 16]]) -> Result<(), StoreError>;
    /// Every revoked token id.
    fn revoked(&self) -> Result<Vec<[u8; 16]>, StoreError>;
    /// A 32-byte server secret by name: random on first use, then the same for the store's life
    /// (and for every server sharing the store).
    fn secret(&self, name: &str) -> Result<[u8; 32], StoreError>;
    /// Forgets usage of tokens expired before `now − 3600` and nonces expired before `now`.
    fn purge(&self, now: i64) -> Result<(), StoreError>;
}

/// How long a token's usage is kept after it expires (clock skew margin).
const USAGE_GRACE: i64 = 3600;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// In-memory state: lost on restart. Tests and `--ephemeral-state` only.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    usage: HashMap<[u8; 16], (u64, i64)>,
    nonces: HashMap<[u8; 32], i64>,
    revoked: HashSet<[u8; 16]>,
    secrets: HashMap<String, [u8; 32]>,
}

impl MemoryStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemoryInner>, StoreError> {
        self.inner.lock().map_err(|_| backend("poisoned lock"))
    }
}

impl TokenStore for MemoryStore {
    fn charge(&self, cti: &[u8; 16], exp: i64, budget: u64, units: u64) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let e = g.usage.entry(*cti).or_insert((0, exp));
        let after = e.0.saturating_add(units);
        if after > budget {
            return Err(StoreError::Exhausted {
                left: budget.saturating_sub(e.0),
                wanted: units,
            });
        }
        *e = (after, exp.max(e.1));
        Ok(budget - after)
    }

    fn used(&self, cti: &[u8; 16]) -> Result<u64, StoreError> {
        Ok(self.lock()?.usage.get(cti).map_or(0, |u| u.0))
    }

    fn consume_nonce(&self, nonce: &[u8; 32], exp: i64) -> Result<bool, StoreError> {
        Ok(self.lock()?.nonces.insert(*nonce, exp).is_none())
    }

    fn revoke(&self, ctis: &[[u8; 16]]) -> Result<(), StoreError> {
        self.lock()?.revoked.extend(ctis.iter().copied());
        Ok(())
    }

    fn revoked(&self) -> Result<Vec<[u8; 16]>, StoreError> {
        Ok(self.lock()?.revoked.iter().copied().collect())
    }

    fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        Ok(*self
            .lock()?
            .secrets
            .entry(name.to_string())
            .or_insert_with(random32))
    }

    fn purge(&self, now: i64) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        g.usage.retain(|_, u| u.1 + USAGE_GRACE >= now);
        g.nonces.retain(|_, &mut exp| exp >= now);
        Ok(())
    }
}

fn random32() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rng().fill_bytes(&mut s);
    s
}

mod tables {
    use redb::TableDefinition;
    /// cti → (units used, token expiry).
    pub(super) const USAGE: TableDefinition<&[u8], (u64, i64)> = TableDefinition::new("usage");
    /// nonce → expiry.
    pub(super) const NONCES: TableDefinition<&[u8], i64> = TableDefinition::new("nonces");
    /// cti → ().
    pub(super) const REVOKED: TableDefinition<&[u8], ()> = TableDefinition::new("revoked");
    /// name → 32 random bytes.
    pub(super) const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
}

/// The embedded store: one redb file (ACID; every commit is fsynced before it returns). Created
/// with mode 0600, since it holds the nonce MAC key.
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`. Refuses a file others can read.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let db = redb::Database::create(path)
            .map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
        // Create every table once, so readers never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(tables::USAGE).map_err(backend)?;
            txn.open_table(tables::NONCES).map_err(backend)?;
            txn.open_table(tables::REVOKED).map_err(backend)?;
            txn.open_table(tables::SECRETS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(RedbStore { db })
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .map_err(backend)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(backend(format!(
                    "{} is readable by others (mode {:o}); run `chmod 600` on it",
                    path.display(),
                    mode & 0o777
                )));
            }
            Ok(())
        }
        Err(e) => Err(backend(format!("cannot create {}: {e}", path.display()))),
    }
}

#[cfg(not(unix))]
fn create_private(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl TokenStore for RedbStore {
    fn charge(&self, cti: &[u8; 16], exp: i64, budget: u64, units: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let left = {
            let mut t = txn.open_table(tables::USAGE).map_err(backend)?;
            let (used, old_exp) = t
                .get(&cti[..])
                .map_err(backend)?
                .map_or((0, exp), |v| v.value());
            let after = used.saturating_add(units);
            if after > budget {
                drop(t);
                txn.abort().map_err(backend)?;
                return Err(StoreError::Exhausted {
                    left: budget.saturating_sub(used),
                    wanted: units,
                });
            }
            t.insert(&cti[..], (after, exp.max(old_exp)))
                .map_err(backend)?;
            budget - after
        };
        txn.commit().map_err(backend)?;
        Ok(left)
    }

    fn used(&self, cti: &[u8; 16]) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(tables::USAGE).map_err(backend)?;
        Ok(t.get(&cti[..]).map_err(backend)?.map_or(0, |v| v.value().0))
    }

    fn consume_nonce(&self, nonce: &[u8; 32], exp: i64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let fresh = {
            let mut t = txn.open_table(tables::NONCES).map_err(backend)?;
            let seen = t.insert(&nonce[..], exp).map_err(backend)?.is_some();
            !seen
        };
        txn.commit().map_err(backend)?;
        Ok(fresh)
    }

    fn revoke(&self, ctis: &[[u8; 16]]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut t = txn.open_table(tables::REVOKED).map_err(backend)?;
            for c in ctis {
                t.insert(&c[..], ()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }

    fn revoked(&self) -> Result<Vec<[u8; 16]>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(tables::REVOKED).map_err(backend)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(backend)? {
            let (k, _) = row.map_err(backend)?;
            if let Ok(id) = <[u8; 16]>::try_from(k.value()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let s = {
            let mut t = txn.open_table(tables::SECRETS).map_err(backend)?;
            let existing = t
                .get(name)
                .map_err(backend)?
                .map(|v| <[u8; 32]>::try_from(v.value()));
            match existing {
                Some(Ok(s)) => s,
                Some(Err(_)) => return Err(backend(format!("secret `{name}` is corrupt"))),
                None => {
                    let s = random32();
                    t.insert(name, &s[..]).map_err(backend)?;
                    s
                }
            }
        };
        txn.commit().map_err(backend)?;
        Ok(s)
    }

    fn purge(&self, now: i64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut t = txn.open_table(tables::USAGE).map_err(backend)?;
            t.retain(|_, (_, exp)| exp + USAGE_GRACE >= now)
                .map_err(backend)?;
            let mut n = txn.open_table(tables::NONCES).map_err(backend)?;
            n.retain(|_, exp| exp >= now).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exercise(s: &dyn TokenStore) {
        let cti = [7u8; 16];
        assert_eq!(s.charge(&cti, 100, 10, 4).unwrap(), 6);
        assert_eq!(s.charge(&cti, 100, 10, 6).unwrap(), 0);
        match s.charge(&cti, 100, 10, 1) {
            Err(StoreError::Exhausted { left: 0, wanted: 1 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(s.used(&cti).unwrap(), 10);
        let n = [1u8; 32];
        assert!(s.consume_nonce(&n, 50).unwrap());
        assert!(!s.consume_nonce(&n, 50).unwrap());
        s.revoke(&[[9u8; 16]]).unwrap();
        assert_eq!(s.revoked().unwrap(), vec![[9u8; 16]]);
        let k = s.secret("nonce").unwrap();
        assert_eq!(s.secret("nonce").unwrap(), k);
        assert_ne!(s.secret("other").unwrap(), k);
        // Purging after expiry forgets usage and nonces, never revocations.
        s.purge(100 + USAGE_GRACE + 1).unwrap();
        assert_eq!(s.used(&cti).unwrap(), 0);
        assert!(s.consume_nonce(&n, 50).unwrap());
        assert_eq!(s.revoked().unwrap().len(), 1);
    }

    #[test]
    fn memory_store_semantics() {
        exercise(&MemoryStore::default());
    }

    #[test]
    fn redb_store_semantics_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        exercise(&RedbStore::open(&p).unwrap());
        let cti = [3u8; 16];
        let key = {
            let s = RedbStore::open(&p).unwrap();
            s.charge(&cti, i64::MAX / 2, 5, 3).unwrap();
            s.consume_nonce(&[2u8; 32], i64::MAX / 2).unwrap();
            s.secret("nonce").unwrap()
        };
        let s = RedbStore::open(&p).unwrap();
        assert_eq!(s.used(&cti).unwrap(), 3);
        assert!(!s.consume_nonce(&[2u8; 32], i64::MAX / 2).unwrap());
        assert_eq!(s.secret("nonce").unwrap(), key);
    }

    /// What one durable charge costs (an fsynced redb commit). A measurement, not a check:
    /// `cargo test --release -p blindkd-server --lib measure_charge -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; prints timings"]
    fn measure_charge_latency() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        let mut t: Vec<f64> = (0..200)
            .map(|_| {
                let start = std::time::Instant::now();
                s.charge(&[1u8; 16], i64::MAX / 2, u64::MAX, 1).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        println!(
            "redb charge: p50 {:.3} ms, p95 {:.3} ms, max {:.3} ms over {}",
            t[t.len() / 2],
            t[t.len() * 95 / 100],
            t[t.len() - 1],
            t.len()
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_state_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        drop(RedbStore::open(&p).unwrap());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(RedbStore::open(&p).is_err());
    }
}
