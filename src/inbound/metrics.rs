//! What connections on one listener are counted under: registered once per config generation,
//! so a session counts into handles and never looks a metric up by its labels.

use std::collections::HashMap;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::observe::telemetry::{
    BYTES, CONNECTIONS, CONNECTIONS_ACTIVE, SESSION_BYTES, SESSION_DURATION, SILENT_GAP_SECONDS,
    SPLICE_FALLBACKS, VPCE_CONNECTIONS,
};
use crate::protocol::vpce::VpceId;

/// What connections on one listener are counted under.
pub struct ListenerMetrics {
    outcomes: [(&'static str, Counter); OUTCOMES.len()],
    pub active: Gauge,
    pub bytes_client_to_server: Counter,
    pub bytes_server_to_client: Counter,
    pub duration: Histogram,
    pub session_bytes: Histogram,
    /// The longest silence of each relayed connection.
    pub silent_gap: Histogram,
    pub splice_fallbacks: Counter,
    vpce: HashMap<Box<str>, Counter>,
    vpce_other: Counter,
}

/// The outcomes of `l4relay_connections_total`, all registered up front so each shows as 0.
const OUTCOMES: [&str; 8] = [
    "relayed",
    "refused_rule",
    "refused_limit",
    "proxy_header_error",
    "handshake_timeout",
    "tls_handshake_error",
    "no_server",
    "connect_failed",
];

impl ListenerMetrics {
    pub fn new(listener: &str, allow_vpce: &[VpceId]) -> ListenerMetrics {
        let l = listener.to_string();
        let outcomes = OUTCOMES.map(|outcome| {
            (
                outcome,
                counter!(CONNECTIONS, "listener" => l.clone(), "outcome" => outcome),
            )
        });
        let vpce = allow_vpce
            .iter()
            .map(|id| {
                let c =
                    counter!(VPCE_CONNECTIONS, "listener" => l.clone(), "vpce" => id.to_string());
                (Box::from(id.as_str()), c)
            })
            .collect();
        ListenerMetrics {
            outcomes,
            active: gauge!(CONNECTIONS_ACTIVE, "listener" => l.clone()),
            bytes_client_to_server: counter!(BYTES, "listener" => l.clone(), "direction" => "client_to_server"),
            bytes_server_to_client: counter!(BYTES, "listener" => l.clone(), "direction" => "server_to_client"),
            duration: histogram!(SESSION_DURATION, "listener" => l.clone()),
            session_bytes: histogram!(SESSION_BYTES, "listener" => l.clone()),
            silent_gap: histogram!(SILENT_GAP_SECONDS, "listener" => l.clone()),
            splice_fallbacks: counter!(SPLICE_FALLBACKS, "listener" => l.clone()),
            vpce_other: counter!(VPCE_CONNECTIONS, "listener" => l, "vpce" => "other"),
            vpce,
        }
    }

    pub fn count_outcome(&self, outcome: &str) {
        if let Some((_, counter)) = self.outcomes.iter().find(|(name, _)| *name == outcome) {
            counter.increment(1);
        }
    }

    pub fn count_vpce(&self, vpce: &str) {
        self.vpce.get(vpce).unwrap_or(&self.vpce_other).increment(1);
    }
}
