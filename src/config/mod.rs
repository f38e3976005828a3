//! The configuration: reading a TOML file into a validated `Config`.
//!
//! A `Config` that exists is a valid one: every cross-reference resolved, every number in range.
//! `load` reports all problems at once (file, line, key), which is what `l4relay check` prints.
//! Runtime objects (sockets, pools with live counters) are built from it elsewhere; this module
//! does no I/O beyond reading the file (and the files it names: a health check's CA file, the
//! admin token file, TLS certificates, keys and CA files, so `check` finds their problems) and
//! never resolves DNS names. TLS files are turned into rustls configs here (`crate::tls`), so a
//! reload with a bad certificate fails like any other config error.

mod reader;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::de::DeTable;

use crate::protocol::name_table::{self, NameTable};
use crate::tls;

use crate::inbound::listener::ListenerConfig;
use crate::inbound::preamble::ProxyProtocol;
use crate::inbound::route::RouteFallback;
use crate::observe::access_log::LogFormat;
use crate::protocol::proxy_protocol::SendProxy;
use crate::relay;
use crate::relay::sockopt::Keepalive;
use crate::tls::{ClientAuthMode, ListenerTls, MinVersion, PoolTls};
use crate::upstream::dns::{is_private, DnsConfig};
use crate::upstream::health::{
    CheckKind, HealthConfig, HttpCheck, InitState, StatusRange, TlsCheck,
};
use crate::upstream::pool::balance::Balance;
use crate::upstream::pool::{OnDown, PoolConfig, ServerAddress, ServerConfig};

pub use reader::{parse_duration, parse_size, ConfigError};
use reader::{At, Diagnostics, Section};

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub global: Global,
    pub admin: Admin,
    pub drain: Drain,
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    /// Valid but risky settings, shown by `check` and logged at start.
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone)]
pub struct Global {
    /// Process-wide limit on concurrent client connections.
    pub max_connections: usize,
    /// Worker threads, each with its own accept loops; 0 in the file means one per CPU.
    pub workers: usize,
    /// Diagnostics level for stderr, unless `RUST_LOG` is set.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Leave connections that carried no payload either way out of the access log.
    pub log_skip_empty: bool,
    pub relay: relay::Mode,
    pub pipe_size: usize,
    pub buffer_size: usize,
}

#[derive(Debug, Clone)]
pub struct Admin {
    /// None: no admin listener.
    pub listen: Option<SocketAddr>,
    /// A second listener serving only /healthz and /readyz (for a load balancer).
    pub health_listen: Option<SocketAddr>,
    /// Record Prometheus metrics (off: /metrics answers 404 and nothing is counted).
    pub metrics: bool,
    /// Bearer token the POST endpoints require; None: they are open like the GETs.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Drain {
    pub announce: Duration,
    pub deadline: Duration,
    pub close_spread: Duration,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const MAX_WEIGHT: u64 = 256;

impl Config {
    /// Reads and validates `path`; on failure returns every problem found.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut diag = Diagnostics::new(path, text);
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                reader::syntax_error(&mut diag, &e);
                return Err(diag.errors);
            }
        };
        let config = read_config(path, &doc, &mut diag);
        if diag.errors.is_empty() {
            let mut config = config;
            config.warnings = diag.warnings;
            Ok(config)
        } else {
            Err(diag.errors)
        }
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

