//! Where a pool's connections leave from: its source addresses (`source`), and the local ports
//! each of them has towards each server address.
//!
//! Linux gives every (source address, destination `IP:port`) pair at most the ephemeral port
//! range (`net.ipv4.ip_local_port_range`, 28,232 ports by default) of concurrent connections.
//! A pool with several sources spreads its connections over them: for each new connection, the
//! source with the fewest connections to that server first; a source whose ports are exhausted
//! (EADDRNOTAVAIL) is skipped for the next. Each server address keeps one slot per source: an
//! atomic count (taken by a `SourceClaim` for the connection's life, so the hot path takes no
//! lock), a gauge, and what the health checks through that source last said. A pool without
//! `source` has one slot, the kernel's choice of address, counted all the same.
//! A server that stays across a reload (same name, address and sources) keeps its slots, so
//! its open connections go on counting where new ones are placed.
//!
//! Health checks leave from each source in turn. A source whose checks fail while another's
//! pass (an Elastic IP missing from the upstream's allowlist: HTTP 403 through one, 200 through
//! the other) is that source's problem, not the server's: it takes no new connections to that
//! server, /status names it, and the server's state follows the sources that work.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use metrics::Gauge;

use crate::upstream::pool::state::Reason;
use crate::upstream::pool::Server;

/// `net.ipv4.ip_local_port_range`: the local ports connect(2) chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// Linux's default.
    pub const DEFAULT: PortRange = PortRange {
        low: 32768,
        high: 60999,
    };
    const PROC: &'static str = "/proc/sys/net/ipv4/ip_local_port_range";

    /// The range in force in this process's network namespace; Linux's default where it
    /// cannot be read.
    pub fn current() -> PortRange {
        std::fs::read_to_string(Self::PROC)
            .ok()
            .and_then(|text| Self::parse(&text))
            .unwrap_or(Self::DEFAULT)
    }

    /// "32768\t60999\n".
    pub fn parse(text: &str) -> Option<PortRange> {
        let mut parts = text.split_whitespace().map(str::parse::<u16>);
        let (low, high) = (parts.next()?.ok()?, parts.next()?.ok()?);
        (low <= high).then_some(PortRange { low, high })
    }

    /// Concurrent connections one source address can have to one destination.
    pub fn ports(self) -> u32 {
        u32::from(self.high - self.low) + 1
    }

    fn pack(self) -> u32 {
        (u32::from(self.low) << 16) | u32::from(self.high)
    }

    fn unpack(packed: u32) -> PortRange {
        PortRange {
            low: (packed >> 16) as u16,
            high: packed as u16,
        }
    }
}

/// The port range in force, packed; 0 until first read. Read when a pool is built and by
/// /status (an operator may widen it without a restart), not per connection. One per process,
/// as the range is one per network namespace.
static RANGE: AtomicU32 = AtomicU32::new(0);

/// The port range as last read.
fn range() -> PortRange {
    match RANGE.load(Ordering::Relaxed) {
        0 => refresh_range(),
        packed => PortRange::unpack(packed),
    }
}

fn refresh_range() -> PortRange {
    let range = PortRange::current();
    RANGE.store(range.pack(), Ordering::Relaxed);
    range
}

/// A pool's source addresses, shared by its servers.
pub struct Egress {
    /// Empty: the kernel chooses the address (one slot, shown as "default").
    addrs: Box<[IpAddr]>,
}

impl Egress {
    pub fn new(sources: &[IpAddr]) -> Egress {
        refresh_range();
        Egress {
            addrs: sources.into(),
        }
    }

    /// The configured source addresses (empty: the kernel's choice).
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// Slots per server: one per source address, or one for the kernel's choice.
    pub fn slots(&self) -> usize {
        self.addrs.len().max(1)
    }

    /// The `source` label of slot `index`.
    pub fn label(&self, index: usize) -> String {
        self.addrs
            .get(index)
            .map_or_else(|| "default".to_string(), IpAddr::to_string)
    }

