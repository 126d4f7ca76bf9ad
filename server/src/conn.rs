//! Connections: a cap, an idle timeout for HTTP/1 keep-alive and HTTP/2 alike, and eviction of the
//! longest-idle connection when the cap is reached, so silent sockets can neither exhaust the
//! server's file descriptors nor lock out a doctor who connects after them.
//!
//! Each connection carries a [`ConnHandle`]: the time of its last byte in or out, the number of
//! requests it has in flight, and a signal that asks it to close gracefully. A connection is idle
//! when it has no request in flight; it is closed once idle for `idle_timeout`, or earlier when a
//! new connection needs its slot.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Live connections of one listener.
pub(crate) struct Conns {
    max: usize,
    idle_timeout: Duration,
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    /// Signalled whenever a connection ends (shutdown waits on it).
    pub(crate) ended: Notify,
}

/// One connection's shared state.
pub(crate) struct ConnHandle {
    id: u64,
    epoch: Instant,
    last_active_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Asks the connection to close gracefully (idle eviction or server shutdown).
    pub(crate) close: Notify,
}

impl ConnHandle {
    fn touch(&self) {
        self.last_active_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(
            now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)),
        ))
    }

    /// Whether the connection has been idle (no request in flight) for at least `limit`.
    pub(crate) fn idle_longer_than(&self, limit: Duration) -> bool {
        self.idle_for().is_some_and(|d| d >= limit)
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }
}

/// A request in flight on a connection.
pub(crate) struct InFlight(Arc<ConnHandle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conns {
    pub(crate) fn new(max: usize, idle_timeout: Duration) -> Self {
        Conns {
            max: max.max(1),
            idle_timeout,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            ended: Notify::new(),
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Admits a new connection: at the cap, the longest-idle connection is asked to close and its
    /// slot is given to the newcomer; if every connection is busy, `None` (drop the newcomer).
    pub(crate) fn admit(&self, metrics: &crate::metrics::Metrics) -> Option<Arc<ConnHandle>> {
        let mut live = self.live.lock().ok()?;
        if live.len() >= self.max {
            let victim = live
                .values()
                .filter_map(|c| c.idle_for().map(|d| (d, c.id)))
                .max()
                .map(|(_, id)| id)?;
            if let Some(c) = live.remove(&victim) {
                c.close.notify_one();
                crate::metrics::Metrics::add(&metrics.connections_evicted, 1);
            }
        }
        let h = Arc::new(ConnHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            last_active_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            close: Notify::new(),
        });
        h.touch();
        live.insert(h.id, h.clone());
        Some(h)
    }

    /// Forgets a connection that ended.
    pub(crate) fn ended(&self, h: &ConnHandle) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&h.id);
        }
        self.ended.notify_waiters();
    }

    /// Asks every connection to close gracefully (server shutdown).
    pub(crate) fn close_all(&self) {
        if let Ok(live) = self.live.lock() {
            for c in live.values() {
                c.close.notify_one();
            }
        }
    }

    /// Connections currently admitted.
    pub(crate) fn count(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }
}

/// A socket that records the time of its last byte in or out.
pub(crate) struct Tracked<S> {
    inner: S,
    handle: Arc<ConnHandle>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, handle: Arc<ConnHandle>) -> Self {
        Tracked { inner, handle }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.handle.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.handle.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.handle.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let c = Conns::new(2, Duration::from_secs(60));
        let m = crate::metrics::Metrics::default();
        let a = c.admit(&m).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.admit(&m).unwrap();
        let _busy = b.request();
        // `a` is idle, `b` is busy: the newcomer takes `a`'s slot.
        let n = c.admit(&m).unwrap();
        assert_eq!(c.count(), 2);
        assert!(!c.live.lock().unwrap().contains_key(&a.id));
        // Now `b` is busy and `n` idle: the next newcomer evicts `n`.
        let _m = c.admit(&m).unwrap();
        assert!(!c.live.lock().unwrap().contains_key(&n.id));
        assert!(c.live.lock().unwrap().contains_key(&b.id));
    }

    #[test]
    fn when_every_connection_is_busy_the_newcomer_is_refused() {
        let c = Conns::new(1, Duration::from_secs(60));
        let m = crate::metrics::Metrics::default();
        let a = c.admit(&m).unwrap();
        let _g = a.request();
        assert!(c.admit(&m).is_none());
        assert!(!a.idle_longer_than(Duration::ZERO));
    }
}
