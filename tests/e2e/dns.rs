//! End-to-end DNS: a server given by name follows the answers of a test DNS server on
//! loopback (records and TTLs that change), keeps its last good addresses through SERVFAIL and
//! timeouts until `dns_hold`, and under `require_private` never connects to a public answer.
//! The DNS responder is a few lines of UDP (`support::dns`); every upstream is on 127.0.0.0/8.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;

/// One listener on pool "p", whose server "svc" is `svc.test:port`, resolved through `dns`.
pub(crate) fn dns_config(
    admin: SocketAddr,
    listen: SocketAddr,
    dns: SocketAddr,
    port: u16,
    pool_extra: &str,
) -> String {
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nnameservers = [\"{dns}\"]\ndns_timeout = \"200ms\"\ndns_min_ttl = \"200ms\"\n{pool_extra}\n  [pool.health]\n  check = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"100ms\"\n  rise = 1\n  fall = 1\n  [[pool.server]]\n  name = \"svc\"\n  address = \"svc.test:{port}\"\n"
    )
}

/// Upstreams named `names` on 127.0.0.2, .3, ... all on one port: the kernel's choice on
/// 127.0.0.2, tried on the others (and chosen again if one of them has it taken).
pub(crate) async fn upstreams(names: &[&'static str]) -> (u16, Vec<Upstream>) {
    'port: for _ in 0..20 {
        let first = Upstream::start_at("127.0.0.2:0".parse().unwrap(), names[0])
            .await
            .expect("bind an upstream on 127.0.0.2");
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr = SocketAddr::from(([127, 0, 0, 2 + i as u8], port));
            match Upstream::start_at(addr, name).await {
                Ok(upstream) => all.push(upstream),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue 'port,
                Err(e) => panic!("bind an upstream on {addr}: {e}"),
            }
        }
        return (port, all);
    }
    panic!("no port free on all of 127.0.0.2-{}", 1 + names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_dns_answers_and_ttls_and_keeps_the_last_good_set_on_failure() {
    let (port, _upstreams) = upstreams(&["two", "three", "four"]).await;
    let zone = zone(Mode::Answer, &["127.0.0.2"], 1);
    let dns = dns_server(Arc::clone(&zone)).await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        dns_config(
            admin,
            listen,
            dns,
            port,
            "dns_max_ttl = \"10s\"\ndns_hold = \"3s\"",
        )
    });
    let started = Instant::now();
    let two = format!("127.0.0.2:{port}");
    wait_status(admin, Duration::from_secs(5), "resolved", |s| {
        up_addresses(s, "p", "svc") == [two.clone()]
    })
    .await;
    assert_eq!(try_which(listen).await.unwrap().1, "two");
    let status = get_status(admin).await;
    assert_eq!(
        dns_json(&status, "p")["addresses"],
        serde_json::json!(["127.0.0.2"])
    );
    assert_eq!(dns_json(&status, "p")["ttl_secs"], 1);

    // A new answer: the pool follows within the TTL (1 s) plus slack; the old address goes.
    set_zone(&zone, Mode::Answer, &["127.0.0.3", "127.0.0.4"], 1);
    let changed = SystemTime::now();
    let expected = vec![format!("127.0.0.3:{port}"), format!("127.0.0.4:{port}")];
    wait_status(admin, Duration::from_secs(15), "following", |s| {
        up_addresses(s, "p", "svc") == expected && servers_json(s, "p", "svc").len() == 2
    })
    .await;
    // When the new addresses came up, as the relay reports it: within the TTL, a first check
    // and scheduling on a busy machine; a relay that kept the answer for dns_max_ttl (10 s), or
    // re-resolved only on failure, would take far longer.
    let status = get_status(admin).await;
    let took = servers_json(&status, "p", "svc")
        .iter()
        .map(|s| since(s).duration_since(changed).unwrap_or_default())
        .max()
        .unwrap();
    assert!(
        took < Duration::from_millis(2500),
        "followed {took:?} after the answer changed (TTL 1 s): {status}"
    );
    for _ in 0..10 {
        let name = try_which(listen).await.unwrap().1;
        assert!(name == "three" || name == "four", "{name}");
    }
    // TTL 1 s honoured: about one A query a second, not one per dns_min_ttl (200 ms).
    let queries = zone.lock().unwrap().a_queries as f64;
    let secs = started.elapsed().as_secs_f64();
    assert!(
        queries >= 2.0 && queries <= secs + 2.0,
        "{queries} A queries in {secs:.1}s"
    );

    // SERVFAIL: the last good set stays and keeps serving.
    set_zone(&zone, Mode::ServFail, &[], 1);
    wait_status(admin, Duration::from_secs(3), "servfail", |s| {
        dns_json(s, "p")["last_result"] == "servfail"
    })
    .await;
    let status = get_status(admin).await;
    assert_eq!(up_addresses(&status, "p", "svc"), expected, "{status}");
    assert_eq!(
        dns_json(&status, "p")["addresses"],
        serde_json::json!(["127.0.0.3", "127.0.0.4"])
    );
    assert!(try_which(listen).await.is_some());
    assert!(
        metric(
            admin,
            "l4relay_dns_resolutions_total",
            &[("result", "servfail")]
        )
        .await
            >= 1.0
    );

    // No answer at all: likewise, until dns_hold (3 s) has passed.
    set_zone(&zone, Mode::Silent, &[], 1);
    wait_status(admin, Duration::from_secs(3), "timing out", |s| {
        dns_json(s, "p")["last_result"] == "timeout"
    })
    .await;
    let status = get_status(admin).await;
    assert_eq!(up_addresses(&status, "p", "svc"), expected, "{status}");
    assert!(try_which(listen).await.is_some());

    wait_status(
        admin,
        Duration::from_secs(5),
        "dropped after dns_hold",
        |s| servers_json(s, "p", "svc").is_empty(),
    )
    .await;
    assert!(try_which(listen).await.is_none(), "nothing left: refused");
    assert!(relay.stderr().contains("failing for longer than dns_hold"));

    // Answers again: back in service.
    set_zone(&zone, Mode::Answer, &["127.0.0.2"], 1);
    wait_status(admin, Duration::from_secs(5), "resolved again", |s| {
        up_addresses(s, "p", "svc") == [two.clone()]
    })
    .await;
    assert_eq!(try_which(listen).await.unwrap().1, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_private_never_connects_to_a_public_answer() {
    let (port, _upstreams) = upstreams(&["two"]).await;
    // Silent at first: starting must not wait for DNS.
    let zone = zone(Mode::Silent, &[], 1);
    let dns = dns_server(Arc::clone(&zone)).await;
    let started = Instant::now();
    let (mut relay, [admin, listen]) = start_relay(|[admin, listen]| {
        dns_config(admin, listen, dns, port, "require_private = true")
    });
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "start took {:?}",
        started.elapsed()
    );

    // The name resolves to a public address, as when a private DNS zone is missing.
    set_zone(&zone, Mode::Answer, &["8.8.8.8"], 1);
    wait_status(admin, Duration::from_secs(5), "refusing", |s| {
        dns_json(s, "p")["refused"] == serde_json::json!(["8.8.8.8"])
    })
    .await;
    let status = get_status(admin).await;
    let error = dns_json(&status, "p")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.starts_with("public address refused: private DNS zone missing?"),
        "{status}"
    );
    assert!(servers_json(&status, "p", "svc").is_empty(), "{status}");
    // A client is refused at once: the relay never connects to the public address.
    let refused_at = Instant::now();
    assert!(try_which(listen).await.is_none());
    assert!(refused_at.elapsed() < Duration::from_secs(1));
    let (_, metrics) = admin_request(admin, "GET", "/metrics", None).await;
    for line in metrics.lines().filter(|l| l.contains("server=\"svc\"")) {
        if line.starts_with("l4relay_upstream_connections_total")
            || line.starts_with("l4relay_health_checks_total")
        {
            assert!(
                line.ends_with(" 0"),
                "an attempt on the public address: {line}"
            );
        }
    }
    assert!(
        metric(
            admin,
            "l4relay_dns_resolutions_total",
            &[("result", "public_refused")]
        )
        .await
            >= 1.0
    );
    assert!(
        relay.stderr().contains("public address refused"),
        "{}",
        relay.stderr()
    );
    assert!(
        eventually(Duration::from_secs(5), || relay
            .access_log()
            .contains("end=no_server"))
        .await
    );

    // Mixed: the private address serves, the public one stays refused.
    set_zone(&zone, Mode::Answer, &["8.8.8.8", "127.0.0.2"], 1);
    let two = format!("127.0.0.2:{port}");
    wait_status(
        admin,
        Duration::from_secs(5),
        "serving the private address",
        |s| up_addresses(s, "p", "svc") == [two.clone()],
    )
    .await;
    assert_eq!(try_which(listen).await.unwrap().1, "two");
    let status = get_status(admin).await;
    assert_eq!(
        dns_json(&status, "p")["refused"],
        serde_json::json!(["8.8.8.8"])
    );
    assert_eq!(servers_json(&status, "p", "svc").len(), 1);

    // A reload keeps the answer and the address's state: still up at once, no new lookup
    // needed first.
    relay.signal("HUP");
    relay.wait_for_stderr("reload: done", Duration::from_secs(10));
    let status = get_status(admin).await;
    assert_eq!(up_addresses(&status, "p", "svc"), [two], "{status}");
    assert_eq!(try_which(listen).await.unwrap().1, "two");
}