    /// The pool's part of /status, with the port range read again.
    pub fn status(&self) -> serde_json::Value {
        let range = refresh_range();
        serde_json::json!({
            "sources": self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "port_range": [range.low, range.high],
            "ports_per_destination": range.ports(),
        })
    }
}

/// What the health checks through one source last said about the server.
const UNCHECKED: u8 = 0;
const PASSING: u8 = 1;
const FAILING: u8 = 2;

/// Warned about above this share of the port range, and again only after falling below
/// `CALM_SHARE`.
const CROWDED_SHARE: f64 = 0.8;
const CALM_SHARE: f64 = 0.7;

/// One source address's connections to one server address.
struct Slot {
    active: AtomicU32,
    crowded: AtomicBool,
    check: AtomicU8,
    /// The latest check through this source: result, detail, when. Written by the server's
    /// check task, read by /status.
    last_check: Mutex<Option<(&'static str, Option<String>, SystemTime)>>,
    gauge: Gauge,
}

/// A server address's slots, one per source of its pool.
pub struct Sources {
    egress: Arc<Egress>,
    slots: Box<[Slot]>,
}

/// Whether a check's result goes on to the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It does: it says something about the server.
    Server,
    /// It does not: it failed through this source while another source's checks pass, or it
    /// could not run for want of a local resource.
    SourceOnly,
}

impl Sources {
    /// `gauges`: the server's `l4relay_source_connections` gauges, one per slot.
    pub fn new(egress: &Arc<Egress>, gauges: &[Gauge]) -> Sources {
        let slots = (0..egress.slots())
            .map(|i| Slot {
                active: AtomicU32::new(0),
                crowded: AtomicBool::new(false),
                check: AtomicU8::new(UNCHECKED),
                last_check: Mutex::new(None),
                gauge: gauges.get(i).cloned().unwrap_or_else(Gauge::noop),
            })
            .collect();
        Sources {
            egress: Arc::clone(egress),
            slots,
        }
    }

    /// The address slot `index` binds to; None: the kernel's choice.
    pub fn addr(&self, index: usize) -> Option<IpAddr> {
        self.egress.addrs.get(index).copied()
    }

    pub fn active(&self, index: usize) -> u32 {
        self.slots[index].active.load(Ordering::Relaxed)
    }

    /// The source for the next connection: of those not in `tried` (a bit per slot) and not
    /// failing checks that another source passes, the one with the fewest connections to this
    /// server. None once every one was tried.
    pub fn next(&self, tried: u64) -> Option<usize> {
        let someone_passes = self.someone_passes();
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, slot)| {
                *i < 64
                    && tried & (1 << i) == 0
                    && !(someone_passes && slot.check.load(Ordering::Relaxed) == FAILING)
            })
            .min_by_key(|(_, slot)| slot.active.load(Ordering::Relaxed))
            .map(|(i, _)| i)
    }

    fn someone_passes(&self) -> bool {
        self.slots.len() > 1
            && self
                .slots
                .iter()
                .any(|s| s.check.load(Ordering::Relaxed) == PASSING)
    }

    /// The slots (a bit each) whose address cannot reach `server`: of the other IP family.
    pub fn unusable_for(&self, server: IpAddr) -> u64 {
        self.egress
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, a)| *i < 64 && a.is_ipv4() != server.is_ipv4())
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    /// The source the `round`th health check of `server` leaves from: each that can reach it
    /// in turn.
    pub fn for_check(&self, round: u64, server: IpAddr) -> usize {
        let unusable = self.unusable_for(server);
        let usable = (0..self.slots.len()).filter(|i| *i >= 64 || unusable & (1 << i) == 0);
        let count = usable.clone().count() as u64;
        if count == 0 {
            return 0;
        }
        usable.clone().nth((round % count) as usize).unwrap_or(0)
    }

    /// Records a check through slot `index`; says whether it counts for the server.
    pub fn observe_check(&self, index: usize, result: &Result<(), Reason>) -> Verdict {
        let Some(slot) = self.slots.get(index) else {
            return Verdict::Server;
        };
        let (kind, detail) = match result {
            Ok(()) => ("ok", None),
            Err(reason) => (reason.kind, Some(reason.text.clone())),
        };
        *slot.last_check.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((kind, detail, SystemTime::now()));
        match result {
            Ok(()) => {
                slot.check.store(PASSING, Ordering::Relaxed);
                Verdict::Server
            }
            Err(reason) if reason.kind == LOCAL_CHECK => Verdict::SourceOnly,
            Err(_) => {
                slot.check.store(FAILING, Ordering::Relaxed);
                let others_pass = self
                    .slots
                    .iter()
                    .enumerate()
                    .any(|(i, s)| i != index && s.check.load(Ordering::Relaxed) == PASSING);
                if others_pass {
                    Verdict::SourceOnly
                } else {
                    Verdict::Server
                }
            }
        }
    }

    /// The server's per-source part of /status.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let someone_passes = self.someone_passes();
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let check = slot.check.load(Ordering::Relaxed);
                let last = slot
                    .last_check
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                serde_json::json!({
                    "source": self.egress.label(i),
                    "active": slot.active.load(Ordering::Relaxed),
                    "check": match check {
                        PASSING => "passing",
                        FAILING => "failing",
                        _ => "unchecked",
                    },
                    "excluded": someone_passes && check == FAILING,
                    "last_check": last.map(|(result, detail, at)| serde_json::json!({
                        "result": result,
                        "detail": detail,
                        "at": crate::observe::access_log::rfc3339(at),
                    })),
                })
            })
            .collect()
    }
}

