//! The support module's own checks: what the other tests rely on it for.

use std::net::TcpListener;

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
