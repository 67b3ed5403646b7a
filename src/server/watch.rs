//! What each client connection is watched for, by a timer of its own that
//! runs whether or not hyper polls anything on it:
//!
//! - **Request deadlines.** A live response holds a budget slot until its
//!   last byte. A client that stops reading stops hyper from polling the
//!   body, so a deadline checked only when the body is polled never
//!   fires. So a live response hands its slot (the budget permit and the
//!   in-flight count) to the connection's watch, and the watch drops it at
//!   `server.request_timeout` whatever the client does; the body then ends
//!   with an error the next time it is polled.
//! - **Idle connections.** Nothing being answered for
//!   `server.keepalive_timeout` (and, on HTTP/1, no byte either way): the
//!   connection is closed.
//! - **Slow or missing request heads.** A connection must send its first
//!   request head within `server.header_read_timeout` of opening, and on
//!   HTTP/1 every later head within that long of its first byte. (hyper's
//!   own header timer can't be used: it also runs while a keep-alive
//!   connection waits idle, which would cap keep-alive at the header
//!   timeout, and it does not cover the bytes hyper-util reads to pick the
//!   protocol.)
//! - **Slow readers.** A write that waits longer than `server.send_timeout`
//!   for the client to make room fails, which ends the connection and
//!   everything it held ([`WatchedIo`]).
//!
//! One small lock per connection, touched a few times per request: no
//! per-request task or timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// What a live response holds that must not outlive its deadline.
pub type Holdings = crate::upstream::body::Slot;

#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
}

struct Entry {
    deadline: Instant,
    holdings: Option<Holdings>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

/// One connection's watch. Shared by the connection task and the
/// responses it serves.
pub struct ConnWatch {
    born: Instant,
    slots: Mutex<Slots>,
    /// Requests between their head arriving and their response head going
    /// out (a streaming response body shows up as I/O instead).
    active: AtomicUsize,
    /// Milliseconds since `born` of the last byte read or written.
    last_io_ms: AtomicU64,
    /// Whether any request has arrived on this connection.
    served: std::sync::atomic::AtomicBool,
    /// HTTP/2: idleness is "no open stream", whatever pings come and go.
    h2: std::sync::atomic::AtomicBool,
    /// Milliseconds since `born` (+1; 0 = none) when the first byte of an
    /// HTTP/1 request head arrived while nothing was being answered.
    head_started_ms: AtomicU64,
    /// Milliseconds since `born` of the last time a request started or a
    /// response head went out.
    last_busy_ms: AtomicU64,
    /// Wakes the watchdog when a deadline earlier than its planned wake
    /// is registered.
    changed: Notify,
    /// When the watchdog plans to wake next (ms since `born`).
    planned_wake_ms: AtomicU64,
    /// An upgraded tunnel (WebSocket and the like) this connection became:
    /// the connection task keeps it, so it holds the connection's slot
    /// under `max_connections`, is closed at shutdown and, idle past
    /// `keepalive_timeout` (no byte either way), closed by the watchdog.
    tunnel: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Upgraded: bytes from the client are the tunnel's, not request heads.
    upgraded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ConnWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnWatch")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for ConnWatch {
    fn default() -> Self {
        ConnWatch {
            born: Instant::now(),
            slots: Mutex::default(),
            active: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            served: std::sync::atomic::AtomicBool::new(false),
            h2: std::sync::atomic::AtomicBool::new(false),
            head_started_ms: AtomicU64::new(0),
            last_busy_ms: AtomicU64::new(0),
            changed: Notify::new(),
            planned_wake_ms: AtomicU64::new(u64::MAX),
            tunnel: Mutex::new(None),
            upgraded: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl ConnWatch {
    /// Hands the connection the task of the tunnel it was upgraded to.
    pub fn adopt_tunnel(&self, task: tokio::task::JoinHandle<()>) {
        self.upgraded.store(true, Ordering::Release);
        *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The tunnel task, if the connection was upgraded.
    pub fn take_tunnel(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A response's claim on its slot in the watch. Dropping it releases the
/// holdings (if the deadline has not already).
pub struct Ticket {
    watch: Arc<ConnWatch>,
    slot: usize,
}

impl Ticket {
    /// False once the deadline took the holdings.
    pub fn alive(&self) -> bool {
        self.watch.lock().entries[self.slot]
            .as_ref()
            .is_some_and(|e| e.holdings.is_some())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let holdings = {
            let mut s = self.watch.lock();
            let h = s.entries[self.slot].take().and_then(|e| e.holdings);
            s.free.push(self.slot);
            h
        };
        drop(holdings);
        // A pipelined head that arrived while this response streamed is
        // only read now: its header timer starts now.
        if self.watch.head_started_ms.load(Ordering::Relaxed) != 0 {
            self.watch
                .head_started_ms
                .store(self.watch.now_ms() + 1, Ordering::Relaxed);
        }
    }
}

/// Counts a request as being answered while it lives.
pub struct Active(Arc<ConnWatch>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        let now = self.0.now_ms();
        self.0.last_busy_ms.store(now, Ordering::Relaxed);
        self.0.last_io_ms.store(now, Ordering::Relaxed);
    }
}

impl ConnWatch {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes came in. On HTTP/1, with nothing being answered, they are the
    /// start of the next request head.
    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if !self.h2.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
            && self.active.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            // No wake-up: on HTTP/1 the watchdog looks at heads every half
            // header timeout (one timer per connection, not per request).
            self.head_started_ms.store(now + 1, Ordering::Relaxed);
        }
    }

    /// `holdings` are dropped at `deadline` unless the ticket is dropped
    /// first.
    pub fn hold_until(self: &Arc<Self>, deadline: Instant, holdings: Holdings) -> Ticket {
        let mut s = self.lock();
        // Wake the watchdog only if it plans to sleep past this deadline
        // (the usual case, a later deadline than the last, costs nothing).
        let deadline_ms = deadline.saturating_duration_since(self.born).as_millis() as u64;
        let earliest = deadline_ms < self.planned_wake_ms.load(Ordering::Acquire);
        let entry = Some(Entry {
            deadline,
            holdings: Some(holdings),
        });
        let slot = match s.free.pop() {
            Some(i) => {
                s.entries[i] = entry;
                i
            }
            None => {
                s.entries.push(entry);
                s.entries.len() - 1
            }
        };
        drop(s);
        if earliest {
            self.changed.notify_one();
        }
        Ticket {
            watch: self.clone(),
            slot,
        }
    }

    /// Marks a request as being answered until the guard drops.
    pub fn active(self: &Arc<Self>, version: http::Version) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.last_busy_ms.store(self.now_ms(), Ordering::Relaxed);
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        Active(self.clone())
    }

    /// Drops the holdings whose deadline passed; returns the next deadline
    /// (`None` when no response holds anything).
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut s = self.lock();
            let mut next: Option<Instant> = None;
            for e in s.entries.iter_mut().flatten() {
                if e.holdings.is_none() {
                    continue;
                }
                if e.deadline <= now {
                    expired.extend(e.holdings.take());
                } else {
                    next = Some(next.map_or(e.deadline, |n| n.min(e.deadline)));
                }
            }
            next
        };
        if !expired.is_empty() {
            tracing::debug!(
                responses = expired.len(),
                "response past request_timeout: its budget slot is freed"
            );
        }
        drop(expired);
        next
    }

