//! `[[pool]]` with its `[[pool.server]]`s, `[pool.health]` and DNS keys: the servers, how one is
//! picked, and how they are checked and resolved. Its `[pool.tls]` is in `tls`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::listener::read_keepalive;
use super::reader::{At, Diagnostics, Section};
use super::tls::read_pool_tls;
use super::values::parse_duration;
use super::values::{parse_host_name, parse_server_address, values};
use crate::protocol::proxy_protocol::SendProxy;
use crate::upstream::dns::{is_private, DnsConfig, DnsFamily};
use crate::upstream::health::{
    CheckKind, HealthConfig, HttpCheck, InitState, StatusRange, TlsCheck,
};
use crate::upstream::pool::balance::Balance;
use crate::upstream::pool::{OnDown, PoolConfig, ServerAddress, ServerConfig};

pub const MAX_WEIGHT: u64 = 256;

pub(super) struct ReadPool {
    pub(super) name: At<String>,
    pub(super) config: PoolConfig,
}

pub(super) fn read_pool(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Option<ReadPool> {
    let name = s.required_string(diag, "name");
    let balance = s.choice(
        diag,
        "balance",
        &[
            ("round-robin", Balance::RoundRobin),
            ("least-connections", Balance::LeastConnections),
            ("random-two", Balance::RandomTwo),
            ("source-hash", Balance::SourceHash),
            ("first", Balance::First),
        ],
        Balance::RoundRobin,
    );
    let connect_timeout = s.positive_duration(diag, "connect_timeout", Duration::from_secs(3));
    let retries = s.integer(diag, "retries", 0..=100, 2) as u32;
    let keepalive = read_keepalive(s, diag);
    let send_proxy = s.choice(
        diag,
        "send_proxy",
        &[
            ("off", SendProxy::Off),
            ("v1", SendProxy::V1),
            ("v2", SendProxy::V2),
        ],
        SendProxy::Off,
    );
    let sources = read_sources(s, diag);
    let slow_start = s.duration(diag, "slow_start", Duration::ZERO);
    let on_down = s.choice(
        diag,
        "on_down",
        &[("keep", OnDown::Keep), ("close", OnDown::Close)],
        OnDown::Keep,
    );
    let dns = read_pool_dns(s, diag);
    let health = match s.table(diag, "health") {
        Some(mut section) => {
            let health = read_health(&mut section, diag);
            section.finish(diag);
            health
        }
        None => None,
    };
    let tls = s.table(diag, "tls").and_then(|mut section| {
        let tls = read_pool_tls(&mut section, diag);
        section.finish(diag);
        tls
    });

    let mut servers: Vec<ServerConfig> = Vec::new();
    let sections = s.tables(diag, "server");
    if sections.is_empty() {
        diag.error(
            &s.span(),
            &s.key_path("server"),
            "a pool needs at least one [[pool.server]]",
        );
    }
    for mut section in sections {
        if let Some((server, name_span)) = read_server(&mut section, diag) {
            if servers.iter().any(|other| other.name == server.name) {
                diag.error(
                    &name_span,
                    &section.key_path("name"),
                    format!("duplicate server name \"{}\" in this pool", server.name),
                );
            } else {
                if let ServerAddress::Ip(addr) = server.address {
                    if dns.require_private && !is_private(addr.ip()) {
                        diag.error(
                            &name_span,
                            &section.key_path("address"),
                            format!("{addr} is not a private address, and the pool has require_private = true"),
                        );
                    }
                }
                servers.push(server);
            }
        }
        section.finish(diag);
    }
    let name = name?;
    Some(ReadPool {
        config: PoolConfig {
            name: name.value.clone(),
            balance,
            connect_timeout,
            retries,
            keepalive,
            send_proxy,
            sources,
            servers,
            slow_start,
            on_down,
            dns,
            health,
            tls,
        },
        name,
    })
}

/// At most this many source addresses per pool (a bit each per connect attempt).
pub const MAX_SOURCES: usize = 64;

/// `source`: one address or a list, each an address of this host's to connect from.
fn read_sources(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Vec<IpAddr> {
    let listed = s.one_or_list(diag, "source", |v| {
        let ip = v.parse::<IpAddr>().map_err(|_| {
            format!("\"{v}\" is not an IP address (a local address to connect from)")
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!(
                "{ip} is not an address of this host's to connect from"
            ));
        }
        Ok(ip)
    });
    let mut sources: Vec<IpAddr> = Vec::with_capacity(listed.len());
    for at in listed {
        if sources.contains(&at.value) {
            diag.error(&at.span, &at.key, format!("{} is listed twice", at.value));
        } else if sources.len() == MAX_SOURCES {
            diag.error(
                &at.span,
                &at.key,
                format!("at most {MAX_SOURCES} source addresses"),
            );
        } else {
            sources.push(at.value);
        }
    }
    sources
}

/// The pool's `dns_*`, `nameservers` and `require_private` keys.
pub(super) fn read_pool_dns(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> DnsConfig {
    let min_ttl = s.duration(diag, "dns_min_ttl", Duration::from_secs(1));
    let max_ttl = s.duration(diag, "dns_max_ttl", Duration::from_secs(300));
    let hold = s.duration(diag, "dns_hold", Duration::from_secs(300));
    let removed_grace = s.parsed(diag, "dns_removed_grace", parse_duration);
    let timeout = s.positive_duration(diag, "dns_timeout", Duration::from_secs(2));
    let nameservers = values(s.list(diag, "nameservers", parse_nameserver));
    let require_private = s.bool(diag, "require_private", false);
    let family = s.choice(
        diag,
        "dns_family",
        &[
            ("ipv4", DnsFamily::Ipv4),
            ("ipv6", DnsFamily::Ipv6),
            ("any", DnsFamily::Any),
        ],
        DnsFamily::Any,
    );
    if min_ttl < Duration::from_millis(100) {
        diag.error(
            &s.span(),
            &s.key_path("dns_min_ttl"),
            "must be at least 100ms",
        );
    }
    if max_ttl < min_ttl {
        diag.error(
            &s.span(),
            &s.key_path("dns_max_ttl"),
            "must not be below dns_min_ttl",
        );
    }
    DnsConfig {
        min_ttl,
        max_ttl,
        hold,
        removed_grace,
        timeout,
        nameservers,
        require_private,
        family,
    }
}

/// `[pool.health]`; None when it has errors (reported).
pub(super) fn read_health(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
) -> Option<HealthConfig> {
    let errors_before = diag.errors.len();
    let check = match s.string(diag, "check") {
        None => {
            diag.error(&s.span(), &s.key_path("check"), "missing required key");
            CheckKind::Tcp
        }
        Some(at) => match at.value.as_str() {
            "tcp" => CheckKind::Tcp,
            "tls" => CheckKind::Tls,
            "http" => CheckKind::Http,
            other => {
                diag.error(
                    &at.span,
                    &at.key,
                    format!("\"{other}\" is not one of \"tcp\", \"tls\", \"http\""),
                );
                CheckKind::Tcp
            }
        },
    };
    let interval = s.duration(diag, "interval", Duration::from_secs(2));
    let fast_interval = s
        .parsed(diag, "fast_interval", parse_duration)
        .unwrap_or(interval);
    let timeout = s.positive_duration(diag, "timeout", Duration::from_secs(1));
    let rise = s.integer(diag, "rise", 1..=100, 2) as u32;
    let fall = s.integer(diag, "fall", 1..=100, 3) as u32;
    let jitter = s
        .parsed(diag, "jitter", parse_duration)
        .unwrap_or(interval / 10);
    let init_state = s.choice(
        diag,
        "init_state",
        &[("down", InitState::Down), ("up", InitState::Up)],
        InitState::Down,
    );
    let passive_fall = s.integer(diag, "passive_fall", 0..=1000, 3) as u32;
    for (key, value) in [("interval", interval), ("fast_interval", fast_interval)] {
        if value < Duration::from_millis(10) {
            diag.error(&s.span(), &s.key_path(key), "must be at least 10ms");
        }
    }

    // TLS: the handshake check, or HTTP over TLS.
    let over_tls = s.bool(diag, "tls", false);
    let sni = s.string(diag, "sni");
    let verify = s.bool(diag, "verify", true);
    let ca_file = s.string(diag, "ca_file");
    let uses_tls = check == CheckKind::Tls || (check == CheckKind::Http && over_tls);
    if over_tls && check != CheckKind::Http {
        diag.error(
            &s.span(),
            &s.key_path("tls"),
            "only for check = \"http\" (HTTP over TLS); check = \"tls\" is the handshake check",
        );
    }
    if !uses_tls {
        let misplaced = [
            ("sni", sni.is_some()),
            ("verify", !verify),
            ("ca_file", ca_file.is_some()),
        ];
        for (key, present) in misplaced {
            if present {
                diag.error(
                    &s.span(),
                    &s.key_path(key),
                    "only for TLS checks (check = \"tls\", or \"http\" with tls = true)",
                );
            }
        }
    }
    if let Some(at) = &sni {
        if let Err(message) = parse_host_name(&at.value) {
            diag.error(&at.span, &at.key, message);
        }
    }
    if let Some(at) = &ca_file {
        if let Err(message) = crate::upstream::health::tls::load_ca_file(Path::new(&at.value)) {
            diag.error(&at.span, &at.key, message);
        }
    }
    if uses_tls && !verify {
        diag.warn(
            &s.span(),
            &s.key_path("verify"),
            "TLS health checks accept any certificate (verify = false): a check cannot tell the real server from an impostor",
        );
    }
    let tls = uses_tls.then(|| TlsCheck {
        sni: sni.map(|at| at.value.to_ascii_lowercase()),
        verify,
        ca_file: ca_file.map(|at| PathBuf::from(at.value)),
    });

    // HTTP.
    let method = s.parsed(diag, "method", |v| {
        if !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(v.to_string())
        } else {
            Err(format!(
                "\"{v}\" is not an HTTP method, e.g. \"GET\", \"HEAD\""
            ))
        }
    });
    let path = s.parsed(diag, "path", |v| {
        if v.starts_with('/') && v.len() <= 2048 && v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(v.to_string())
        } else {
            Err(format!(
                "\"{v}\" is not a request path: it starts with \"/\" and has no spaces"
            ))
        }
    });
    let host = s.parsed(diag, "host", |v| {
        if !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(v.to_string())
        } else {
            Err(format!("\"{v}\" is not a Host header value"))
        }
    });
    let statuses = s.list(diag, "statuses", parse_status_range);
    let body = s.string(diag, "body");
    let firewall_statuses = s.list(diag, "firewall_statuses", parse_status_range);
    if check != CheckKind::Http {
        let misplaced = [
            ("method", method.is_some()),
            ("path", path.is_some()),
            ("host", host.is_some()),
            ("statuses", !statuses.is_empty()),
            ("body", body.is_some()),
            ("firewall_statuses", !firewall_statuses.is_empty()),
        ];
        for (key, present) in misplaced {
            if present {
                diag.error(&s.span(), &s.key_path(key), "only for check = \"http\"");
            }
        }
    }
    if let Some(at) = &body {
        if at.value.is_empty() {
            diag.error(&at.span, &at.key, "must not be empty");
        }
    }
    let statuses = values(statuses);
    let firewall_statuses = values(firewall_statuses);
    for firewall in &firewall_statuses {
        if statuses
            .iter()
            .any(|ok| ok.low <= firewall.high && firewall.low <= ok.high)
        {
            diag.error(
                &s.span(),
                &s.key_path("firewall_statuses"),
                format!("{firewall} is also in statuses: a status cannot mean both up and down"),
            );
        }
    }
    let http = (check == CheckKind::Http).then(|| HttpCheck {
        method: method.unwrap_or_else(|| "GET".to_string()),
        path: path.unwrap_or_else(|| "/".to_string()),
        host,
        statuses: if statuses.is_empty() {
            vec![StatusRange {
                low: 200,
                high: 399,
            }]
        } else {
            statuses
        },
        body: body.map(|at| at.value),
        firewall_statuses,
    });

    (diag.errors.len() == errors_before).then_some(HealthConfig {
        check,
        interval,
        fast_interval,
        timeout,
        rise,
        fall,
        jitter,
        init_state,
        passive_fall,
        tls,
        http,
    })
}

