//! `dns_removed_grace` (issue 21, item 13): connections to an address DNS no longer returns
//! are closed that long after it left the answer (`end=server_down`), while connections to the
//! addresses that stay run on.

use std::sync::Arc;
use std::time::Duration;

use crate::dns::{dns_config, upstreams};
use crate::support::*;
use tokio::io::AsyncReadExt;

const GRACE: Duration = Duration::from_millis(1500);
/// How late the relay may close, by its own log, on a busy machine.
const LATE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_an_address_dns_dropped_close_after_the_grace() {
    let (port, _upstreams) = upstreams(&["two", "three"]).await;
    let zone = zone(Mode::Answer, &["127.0.0.2", "127.0.0.3"], 1);
    let dns = dns_server(Arc::clone(&zone)).await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        dns_config(
            admin,
            listen,
            dns,
            port,
            &format!("dns_removed_grace = \"{}ms\"", GRACE.as_millis()),
        )
    });
    // Round robin over both addresses once both are up: one connection to each.
    let (mut to_two, mut to_three) = (None, None);
    let deadline = std::time::Instant::now() + STEP_LIMIT;
    while to_two.is_none() || to_three.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "not both addresses in service: {}",
            get_status(admin).await
        );
        if let Some((stream, name)) = try_which(listen).await {
            match name.as_str() {
                "two" => to_two = Some(stream),
                _ => to_three = Some(stream),
            }
        }
    }
    let (mut to_two, mut to_three) = (to_two.unwrap(), to_three.unwrap());
    let two_client = to_two.local_addr().unwrap();

    set_zone(&zone, Mode::Answer, &["127.0.0.3"], 1);
    // Closed once the relay has re-resolved (TTL 1 s) and the grace has passed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        GRACE + Duration::from_secs(10),
        to_two.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the connection to the dropped address still open:\n{}",
        relay.stderr()
    );
    // The grace, by the relay's own clock: not before it, and not much after.
    let waited = logged_between(&relay, "address removed", "dns_removed_grace over");
    assert!(
        waited >= GRACE && waited < GRACE + LATE,
        "closed {waited:?} after the address left DNS (grace {GRACE:?})"
    );
    let line = log_for(&relay, two_client).await;
    assert_eq!(field(&line, "end"), Some("server_down"), "{line}");
    assert_eq!(
        field(&line, "server_addr"),
        Some(format!("127.0.0.2:{port}").as_str()),
        "{line}"
    );

    // The address that stayed: its connection runs on, and new ones go there.
    assert_echo(&mut to_three, b"still here", "the address DNS kept").await;
    for _ in 0..4 {
        let (stream, name) = try_which(listen).await.expect("relayed");
        assert_eq!(name, "three");
        drop(stream);
    }
    finish(to_three, "the address DNS kept").await;
}
