//! The status page (`GET /` on the admin listener) in a real browser: headless Chromium
//! (Debian's `chromium`) loads it from a running relay, its JavaScript renders what `/status`,
//! `/connections` and `/metrics` say, and the rendered DOM (`--dump-dom`) must show the
//! listeners, pools, servers with their state and reason, the DNS answers, the open connections
//! and the drain state. A screenshot at a typical window size is taken as well; with
//! `UPDATE_SCREENSHOT=1` it replaces `docs/status-page.png`, the one the README shows.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use l4relay::protocol::proxy_protocol::encode_v2;
use l4relay::protocol::vpce::VpceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SCREENSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png");

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|name| {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom`, `--screenshot=...`): its stdout.
/// The page gets 6 s of virtual time (timers run; network waits are not counted) to render.
fn browse(browser: &str, url: &str, what: &[&str]) -> String {
    let profile = scratch_dir("chromium-profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--virtual-time-budget=6000",
            "--timeout=30000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(what)
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A relay that looks like the deployment: a PROXY v2 listener for VPC endpoints, a pool with
/// one server up, one refusing (down) and one given by name (resolved from /etc/hosts).
async fn deployment() -> (RelayProcess, SocketAddr, SocketAddr, Vec<TcpStream>) {
    let (up, _) = echo_server().await;
    let (named, _) = echo_server().await;
    let refused = listen_addr();
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        format!(
        "[admin]\nlisten = \"{admin}\"\n\n[drain]\nannounce = \"60s\"\n\n\
         [[listener]]\nname = \"openai\"\nlisten = \"{listen}\"\npool = \"azure-openai\"\n\
         proxy_protocol = \"v2\"\nallow_vpce = [\"vpce-0123456789abcdef0\", \"vpce-0fedcba9876543210\"]\n\
         first_byte_timeout = \"30s\"\n\n\
         [[pool]]\nname = \"azure-openai\"\nbalance = \"least-connections\"\n\
           [pool.health]\n  check = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"200ms\"\n  rise = 1\n  fall = 1\n\
           [[pool.server]]\n  name = \"aoai-1\"\n  address = \"{up}\"\n\
           [[pool.server]]\n  name = \"aoai-2\"\n  address = \"{refused}\"\n\
           [[pool.server]]\n  name = \"aoai-private\"\n  address = \"localhost:{}\"\n",
        named.port()
        )
    });
    // Wait until health checks have judged every address (and the name resolved).
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let status = get_status(admin).await;
        let servers = pool_json(&status, "azure-openai")["servers"]
            .as_array()
            .unwrap()
            .clone();
        let judged = servers.len() >= 3 && servers.iter().all(|s| s["state"] != "unknown");
        if judged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health checks never settled: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Long-lived streams through VPC endpoints, with some bytes each way.
    let mut streams = Vec::new();
    for (i, (client, vpce)) in [
        ("10.1.2.3:40001", "vpce-0123456789abcdef0"),
        ("10.1.7.9:51544", "vpce-0fedcba9876543210"),
        ("10.1.2.3:40002", "vpce-0123456789abcdef0"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = connect(listen).await;
        let mut header = Vec::new();
        let vpce = VpceId::parse(vpce).unwrap();
        encode_v2(client.parse().unwrap(), listen, Some(&vpce), &mut header);
        stream.write_all(&header).await.unwrap();
        let payload = vec![b'x'; 1000 * (i + 1)];
        stream.write_all(&payload).await.unwrap();
        let mut echoed = vec![0u8; payload.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        streams.push(stream);
    }
    (relay, listen, admin, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_come_from_the_binary() {
    let (server, _) = echo_server().await;
    let (_relay, [_, admin]) = start_relay(|[listen, admin]| {
        config(listen, &[server], "", "")
            .replace("listen = \"off\"", &format!("listen = \"{admin}\""))
    });
    let (code, page) = admin_request(admin, "GET", "/", None).await;
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("Content-Security-Policy"), "{page}");
    let (code, script) = admin_request(admin, "GET", "/ui/app.js", None).await;
    assert_eq!(code, 200);
    assert!(script.contains("fetchJson('/status')"), "{script}");
    assert_eq!(
        admin_request(admin, "GET", "/ui/style.css", None).await.0,
        200
    );
    assert_eq!(
        admin_request(admin, "GET", "/ui/missing.js", None).await.0,
        404
    );
    // The table is there, and empty.
    let (code, body) = admin_request(admin, "GET", "/connections", None).await;
    assert_eq!(code, 200, "{body}");
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(table["open"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_status_page_and_its_drain_state() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: chromium not installed (apt-get install chromium); CI installs it");
        return;
    };
    let (relay, _listen, admin, streams) = deployment().await;
    let url = format!("http://{admin}/");

    let dom = tokio::task::spawn_blocking({
        let (browser, url) = (browser.to_string(), url.clone());
        move || browse(&browser, &url, &["--dump-dom"])
    })
    .await
    .unwrap();
    let has = |text: &str| {
        assert!(
            dom.contains(text),
            "the rendered page lacks {text:?}:\n{dom}"
        )
    };
    // Rendered by the script, not just the static page.
    has("data-state=\"loaded\"");
    has("class=\"badge good\">running<");
    has("class=\"badge good\">ready<");
    // Listeners, pools, servers with state and reason, DNS names with their addresses.
    has("data-listener=\"openai\"");
    has("data-pool=\"azure-openai\"");
    has("least-connections · health check: tcp");
    for (server, state) in [("aoai-1", "up"), ("aoai-2", "down"), ("aoai-private", "up")] {
        let row_start = dom
            .find(&format!("data-server=\"{server}\""))
            .unwrap_or_else(|| panic!("no row for {server}:\n{dom}"));
        let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
        assert!(
            row.contains(&format!("class=\"state state-{state}\">{state}<")),
            "{server} is not shown {state}: {row}"
        );
    }
    has("refused");
    has("localhost:");
    has("127.0.0.1");
    // The open connections, longest-lived first, with their VPC endpoints.
    has("(3 open)");
    has("10.1.2.3:40001");
    has("vpce-0fedcba9876543210");
    let first = dom.find("10.1.2.3:40001").unwrap();
    let last = dom.find("10.1.2.3:40002").unwrap();
    assert!(first < last, "longest-lived first");
    assert!(!dom.contains("Cannot read the relay"), "{dom}");

    // A screenshot at a typical window size.
    let shot = scratch_dir("status-page").join("status-page.png");
    tokio::task::spawn_blocking({
        let (browser, url, shot) = (browser.to_string(), url.clone(), shot.clone());
        move || {
            browse(
                &browser,
                &url,
                &[
                    &format!("--screenshot={}", shot.display()),
                    "--window-size=1280,800",
                ],
            )
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 800));
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&shot, Path::new(SCREENSHOT)).unwrap();
        eprintln!("wrote {SCREENSHOT}");
    }

    // Draining: the page says so.
    relay.signal("TERM");
    let deadline = Instant::now() + STEP_LIMIT;
    while get_status(admin).await["phase"] != "announcing" {
        assert!(Instant::now() < deadline, "not draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dom = tokio::task::spawn_blocking(move || browse(browser, &url, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(
        dom.contains("class=\"badge warn\">draining: announcing (not ready, still accepting)<"),
        "{dom}"
    );
    assert!(dom.contains("class=\"badge bad\">not ready<"), "{dom}");
    drop(streams);
}