/// "200" or "200-399".
pub(super) fn parse_status_range(text: &str) -> Result<StatusRange, String> {
    let bad = || format!("\"{text}\" is not an HTTP status or range, e.g. \"401\" or \"200-399\"");
    let status = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(bad()),
        }
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (status(low)?, status(high)?),
        None => {
            let n = status(text)?;
            (n, n)
        }
    };
    if low > high {
        return Err(bad());
    }
    Ok(StatusRange { low, high })
}

/// "IP" (port 53) or "IP:port".
pub(super) fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("\"{text}\" is not a nameserver address: write \"IP\" or \"IP:port\""))
}

pub(super) fn read_server(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
) -> Option<(ServerConfig, std::ops::Range<usize>)> {
    let address = s.required_string(diag, "address");
    let name = s.string(diag, "name");
    let weight = s.integer(diag, "weight", 1..=MAX_WEIGHT, 1) as u32;
    let backup = s.bool(diag, "backup", false);
    let max_connections = s
        .integer_at(diag, "max_connections", 1..=10_000_000)
        .map(|at| at.value as u32);
    let address_at = address?;
    let parsed = match parse_server_address(&address_at.value) {
        Ok(a) => a,
        Err(message) => {
            diag.error(&address_at.span, &address_at.key, message);
            return None;
        }
    };
    let (name, span) = match name {
        Some(at) if at.value.is_empty() => {
            diag.error(&at.span, &at.key, "must not be empty");
            return None;
        }
        Some(at) => (at.value, at.span),
        None => (address_at.value.clone(), address_at.span),
    };
    Some((
        ServerConfig {
            name,
            address: parsed,
            weight,
            backup,
            max_connections,
        },
        span,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::super::Config;
    use super::*;

    const HEALTH: &str = r#"
[admin]
token = "0123456789abcdef-token"

[[listener]]
name = "l"
listen = "127.0.0.1:8443"
pool = "p"

[[pool]]
name = "p"
slow_start = "30s"
on_down = "close"
require_private = true
nameservers = ["10.0.0.2", "10.0.0.3:5353"]
dns_hold = "1m"
dns_family = "ipv4"
  [pool.health]
  check = "http"
  path = "/openai/models"
  statuses = ["401", "200-299"]
  firewall_statuses = ["403"]
  interval = "5s"
  [[pool.server]]
  address = "myres.openai.azure.com:443"
"#;

    #[test]
    fn health_and_dns_keys_with_their_defaults() {
        let c = parse(HEALTH).unwrap();
        let pool = &c.pools[0];
        assert_eq!(pool.slow_start, Duration::from_secs(30));
        assert_eq!(pool.on_down, OnDown::Close);
        assert!(pool.dns.require_private);
        assert_eq!(
            pool.dns.nameservers,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "10.0.0.3:5353".parse().unwrap()
            ]
        );
        assert_eq!(pool.dns.hold, Duration::from_secs(60));
        assert_eq!(pool.dns.min_ttl, Duration::from_secs(1));
        assert_eq!(pool.dns.max_ttl, Duration::from_secs(300));
        assert_eq!(pool.dns.removed_grace, None);
        assert_eq!(pool.dns.family, DnsFamily::Ipv4);
        let h = pool.health.as_ref().unwrap();
        assert_eq!(h.check, CheckKind::Http);
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.fast_interval, Duration::from_secs(5));
        assert_eq!(h.jitter, Duration::from_millis(500));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!((h.rise, h.fall, h.passive_fall), (2, 3, 3));
        assert_eq!(h.init_state, InitState::Down);
        assert!(h.tls.is_none());
        let http = h.http.as_ref().unwrap();
        assert_eq!(http.method, "GET");
        assert_eq!(http.path, "/openai/models");
        assert!(http.statuses[0].contains(401) && http.statuses[1].contains(250));
        assert!(!http.statuses.iter().any(|r| r.contains(403)));
        assert!(http.firewall_statuses[0].contains(403));
        assert!(c
            .admin
            .token
            .as_ref()
            .is_some_and(|t| t.matches(b"0123456789abcdef-token")));

        let c = parse(MINIMAL).unwrap();
        assert!(c.pools[0].health.is_none());
        assert_eq!(c.pools[0].on_down, OnDown::Keep);
        assert_eq!(c.pools[0].slow_start, Duration::ZERO);
        assert_eq!(c.pools[0].dns.family, DnsFamily::Any);
        assert!(c.admin.token.is_none());
    }

    #[test]
    fn health_errors_and_warnings() {
        let text = r#"
[admin]
token = "short"

[[listener]]
name = "l"
listen = "127.0.0.1:8443"
pool = "p"

[[pool]]
name = "p"
require_private = true
  [pool.health]
  check = "tcp"
  path = "/x"
  verify = false
  rise = 0
  [[pool.server]]
  address = "8.8.8.8:443"

[[pool]]
name = "q"
  [pool.health]
  check = "http"
  statuses = ["200-399", "600"]
  firewall_statuses = ["300-403"]
  [[pool.server]]
  address = "10.0.0.1:443"

[[pool]]
name = "r"
  [pool.health]
  check = "tls"
  ca_file = "/nonexistent/ca.pem"
  [[pool.server]]
  address = "10.0.0.1:443"

[[pool]]
name = "s"
  [pool.health]
  interval = "2s"
  [[pool.server]]
  address = "10.0.0.1:443"
"#;
        let errors = parse(text).unwrap_err();
        let expect = [
            "admin.token: a token is at least 16 printable characters",
            "pool[0].health.path: only for check = \"http\"",
            "pool[0].health.verify: only for TLS checks",
            "pool[0].health.rise: must be an integer from 1 to 100",
            "pool[0].server[0].address: 8.8.8.8:443 is not a private address",
            "pool[1].health.statuses[1]: \"600\" is not an HTTP status",
            "pool[1].health.firewall_statuses: 300-403 is also in statuses",
            "pool[2].health.ca_file: cannot read /nonexistent/ca.pem",
            "pool[3].health.check: missing required key",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|got| got.contains(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");

        let unverified = HEALTH.replace(
            "check = \"http\"",
            "check = \"http\"\n  tls = true\n  verify = false",
        );
        let c = Config::parse(Path::new("t.toml"), &unverified).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.key == "pool[0].health.verify"),
            "{:?}",
            c.warnings
        );
        let tls = c.pools[0].health.as_ref().unwrap().tls.as_ref().unwrap();
        assert!(!tls.verify);
    }
}
