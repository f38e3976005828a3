//! The support module's own checks: what the other tests rely on it for.

use std::net::TcpListener;
use std::time::{Duration, UNIX_EPOCH};

use crate::support::*;

/// A listen address taken between choosing it and the relay binding it: the relay exits with
/// "Address already in use", and `start_relay` starts it again on addresses chosen anew.
#[test]
fn start_relay_chooses_again_when_an_address_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut attempts = Vec::new();
    let (relay, [listen]) = start_relay(|[listen]| {
        let listen = if attempts.is_empty() {
            taken.local_addr().unwrap()
        } else {
            listen
        };
        attempts.push(listen);
        config(listen, &[unused_addr()], "", "")
    });
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1], listen);
    assert!(
        relay.stderr().contains(&format!("address={listen}")),
        "{}",
        relay.stderr()
    );
}

/// `metric` reads the series it names: not one whose name merely starts the same, nor one
/// whose label value merely starts the same.
#[test]
fn samples_match_whole_names_and_labels() {
    let text = "# HELP x_total X.\nx_total{pool=\"p\",server=\"a\"} 3\nx_total_more{server=\"a\"} 9\nx_total{pool=\"p\",server=\"ab\"} 4\ny 2.5\n";
    assert_eq!(sample_in(text, "x_total", &[("server", "a")]), Some(3.0));
    assert_eq!(sample_in(text, "x_total", &[("server", "ab")]), Some(4.0));
    assert_eq!(sample_in(text, "x_total", &[("server", "b")]), None);
    assert_eq!(sample_in(text, "x", &[]), None);
    assert_eq!(sample_in(text, "y", &[]), Some(2.5));
}

/// The times the relay reports (its log lines, /status) read back as times.
#[test]
fn rfc3339_times_parse() {
    let at = |s| {
        parse_rfc3339(s)
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
    };
    assert_eq!(at("1970-01-01T00:00:00Z"), Duration::ZERO);
    // The relay's own test vector (src/access_log.rs).
    assert_eq!(
        at("2026-11-24T01:55:12.123Z"),
        Duration::from_millis(1_795_485_312_123)
    );
    assert_eq!(
        at("2000-02-29T23:59:59.000001Z"),
        Duration::new(951_868_799, 1_000)
    );
    assert_eq!(parse_rfc3339("2026-11-24 01:55:12Z"), None);
    assert_eq!(parse_rfc3339("2026-11-24T01:55:12"), None);
}
