//! Query keys made before the doctor asks (issue 12: the offline/online split).
//!
//! Sealing an mlhe query is dominated by its encryptions of zero (one per coordinate and one for
//! the session public key: about 5 ms of NTTs at d = 10). None of them depends on the query, so a
//! [`QueryKeyPool`] makes them ahead of time, per server session (the session public key is built
//! on the server's seed), and refills itself on a background thread after each
//! [`QueryKeyPool::take`]. Sealing a query is then an encoding and an addition. Every key seals one
//! query and is then dropped: the pool never hands the same key out twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::crypto::mlhe::{Mlhe, MlheSession};
use crate::crypto::{ClientScheme, PkSeed};
use crate::Result;

/// A pool of fresh mlhe query keys for one server session and one query width.
#[derive(Clone)]
pub struct QueryKeyPool {
    inner: Arc<Inner>,
}

struct Inner {
    scheme: Mlhe,
    pk_seed: PkSeed,
    width: usize,
    target: usize,
    keys: Mutex<Vec<MlheSession>>,
    refilling: AtomicBool,
    /// Whether [`QueryKeyPool::take`] starts a background refill.
    background: bool,
}

impl std::fmt::Debug for QueryKeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryKeyPool")
            .field("width", &self.inner.width)
            .field("target", &self.inner.target)
            .field("ready", &self.len())
            .finish()
    }
}

impl QueryKeyPool {
    /// An empty pool of up to `target` keys for queries of `width = dim + 1` coordinates in the
    /// server session whose seed is `pk_seed`. Call [`QueryKeyPool::fill`] or
    /// [`QueryKeyPool::refill_in_background`] to make keys.
    pub fn new(pk_seed: PkSeed, width: usize, target: usize) -> Result<Self> {
        Self::build(pk_seed, width, target, true)
    }

    /// A pool that refills only when told ([`QueryKeyPool::fill`]): for benchmarks, which make
    /// keys between timed queries rather than during them.
    pub fn manual(pk_seed: PkSeed, width: usize, target: usize) -> Result<Self> {
        Self::build(pk_seed, width, target, false)
    }

    fn build(pk_seed: PkSeed, width: usize, target: usize, background: bool) -> Result<Self> {
        Ok(QueryKeyPool {
            inner: Arc::new(Inner {
                scheme: Mlhe::new()?,
                pk_seed,
                width,
                target: target.max(1),
                keys: Mutex::new(Vec::new()),
                refilling: AtomicBool::new(false),
                background,
            }),
        })
    }

    /// The server session's seed the keys are made for.
    pub fn pk_seed(&self) -> &PkSeed {
        &self.inner.pk_seed
    }

    /// The query width (dim + 1) the keys are made for.
    pub fn width(&self) -> usize {
        self.inner.width
    }

    /// Keys ready now.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no key is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes keys on this thread until the pool holds its target.
    pub fn fill(&self) -> Result<()> {
        self.inner.fill()
    }

    /// Takes a ready key, if any, and (unless [`QueryKeyPool::manual`]) starts refilling in the
    /// background.
    pub fn take(&self) -> Option<MlheSession> {
        let key = self.inner.lock().pop();
        if self.inner.background {
            self.refill_in_background();
        }
        key
    }

    /// Starts one background thread that fills the pool to its target, unless one is running.
    pub fn refill_in_background(&self) {
        if self.inner.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("blindkd-query-keys".into())
            .spawn(move || {
                if let Err(e) = inner.fill() {
                    tracing::warn!(error = %e, "making query keys failed; queries will make their own");
                }
                inner.refilling.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            // No thread: queries make their own keys inline.
            self.inner.refilling.store(false, Ordering::Release);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<MlheSession>> {
        // A panic while holding the lock leaves a valid Vec: keep using it.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self) -> Result<()> {
        while self.lock().len() < self.target {
            let key = self.scheme.new_session(&self.pk_seed, self.width)?;
            let mut keys = self.lock();
            if keys.len() < self.target {
                keys.push(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_handed_out_once_and_refilled() {
        let pool = QueryKeyPool::new([7; 32], 3, 2).unwrap();
        assert!(pool.is_empty());
        pool.fill().unwrap();
        assert_eq!(pool.len(), 2);
        let m = Mlhe::new().unwrap();
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        // Distinct keys: their session public keys differ.
        assert_ne!(m.session_public(&a).unwrap(), m.session_public(&b).unwrap());
        // The background refill brings the pool back to its target.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while pool.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(pool.len(), 2);
        // A manual pool does not refill by itself.
        let manual = QueryKeyPool::manual([7; 32], 3, 1).unwrap();
        manual.fill().unwrap();
        assert!(manual.take().is_some());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(manual.take().is_none());
    }
}
