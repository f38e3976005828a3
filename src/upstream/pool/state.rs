//! A server's state and why: what health checks, passive detection, DNS and the operator say
//! about it, and the rules that turn check results into up and down.
//!
//! The state lives behind a mutex in each `Server` and changes only in the background (a check
//! result, a DNS answer, an admin request) or on a failed connect; the relay path reads one
//! atomic (`Server::is_usable`) that is recomputed whenever the state changes.

use std::time::{Duration, SystemTime};

/// What the health checks (or passive detection) last concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check has answered yet.
    Unknown,
    Up,
    Down,
}

/// Why a server is in its state: a short fixed kind (a metric label, a JSON field) and the
/// text shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// One of `telemetry::CHECK_RESULTS` for check results; "passive", "dns" or "operator"
    /// otherwise.
    pub kind: &'static str,
    pub text: String,
}

impl Reason {
    pub fn new(kind: &'static str, text: impl Into<String>) -> Reason {
        Reason {
            kind,
            text: text.into(),
        }
    }
}

/// The most recent health check.
#[derive(Debug, Clone)]
pub struct LastCheck {
    /// "ok" or the failure's kind.
    pub result: &'static str,
    pub detail: Option<String>,
    pub latency: Duration,
    pub at: SystemTime,
}

/// Everything known about one server address.
#[derive(Debug, Clone)]
pub struct Status {
    pub health: Health,
    /// Why it is down (or was, while it rises again).
    pub reason: Option<Reason>,
    /// When `health` last changed.
    pub since: SystemTime,
    /// Consecutive good checks while down, failed checks while up.
    pub streak: u32,
    /// Set by an operator: no new connections, existing ones finish.
    pub draining: Option<SystemTime>,
    /// No longer in its name's DNS answer (or refused): never used again.
    pub removed: Option<(SystemTime, Reason)>,
    pub last_check: Option<LastCheck>,
    /// Whether it has taken traffic before: a server coming back ramps up (slow start).
    pub was_usable: bool,
}

/// A change of `Health`, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: Health,
    pub to: Health,
}

impl Status {
    pub fn new(health: Health) -> Status {
        Status {
            health,
            reason: None,
            since: SystemTime::now(),
            streak: 0,
            draining: None,
            removed: None,
            last_check: None,
            was_usable: false,
        }
    }

    /// May take new connections.
    pub fn usable(&self) -> bool {
        self.health == Health::Up && self.draining.is_none() && self.removed.is_none()
    }

    /// Applies one check result. Unknown becomes up at the first good check and down at the
    /// first failed one; up needs `fall` consecutive failures to go down, down `rise`
    /// consecutive successes to come up.
    pub fn observe_check(
        &mut self,
        result: Result<(), Reason>,
        rise: u32,
        fall: u32,
    ) -> Option<Change> {
        let from = self.health;
        let to = match (from, &result) {
            (Health::Unknown, Ok(())) => Health::Up,
            (Health::Unknown, Err(_)) => Health::Down,
            (Health::Up, Ok(())) => {
                self.streak = 0;
                Health::Up
            }
            (Health::Up, Err(_)) => {
                self.streak += 1;
                if self.streak >= fall {
                    Health::Down
                } else {
                    Health::Up
                }
            }
            (Health::Down, Ok(())) => {
                self.streak += 1;
                if self.streak >= rise {
                    Health::Up
                } else {
                    Health::Down
                }
            }
            (Health::Down, Err(_)) => {
                self.streak = 0;
                Health::Down
            }
        };
        if let Err(reason) = result {
            // While down, the latest failure is the most useful reason (refused after a
            // timeout says the host is back but the service is not).
            if to == Health::Down {
                self.reason = Some(reason);
            }
        }
        self.set_health(to)
    }

    /// Passive detection: failed connects in live traffic take an up server down at once.
    pub fn observe_passive_failure(&mut self, reason: Reason) -> Option<Change> {
        if self.health != Health::Up {
            return None;
        }
        self.reason = Some(reason);
        self.set_health(Health::Down)
    }

    fn set_health(&mut self, to: Health) -> Option<Change> {
        let from = self.health;
        if from == to {
            return None;
        }
        self.health = to;
        self.streak = 0;
        self.since = SystemTime::now();
        if to == Health::Up {
            self.reason = None;
        }
        Some(Change { from, to })
    }