fn read_config(
    path: &Path,
    doc: &toml::Spanned<DeTable<'_>>,
    diag: &mut Diagnostics<'_>,
) -> Config {
    let mut root = Section::root(doc);

    let global = match root.table(diag, "global") {
        Some(mut s) => {
            let g = read_global(&mut s, diag);
            s.finish(diag);
            g
        }
        None => read_global(&mut Section::root(&empty_table()), diag),
    };
    let admin = match root.table(diag, "admin") {
        Some(mut s) => {
            let a = read_admin(&mut s, diag);
            s.finish(diag);
            a
        }
        None => Admin {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            health_listen: None,
            metrics: true,
            token: None,
        },
    };
    let drain = match root.table(diag, "drain") {
        Some(mut s) => {
            let d = read_drain(&mut s, diag);
            s.finish(diag);
            d
        }
        None => read_drain(&mut Section::root(&empty_table()), diag),
    };

    let mut pools = Vec::new();
    let mut pool_names: HashMap<String, usize> = HashMap::new();
    for mut section in root.tables(diag, "pool") {
        if let Some(pool) = read_pool(&mut section, diag) {
            if pool_names.contains_key(&pool.name.value) {
                diag.error(
                    &pool.name.span,
                    &pool.name.key,
                    format!("duplicate pool name \"{}\"", pool.name.value),
                );
            } else {
                pool_names.insert(pool.name.value.clone(), pools.len());
                pools.push(pool.config);
            }
        }
        section.finish(diag);
    }

    let mut listeners = Vec::new();
    let mut listener_names: Vec<String> = Vec::new();
    let mut listen_addrs: Vec<SocketAddr> = Vec::new();
    for mut section in root.tables(diag, "listener") {
        if let Some(l) = read_listener(&mut section, diag, &global, &pool_names) {
            if listener_names.contains(&l.name.value) {
                diag.error(
                    &l.name.span,
                    &l.name.key,
                    format!("duplicate listener name \"{}\"", l.name.value),
                );
            } else if listen_addrs.contains(&l.listen.value) {
                diag.error(
                    &l.listen.span,
                    &l.listen.key,
                    format!("{} is already used by another listener", l.listen.value),
                );
            } else {
                listener_names.push(l.name.value.clone());
                listen_addrs.push(l.listen.value);
                listeners.push(l.config);
            }
        }
        section.finish(diag);
    }
    if listeners.is_empty() && diag.errors.is_empty() {
        diag.error(
            &root.span(),
            "listener",
            "at least one [[listener]] is required",
        );
    }
    for (key, addr) in [
        ("admin.listen", admin.listen),
        ("admin.health_listen", admin.health_listen),
    ] {
        if let Some(addr) = addr.filter(|a| listen_addrs.contains(a)) {
            diag.error(&(0..0), key, format!("{addr} is also a listener's address"));
        }
    }
    root.finish(diag);

    Config {
        path: path.to_path_buf(),
        global,
        admin,
        drain,
        listeners,
        pools,
        warnings: Vec::new(),
    }
}

fn empty_table() -> toml::Spanned<DeTable<'static>> {
    toml::Spanned::new(0..0, DeTable::new())
}

const RELAY_MODES: &[(&str, relay::Mode)] = &[
    ("auto", relay::Mode::Auto),
    ("splice", relay::Mode::Splice),
    ("copy", relay::Mode::Copy),
];

