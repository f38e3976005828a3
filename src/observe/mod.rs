//! What the relay tells its operators: Prometheus metrics (names, buckets, the recorder and the
//! process figures read at scrape time), the access log, and the daemon's own diagnostics.

pub mod access_log;
pub mod logging;
pub mod telemetry;
