//! What a relaying connection keeps an eye on, for long streams: its progress (the first byte
//! from the server, the last byte each way, the longest silence) and the timeouts shaped for
//! streams that act on it (first byte, idle per direction, maximum lifetime).
//!
//! Progress is taken where the session already is: `Watched` wraps the relay, and after each
//! poll compares the relay's byte counts with the last ones it saw. Only a wake-up that moved
//! bytes costs anything more (one clock read, a few stores into the connection's registry
//! entry); nothing is done per byte or per chunk. Timeouts are checked on the session's tick,
//! so each fires up to one tick late (see `tick`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::Histogram;

use crate::inbound::registry::Entry;
use crate::inbound::session::End;
use crate::relay::{Ended, Running, Side};

/// A relaying connection's optional timeouts (`[[listener]]` keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// `first_byte_timeout`: no payload byte from the server this long after connecting.
    pub first_byte: Option<Duration>,
    /// `max_lifetime`: open this long since it was accepted, however busy.
    pub max_lifetime: Option<Duration>,
    /// `idle_timeout_client`: no payload byte from the client for this long.
    pub idle_client: Option<Duration>,
    /// `idle_timeout_server`: no payload byte from the server for this long.
    pub idle_server: Option<Duration>,
}

impl StreamTimeouts {
    /// The session's tick: an eighth of the shortest of these, of `idle_timeout` and of the
    /// progress-log interval, from 10 ms to 5 s. Every timeout fires up to one tick late.
    pub fn tick(&self, idle: Duration, log_progress: Option<Duration>) -> Duration {
        [
            Some(idle),
            self.first_byte,
            self.max_lifetime,
            self.idle_client,
            self.idle_server,
            log_progress,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(idle)
        .checked_div(8)
        .unwrap_or_default()
        .clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    /// Which timeout (if any) ends the connection at `now`: it was accepted at `accepted`,
    /// relays with `progress`, and `done` says which directions have ended. `idle` is the
    /// listener's `idle_timeout`, silence both ways.
    pub fn check(
        &self,
        now: Instant,
        accepted: Instant,
        idle: Duration,
        progress: &Progress,
        done: (bool, bool),
    ) -> Option<End> {
        let silent = |since: Instant, limit: Option<Duration>| {
            limit.is_some_and(|limit| now.saturating_duration_since(since) >= limit)
        };
        if progress.bytes.1 == 0 && silent(progress.started, self.first_byte) {
            return Some(End::FirstByteTimeout);
        }
        // A direction that has ended is silent by rights.
        if !done.0 && silent(progress.last(0), self.idle_client) {
            return Some(End::IdleSide(Side::Client));
        }
        if !done.1 && silent(progress.last(1), self.idle_server) {
            return Some(End::IdleSide(Side::Server));
        }
        if silent(progress.last_active(), Some(idle)) {
            return Some(End::IdleTimeout);
        }
        if silent(accepted, self.max_lifetime) {
            return Some(End::MaxLifetime);
        }
        None
    }
}

/// What a relay has done so far, as its session saw it. Times are kept in milliseconds after
/// the relay started: a relaying connection's state is its memory while idle.
#[derive(Debug, Clone)]
pub struct Progress {
    /// When the relay started (the server was connected).
    started: Instant,
    /// Payload bytes (client → server, server → client), as of the last look.
    pub bytes: (u64, u64),
    /// When each direction last moved a byte (or the relay started), in ms after `started`.
    last_ms: [u32; 2],
    /// The longest time no byte moved either way, up to the last look, in ms.
    longest_silence_ms: u32,
}

impl Progress {
    pub fn new(started: Instant) -> Progress {
        Progress {
            started,
            bytes: (0, 0),
            last_ms: [0; 2],
            longest_silence_ms: 0,
        }
    }

    fn ms(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u32::MAX)
    }

    fn at(&self, ms: u32) -> Instant {
        self.started + Duration::from_millis(u64::from(ms))
    }

    fn last(&self, direction: usize) -> Instant {
        self.at(self.last_ms[direction])
    }

    fn last_active(&self) -> Instant {
        self.at(self.last_ms[0].max(self.last_ms[1]))
    }

    /// Takes in the relay's counts at `now`; which directions moved, when, if any did.
    fn observe(&mut self, bytes: (u64, u64), now: Instant) -> [Option<Instant>; 2] {
        let now_ms = self.ms(now);
        let silence = now_ms.saturating_sub(self.last_ms[0].max(self.last_ms[1]));
        self.longest_silence_ms = self.longest_silence_ms.max(silence);
        let moved = [bytes.0 != self.bytes.0, bytes.1 != self.bytes.1];
        for (last, moved) in self.last_ms.iter_mut().zip(moved) {
            if moved {
                *last = now_ms;
            }
        }
        self.bytes = bytes;
        moved.map(|m| m.then_some(now))
    }

    /// The longest silence of the connection, its last one (until `now`) included.
    pub fn longest_silence(&self, now: Instant) -> Duration {
        Duration::from_millis(u64::from(self.longest_silence_ms))
            .max(now.saturating_duration_since(self.last_active()))
    }
}

/// A relay with its progress watched: polled like the relay, it notes after each poll what the
/// relay moved, records the time to the first server byte, and tells the registry entry.
pub struct Watched<'a, R> {
    pub relay: &'a mut R,
    pub progress: Progress,
    /// Bytes the client sent before the relay started (a peeked ClientHello), for the entry.
    sent_before: u64,
    entry: Option<&'a Entry>,
    first_byte: &'a Histogram,
}