fn read_global(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Global {
    let max_connections = s.integer(
        diag,
        "max_connections",
        1..=10_000_000,
        DEFAULT_MAX_CONNECTIONS as u64,
    ) as usize;
    let workers = s.integer(diag, "workers", 0..=1024, 0) as usize;
    let log_level = s
        .parsed(diag, "log_level", |v| match v {
            "error" | "warn" | "info" | "debug" | "trace" => Ok(v.to_string()),
            _ => Err(format!(
                "\"{v}\" is not one of \"error\", \"warn\", \"info\", \"debug\", \"trace\""
            )),
        })
        .unwrap_or_else(|| "info".to_string());
    let log_format = s.choice(
        diag,
        "log_format",
        &[
            ("text", LogFormat::Text),
            ("json", LogFormat::Json),
            ("off", LogFormat::Off),
        ],
        LogFormat::Text,
    );
    let log_skip_empty = s.bool(diag, "log_skip_empty", false);
    let relay = s.choice(diag, "relay", RELAY_MODES, relay::Mode::Auto);
    let pipe_size = bounded_size(s, diag, "pipe_size", 256 << 10, 4 << 10, 16 << 20);
    let buffer_size = bounded_size(s, diag, "buffer_size", 64 << 10, 1 << 10, 16 << 20);
    Global {
        max_connections,
        workers,
        log_level,
        log_format,
        log_skip_empty,
        relay,
        pipe_size,
        buffer_size,
    }
}

fn bounded_size(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> usize {
    s.parsed(diag, key, |v| {
        let n = parse_size(v)?;
        if (min..=max).contains(&n) {
            Ok(n as usize)
        } else {
            Err(format!("must be from {min} to {max} bytes"))
        }
    })
    .unwrap_or(default as usize)
}

fn read_admin(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Admin {
    let listen = match s.string(diag, "listen") {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        Some(at) if at.value == "off" => None,
        Some(at) => match parse_socket_addr(&at.value) {
            Ok(addr) => Some(addr),
            Err(message) => {
                diag.error(&at.span, &at.key, message);
                None
            }
        },
    };
    let health_listen = s.parsed(diag, "health_listen", parse_socket_addr);
    let metrics = s.bool(diag, "metrics", true);
    let token = read_admin_token(s, diag);
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() {
            diag.warn(
                &s.span(),
                &s.key_path("listen"),
                format!("the admin listener on {addr} is reachable from the network: /metrics and /status expose internals (use health_listen for a load balancer)"),
            );
        }
    }
    Admin {
        listen,
        health_listen,
        metrics,
        token,
    }
}

/// `token` or `token_file` (its first line): what POST requests must send as
/// `Authorization: Bearer <token>`.
fn read_admin_token(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Option<String> {
    let inline = s.string(diag, "token");
    let file = s.string(diag, "token_file");
    let token = match (inline, file) {
        (Some(_), Some(at)) => {
            diag.error(&at.span, &at.key, "set token or token_file, not both");
            return None;
        }
        (Some(at), None) => Some((at.value, at.span, at.key)),
        (None, Some(at)) => match std::fs::read_to_string(&at.value) {
            Ok(text) => Some((
                text.lines().next().unwrap_or("").trim().to_string(),
                at.span,
                at.key,
            )),
            Err(e) => {
                diag.error(&at.span, &at.key, format!("cannot read {}: {e}", at.value));
                return None;
            }
        },
        (None, None) => None,
    };
    let (token, span, key) = token?;
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        diag.error(
            &span,
            &key,
            "a token is at least 16 printable characters, without spaces",
        );
        return None;
    }
    Some(token)
}

fn read_drain(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Drain {
    Drain {
        announce: s.duration(diag, "announce", Duration::from_secs(65)),
        deadline: s.duration(diag, "deadline", Duration::from_secs(300)),
        close_spread: s.duration(diag, "close_spread", Duration::from_secs(10)),
    }
}

fn read_keepalive(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Keepalive {
    let enabled = s.bool(diag, "keepalive", true);
    let idle = s.duration(diag, "keepalive_idle", Duration::from_secs(60));
    let interval = s.duration(diag, "keepalive_interval", Duration::from_secs(10));
    let count = s.integer(diag, "keepalive_count", 1..=127, 3) as u32;
    for (key, value) in [("keepalive_idle", idle), ("keepalive_interval", interval)] {
        if value < Duration::from_secs(1) || value > Duration::from_secs(32767) {
            diag.error(
                &s.span(),
                &s.key_path(key),
                "must be from 1s to 32767s (whole seconds)",
            );
        }
    }
    Keepalive {
        idle: enabled.then_some(idle),
        interval,
        count,
    }
}

struct ReadListener {
    name: At<String>,
    listen: At<SocketAddr>,
    config: ListenerConfig,
}

fn read_listener(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    global: &Global,
    pools: &HashMap<String, usize>,
) -> Option<ReadListener> {
    let name = s.required_string(diag, "name");
    let listen =
        s.required_string(diag, "listen")
            .and_then(|at| match parse_socket_addr(&at.value) {
                Ok(addr) => Some(At {
                    value: addr,
                    span: at.span,
                    key: at.key,
                }),
                Err(message) => {
                    diag.error(&at.span, &at.key, message);
                    None
                }
            });
    let pool = s
        .required_string(diag, "pool")
        .and_then(|at| match pools.get(&at.value) {
            Some(&index) => Some(index),
            None => {
                diag.error(
                    &at.span,
                    &at.key,
                    format!("no [[pool]] named \"{}\"", at.value),
                );
                None
            }
        });
    let proxy_protocol = s.choice(
        diag,
        "proxy_protocol",
        &[
            ("off", ProxyProtocol::Off),
            ("v1", ProxyProtocol::V1),
            ("v2", ProxyProtocol::V2),
            ("any", ProxyProtocol::Any),
        ],
        ProxyProtocol::Off,
    );
    let proxy_protocol_from = values(s.list(diag, "proxy_protocol_from", parse_cidr));
    let allow = values(s.list(diag, "allow", parse_cidr));
    let deny = values(s.list(diag, "deny", parse_cidr));
    let allow_vpce = values(s.list(diag, "allow_vpce", parse_vpce));
    let max_connections = s
        .integer_at(diag, "max_connections", 1..=10_000_000)
        .map(|at| at.value as usize);
    let max_connections_per_source = s
        .integer_at(diag, "max_connections_per_source", 1..=10_000_000)
        .map(|at| at.value as usize);
    let max_connections_per_vpce = s
        .integer_at(diag, "max_connections_per_vpce", 1..=10_000_000)
        .map(|at| at.value as usize);
    let mut routes = NameTable::default();
    for mut section in s.tables(diag, "route") {
        let pool =
            section
                .required_string(diag, "pool")
                .and_then(|at| match pools.get(&at.value) {
                    Some(&index) => Some(index),
                    None => {
                        diag.error(
                            &at.span,
                            &at.key,
                            format!("no [[pool]] named \"{}\"", at.value),
                        );
                        None
                    }
                });
        let names = section.list(diag, "server_names", name_table::parse_server_name);
        if names.is_empty() {
            diag.error(
                &section.span(),
                &section.key_path("server_names"),
                "a route needs at least one server name",
            );
        }
        if let Some(pool) = pool {
            for name in names {
                if !routes.insert(&name.value, pool) {
                    diag.error(
                        &name.span,
                        &name.key,
                        format!("\"{}\" is already routed", name.value),
                    );
                }
            }
        }
        section.finish(diag);
    }
    let route_fallback = s.choice(
        diag,
        "route_fallback",
        &[
            ("pool", RouteFallback::Pool),
            ("refuse", RouteFallback::Refuse),
        ],
        RouteFallback::Pool,
    );
    let handshake_timeout = s.positive_duration(diag, "handshake_timeout", Duration::from_secs(5));
    let idle_timeout = s.positive_duration(diag, "idle_timeout", Duration::from_secs(900));
    let backlog = s.integer(diag, "backlog", 1..=65535, 4096) as u32;
    let keepalive = read_keepalive(s, diag);
    let relay = s.choice(diag, "relay", RELAY_MODES, global.relay);
    let tls = s.table(diag, "tls").and_then(|mut section| {
        let tls = read_listener_tls(&mut section, diag);
        section.finish(diag);
        tls
    });

    if proxy_protocol == ProxyProtocol::Off && !proxy_protocol_from.is_empty() {
        diag.error(
            &s.span(),
            &s.key_path("proxy_protocol_from"),
            "set, but proxy_protocol is \"off\"",
        );
    }
    if proxy_protocol == ProxyProtocol::Off && !allow_vpce.is_empty() {
        diag.error(
            &s.span(),
            &s.key_path("allow_vpce"),
            "needs proxy_protocol = \"v2\" or \"any\": the VPC endpoint ID only arrives in the PROXY v2 header",
        );
    }
    if proxy_protocol != ProxyProtocol::Off && allow.is_empty() && allow_vpce.is_empty() {
        diag.warn(
            &s.span(),
            s.path(),
            "accepts PROXY protocol but has no allow or allow_vpce list: any consumer of the endpoint may connect",
        );
    }
    if max_connections_per_vpce.is_some() && proxy_protocol == ProxyProtocol::Off {
        diag.error(
            &s.span(),
            &s.key_path("max_connections_per_vpce"),
            "needs proxy_protocol: the VPC endpoint ID only arrives in the PROXY v2 header",
        );
    }

    let (name, listen, pool) = (name?, listen?, pool?);
    Some(ReadListener {
        config: ListenerConfig {
            name: name.value.clone(),
            listen: listen.value,
            pool,
            proxy_protocol,
            proxy_protocol_from,
            allow,
            deny,
            allow_vpce,
            max_connections,
            max_connections_per_source,
            max_connections_per_vpce,
            routes,
            route_fallback,
            handshake_timeout,
            idle_timeout,
            backlog,
            keepalive,
            relay,
            tls,
        },
        name,
        listen,
    })
}

struct ReadPool {
    name: At<String>,
    config: PoolConfig,
}

fn read_pool(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Option<ReadPool> {
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
    let source = s.parsed(diag, "source", |v| {
        v.parse::<std::net::IpAddr>().map_err(|_| {
            format!("\"{v}\" is not an IP address (the local address to connect from)")
        })
    });
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
            source,
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

/// The pool's `dns_*`, `nameservers` and `require_private` keys.
fn read_pool_dns(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> DnsConfig {
    let min_ttl = s.duration(diag, "dns_min_ttl", Duration::from_secs(1));
    let max_ttl = s.duration(diag, "dns_max_ttl", Duration::from_secs(300));
    let hold = s.duration(diag, "dns_hold", Duration::from_secs(300));
    let removed_grace = s.parsed(diag, "dns_removed_grace", parse_duration);
    let timeout = s.positive_duration(diag, "dns_timeout", Duration::from_secs(2));
    let nameservers = values(s.list(diag, "nameservers", parse_nameserver));
    let require_private = s.bool(diag, "require_private", false);
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
    }
}

/// `[listener.tls]` and its `[[listener.tls.certificate]]`s, files read; None when it has
/// errors (reported).
///
/// The listener's own `cert` and `key` are the default certificate, served when the client's
/// SNI matches no other (or there is none); without them, the first entry is. An entry serves
/// its `server_names`, or else the DNS names of its certificate. Explicit names must be unique;
/// a name taken from a certificate that another certificate also carries stays with the one
/// that names it explicitly, else with the first.
fn read_listener_tls(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Option<ListenerTls> {
    let errors_before = diag.errors.len();
    let cert = s.string(diag, "cert");
    let key = s.string(diag, "key");
    let min_version = read_min_version(s, diag);
    let alpn = read_alpn(s, diag);
    let client_ca = s.string(diag, "client_ca");
    let client_auth = s.choice(
        diag,
        "client_auth",
        &[
            ("required", Some(ClientAuthMode::Required)),
            ("optional", Some(ClientAuthMode::Optional)),
        ],
        None,
    );

    let mut set = tls::CertificateSet::default();
    let mut certificates = 0;
    // Names taken from the entries' certificates, after the explicit ones; the listener's own
    // certificate's last, as it is served anyway for names nobody else has.
    let mut implicit: Vec<(usize, Vec<String>)> = Vec::new();
    let mut own = None;
    let mut default = None;
    if let Some((identity, names)) = read_certificate(s, diag, cert, key) {
        let index = set.add(Arc::clone(&identity.certified));
        certificates += 1;
        default = Some(index);
        own = Some((index, names));
    }
    let mut explicit: Vec<(usize, Vec<At<String>>)> = Vec::new();
    for mut entry in s.tables(diag, "certificate") {
        let cert = entry.required_string(diag, "cert");
        let key = entry.required_string(diag, "key");
        let names = entry.list(diag, "server_names", name_table::parse_server_name);
        if let Some((identity, dns_names)) = read_certificate(&entry, diag, cert, key) {
            let index = set.add(Arc::clone(&identity.certified));
            certificates += 1;
            default.get_or_insert(index);
            if !names.is_empty() {
                for name in &names {
                    if !dns_names.is_empty() && !certificate_covers(&dns_names, &name.value) {
                        diag.warn(
                            &name.span,
                            &name.key,
                            format!("\"{}\" is not among the certificate's names ({}): clients that verify will refuse it", name.value, dns_names.join(", ")),
                        );
                    }
                }
                explicit.push((index, names));
            } else if dns_names.is_empty() {
                diag.error(
                    &entry.span(),
                    &entry.key_path("server_names"),
                    "the certificate carries no DNS name (subjectAltName): list the names it serves",
                );
            } else {
                implicit.push((index, dns_names));
            }
        }
        entry.finish(diag);
    }
    for (index, names) in explicit {
        for name in names {
            if !set.name(&name.value, index) {
                diag.error(
                    &name.span,
                    &name.key,
                    format!(
                        "\"{}\" is already served by another certificate",
                        name.value
                    ),
                );
            }
        }
    }
    for (index, names) in implicit.into_iter().chain(own) {
        for name in names {
            set.name(&name, index);
        }
    }
    match default {
        Some(index) => set.set_default(index),
        None if diag.errors.len() == errors_before => diag.error(
            &s.span(),
            s.path(),
            "needs a certificate: cert and key, or [[listener.tls.certificate]] entries",
        ),
        None => {}
    }

    let client_auth = match (&client_ca, client_auth) {
        (None, None) => None,
        (None, Some(_)) => {
            diag.error(
                &s.span(),
                &s.key_path("client_auth"),
                "needs client_ca, the CAs that client certificates must chain to",
            );
            None
        }
        (Some(_), mode) => Some(mode.unwrap_or(ClientAuthMode::Required)),
    };
    let client_roots = client_ca.and_then(|at| {
        tls::load_ca_file(Path::new(&at.value))
            .map_err(|message| diag.error(&at.span, &at.key, message))
            .ok()
    });
    if diag.errors.len() != errors_before {
        return None;
    }
    let verifier = client_roots
        .zip(client_auth)
        .map(|(roots, mode)| tls::ClientAuth {
            roots,
            required: mode == ClientAuthMode::Required,
        });
    match tls::server_config(set, min_version, &alpn, verifier) {
        Ok(server) => Some(ListenerTls {
            server,
            min_version,
            alpn,
            client_auth,
            certificates,
        }),
        Err(message) => {
            diag.error(&s.span(), s.path(), message);
            None
        }
    }
}

/// Whether a certificate with DNS names `names` is valid for `name` (itself a name or a
/// "*." wildcard), as a client checks it: equal, or under a wildcard by one label.
fn certificate_covers(names: &[String], name: &str) -> bool {
    names.iter().any(|have| {
        have == name
            || have.strip_prefix("*.").is_some_and(|parent| {
                !name.starts_with("*.")
                    && name.split_once('.').is_some_and(|(_, rest)| rest == parent)
            })
    })
}

/// `[pool.tls]`, files read; None when it has errors (reported).
fn read_pool_tls(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Option<PoolTls> {
    let errors_before = diag.errors.len();
    let sni = s.string(diag, "sni");
    let verify = s.bool(diag, "verify", true);
    let ca_file = s.string(diag, "ca_file");
    let cert = s.string(diag, "cert");
    let key = s.string(diag, "key");
    let min_version = read_min_version(s, diag);
    let alpn = read_alpn(s, diag);
    if let Some(at) = &sni {
        if let Err(message) = parse_host_name(&at.value) {
            diag.error(&at.span, &at.key, message);
        }
    }
    let identity = read_certificate(s, diag, cert, key).map(|(identity, _)| identity);
    let verification = match (verify, ca_file) {
        (true, None) => tls::Verify::SystemRoots,
        (true, Some(at)) => match tls::load_ca_file(Path::new(&at.value)) {
            Ok(roots) => tls::Verify::Roots(roots),
            Err(message) => {
                diag.error(&at.span, &at.key, message);
                tls::Verify::Off
            }
        },
        (false, Some(at)) => {
            diag.error(
                &at.span,
                &at.key,
                "has no effect with verify = false: set one or the other",
            );
            tls::Verify::Off
        }
        (false, None) => {
            diag.warn(
                &s.span(),
                &s.key_path("verify"),
                "TLS to this pool's servers is NOT verified (verify = false): anyone on the path can impersonate a server and read the traffic",
            );
            tls::Verify::Off
        }
    };
    if diag.errors.len() != errors_before {
        return None;
    }
    match tls::client_config(verification, identity, min_version, &alpn) {
        Ok(client) => Some(PoolTls {
            client,
            sni: sni.map(|at| at.value.to_ascii_lowercase()),
            verify,
            min_version,
            alpn,
        }),
        Err(message) => {
            diag.error(&s.span(), s.path(), message);
            None
        }
    }
}

/// A `cert` and `key` pair (both or neither) read and matched, with the certificate's DNS
/// names; None when absent or bad (reported at the file's key).
fn read_certificate(
    s: &Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    cert: Option<At<String>>,
    key: Option<At<String>>,
) -> Option<(tls::Identity, Vec<String>)> {
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            diag.error(&s.span(), &s.key_path("key"), "cert needs its key");
            return None;
        }
        (None, Some(_)) => {
            diag.error(&s.span(), &s.key_path("cert"), "key needs its cert");
            return None;
        }
    };
    let chain = tls::read_chain(Path::new(&cert.value))
        .map_err(|message| diag.error(&cert.span, &cert.key, message))
        .ok();
    if let Some(warning) = chain.as_deref().and_then(|chain| {
        tls::expiry_warning(Path::new(&cert.value), chain, std::time::SystemTime::now())
    }) {
        diag.warn(&cert.span, &cert.key, warning);
    }
    let private = tls::read_key(Path::new(&key.value))
        .map_err(|message| diag.error(&key.span, &key.key, message))
        .ok();
    let (chain, private) = (chain?, private?);
    let names = match chain.first().map(tls::dns_names) {
        Some(Ok(names)) => names,
        Some(Err(message)) => {
            diag.error(&cert.span, &cert.key, format!("{}: {message}", cert.value));
            return None;
        }
        None => Vec::new(),
    };
    match tls::identity(chain, private) {
        Ok(identity) => Some((identity, names)),
        Err(message) => {
            diag.error(&key.span, &key.key, format!("{message}: {}", cert.value));
            None
        }
    }
}

/// `min_version`: "1.2" (the default: TLS 1.2 and 1.3) or "1.3".
fn read_min_version(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> MinVersion {
    s.choice(
        diag,
        "min_version",
        &[("1.2", MinVersion::Tls12), ("1.3", MinVersion::Tls13)],
        MinVersion::Tls12,
    )
}

/// `alpn`: protocol names, in order of preference, e.g. ["h2", "http/1.1"].
fn read_alpn(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Vec<String> {
    values(s.list(diag, "alpn", |v| {
        if !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(v.to_string())
        } else {
            Err(format!(
                "\"{v}\" is not an ALPN protocol name, e.g. \"h2\", \"http/1.1\""
            ))
        }
    }))
}

/// `[pool.health]`; None when it has errors (reported).
fn read_health(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Option<HealthConfig> {
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
fn parse_status_range(text: &str) -> Result<StatusRange, String> {
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
fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("\"{text}\" is not a nameserver address: write \"IP\" or \"IP:port\""))
}

/// A DNS host name (for SNI).
fn parse_host_name(text: &str) -> Result<(), String> {
    match parse_server_address(&format!("{text}:1")) {
        Ok(ServerAddress::Name { .. }) => Ok(()),
        _ => Err(format!("\"{text}\" is not a host name")),
    }
}

fn read_server(
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

fn values<T>(list: Vec<At<T>>) -> Vec<T> {
    list.into_iter().map(|at| at.value).collect()
}

/// "IP:port" or "[IPv6]:port".
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("\"{text}\" is not an address: write \"IP:port\", e.g. \"0.0.0.0:8443\" or \"[::]:8443\""))
}

/// "IP:port", "[IPv6]:port" or "hostname:port".
pub fn parse_server_address(text: &str) -> Result<ServerAddress, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("\"{text}\": port 0 is not a server port"));
        }
        return Ok(ServerAddress::Ip(addr));
    }
    let bad = || {
        format!("\"{text}\" is not an address: write \"host:port\", e.g. \"10.0.1.5:443\" or \"myresource.openai.azure.com:443\"")
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        });
    if !valid_host || port == 0 {
        return Err(bad());
    }
    Ok(ServerAddress::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("\"{text}\" is not an address or CIDR, e.g. \"10.0.0.0/8\""))
}

fn parse_vpce(text: &str) -> Result<String, String> {
    let valid = text.len() <= 64
        && text
            .strip_prefix("vpce-")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "\"{text}\" is not a VPC endpoint ID (\"vpce-\" followed by hex digits)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("t.toml"), text)
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect())
    }

    const MINIMAL: &str = r#"
[[listener]]
name = "l"
listen = "127.0.0.1:8443"
pool = "p"

[[pool]]
name = "p"
  [[pool.server]]
  address = "127.0.0.1:9000"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.global.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.listeners[0].idle_timeout, Duration::from_secs(900));
        assert_eq!(c.listeners[0].keepalive.idle, Some(Duration::from_secs(60)));
        assert_eq!(c.listeners[0].max_connections, None);
        assert_eq!(c.pools[0].retries, 2);
        assert_eq!(c.pools[0].servers[0].name, "127.0.0.1:9000");
        assert_eq!(c.pools[0].servers[0].weight, 1);
        assert_eq!(c.drain.announce, Duration::from_secs(65));
        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn reports_every_error_at_once() {
        let text = r#"
[global]
max_conections = 5

[[listener]]
name = "l"
listen = "127.0.0.1:99999"
pool = "nope"
idle_timeout = "5 minutes"

[[pool]]
name = "p"
balance = "fastest"
  [[pool.server]]
  address = "127.0.0.1:9000"
  weight = 0
"#;
        let errors = parse(text).unwrap_err();
        let expect = [
            "t.toml:3:1: global.max_conections: unknown key",
            "t.toml:7:10: listener[0].listen:",
            "t.toml:8:8: listener[0].pool: no [[pool]] named \"nope\"",
            "t.toml:9:16: listener[0].idle_timeout:",
            "t.toml:13:11: pool[0].balance:",
            "t.toml:16:12: pool[0].server[0].weight: must be an integer from 1 to 256",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    }

    /// Zero durations where a timeout must run: reported at the table, under the key's path.
    #[test]
    fn zero_durations_are_refused() {
        let text = r#"
[[listener]]
name = "l"
listen = "127.0.0.1:8443"
pool = "p"
handshake_timeout = "0s"
idle_timeout = "0ms"

[[pool]]
name = "p"
connect_timeout = "0s"
dns_timeout = "0s"
  [[pool.server]]
  address = "127.0.0.1:9000"
  [pool.health]
  check = "tcp"
  timeout = "0s"
"#;
        assert_eq!(
            parse(text).unwrap_err(),
            [
                "t.toml:9:1: pool[0].connect_timeout: must be greater than zero",
                "t.toml:9:1: pool[0].dns_timeout: must be greater than zero",
                "t.toml:15:3: pool[0].health.timeout: must be greater than zero",
                "t.toml:2:1: listener[0].handshake_timeout: must be greater than zero",
                "t.toml:2:1: listener[0].idle_timeout: must be greater than zero",
            ]
        );
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            parse_server_address("10.0.0.1:443"),
            Ok(ServerAddress::Ip("10.0.0.1:443".parse().unwrap()))
        );
        assert_eq!(
            parse_server_address("MyRes.openai.azure.com:443"),
            Ok(ServerAddress::Name {
                host: "myres.openai.azure.com".into(),
                port: 443
            })
        );
        for bad in [
            "host",
            "host:",
            "host:0",
            ":443",
            "bad host:443",
            "a..b:1",
            "[::1]:99999",
        ] {
            assert!(parse_server_address(bad).is_err(), "{bad:?} accepted");
        }
    }

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
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef-token"));

        let c = parse(MINIMAL).unwrap();
        assert!(c.pools[0].health.is_none());
        assert_eq!(c.pools[0].on_down, OnDown::Keep);
        assert_eq!(c.pools[0].slow_start, Duration::ZERO);
        assert_eq!(c.admin.token, None);
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

    #[test]
    fn vpce_ids() {
        assert_eq!(
            parse_vpce("vpce-0123456789abcdef0"),
            Ok("vpce-0123456789abcdef0".into())
        );
        assert!(parse_vpce("vpce-").is_err());
        assert!(parse_vpce("vpc-0123").is_err());
        assert!(parse_vpce("vpce-xyz").is_err());
    }

    /// Certificate and key files for `names`, self-signed, in a fresh directory.
    fn cert_files(names: &[&str]) -> (PathBuf, PathBuf) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "l4relay-config-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn with_tls(listener_tls: &str, pool_tls: &str) -> String {
        format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:8443\"\npool = \"p\"\n{listener_tls}\n\n\
             [[pool]]\nname = \"p\"\n{pool_tls}\n  [[pool.server]]\n  address = \"127.0.0.1:9000\"\n"
        )
    }

    #[test]
    fn tls_keys_with_their_defaults() {
        let (cert, key) = cert_files(&["relay.test"]);
        let (a_cert, a_key) = cert_files(&["a.test"]);
        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n  client_ca = \"{}\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
                cert.display(),
                key.display(),
                cert.display(),
                a_cert.display(),
                a_key.display()
            ),
            "  [pool.tls]\n  sni = \"Upstream.Example.com\"\n  alpn = [\"http/1.1\"]\n  min_version = \"1.3\"\n",
        );
        let c = parse(&text).unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.min_version, MinVersion::Tls12);
        assert!(tls.alpn.is_empty());
        assert_eq!(tls.client_auth, Some(ClientAuthMode::Required));
        assert_eq!(tls.certificates, 2);
        let pool = c.pools[0].tls.as_ref().unwrap();
        assert_eq!(pool.sni.as_deref(), Some("upstream.example.com"));
        assert!(pool.verify);
        assert_eq!(pool.min_version, MinVersion::Tls13);
        assert_eq!(pool.alpn, vec!["http/1.1".to_string()]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let c = parse(MINIMAL).unwrap();
        assert!(c.listeners[0].tls.is_none() && c.pools[0].tls.is_none());
        remove_cert_files(&[cert, a_cert]);
    }

    fn remove_cert_files(files: &[PathBuf]) {
        for file in files {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }

    #[test]
    fn tls_errors_and_warnings() {
        let (cert, key) = cert_files(&["relay.test"]);
        let (bare_cert, bare_key) = cert_files(&[]);
        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  min_version = \"1.1\"\n  alpn = [\"\"]\n  client_auth = \"optional\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n  server_names = [\"a.test\"]\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n  server_names = [\"A.test\"]\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
                cert.display(),
                cert.display(),
                key.display(),
                cert.display(),
                key.display(),
                bare_cert.display(),
                bare_key.display(),
            ),
            &format!(
                "  [pool.tls]\n  sni = \"10.0.0.1\"\n  verify = false\n  ca_file = \"{}\"\n  key = \"/nonexistent/key.pem\"\n",
                cert.display()
            ),
        );
        assert!(certificate_covers(&["*.a.test".into()], "x.a.test"));
        assert!(!certificate_covers(&["*.a.test".into()], "a.test"));
        assert!(!certificate_covers(&["*.a.test".into()], "x.y.a.test"));
        assert!(certificate_covers(&["*.a.test".into()], "*.a.test"));
        assert!(!certificate_covers(&["a.test".into()], "*.a.test"));
        let errors = parse(&text).unwrap_err();
        let expect = [
            "listener[0].tls.min_version: \"1.1\" is not one of \"1.2\", \"1.3\"",
            "listener[0].tls.alpn[0]: \"\" is not an ALPN protocol name",
            "listener[0].tls.key: cert needs its key",
            "listener[0].tls.certificate[1].server_names[0]: \"a.test\" is already served",
            "listener[0].tls.certificate[2].server_names: the certificate carries no DNS name",
            "listener[0].tls.client_auth: needs client_ca",
            "pool[0].tls.sni: \"10.0.0.1\" is not a host name",
            "pool[0].tls.ca_file: has no effect with verify = false",
            "pool[0].tls.cert: key needs its cert",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|got| got.contains(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");

        let (other_cert, _) = cert_files(&["other.test"]);
        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  key = \"/nonexistent/key.pem\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
                cert.display(),
                other_cert.display(),
                key.display(),
            ),
            "  [pool.tls]\n  verify = false\n",
        );
        let errors = parse(&text).unwrap_err();
        assert!(
            errors[0].contains("listener[0].tls.key: cannot read /nonexistent/key.pem"),
            "{errors:#?}"
        );
        assert!(
            errors[1]
                .contains("listener[0].tls.certificate[0].key: the private key does not belong"),
            "{errors:#?}"
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");

        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{cert}\"\n  key = \"{key}\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{cert}\"\n  key = \"{key}\"\n  server_names = [\"other.test\"]\n",
                cert = cert.display(),
                key = key.display()
            ),
            "  [pool.tls]\n  verify = false\n",
        );
        let c = Config::parse(Path::new("t.toml"), &text).unwrap();
        assert!(
            c.warnings.iter().any(
                |w| w.key == "listener[0].tls.certificate[0].server_names[0]"
                    && w.message
                        .contains("not among the certificate's names (relay.test)")
            ),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.key == "pool[0].tls.verify" && w.message.contains("NOT verified")),
            "{:?}",
            c.warnings
        );
        assert!(!c.pools[0].tls.as_ref().unwrap().verify);
        remove_cert_files(&[cert, bare_cert, other_cert]);
    }
}
