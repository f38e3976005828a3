//! PROXY protocol v2 as the NLB deployment uses it, with real peers on both sides: HAProxy in
//! front (the NLB stand-in, `send-proxy-v2` with its own TLVs), l4relay reading the header and
//! sending its own to nginx (`listen ... proxy_protocol`), which must see the original client
//! address and port, over IPv4 and IPv6 and with a v1 header too; HAProxy also checks `/readyz` on the health listener as an NLB does (a
//! v2 header first). A client sending the AWS VPC endpoint TLV itself (as the NLB does) gets its
//! endpoint ID into the access log, and into nginx's when nginx can read it (1.23.2+).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::peers::{program, retrying, run, text, Peer};
use crate::support::*;

const VPCE: &str = "vpce-0123456789abcdef0";

/// Where HAProxy listens: `v2` and `v2_ipv6` send the relay a v2 header (with HAProxy's own
/// CRC32C and unique-ID TLVs, which an NLB never sends), `v1` a v1 header.
struct Fronts {
    v2: SocketAddr,
    v2_ipv6: SocketAddr,
    v1: SocketAddr,
}

/// HAProxy in TCP mode in front of the relay's listeners `v2` and `v1`, checking the relay as
/// an NLB's HTTP health check does: `GET /readyz` on `health`, a PROXY v2 header first.
async fn haproxy(
    dir: &std::path::Path,
    (v2, v1): (SocketAddr, SocketAddr),
    health: SocketAddr,
) -> (Peer, Fronts) {
    let haproxy = program("haproxy", "haproxy");
    retrying("haproxy", || {
        let ipv6 = std::net::TcpListener::bind("[::1]:0").expect("bind [::1]:0");
        let fronts = Fronts {
            v2: listen_addr(),
            v2_ipv6: ipv6.local_addr().unwrap(),
            v1: listen_addr(),
        };
        drop(ipv6);
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
    bind {}
    bind {}
    default_backend relay
frontend classic
    bind {}
    default_backend relay_v1
backend relay
    option httpchk GET /readyz
    http-check expect status 200
    option log-health-checks
    default-server inter 200ms fall 1 rise 1
    server relay {v2} send-proxy-v2 proxy-v2-options crc32c,unique-id check addr {} port {} check-send-proxy
backend relay_v1
    server relay_v1 {v1} send-proxy
",
                fronts.v2,
                fronts.v2_ipv6,
                fronts.v1,
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
            for front in [fronts.v2, fronts.v2_ipv6, fronts.v1] {
                peer.wait_listening(front).await?;
            }
            Ok((peer, fronts))
        }
    })
    .await
}

/// curl to `front` (from `interface` when given): the client address curl reports it used,
/// and the one nginx answers it saw, both as `ip port`.
async fn through(front: SocketAddr, interface: Option<&str>) -> (String, String) {
    let mut command = Command::new(program("curl", "curl"));
    command.args(["-sS", "--max-time", "10", "-g"]);
    if let Some(interface) = interface {
        command.args(["--interface", interface]);
    }
    command.args([
        "-w",
        "curl=%{local_ip} %{local_port}\n",
        &format!("http://{front}/"),
    ]);
    let output = run(command, Duration::from_secs(20)).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "curl: {stderr}\n{stdout}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {stdout}"))
            .to_string()
    };
    (line("curl="), line("nginx="))
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
            "    log_format pp 'nginx=$proxy_protocol_addr $proxy_protocol_port peer=$remote_addr{vpce_field} \"$request\" $status';
    server {{
        listen {} proxy_protocol;
        access_log {} pp;
        location / {{ return 200 'nginx=$proxy_protocol_addr $proxy_protocol_port{vpce_field}\\n'; }}
    }}",
            addrs[0],
            access_log.display()
        )
    })
    .await;

    let (relay, [listen, classic, direct, _admin, health]) = start_relay(
        |[listen, classic, direct, admin, health]| {
            format!(
                "[admin]\nlisten = \"{admin}\"\nhealth_listen = \"{health}\"\n\n[[listener]]\nname = \"nlb\"\nlisten = \"{listen}\"\npool = \"nginx\"\nproxy_protocol = \"v2\"\n\n[[listener]]\nname = \"classic\"\nlisten = \"{classic}\"\npool = \"nginx\"\nproxy_protocol = \"v1\"\n\n[[listener]]\nname = \"direct\"\nlisten = \"{direct}\"\npool = \"nginx_v1\"\n\n[[pool]]\nname = \"nginx\"\nsend_proxy = \"v2\"\n  [[pool.server]]\n  name = \"nginx\"\n  address = \"{nginx}\"\n\n[[pool]]\nname = \"nginx_v1\"\nsend_proxy = \"v1\"\n  [[pool.server]]\n  name = \"nginx\"\n  address = \"{nginx}\"\n",
                nginx = nginx_addrs[0]
            )
        },
    );
    let (mut haproxy, fronts) = haproxy(&dir, (listen, classic), health).await;
    // HAProxy's health checks, each with a PROXY v2 header before the request, pass.
    haproxy
        .wait_output("Health check for server relay/relay succeeded")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // curl through HAProxy and l4relay: nginx must answer with curl's own address and port,
    // which curl reports itself; over IPv4 and IPv6 with v2 headers, with a v1 header, and
    // with the relay sending nginx v1.
    for (front, interface, listener) in [
        (fronts.v2, Some("127.0.0.5"), "nlb"),
        (fronts.v2_ipv6, None, "nlb"),
        (fronts.v1, Some("127.0.0.6"), "classic"),
        // No HAProxy: the relay's own v1 header to nginx.
        (direct, Some("127.0.0.7"), "direct"),
    ] {
        let (client, seen) = through(front, interface).await;
        let seen = seen.split(" vpce=").next().unwrap();
        assert_eq!(
            seen, client,
            "what nginx saw vs curl's address ({listener})"
        );
        let (ip, port) = client.split_once(' ').unwrap();
        let client = SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
        if let Some(interface) = interface {
            assert_eq!(client.ip().to_string(), interface);
        }
        // The relay logged the same client, and nginx's own access log has it too.
        let line = log_for(&relay, client).await;
        assert_eq!(field(&line, "listener"), Some(listener), "{line}");
        assert_eq!(field(&line, "end"), Some("client_closed"), "{line}");
        assert_eq!(field(&line, "vpce"), Some("-"), "{line}");
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        assert!(
            log.contains(&format!("nginx={ip} {port} peer=127.0.0.1")),
            "nginx's access log: {log}"
        );
    }

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
        response.contains(&format!("nginx={} {}", claimed.ip(), claimed.port())),
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