/// The `kind` of a check that could not run for want of a local resource (a descriptor, a
/// port): it says nothing about the server.
pub const LOCAL_CHECK: &str = "local";

/// One connection's place on a source: counted from before its connect (so that concurrent
/// connects spread) until it closes.
pub struct SourceClaim {
    server: Arc<Server>,
    index: usize,
}

impl SourceClaim {
    /// Takes a place on `server`'s slot `index`; warns when the pair passes 80 % of the ports.
    pub fn take(server: &Arc<Server>, index: usize) -> SourceClaim {
        let slot = &server.sources.slots[index];
        let active = slot.active.fetch_add(1, Ordering::Relaxed) + 1;
        slot.gauge.increment(1.0);
        let ports = range().ports();
        if f64::from(active) >= f64::from(ports) * CROWDED_SHARE
            && !slot.crowded.swap(true, Ordering::Relaxed)
        {
            let sources = &server.sources.egress;
            tracing::warn!(
                server = %server.name,
                "source {} to {}: {active} connections, over {:.0}% of the {ports} local ports one source address has to one destination; more connections there fail with EADDRNOTAVAIL (add source addresses, or widen net.ipv4.ip_local_port_range)",
                sources.label(index),
                server.addr,
                CROWDED_SHARE * 100.0
            );
        }
        SourceClaim {
            server: Arc::clone(server),
            index,
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for SourceClaim {
    fn drop(&mut self) {
        let slot = &self.server.sources.slots[self.index];
        let active = slot.active.fetch_sub(1, Ordering::Relaxed) - 1;
        slot.gauge.decrement(1.0);
        if slot.crowded.load(Ordering::Relaxed) {
            let ports = range().ports();
            if f64::from(active) < f64::from(ports) * CALM_SHARE {
                slot.crowded.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(n: usize) -> Sources {
        let addrs: Vec<IpAddr> = (0..n)
            .map(|i| IpAddr::from([10, 0, 1, 10 + i as u8]))
            .collect();
        Sources::new(&Arc::new(Egress::new(&addrs)), &[])
    }

    #[test]
    fn port_range_parses_as_proc_writes_it() {
        assert_eq!(PortRange::parse("32768\t60999\n"), Some(PortRange::DEFAULT));
        assert_eq!(PortRange::DEFAULT.ports(), 28232);
        assert_eq!(
            PortRange::parse("1024 65535").map(PortRange::ports),
            Some(64512)
        );
        assert_eq!(
            PortRange::parse("40000 40000").map(PortRange::ports),
            Some(1)
        );
        for bad in ["", "32768", "60999 32768", "a b", "70000 80000"] {
            assert_eq!(PortRange::parse(bad), None, "{bad:?}");
        }
        let range = PortRange {
            low: 40000,
            high: 40019,
        };
        assert_eq!(PortRange::unpack(range.pack()), range);
    }

    #[test]
    fn the_least_used_source_first_and_tried_ones_skipped() {
        let s = sources(3);
        assert_eq!(s.next(0), Some(0), "a tie goes to the first");
        s.slots[0].active.store(5, Ordering::Relaxed);
        s.slots[1].active.store(2, Ordering::Relaxed);
        s.slots[2].active.store(3, Ordering::Relaxed);
        assert_eq!(s.next(0), Some(1));
        assert_eq!(s.next(0b010), Some(2));
        assert_eq!(s.next(0b110), Some(0));
        assert_eq!(s.next(0b111), None);
        let mixed = Sources::new(
            &Arc::new(Egress::new(&[
                "10.0.1.10".parse().unwrap(),
                "fd00::10".parse().unwrap(),
            ])),
            &[],
        );
        assert_eq!(mixed.unusable_for("10.0.2.1".parse().unwrap()), 0b10);
        assert_eq!(mixed.unusable_for("fd00::1".parse().unwrap()), 0b01);
        assert_eq!(mixed.next(0b10), Some(0));
        let none = sources(0);
        assert_eq!(none.unusable_for("fd00::1".parse().unwrap()), 0);
        assert_eq!(none.next(0), Some(0), "one slot for the kernel's choice");
        assert_eq!(none.addr(0), None);
        assert_eq!(none.next(1), None);
    }

    #[test]
    fn a_source_failing_checks_others_pass_is_excluded_not_the_server() {
        let s = sources(2);
        let firewall = Err(Reason::new("firewall", "HTTP 403"));
        // Nothing known yet: the failure is the server's.
        assert_eq!(s.observe_check(0, &firewall), Verdict::Server);
        assert_eq!(s.observe_check(1, &Ok(())), Verdict::Server);
        // Source 1 passes: source 0's failures are its own, and it takes no connections.
        assert_eq!(s.observe_check(0, &firewall), Verdict::SourceOnly);
        assert_eq!(s.next(0), Some(1));
        assert_eq!(s.next(0b10), None);
        let status = s.status();
        assert_eq!(status[0]["excluded"], true);
        assert_eq!(status[0]["last_check"]["result"], "firewall");
        assert_eq!(status[1]["check"], "passing");
        // Source 1 fails too: now it is the server.
        assert_eq!(s.observe_check(1, &firewall), Verdict::Server);
        assert_eq!(
            s.next(0),
            Some(0),
            "nobody passes: every source may be tried"
        );
        // A check that could not run says nothing.
        let local = Err(Reason::new(LOCAL_CHECK, "EMFILE"));
        assert_eq!(s.observe_check(0, &local), Verdict::SourceOnly);
        assert_eq!(s.slots[0].check.load(Ordering::Relaxed), FAILING);
        // One source: every result is the server's.
        let one = sources(1);
        assert_eq!(one.observe_check(0, &firewall), Verdict::Server);
        assert_eq!(one.next(0), Some(0));
    }

    #[test]
    fn checks_go_through_each_source_in_turn() {
        let s = sources(3);
        let v4: IpAddr = "10.0.2.1".parse().unwrap();
        let order: Vec<usize> = (0..6).map(|r| s.for_check(r, v4)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        assert_eq!(sources(0).for_check(7, v4), 0);
        let mixed = Sources::new(
            &Arc::new(Egress::new(&[
                "10.0.1.10".parse().unwrap(),
                "fd00::10".parse().unwrap(),
                "10.0.1.11".parse().unwrap(),
            ])),
            &[],
        );
        let order: Vec<usize> = (0..4).map(|r| mixed.for_check(r, v4)).collect();
        assert_eq!(
            order,
            [0, 2, 0, 2],
            "only the sources of the server's family"
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(mixed.for_check(5, v6), 1);
    }
}