    /// Runs until the connection should be closed: idle for `keepalive`,
    /// or a request head not complete within `header_timeout`. Meanwhile
    /// enforces the response deadlines. Never returns while a request is
    /// being answered or a response streams.
    pub async fn watchdog(&self, keepalive: Duration, header_timeout: Duration) {
        let at = |ms: u64| self.born + Duration::from_millis(ms);
        loop {
            // Until a new plan is stored, any registration wakes us: one
            // made while we look would otherwise see the old plan and stay
            // silent, and its deadline could be slept past.
            self.planned_wake_ms.store(0, Ordering::Release);
            let now = Instant::now();
            let next_deadline = self.expire(now);
            let head_started = self.head_started_ms.load(Ordering::Relaxed);
            let idle_end = if self.upgraded.load(Ordering::Acquire) {
                // A tunnel: idle is no byte either way (the client side's
                // reads and writes both pass through this watch).
                at(self.last_io_ms.load(Ordering::Relaxed)) + keepalive
            } else if !self.served.load(Ordering::Relaxed) {
                // Not one whole request head yet.
                self.born + header_timeout
            } else if head_started != 0 {
                at(head_started - 1) + header_timeout
            } else if self.h2.load(Ordering::Relaxed) {
                at(self.last_busy_ms.load(Ordering::Relaxed)) + keepalive
            } else {
                let last = self
                    .last_io_ms
                    .load(Ordering::Relaxed)
                    .max(self.last_busy_ms.load(Ordering::Relaxed));
                at(last) + keepalive
            };
            let closable = self.active.load(Ordering::Acquire) == 0 && next_deadline.is_none();
            if closable && now >= idle_end {
                return;
            }
            // Deadlines exactly; idleness when it would be due (while the
            // connection can't be closed anyway, a keep-alive from now);
            // HTTP/1 request heads every half header timeout.
            let mut wake = if closable {
                idle_end.max(now + Duration::from_millis(50))
            } else {
                now + keepalive
            };
            if let Some(d) = next_deadline {
                wake = wake.min(d);
            }
            if self.served.load(Ordering::Relaxed) && !self.h2.load(Ordering::Relaxed) {
                wake = wake.min(now + (header_timeout / 2).max(Duration::from_millis(50)));
            }
            self.planned_wake_ms.store(
                wake.saturating_duration_since(self.born).as_millis() as u64,
                Ordering::Release,
            );
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A client connection's I/O, watched: every byte either way counts as
    /// activity, and a write that cannot proceed for `send_timeout` fails
    /// with `TimedOut`, which ends the connection and frees what it held.
    pub struct WatchedIo<I> {
        #[pin]
        inner: I,
        watch: Arc<ConnWatch>,
        send_timeout: Duration,
        stalled: Option<Pin<Box<Sleep>>>,
    }
}

impl<I> WatchedIo<I> {
    pub fn new(inner: I, watch: Arc<ConnWatch>, send_timeout: Duration) -> Self {
        watch.touch();
        WatchedIo {
            inner,
            watch,
            send_timeout,
            stalled: None,
        }
    }
}

impl<I: Read> Read for WatchedIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_read(cx, buf);
        if poll.is_ready() {
            this.watch.on_read();
        }
        poll
    }
}

/// A write pending longer than `send_timeout`: the client is not reading.
fn stalled_write(send_timeout: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("client took no data for {send_timeout:?} (server.send_timeout)"),
    )
}

