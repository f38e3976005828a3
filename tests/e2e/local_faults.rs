//! A local fault stays local, against the built binary: a ClientHello past the peek limit on a
//! listener with SNI routes follows `route_fallback` with its own reason instead of slipping
//! past the routes, and `/readyz` tells the load balancer when the process is at
//! `max_connections` (with hysteresis).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The relay's peek limit (`sni::MAX_CLIENT_HELLO`), as documented in configuration.md.
const PEEK_LIMIT: usize = 16 * 1024;

/// A TLS ClientHello naming `server_name` first, padded (RFC 7685) by `padding` bytes, in records
/// of at most 16 KiB as a client would send it.
fn client_hello(server_name: &str, padding: usize) -> Vec<u8> {
    let host = server_name.as_bytes();
    let mut extensions = Vec::new();
    let list_len = 3 + host.len();
    extensions.extend_from_slice(&0u16.to_be_bytes());
    extensions.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    extensions.extend_from_slice(&(list_len as u16).to_be_bytes());
    extensions.push(0);
    extensions.extend_from_slice(&(host.len() as u16).to_be_bytes());
    extensions.extend_from_slice(host);
    extensions.extend_from_slice(&21u16.to_be_bytes());
    extensions.extend_from_slice(&(padding as u16).to_be_bytes());
    extensions.resize(extensions.len() + padding, 0);

    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0);
    body.extend_from_slice(&2u16.to_be_bytes());
    body.extend_from_slice(&[0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut message = vec![1];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend_from_slice(&body);
    let mut records = Vec::new();
    for fragment in message.chunks(1 << 14) {
        records.extend_from_slice(&[22, 3, 1]);
        records.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        records.extend_from_slice(fragment);
    }
    records
}

/// Sends `bytes`, half-closes, and reads to the end: (the name the server announced, what it
/// echoed after it).
async fn through(listen: SocketAddr, bytes: &[u8]) -> (String, String, Vec<u8>) {
    let mut stream = connect(listen).await;
    let client = stream.local_addr().unwrap().to_string();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP_LIMIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server answered in time")
        .expect("read the answer");
    let newline = answer
        .iter()
        .position(|&b| b == b'\n')
        .expect("a server name");
    let name = String::from_utf8(answer[..newline].to_vec()).unwrap();
    (client, name, answer[newline + 1..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_client_hello_follows_route_fallback() {
    let (routed, routed_accepted) = named_server("routed").await;
    let (default, _) = named_server("default").await;
    let routes = "[[listener.route]]\nserver_names = [\"api.example.com\"]\npool = \"routed\"\n";
    let listener = |name: &str, addr: SocketAddr, fallback: &str| {
        format!("[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\npool = \"default\"\nroute_fallback = \"{fallback}\"\n{routes}\n")
    };
    let pool = |name: &str, server: SocketAddr| {
        format!("[[pool]]\nname = \"{name}\"\n  [[pool.server]]\n  address = \"{server}\"\n\n")
    };
    let (relay, [lenient, strict]) = start_relay(|[lenient, strict]| {
        assemble_config(
            None,
            &[
                listener("lenient", lenient, "pool"),
                listener("strict", strict, "refuse"),
            ],
            &[pool("default", default), pool("routed", routed)],
        )
    });

    // Within the limit, a padded ClientHello routes by its name.
    let fits = client_hello("api.example.com", PEEK_LIMIT - 200);
    assert!(fits.len() <= PEEK_LIMIT && fits.len() > PEEK_LIMIT - 200);
    for listen in [lenient, strict] {
        let (client, name, echoed) = through(listen, &fits).await;
        assert_eq!(name, "routed");
        assert!(echoed == fits, "the ClientHello arrived changed");
        let line = log_for(&relay, &client).await;
        assert_eq!(field(&line, "sni"), Some("api.example.com"), "{line}");
        assert_eq!(field(&line, "detail"), None, "{line}");
    }

    // Past it: the name is in the first bytes, and the server would see it, but the relay
    // cannot route on it. On "pool" it goes to the default pool saying why, byte for byte.
    let oversize = client_hello("api.example.com", PEEK_LIMIT + 4000);
    assert!(oversize.len() > PEEK_LIMIT + 4000);
    let (client, name, echoed) = through(lenient, &oversize).await;
    assert_eq!(name, "default");
    assert_eq!(echoed.len(), oversize.len());
    assert!(echoed == oversize, "the ClientHello arrived changed");
    let line = log_for(&relay, &client).await;
    for (key, value) in [
        ("sni", "-"),
        ("pool", "default"),
        ("end", "client_closed"),
        ("detail", "hello_too_long"),
    ] {
        assert_eq!(field(&line, key), Some(value), "{key} in {line}");
    }

    // On "refuse" it is refused, with the same reason.
    let mut stream = connect(strict).await;
    let client = stream.local_addr().unwrap().to_string();
    // The relay resets once it has read its limit: the rest may not be writable.
    let _ = stream.write_all(&oversize).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(STEP_LIMIT, stream.read(&mut buf))
        .await
        .expect("the relay ended the connection in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a refused connection got bytes"
    );
    let line = log_for(&relay, &client).await;
    for (key, value) in [
        ("pool", "-"),
        ("end", "refused_rule"),
        ("detail", "hello_too_long"),
    ] {
        assert_eq!(field(&line, key), Some(value), "{key} in {line}");
    }
    assert_eq!(
        routed_accepted.get(),
        2,
        "only the fitting hellos were routed"
    );
}

/// /readyz answer: (status, body).
async fn readyz(admin: SocketAddr) -> (u16, String) {
    admin_request(admin, "GET", "/readyz", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_at_the_process_limit_with_hysteresis() {
    let (server, _) = echo_server().await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config(listen, &[server], "", "")
            .replace("listen = \"off\"", &format!("listen = \"{admin}\""))
            .replace("[admin]", "[global]\nmax_connections = 40\n\n[admin]")
    });
    let mut held = Vec::new();
    for i in 0..39u8 {
        let mut stream = connect(listen).await;
        stream.write_all(&[i]).await.unwrap();
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).await.unwrap();
        held.push(stream);
    }
    assert_eq!(readyz(admin).await.0, 200, "39 of 40 is below the limit");

    let mut last = connect(listen).await;
    last.write_all(b"x").await.unwrap();
    last.read_exact(&mut [0u8; 1]).await.unwrap();
    held.push(last);
    let (code, body) = readyz(admin).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("at max_connections: 40 of 40 open") && body.contains("ready again at 38"),
        "{body}"
    );
    // The 41st client is refused: what readiness announced.
    // (Reset at once: possibly before the connect has returned.)
    if let (_, Ok(mut refused)) = open("127.0.0.1", listen).await {
        let _ = refused.write_all(b"x").await;
        let read = tokio::time::timeout(STEP_LIMIT, refused.read(&mut [0u8; 1])).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "the 41st was relayed");
    }

    // One closes: 39 open, still not ready (hysteresis) ...
    drop(held.pop());
    wait_for_active(admin, 39).await;
    assert_eq!(readyz(admin).await.0, 503, "ready again at 39 of 40");

    // ... another: 38 of 40 is 95 %: ready.
    drop(held.pop());
    wait_for_active(admin, 38).await;
    let (code, body) = readyz(admin).await;
    assert_eq!(code, 200, "not ready again at 38 of 40: {body}");
    drop(relay);
}

/// Polls /status until the process has `n` connections open (a closed client's connection
/// ends on the relay's side a moment later).
async fn wait_for_active(admin: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let active = get_status(admin).await["connections"]["active"].as_u64();
        if active == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{active:?} connections open, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
