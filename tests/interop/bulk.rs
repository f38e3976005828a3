//! Bulk through the relay with real programs, both directions: iperf3 (its counts against the
//! relay's), and curl uploading to and downloading from nginx, byte for byte (SHA-256 of the
//! file nginx wrote, of the file curl wrote). Throughput is the benchmarks' business, never
//! asserted here.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clients::curl;
use crate::peers::{program, retrying, run, text, Peer};
use crate::support::*;

/// Per iperf3 run.
const BYTES: u64 = 64 * 1024 * 1024;
/// Per curl transfer (generated and hashed by this unoptimized test code: smaller).
const UPLOAD: u64 = 32 * 1024 * 1024;

async fn iperf_server(dir: &std::path::Path) -> (Peer, SocketAddr) {
    let iperf3 = program("iperf3", "iperf3");
    retrying("iperf3 -s", || {
        let addr = listen_addr();
        let mut peer = Peer::spawn(
            "iperf3-server",
            &iperf3,
            [
                "-s",
                "-B",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
            ],
            dir,
        );
        async move {
            peer.wait_listening(addr).await?;
            Ok((peer, addr))
        }
    })
    .await
}

/// One iperf3 test of `BYTES` through `relay` (`reverse`: the server sends); iperf3's JSON.
async fn iperf_client(relay: SocketAddr, reverse: bool) -> serde_json::Value {
    let mut command = Command::new(program("iperf3", "iperf3"));
    command.args([
        "-c",
        &relay.ip().to_string(),
        "-p",
        &relay.port().to_string(),
        "-n",
        &BYTES.to_string(),
        "-J",
    ]);
    if reverse {
        command.arg("-R");
    }
    let output = run(command, Duration::from_secs(120)).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "iperf3: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iperf3_through_the_relay_in_both_directions_delivers_every_byte() {
    let dir = crate::peers::Scratch::new("interop-iperf");
    let (_server, server) = iperf_server(&dir).await;
    let (relay, [listen]) = start_relay(|[listen]| config(listen, &[server], "", ""));

    for reverse in [false, true] {
        let mark = log_mark(&relay);
        let report = iperf_client(listen, reverse).await;
        let end = &report["end"];
        let sent = end["sum_sent"]["bytes"].as_u64().unwrap_or(0);
        let received = end["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert_eq!(sent, BYTES, "reverse={reverse}: {end}");
        // Two connections per test: control, then data, which starts with iperf3's 37-byte
        // cookie from the client.
        let lines = || -> Vec<String> {
            relay
                .access_log()
                .lines()
                .skip(mark)
                .map(str::to_string)
                .collect()
        };
        eventually(STEP_LIMIT, || lines().len() >= 2).await;
        let lines = lines();
        let shown = lines.join("\n");
        let bytes = |line: &str, key: &str| {
            field(line, key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {key}: {line}"))
        };
        let data = lines
            .iter()
            .max_by_key(|l| bytes(l, "bytes_c2s") + bytes(l, "bytes_s2c"))
            .unwrap();
        let control = lines.iter().find(|l| *l != data).unwrap();
        // Either side may end the control connection first.
        assert!(
            matches!(
                field(control, "end"),
                Some("client_closed" | "server_closed")
            ),
            "{shown}"
        );
        if reverse {
            // The server sends, the client reads: every byte, as sent, as carried, as
            // received. Which side closes the data connection first is iperf3's race (the
            // client may close it on the control connection's end of test before the
            // server's FIN arrives); either is a clean end.
            assert_eq!(received, sent, "{end}");
            assert_eq!(bytes(data, "bytes_s2c"), BYTES, "{shown}");
            assert_eq!(bytes(data, "bytes_c2s"), 37, "{shown}");
            assert!(
                matches!(field(data, "end"), Some("server_closed" | "client_closed")),
                "{shown}"
            );
        } else {
            // iperf3's server stops reading when the client's end of test arrives on the
            // control connection, which overtakes the data still in flight, and closes with
            // that data unread (a reset). It happens without a relay too (64,225,280 of
            // 67,108,864 in one of three direct runs on this machine); more often with one
            // more hop of buffers. So: the relay carried at least what iperf3 counted, never
            // more than was sent; byte-exact delivery upwards is the curl upload's test.
            assert!(received > 0 && received <= sent, "{end}");
            let carried = bytes(data, "bytes_c2s");
            assert!(
                carried >= received + 37 && carried <= sent + 37,
                "carried {carried}, iperf3 received {received} of {sent}:\n{shown}"
            );
            assert_eq!(bytes(data, "bytes_s2c"), 0, "{shown}");
            assert!(
                matches!(field(data, "end"), Some("server_closed" | "server_reset")),
                "{shown}"
            );
        }
    }
}

/// `len` deterministic pseudo-random bytes in `path`; their SHA-256.
fn write_payload(path: &std::path::Path, seed: u64, len: usize) -> [u8; 32] {
    let mut bytes = vec![0u8; len];
    Payload::new(seed).fill(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
    Sha256::digest(&bytes).into()
}

fn digest_of(path: &std::path::Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap_or_default()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uploads_to_and_downloads_from_nginx_through_the_relay_byte_for_byte() {
    let dir = crate::peers::Scratch::new("interop-bulk");
    let root = dir.join("www");
    std::fs::create_dir_all(root.join("files")).unwrap();
    let len = UPLOAD as usize;
    let down_digest = write_payload(&root.join("files/down.bin"), 11, len);
    let upload = dir.join("up.bin");
    let up_digest = write_payload(&upload, 12, len);
    let (_nginx, addrs) = crate::nginx::start(&dir, 1, |addrs| {
        format!(
            "    server {{
        listen {};
        root {};
        client_max_body_size 0;
        location /files/ {{ dav_methods PUT; create_full_put_path on; }}
    }}",
            addrs[0],
            root.display()
        )
    })
    .await;
    let (relay, [listen]) = start_relay(|[listen]| config(listen, &[addrs[0]], "", ""));

    let ran = curl(&[
        "--fail",
        "-T",
        &upload.display().to_string(),
        &format!("http://{listen}/files/up.bin"),
    ])
    .await;
    assert!(ran.ok(), "upload: {}", ran.shown());
    assert_eq!(
        std::fs::metadata(root.join("files/up.bin"))
            .map(|m| m.len())
            .ok(),
        Some(UPLOAD),
        "the file nginx wrote"
    );
    assert!(
        digest_of(&root.join("files/up.bin")) == up_digest,
        "upload corrupted"
    );

    let downloaded = dir.join("down.bin");
    let ran = curl(&[
        "--fail",
        "-o",
        &downloaded.display().to_string(),
        &format!("http://{listen}/files/down.bin"),
    ])
    .await;
    assert!(ran.ok(), "download: {}", ran.shown());
    assert!(digest_of(&downloaded) == down_digest, "download corrupted");

    let lines = relay.wait_for_log_lines(2, STEP_LIMIT).await;
    let carried = |key: &str| {
        lines
            .iter()
            .filter_map(|l| field(l, key)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    // The body plus the HTTP head each way.
    assert!(carried("bytes_c2s") > UPLOAD, "{lines:?}");
    assert!(carried("bytes_s2c") > UPLOAD, "{lines:?}");
}
