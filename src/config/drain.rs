//! `[drain]`: how SIGTERM drains (announce, deadline, close spread).

use std::time::Duration;

use super::reader::{Diagnostics, Section};

#[derive(Debug, Clone)]
pub struct Drain {
    pub announce: Duration,
    pub deadline: Duration,
    pub close_spread: Duration,
}

pub(super) fn read_drain(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Drain {
    Drain {
        announce: s.duration(diag, "announce", Duration::from_secs(65)),
        deadline: s.duration(diag, "deadline", Duration::from_secs(300)),
        close_spread: s.duration(diag, "close_spread", Duration::from_secs(10)),
    }
}
