//! End-to-end limits: the process-wide connection limit, and running out of file descriptors.

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects, sends a byte and waits for its echo: Some(stream) when relayed, None when the relay
/// closed or reset the connection instead (or nothing came back within `limit`).
async fn relayed(addr: std::net::SocketAddr, limit: Duration) -> Option<TcpStream> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"x").await.ok()?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(1) => Some(stream),
            _ => None,
        }
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_process_limit_connections_are_refused_at_once() {
    let (server, _) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        config(listen, &[server], "", "")
            .replace("[admin]", "[global]\nmax_connections = 20\n\n[admin]")
    });

    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(
            relayed(listen, Duration::from_secs(5))
                .await
                .expect("under the limit: relayed"),
        );
    }
    for _ in 0..30 {
        let started = Instant::now();
        assert!(
            relayed(listen, Duration::from_secs(5)).await.is_none(),
            "over the limit: refused"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "refused at once, took {:?}",
            started.elapsed()
        );
    }
    drop(held);
    let lines = relay.wait_for_log_lines(50, Duration::from_secs(5)).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("end=refused_limit"))
            .count(),
        30
    );
    for _ in 0..20 {
        assert!(
            relayed(listen, Duration::from_secs(5)).await.is_some(),
            "after the burst: normal service"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_pauses_then_recovers() {
    let (server, _) = echo_server().await;
    let (relay, [listen]) = start_relay_with(
        Launch {
            shell_prefix: Some("ulimit -n 256"),
            ..Launch::default()
        },
        |[listen]| config(listen, &[server], "backlog = 2048", ""),
    );

    // 1,000 attempts at once: about a hundred fit in 256 descriptors, the rest wait in the
    // backlog or are turned away.
    let attempts: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(relayed(listen, Duration::from_secs(10))))
        .collect();
    let mut held = Vec::new();
    for attempt in attempts {
        if let Some(stream) = attempt.await.unwrap() {
            held.push(stream);
        }
    }
    assert!(
        held.len() >= 50,
        "only {} connections relayed under 256 fds",
        held.len()
    );
    assert!(held.len() < 1000, "all 1000 relayed in 256 fds?");
    assert!(
        relay.stderr().contains("accept paused"),
        "no accept backoff logged:\n{}",
        relay.stderr()
    );

    // Saturated: the relay must not spin on EMFILE.
    let cpu_before = relay.cpu_time();
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = relay.cpu_time() - cpu_before;
    let share = cpu.as_secs_f64() / wall.elapsed().as_secs_f64();
    eprintln!(
        "relayed {} of 1000; CPU while saturated: {cpu:?} over {:?} ({:.1}%)",
        held.len(),
        wall.elapsed(),
        share * 100.0
    );
    assert!(
        share < 0.2,
        "relay used {:.0}% CPU while out of descriptors",
        share * 100.0
    );

    // Once connections close, service resumes.
    drop(held);
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if relayed(listen, Duration::from_secs(2)).await.is_some() {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "no service after descriptors were freed:\n{}",
        relay.stderr()
    );
    let fresh: Vec<_> = (0..50)
        .map(|_| tokio::spawn(relayed(listen, Duration::from_secs(5))))
        .collect();
    for f in fresh {
        assert!(
            f.await.unwrap().is_some(),
            "a new connection after recovery failed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_limit_refuses_on_that_listener_only() {
    let (server, _) = echo_server().await;
    let (relay, [limited, other]) = start_relay(|[limited, other]| {
        format!(
        "[admin]\nlisten = \"off\"\n\n\
         [[listener]]\nname = \"limited\"\nlisten = \"{limited}\"\npool = \"p\"\nmax_connections = 5\n\n\
         [[listener]]\nname = \"other\"\nlisten = \"{other}\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"{server}\"\n"
    )
    });
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            relayed(limited, Duration::from_secs(5))
                .await
                .expect("under the listener's limit"),
        );
    }
    assert!(
        relayed(limited, Duration::from_secs(5)).await.is_none(),
        "sixth connection on the limited listener"
    );
    for _ in 0..10 {
        held.push(
            relayed(other, Duration::from_secs(5))
                .await
                .expect("the other listener is not limited"),
        );
    }
    let lines = relay.wait_for_log_lines(1, Duration::from_secs(5)).await;
    assert!(
        lines[0].contains("listener=limited")
            && lines[0].contains("end=refused_limit detail=listener"),
        "{}",
        lines[0]
    );
    held.truncate(4);
    assert!(
        eventually(Duration::from_secs(5), || relay
            .access_log()
            .lines()
            .count()
            >= 12)
        .await,
        "closes not logged"
    );
    assert!(
        relayed(limited, Duration::from_secs(5)).await.is_some(),
        "a slot freed on the limited listener"
    );
}
