//! Real nameservers for a pool's server names: dnsmasq serving a hosts file (TTL 1 s, no
//! upstreams, so it answers AAAA for an IPv4-only name with REFUSED, as corporate resolvers and
//! forwarders do), and unbound answering SERVFAIL for AAAA. The pool honours the TTL, follows a
//! changed A record within TTL + 1 s while AAAA fails, asks one family only under `dns_family`,
//! holds its last good addresses for `dns_hold` through NXDOMAIN and through the resolver going
//! away, and takes the TTL of a CNAME chain from its shortest link. Upstreams are named echo
//! servers on 127.0.0.0/8 and ::1, all on one port, so the answer decides where a client lands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::peers::{free_port, program, retrying, Peer, Scratch};
use crate::support::*;

/// Per-test upstream addresses (tests/dns.rs uses 127.0.0.2-4).
const V4_A: &str = "127.0.0.12";
const V4_B: &str = "127.0.0.13";
const V6: &str = "::1";

/// `dns_hold` in the tests that hold.
const HOLD: Duration = Duration::from_secs(3);
/// The latest a held address may go after its name started failing: the failure is seen at
/// the next resolution (TTL 1 s), dns_hold counts from that question, and the drop comes with
/// the first answer after it, which may take a resolution's timeouts (2 attempts of
/// dns_timeout = 500 ms, over UDP and then TCP); plus 1 s of slack.
const HOLD_LATEST: Duration = Duration::from_secs(3 + 1 + 2 + 1);

/// dnsmasq on 127.0.0.1, serving `hosts` (re-read on SIGHUP), logging every query.
struct Dnsmasq {
    peer: Peer,
    port: u16,
    hosts: PathBuf,
}

impl Dnsmasq {
    async fn start(dir: &Path, hosts: &str, extra: &[&str]) -> Dnsmasq {
        let file = dir.join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        retrying("dnsmasq", || {
            let port = free_port("127.0.0.1");
            Self::start_on(dir, &file, &extra, port)
        })
        .await
    }