    /// True while a change is being confirmed (a failure while up, a success while down): the
    /// checks then run at the fast interval.
    pub fn changing(&self) -> bool {
        self.streak > 0
    }

    /// The state operators see: draining and removal win over health.
    pub fn shown_state(&self) -> &'static str {
        if self.removed.is_some() {
            "down"
        } else if self.draining.is_some() {
            "draining"
        } else {
            match self.health {
                Health::Up => "up",
                Health::Down => "down",
                Health::Unknown => "unknown",
            }
        }
    }

    /// The reason shown with the state.
    pub fn shown_reason(&self) -> Option<String> {
        if let Some((_, reason)) = &self.removed {
            return Some(reason.text.clone());
        }
        if self.draining.is_some() {
            return Some("draining (set by an operator)".to_string());
        }
        match self.health {
            Health::Up => None,
            Health::Unknown => Some("awaiting its first health check".to_string()),
            Health::Down => self.reason.as_ref().map(|r| r.text.clone()),
        }
    }

    /// When the shown state began.
    pub fn shown_since(&self) -> SystemTime {
        if let Some((at, _)) = &self.removed {
            *at
        } else if let Some(at) = self.draining {
            at.max(self.since)
        } else {
            self.since
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), Reason> {
        Err(Reason::new("refused", "connection refused"))
    }

    #[test]
    fn first_check_decides_then_rise_and_fall_apply() {
        let mut s = Status::new(Health::Unknown);
        assert!(!s.usable());
        assert_eq!(
            s.observe_check(Ok(()), 2, 3),
            Some(Change {
                from: Health::Unknown,
                to: Health::Up
            })
        );
        assert!(s.usable());
        assert_eq!(s.observe_check(fail(), 2, 3), None);
        assert!(s.changing(), "one failure while up: confirming");
        assert_eq!(s.observe_check(fail(), 2, 3), None);
        assert_eq!(
            s.observe_check(fail(), 2, 3).map(|c| c.to),
            Some(Health::Down)
        );
        assert_eq!(s.shown_reason().as_deref(), Some("connection refused"));
        assert_eq!(s.observe_check(Ok(()), 2, 3), None);
        assert_eq!(
            s.observe_check(fail(), 2, 3),
            None,
            "a failure resets the rise"
        );
        assert_eq!(s.observe_check(Ok(()), 2, 3), None);
        assert_eq!(
            s.observe_check(Ok(()), 2, 3).map(|c| c.to),
            Some(Health::Up)
        );
        assert_eq!(s.shown_reason(), None);
    }

    #[test]
    fn unknown_goes_down_at_the_first_failure() {
        let mut s = Status::new(Health::Unknown);
        assert_eq!(
            s.observe_check(fail(), 2, 3).map(|c| c.to),
            Some(Health::Down)
        );
        assert_eq!(s.shown_state(), "down");
    }

    #[test]
    fn a_success_while_up_clears_the_failure_streak() {
        let mut s = Status::new(Health::Up);
        s.observe_check(fail(), 2, 2);
        s.observe_check(Ok(()), 2, 2);
        assert_eq!(s.observe_check(fail(), 2, 2), None);
        assert_eq!(s.health, Health::Up);
    }

    #[test]
    fn draining_and_removal_win_over_health() {
        let mut s = Status::new(Health::Up);
        s.draining = Some(SystemTime::now());
        assert!(!s.usable());
        assert_eq!(s.shown_state(), "draining");
        s.removed = Some((SystemTime::now(), Reason::new("dns", "DNS gone")));
        assert_eq!(s.shown_state(), "down");
        assert_eq!(s.shown_reason().as_deref(), Some("DNS gone"));
    }

    #[test]
    fn passive_failures_take_only_an_up_server_down() {
        let mut s = Status::new(Health::Unknown);
        assert_eq!(s.observe_passive_failure(Reason::new("passive", "x")), None);
        let mut s = Status::new(Health::Up);
        assert_eq!(
            s.observe_passive_failure(Reason::new("passive", "3 failed connects"))
                .map(|c| c.to),
            Some(Health::Down)
        );
        assert_eq!(s.shown_reason().as_deref(), Some("3 failed connects"));
    }
}
