//! PROXY protocol v2 as the NLB deployment uses it, with real peers on both sides: HAProxy in
//! front (the NLB stand-in, `send-proxy-v2` with its own TLVs), l4relay reading the header and
//! sending its own to nginx (`listen ... proxy_protocol`), which must see the original client
//! address and port; HAProxy also checks `/readyz` on the health listener as an NLB does (a
//! v2 header first). A client sending the AWS VPC endpoint TLV itself (as the NLB does) gets its
//! endpoint ID into the access log, and into nginx's when nginx can read it (1.23.2+).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::peers::{program, retrying, run, text, Peer};

const VPCE: &str = "vpce-0123456789abcdef0";

/// HAProxy in TCP mode on 127.0.0.1, every connection to `relay` with a v2 header carrying
/// HAProxy's own TLVs (CRC32C, unique ID) that an NLB never sends; checking the relay as an
/// NLB's HTTP health check does: `GET /readyz` on `health`, a PROXY v2 header first.
async fn haproxy(
    dir: &std::path::Path,
    relay: SocketAddr,
    health: SocketAddr,
) -> (Peer, SocketAddr) {
    let haproxy = program("haproxy", "haproxy");
    retrying("haproxy", || {
        let front = free_addr();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global
    log stderr format raw local0 info
    maxconn 256
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    unique-id-format %[uuid()]
frontend nlb
    bind {front}
    default_backend relay
backend relay
    option httpchk GET /readyz
    http-check expect status 200
    option log-health-checks
    default-server inter 200ms fall 1 rise 1
    server relay {relay} send-proxy-v2 proxy-v2-options crc32c,unique-id check addr {} port {} check-send-proxy
",
                health.ip(),
                health.port()
            ),
        )
        .unwrap();
        let mut peer = Peer::spawn(
            "haproxy",
            &haproxy,
            ["-db".as_ref(), "-f".as_ref(), config.as_os_str()],
            dir,
        );
        async move {
            peer.wait_listening(front).await?;
            Ok((peer, front))
        }
    })
    .await
}

/// A PROXY v2 header for TCP/IPv4 from `source` to `destination` with the AWS VPC endpoint
/// TLV, written out byte by byte from the spec (not with the relay's own encoder).
fn v2_header_with_vpce(source: SocketAddr, destination: SocketAddr, vpce: &str) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (source, destination) else {
        panic!("IPv4 only");
    };
    let mut tlv = vec![0xEA];
    tlv.extend_from_slice(&(1 + vpce.len() as u16).to_be_bytes());
    tlv.push(0x01);
    tlv.extend_from_slice(vpce.as_bytes());
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&dst.ip().octets());
    header.extend_from_slice(&src.port().to_be_bytes());
    header.extend_from_slice(&dst.port().to_be_bytes());
    header.extend_from_slice(&tlv);
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_to_l4relay_to_nginx_keeps_the_client_address_and_the_vpc_endpoint() {
    let dir = crate::peers::Scratch::new("interop-pp");
    // nginx 1.23.2 added $proxy_protocol_tlv_*; Debian 12 ships 1.22.
    let tlv_variables = crate::nginx::version().await >= (1, 23, 2);
    let vpce_field = if tlv_variables {
        " vpce=$proxy_protocol_tlv_aws_vpce_id"
    } else {
        ""
    };
    let access_log = dir.join("nginx-access.log");
    let (_nginx, nginx_addrs) = crate::nginx::start(&dir, 1, |addrs| {
        format!(
            "    log_format pp 'client=$proxy_protocol_addr:$proxy_protocol_port peer=$remote_addr{vpce_field} \"$request\" $status';
    server {{
        listen {} proxy_protocol;
        access_log {} pp;
        location / {{ return 200 'client=$proxy_protocol_addr:$proxy_protocol_port{vpce_field}\\n'; }}
    }}",
            addrs[0],
            access_log.display()
        )
    })
    .await;

    let (listen, admin, health) = (listen_addr(), free_addr(), free_addr());
    let relay = RelayProcess::start(&format!(
        "[admin]\nlisten = \"{admin}\"\nhealth_listen = \"{health}\"\n\n[[listener]]\nname = \"nlb\"\nlisten = \"{listen}\"\npool = \"nginx\"\nproxy_protocol = \"v2\"\n\n[[pool]]\nname = \"nginx\"\nsend_proxy = \"v2\"\n  [[pool.server]]\n  name = \"nginx\"\n  address = \"{}\"\n",
        nginx_addrs[0]
    ));
    let (mut haproxy, front) = haproxy(&dir, listen, health).await;
    // HAProxy's health checks, each with a PROXY v2 header before the request, pass.
    haproxy
        .wait_output("Health check for server relay/relay succeeded")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // curl from 127.0.0.5 through HAProxy and l4relay: nginx must answer with curl's own
    // address and port, which curl reports itself.
    let curl = program("curl", "curl");
    let mut command = Command::new(&curl);
    command.args([
        "-sS",
        "--max-time",
        "10",
        "--interface",
        "127.0.0.5",
        "-w",
        "local=%{local_ip}:%{local_port}\n",
        &format!("http://{front}/"),
    ]);
    let output = run(command, Duration::from_secs(20)).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "curl: {stderr}\n{stdout}");
    let local = stdout
        .lines()
        .find_map(|l| l.strip_prefix("local="))
        .unwrap_or_else(|| panic!("no local address from curl: {stdout}"))
        .to_string();
    assert!(local.starts_with("127.0.0.5:"), "{local}");
    let seen = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client="))
        .unwrap_or("");
    let seen_addr = seen.split_whitespace().next().unwrap_or("");
    assert_eq!(
        seen_addr, local,
        "what nginx saw vs curl's address: {stdout}"
    );
    // The relay logged the same client (from HAProxy's header, CRC32C and unique-ID TLVs
    // skipped or checked), and nginx's own access log has it too.
    let line = log_for(&relay, &local).await;
    assert_eq!(field(&line, "end"), Some("client_closed"), "{line}");
    assert_eq!(field(&line, "vpce"), Some("-"), "{line}");
    let nginx_line = std::fs::read_to_string(&access_log).unwrap_or_default();
    assert!(
        nginx_line.contains(&format!("client={local} peer=127.0.0.1")),
        "nginx's access log: {nginx_line}"
    );

    // A client that sends its own v2 header with the AWS VPC endpoint TLV (the NLB's job).
    let claimed: SocketAddr = "10.20.30.40:4321".parse().unwrap();
    let mut stream = connect(listen).await;
    stream
        .write_all(&v2_header_with_vpce(claimed, listen, VPCE))
        .await
        .unwrap();
    stream
        .write_all(b"GET /vpce HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP_LIMIT, stream.read_to_string(&mut response))
        .await
        .expect("nginx's answer in time")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("client={claimed}")),
        "{response}"
    );
    // nginx has ended its side; the relay logs the connection once the client ends its own.
    drop(stream);
    let line = log_for(&relay, claimed).await;
    assert_eq!(field(&line, "vpce"), Some(VPCE), "{line}");
    if tlv_variables {
        // The relay passed the TLV on in its own header to nginx.
        assert!(response.contains(&format!("vpce={VPCE}")), "{response}");
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        assert!(log.contains(&format!("vpce={VPCE}")), "{log}");
    }
    assert!(
        !haproxy.output().contains("is DOWN"),
        "HAProxy marked the relay down:\n{}",
        haproxy.output()
    );
}
