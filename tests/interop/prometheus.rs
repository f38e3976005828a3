//! Prometheus itself scraping the admin listener's `/metrics` every second: every scrape up
//! with no error, and a query through its HTTP API returns the relay's connection counter and
//! histogram as the relay counted them. The exposition is not only parseable but scrapeable.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clients::curl;
use crate::peers::{program, retrying, Peer};
use crate::support::*;

const CONNECTIONS: usize = 3;

async fn prometheus(dir: &std::path::Path, target: SocketAddr) -> (Peer, SocketAddr) {
    let prometheus = program("prometheus", "prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: l4relay\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let started = retrying("prometheus", || {
        let web = listen_addr();
        let mut peer = Peer::spawn(
            "prometheus",
            &prometheus,
            [
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={web}"),
                "--log.level=info".to_string(),
            ],
            dir,
        );
        async move {
            peer.wait_listening(web).await?;
            Ok((peer, web))
        }
    })
    .await;
    // Its API answers 503 until the storage is open: wait for /-/ready.
    let ready = format!("http://{}/-/ready", started.1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ran = curl(&["--fail", &ready]).await;
        if ran.ok() {
            return started;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready after 30 s: {}",
            ran.shown()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One instant query through Prometheus's HTTP API; the value of its only sample, if any.
async fn query(web: SocketAddr, promql: &str) -> Option<f64> {
    let ran = curl(&[
        "--get",
        "--data-urlencode",
        &format!("query={promql}"),
        &format!("http://{web}/api/v1/query"),
    ])
    .await;
    assert!(ran.ok(), "{}", ran.shown());
    let answer: serde_json::Value =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout));
    assert_eq!(answer["status"], "success", "{answer}");
    let result = answer["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql}: {answer}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Polls `promql` until its value satisfies `wanted`, up to 30 s (Prometheus starts, then
/// scrapes every second).
async fn wait_until(web: SocketAddr, promql: &str, wanted: impl Fn(f64) -> bool) {
    let started = Instant::now();
    loop {
        let value = query(web, promql).await;
        if value.is_some_and(&wanted) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{promql} = {value:?} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for(web: SocketAddr, promql: &str, wanted: f64) {
    wait_until(web, promql, |v| v == wanted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_metrics_and_its_api_returns_the_connection_counter() {
    let dir = crate::peers::Scratch::new("interop-prometheus");
    let (echo, _) = echo_server().await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n  [[pool.server]]\n  name = \"echo\"\n  address = \"{echo}\"\n"
        )
    });
    for i in 0..CONNECTIONS {
        let mut stream = connect(listen).await;
        let message = format!("hello {i}");
        stream.write_all(message.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = String::new();
        tokio::time::timeout(STEP_LIMIT, stream.read_to_string(&mut back))
            .await
            .expect("the echo in time")
            .unwrap();
        assert_eq!(back, message);
    }
    relay.wait_for_log_lines(CONNECTIONS, STEP_LIMIT).await;

    let (_prometheus, web) = prometheus(&dir, admin).await;
    wait_for(
        web,
        "l4relay_connections_total{listener=\"test\",outcome=\"relayed\"}",
        CONNECTIONS as f64,
    )
    .await;
    wait_for(
        web,
        "l4relay_session_duration_seconds_count{listener=\"test\"}",
        CONNECTIONS as f64,
    )
    .await;
    wait_for(
        web,
        "l4relay_upstream_connections_total{pool=\"p\",server=\"echo\",result=\"ok\"}",
        CONNECTIONS as f64,
    )
    .await;
    // A few seconds of scrapes, every one of them up and without error.
    wait_until(web, "count_over_time(up{job=\"l4relay\"}[1m])", |n| {
        n >= 3.0
    })
    .await;
    assert_eq!(
        query(web, "min_over_time(up{job=\"l4relay\"}[1m])").await,
        Some(1.0)
    );
    let ran = curl(&[&format!("http://{web}/api/v1/targets")]).await;
    let targets: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
}