impl<I: Write> WatchedIo<I> {
    /// `counts`: whether completing it is activity (a write is; a flush
    /// only follows one, and its clock read is saved).
    fn watch_write<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        counts: bool,
        op: impl FnOnce(Pin<&mut I>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let this = self.project();
        match op(this.inner, cx) {
            Poll::Ready(r) => {
                *this.stalled = None;
                if counts {
                    this.watch.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let send_timeout = *this.send_timeout;
                let timer = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(stalled_write(send_timeout)));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: Write> Write for WatchedIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.watch_write(cx, true, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.watch_write(cx, false, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.watch_write(cx, true, |io, cx| io.poll_write_vectored(cx, bufs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::upstream::body::{InFlightGauge, Slot};

    /// A slot counted in a gauge, and a way to see it freed.
    fn slot() -> (Slot, impl Fn() -> bool) {
        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        let slot = Slot::counting(InFlightGauge::new(gauge.clone()));
        (slot, move || gauge.get() == 0)
    }

    #[tokio::test(start_paused = true)]
    async fn holdings_go_at_the_deadline_without_anyone_polling_the_body() {
        let watch = Arc::new(ConnWatch::default());
        let (slot, freed) = slot();
        let ticket = watch.hold_until(Instant::now() + Duration::from_secs(5), slot);
        let w = watch.clone();
        let dog = tokio::spawn(async move { w.watchdog(Duration::from_secs(60), Duration::from_secs(60)).await });
        let _busy = watch.active(http::Version::HTTP_11);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!freed() && ticket.alive());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(freed(), "the deadline freed the slot");
        assert!(!ticket.alive());
        drop(ticket);
        dog.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_dropped_first_releases_at_once_and_the_slot_is_reused() {
        let watch = Arc::new(ConnWatch::default());
        let (slot, freed) = slot();
        let t = watch.hold_until(Instant::now() + Duration::from_secs(5), slot);
        drop(t);
        assert!(freed());
        let t2 = watch.hold_until(Instant::now() + Duration::from_secs(5), Slot::default());
        assert_eq!(
            t2.slot, 0,
            "slots are reused: the watch stays the size of the busiest moment"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_returns_only_when_idle_for_keepalive() {
        let watch = Arc::new(ConnWatch::default());
        let active = watch.active(http::Version::HTTP_11);
        let w = watch.clone();
        let dog = tokio::spawn(async move { w.watchdog(Duration::from_secs(10), Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!dog.is_finished(), "a request being answered keeps the connection");
        drop(active);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!dog.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(dog.is_finished(), "idle for keepalive_timeout: closed");
    }
}
