//! End-to-end upstream choice: retries past a dead server, weighted round-robin, least
//! connections, backups.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port with nothing listening on it (bound, then closed).
fn dead_addr() -> std::net::SocketAddr {
    unused_addr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_succeeds_when_one_server_is_dead() {
    let (alive, accepted) = named_server("alive").await;
    let dead = dead_addr();
    let (relay, [listen]) = start_relay(|[listen]| {
        config(
            listen,
            &[dead, alive],
            "",
            "balance = \"round-robin\"\nretries = 2",
        )
    });
    for _ in 0..50 {
        let (mut stream, name) = which_server(listen).await;
        assert_eq!(name, "alive");
        stream.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        stream.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");
    }
    assert_eq!(accepted.get(), 50);
    // Round-robin sends about half the first attempts to the dead server; each one is retried.
    let lines = relay.wait_for_log_lines(50, Duration::from_secs(5)).await;
    assert!(lines.iter().all(|l| l.contains("server=s1")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let (a, a_count) = named_server("a").await;
    let (b, b_count) = named_server("b").await;
    let (c, c_count) = named_server("c").await;
    let (_relay, [listen]) = start_relay(|[listen]| {
        let mut text = config(listen, &[], "", "balance = \"round-robin\"");
        for (addr, weight) in [(a, 5), (b, 3), (c, 2)] {
            text.push_str(&format!(
                "  [[pool.server]]\n  address = \"{addr}\"\n  weight = {weight}\n"
            ));
        }
        text
    });

    const CONNECTIONS: u64 = 10_000;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for _ in 0..CONNECTIONS / 50 {
                let (stream, name) = which_server(listen).await;
                drop(stream);
                names.push(name);
            }
            names
        }));
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    for task in tasks {
        for name in task.await.unwrap() {
            *seen.entry(name).or_default() += 1;
        }
    }
    assert_eq!(a_count.get() + b_count.get() + c_count.get(), CONNECTIONS);
    for (name, weight) in [("a", 5.0), ("b", 3.0), ("c", 2.0)] {
        let expected = CONNECTIONS as f64 * weight / 10.0;
        let got = seen[name] as f64;
        assert!(
            (got - expected).abs() <= expected * 0.05,
            "{name}: {got} vs {expected} ({seen:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_connections_to_the_idle_server() {
    let (a, _) = named_server("a").await;
    let (b, _) = named_server("b").await;
    let (relay, [listen]) =
        start_relay(|[listen]| config(listen, &[a, b], "", "balance = \"least-connections\""));

    let (held, busy) = which_server(listen).await;
    for i in 0..20 {
        let (mut stream, name) = which_server(listen).await;
        assert_ne!(name, busy, "a new connection went to the busy server");
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        // Its access-log line means the relay has released the server's count.
        relay
            .wait_for_log_lines(i + 1, Duration::from_secs(5))
            .await;
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_only_when_the_primaries_cannot() {
    let (primary, _) = named_server("primary").await;
    let (backup, _) = named_server("backup").await;
    let (_relay, [listen]) = start_relay(|[listen]| {
        let mut text = config(listen, &[], "", "");
        text.push_str(&format!(
            "  [[pool.server]]\n  address = \"{primary}\"\n  max_connections = 2\n"
        ));
        text.push_str(&format!(
            "  [[pool.server]]\n  address = \"{backup}\"\n  backup = true\n"
        ));
        text
    });

    let (first, name1) = which_server(listen).await;
    let (second, name2) = which_server(listen).await;
    assert_eq!((name1.as_str(), name2.as_str()), ("primary", "primary"));
    let (_third, name3) = which_server(listen).await;
    assert_eq!(name3, "backup", "primary full: the backup serves");
    drop((first, second));
}