    /// On a given port (a restart: the relay's config names it).
    async fn start_on(
        dir: &Path,
        hosts: &Path,
        extra: &[String],
        port: u16,
    ) -> Result<Dnsmasq, String> {
        let mut args = vec![
            "--no-daemon".to_string(),
            "--conf-file=/dev/null".to_string(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".to_string(),
            "--bind-interfaces".to_string(),
            "--no-resolv".to_string(),
            "--no-hosts".to_string(),
            format!("--addn-hosts={}", hosts.display()),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            "--log-queries".to_string(),
            "--log-facility=-".to_string(),
        ];
        if crate::peers::is_root() {
            // Else it drops to "nobody", which may not read the test's hosts file.
            args.push("--user=root".to_string());
        }
        if !extra.iter().any(|a| a.starts_with("--local-ttl")) {
            args.push("--local-ttl=1".to_string());
        }
        args.extend(extra.iter().cloned());
        let mut peer = Peer::spawn("dnsmasq", &program("dnsmasq", "dnsmasq-base"), &args, dir);
        peer.wait_output(&format!("read {}", hosts.display()))
            .await?;
        Ok(Dnsmasq {
            peer,
            port,
            hosts: hosts.to_path_buf(),
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Rewrites the hosts file and has dnsmasq read it again (SIGHUP); returns once it has.
    async fn set_hosts(&mut self, hosts: &str) {
        let said = format!("read {}", self.hosts.display());
        let before = self.peer.output().matches(&said).count();
        std::fs::write(&self.hosts, hosts).unwrap();
        self.peer.signal("HUP");
        let reread = eventually(STEP_LIMIT, || {
            self.peer.output().matches(&said).count() > before
        })
        .await;
        assert!(reread, "dnsmasq did not re-read its hosts file");
    }

    /// How many queries of `qtype` ("A", "AAAA") for `name` it has received.
    fn queries(&self, qtype: &str, name: &str) -> usize {
        let asked = format!("query[{qtype}] {name} from");
        self.peer.output().matches(&asked).count()
    }
}

/// An upstream that writes its name and a newline, then echoes; on `addr`.
struct Named {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Named {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn named(addr: SocketAddr, name: &'static str) -> std::io::Result<Named> {
    let listener = TcpListener::bind(addr).await?;
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream
                    .write_all(format!("{name}\n").as_bytes())
                    .await
                    .is_ok()
                {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(Named { task })
}

/// Upstreams `(ip, name)` all on one port; the port.
async fn upstreams(list: &[(&str, &'static str)]) -> (u16, Vec<Named>) {
    'port: for _ in 0..20 {
        let port = free_port(list[0].0);
        let mut all = Vec::new();
        for (ip, name) in list {
            let addr = SocketAddr::new(ip.parse().unwrap(), port);
            match named(addr, name).await {
                Ok(server) => all.push(server),
                Err(_) => continue 'port,
            }
        }
        return (port, all);
    }
    panic!("no port free on {list:?}");
}

/// A relay whose pool "p" has one server "svc" = `host:port`, resolved through `dns`; with
/// health checks every 100 ms, so a new address serves as soon as it is resolved.
fn relay(
    dns: SocketAddr,
    host: &str,
    port: u16,
    pool_extra: &str,
) -> (RelayProcess, SocketAddr, SocketAddr) {
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nnameservers = [\"{dns}\"]\ndns_timeout = \"500ms\"\ndns_min_ttl = \"200ms\"\n{pool_extra}\n  [pool.health]\n  check = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"100ms\"\n  rise = 1\n  fall = 1\n  [[pool.server]]\n  name = \"svc\"\n  address = \"{host}:{port}\"\n"
        )
    });
    (relay, admin, listen)
}

/// `ip:port` as /status shows a server address.
fn at(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}

/// The server a new connection through the relay lands on (None: refused).
async fn lands_on(listen: SocketAddr) -> Option<String> {
    try_which(listen).await.map(|(_, name)| name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsmasq_refusing_aaaa_the_pool_still_follows_the_a_record_within_its_ttl() {
    let dir = Scratch::new("interop-dns-refused");
    let (port, _upstreams) = upstreams(&[(V4_A, "a"), (V4_B, "b")]).await;
    let mut dnsmasq = Dnsmasq::start(&dir, &format!("{V4_A} svc.test\n"), &[]).await;
    let (relay, admin, listen) = relay(dnsmasq.addr(), "svc.test", port, "");
    let started = Instant::now();

    wait_status(admin, Duration::from_secs(5), "resolved", |s| {
        up_addresses(s, "p", "svc") == [at(V4_A, port)]
    })
    .await;
    assert_eq!(lands_on(listen).await.as_deref(), Some("a"));
    // The A answer is a good answer; the AAAA refusal is shown beside it, not as the name's
    // error.
    let status = get_status(admin).await;
    let name = dns_json(&status, "p");
    assert_eq!(name["last_result"], "ok", "{name}");
    assert_eq!(name["error"], serde_json::Value::Null, "{name}");
    assert_eq!(name["ttl_secs"], 1, "{name}");
    let aaaa = name["query_errors"]["AAAA"]["error"].as_str().unwrap_or("");
    assert!(aaaa.contains("REFUSED"), "{name}");
    assert!(dnsmasq.peer.output().contains("query[AAAA] svc.test"));

    // The A record changes: followed within the TTL (1 s) + 1 s, the old address gone.
    dnsmasq.set_hosts(&format!("{V4_B} svc.test\n")).await;
    let took = wait_status(admin, Duration::from_secs(5), "following", |s| {
        up_addresses(s, "p", "svc") == [at(V4_B, port)] && servers_json(s, "p", "svc").len() == 1
    })
    .await;
    assert!(took <= Duration::from_secs(2), "followed after {took:?}");
    for _ in 0..5 {
        assert_eq!(lands_on(listen).await.as_deref(), Some("b"));
    }
    // TTL 1 s honoured: about one A query a second, not one every dns_min_ttl (200 ms).
    let queries = dnsmasq.queries("A", "svc.test") as f64;
    let secs = started.elapsed().as_secs_f64();
    assert!(
        queries >= 2.0 && queries <= secs + 2.0,
        "{queries} A queries in {secs:.1} s"
    );
    assert!(
        metric(
            admin,
            "l4relay_dns_resolutions_total",
            &[("result", "error")]
        )
        .await
            == 0.0,
        "a REFUSED AAAA beside a good A counted as a failed resolution"
    );
    assert!(!relay.stderr().contains("keeping its last good addresses"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aaaa_answer_that_turns_into_refused_keeps_its_addresses_for_dns_hold() {
    let dir = Scratch::new("interop-dns-family-hold");
    let (port, _upstreams) = upstreams(&[(V4_A, "four"), (V6, "six")]).await;
    let mut dnsmasq = Dnsmasq::start(&dir, &format!("{V4_A} svc.test\n{V6} svc.test\n"), &[]).await;
    let (relay, admin, listen) = relay(
        dnsmasq.addr(),
        "svc.test",
        port,
        &format!("dns_hold = \"{}s\"", HOLD.as_secs()),
    );
    let both = vec![at(V4_A, port), at(V6, port)];
    wait_status(admin, Duration::from_secs(5), "both families", |s| {
        up_addresses(s, "p", "svc") == both
    })
    .await;

    // The AAAA record goes; dnsmasq (no upstreams) now answers AAAA with REFUSED. The IPv6
    // address is kept for dns_hold, the A answer still followed.
    dnsmasq.set_hosts(&format!("{V4_A} svc.test\n")).await;
    let failing_at = Instant::now();
    wait_status(admin, Duration::from_secs(3), "AAAA failing", |s| {
        dns_json(s, "p")["query_errors"]["AAAA"].is_object()
    })
    .await;
    let status = get_status(admin).await;
    assert_eq!(
        up_addresses(&status, "p", "svc"),
        both,
        "{}",
        dns_json(&status, "p")
    );
    assert_eq!(dns_json(&status, "p")["last_result"], "ok");
    let mut landed = Vec::new();
    for _ in 0..6 {
        landed.push(lands_on(listen).await.unwrap());
    }
    assert!(landed.iter().any(|n| n == "six"), "{landed:?}");

    let took = wait_status(admin, Duration::from_secs(6), "AAAA dropped", |s| {
        up_addresses(s, "p", "svc") == [at(V4_A, port)] && servers_json(s, "p", "svc").len() == 1
    })
    .await;
    let held = failing_at.elapsed();
    assert!(
        held >= HOLD && held <= HOLD_LATEST,
        "the IPv6 address held for {held:?} (dns_hold {HOLD:?}; found after {took:?})"
    );
    assert!(
        relay
            .stderr()
            .contains("the AAAA query has failed for longer than dns_hold"),
        "{}",
        relay.stderr()
    );
    assert_eq!(lands_on(listen).await.as_deref(), Some("four"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_family_asks_dnsmasq_for_one_family_only() {
    let dir = Scratch::new("interop-dns-family");
    let (port, _upstreams) = upstreams(&[(V4_A, "four"), (V6, "six")]).await;
    let dnsmasq = Dnsmasq::start(
        &dir,
        &format!("{V4_A} svc.test\n{V6} svc.test\n{V4_A} v4only.test\n"),
        &[],
    )
    .await;

    let (_relay6, admin6, listen6) =
        relay(dnsmasq.addr(), "svc.test", port, "dns_family = \"ipv6\"");
    let (_relay4, admin4, listen4) =
        relay(dnsmasq.addr(), "v4only.test", port, "dns_family = \"ipv4\"");
    wait_status(admin6, Duration::from_secs(5), "IPv6 only", |s| {
        up_addresses(s, "p", "svc") == [at(V6, port)]
    })
    .await;
    wait_status(admin4, Duration::from_secs(5), "IPv4 only", |s| {
        up_addresses(s, "p", "svc") == [at(V4_A, port)]
    })
    .await;
    for _ in 0..3 {
        assert_eq!(lands_on(listen6).await.as_deref(), Some("six"));
        assert_eq!(lands_on(listen4).await.as_deref(), Some("four"));
    }
    // Let a few TTLs pass: still never the other family's query, and nothing failing.
    let queries = dnsmasq.queries("AAAA", "svc.test");
    eventually(Duration::from_secs(5), || {
        dnsmasq.queries("AAAA", "svc.test") >= queries + 2
    })
    .await;
    assert_eq!(dnsmasq.queries("A", "svc.test"), 0);
    assert_eq!(dnsmasq.queries("AAAA", "v4only.test"), 0);
    assert!(dnsmasq.queries("A", "v4only.test") >= 2);
    let v4 = dns_json(&get_status(admin4).await, "p");
    assert_eq!(v4["query_errors"], serde_json::json!({}), "{v4}");
    assert_eq!(v4["last_result"], "ok", "{v4}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_and_a_vanished_resolver_keep_the_last_good_addresses_for_dns_hold() {
    let dir = Scratch::new("interop-dns-hold");
    let (port, _upstreams) = upstreams(&[(V4_A, "a")]).await;
    // --local: dnsmasq answers for .test itself, NXDOMAIN for names it does not have.
    let mut dnsmasq =
        Dnsmasq::start(&dir, &format!("{V4_A} svc.test\n"), &["--local=/test/"]).await;
    let dns = dnsmasq.addr();
    let (relay, admin, listen) = relay(
        dns,
        "svc.test",
        port,
        &format!("dns_hold = \"{}s\"", HOLD.as_secs()),
    );
    let served = vec![at(V4_A, port)];
    wait_status(admin, Duration::from_secs(5), "resolved", |s| {
        up_addresses(s, "p", "svc") == served
    })
    .await;

    for fault in ["nxdomain", "resolver gone"] {
        let failing_at = Instant::now();
        if fault == "nxdomain" {
            dnsmasq.set_hosts("").await;
        } else {
            dnsmasq.peer.stop();
        }
        wait_status(admin, Duration::from_secs(3), fault, |s| {
            dns_json(s, "p")["last_result"] != "ok"
        })
        .await;
        let status = get_status(admin).await;
        let name = dns_json(&status, "p");
        if fault == "nxdomain" {
            assert_eq!(name["last_result"], "nxdomain", "{name}");
        } else {
            assert!(
                name["last_result"] == "timeout" || name["last_result"] == "error",
                "{name}"
            );
        }
        // Held: still resolved to the last good address, still serving.
        assert_eq!(up_addresses(&status, "p", "svc"), served, "{fault}: {name}");
        assert_eq!(lands_on(listen).await.as_deref(), Some("a"), "{fault}");

        wait_status(admin, Duration::from_secs(6), "dropped", |s| {
            servers_json(s, "p", "svc").is_empty()
        })
        .await;
        let held = failing_at.elapsed();
        assert!(
            held >= HOLD && held <= HOLD_LATEST,
            "{fault}: held for {held:?} (dns_hold {HOLD:?})"
        );
        assert_eq!(lands_on(listen).await, None, "{fault}: nothing left");

        // Back: resolved again and serving.
        if fault == "nxdomain" {
            dnsmasq.set_hosts(&format!("{V4_A} svc.test\n")).await;
        } else {
            dnsmasq = Dnsmasq::start_on(
                &dir,
                &dir.join("hosts"),
                &["--local=/test/".to_string()],
                dns.port(),
            )
            .await
            .expect("dnsmasq again on its port");
        }
        wait_status(admin, Duration::from_secs(5), "resolved again", |s| {
            up_addresses(s, "p", "svc") == served
        })
        .await;
        assert_eq!(lands_on(listen).await.as_deref(), Some("a"));
    }
    assert!(
        metric(
            admin,
            "l4relay_dns_resolutions_total",
            &[("result", "nxdomain")]
        )
        .await
            >= 1.0
    );
    assert!(relay.stderr().contains("failing for longer than dns_hold"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_chain_is_as_fresh_as_its_shortest_link() {
    let dir = Scratch::new("interop-dns-cname");
    let (port, _upstreams) = upstreams(&[(V4_A, "a"), (V4_B, "b")]).await;
    // As Azure: the resource name is a CNAME chain into privatelink; here 300 s, then 1 s, then
    // an A record of an hour.
    let target = "myres.privatelink.openai.azure.test";
    let mut dnsmasq = Dnsmasq::start(
        &dir,
        &format!("{V4_A} {target}\n"),
        &[
            "--local-ttl=3600",
            "--cname=myres.openai.azure.test,myres.link.test,300",
            &format!("--cname=myres.link.test,{target},1"),
        ],
    )
    .await;
    let (_relay, admin, listen) = relay(dnsmasq.addr(), "myres.openai.azure.test", port, "");
    wait_status(admin, Duration::from_secs(5), "resolved", |s| {
        up_addresses(s, "p", "svc") == [at(V4_A, port)]
    })
    .await;
    let name = dns_json(&get_status(admin).await, "p");
    assert_eq!(name["ttl_secs"], 1, "{name}");
    assert_eq!(name["last_result"], "ok", "{name}");

    dnsmasq.set_hosts(&format!("{V4_B} {target}\n")).await;
    let took = wait_status(admin, Duration::from_secs(5), "following", |s| {
        up_addresses(s, "p", "svc") == [at(V4_B, port)] && servers_json(s, "p", "svc").len() == 1
    })
    .await;
    assert!(took <= Duration::from_secs(2), "followed after {took:?}");
    assert_eq!(lands_on(listen).await.as_deref(), Some("b"));
}

/// unbound answering A from its local data and SERVFAIL for AAAA (it forwards AAAA to a
/// dnsmasq that refuses): the A answer serves, the SERVFAIL is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_servfail_for_aaaa_beside_a_good_a_answer() {
    let dir = Scratch::new("interop-dns-unbound");
    let (port, _upstreams) = upstreams(&[(V4_A, "a")]).await;
    let refusing = Dnsmasq::start(&dir, "", &[]).await;
    let unbound = program("unbound", "unbound");
    let (_unbound, unbound_addr) = retrying("unbound", || {
        let unbound_port = free_port("127.0.0.1");
        let config = dir.join("unbound.conf");
        std::fs::write(
            &config,
            format!(
                "server:
  interface: 127.0.0.1
  port: {unbound_port}
  do-daemonize: no
  username: \"\"
  chroot: \"\"
  directory: \"{dir}\"
  pidfile: \"{dir}/unbound.pid\"
  use-syslog: no
  logfile: \"\"
  verbosity: 1
  do-ip6: no
  do-not-query-localhost: no
  module-config: \"iterator\"
  local-zone: \"test.\" typetransparent
  local-data: \"svc.test. 1 IN A {V4_A}\"
forward-zone:
  name: \"test.\"
  forward-addr: 127.0.0.1@{}
",
                refusing.port,
                dir = dir.display(),
            ),
        )
        .unwrap();
        let mut peer = Peer::spawn(
            "unbound",
            &unbound,
            ["-d", "-c", &config.display().to_string()],
            &dir,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], unbound_port));
        async move {
            peer.wait_listening(addr).await?;
            Ok((peer, addr))
        }
    })
    .await;
    let (_relay, admin, listen) = relay(unbound_addr, "svc.test", port, "");
    wait_status(admin, Duration::from_secs(5), "resolved", |s| {
        up_addresses(s, "p", "svc") == [at(V4_A, port)]
            && dns_json(s, "p")["query_errors"]["AAAA"].is_object()
    })
    .await;
    let name = dns_json(&get_status(admin).await, "p");
    assert_eq!(name["last_result"], "ok", "{name}");
    assert_eq!(name["ttl_secs"], 1, "{name}");
    let aaaa = name["query_errors"]["AAAA"]["error"].as_str().unwrap_or("");
    assert!(aaaa.contains("SERVFAIL"), "{name}");
    assert_eq!(lands_on(listen).await.as_deref(), Some("a"));
}