impl<'a, R: Running> Watched<'a, R> {
    pub fn new(
        relay: &'a mut R,
        started: Instant,
        sent_before: u64,
        entry: Option<&'a Entry>,
        first_byte: &'a Histogram,
    ) -> Self {
        Watched {
            relay,
            progress: Progress::new(started),
            sent_before,
            entry,
            first_byte,
        }
    }

    fn look(&mut self) {
        let bytes = self.relay.bytes();
        if bytes == self.progress.bytes {
            return;
        }
        let now = Instant::now();
        if self.progress.bytes.1 == 0 && bytes.1 > 0 {
            let waited = now.saturating_duration_since(self.progress.started);
            self.first_byte.record(waited.as_secs_f64());
        }
        let moved = self.progress.observe(bytes, now);
        if let Some(entry) = self.entry {
            entry.set_progress((self.sent_before + bytes.0, bytes.1), moved);
        }
    }
}

impl<R: Running> Future for Watched<'_, R> {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.relay).poll(cx);
        this.look();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_tick_follows_the_shortest_timeout() {
        let none = StreamTimeouts::default();
        assert_eq!(none.tick(900 * S, None), 5 * S);
        assert_eq!(none.tick(8 * S, None), S);
        assert_eq!(none.tick(900 * S, Some(16 * S)), 2 * S);
        let short = StreamTimeouts {
            first_byte: Some(40 * Duration::from_millis(1)),
            ..StreamTimeouts::default()
        };
        assert_eq!(short.tick(900 * S, None), Duration::from_millis(10));
    }

    #[test]
    fn silences_are_measured_between_bytes_and_to_the_end() {
        let t0 = Instant::now();
        let mut p = Progress::new(t0);
        assert_eq!(p.observe((5, 0), t0 + 2 * S), [Some(t0 + 2 * S), None]);
        assert_eq!(p.observe((5, 9), t0 + 10 * S), [None, Some(t0 + 10 * S)]);
        assert_eq!(p.observe((6, 10), t0 + 11 * S), [Some(t0 + 11 * S); 2]);
        assert_eq!(p.longest_silence(t0 + 12 * S), 8 * S);
        assert_eq!(
            p.longest_silence(t0 + 31 * S),
            20 * S,
            "the last silence counts"
        );
    }

    #[test]
    fn which_timeout_fires() {
        let t0 = Instant::now();
        let all = StreamTimeouts {
            first_byte: Some(10 * S),
            max_lifetime: Some(100 * S),
            idle_client: Some(30 * S),
            idle_server: Some(20 * S),
        };
        let idle = 60 * S;
        let open = (false, false);
        let mut p = Progress::new(t0);
        let at = |secs: u32| t0 + S * secs;
        assert_eq!(all.check(at(9), t0, idle, &p, open), None);
        assert_eq!(
            all.check(at(10), t0, idle, &p, open),
            Some(End::FirstByteTimeout)
        );
        p.observe((1, 1), at(5));
        assert_eq!(all.check(at(24), t0, idle, &p, open), None);
        assert_eq!(
            all.check(at(25), t0, idle, &p, open),
            Some(End::IdleSide(Side::Server))
        );
        // The server has sent its FIN: its silence is no fault.
        assert_eq!(
            all.check(at(35), t0, idle, &p, (false, true)),
            Some(End::IdleSide(Side::Client))
        );
        assert_eq!(
            all.check(at(65), t0, idle, &p, (true, true)),
            Some(End::IdleTimeout)
        );
        p.observe((2, 2), at(99));
        assert_eq!(
            all.check(at(100), t0, idle, &p, open),
            Some(End::MaxLifetime)
        );
        assert_eq!(
            StreamTimeouts::default().check(at(1000), t0, 2000 * S, &p, open),
            None,
            "none set, idle_timeout not reached"
        );
    }
}
