//! `[[listener]]` with its `[[listener.route]]`s: what a listener accepts, from whom, with what
//! limits and timeouts, and where it sends connections. Its `[listener.tls]` is in `tls`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::global::{Global, RELAY_MODES};
use super::reader::{At, Diagnostics, Section};
use super::tls::read_listener_tls;
use super::values::{parse_cidr, parse_duration, parse_socket_addr, parse_vpce, values};
use crate::inbound::listener::ListenerConfig;
use crate::inbound::preamble::ProxyProtocol;
use crate::inbound::progress::StreamTimeouts;
use crate::inbound::route::RouteFallback;
use crate::protocol::name_table::{self, NameTable};
use crate::relay::sockopt::Keepalive;

pub(super) struct ReadListener {
    pub(super) name: At<String>,
    pub(super) listen: At<SocketAddr>,
    pub(super) config: ListenerConfig,
}

pub(super) fn read_listener(
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
    let pool = pool_index(s, diag, pools);
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
        let pool = pool_index(&mut section, diag, pools);
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
    let streams = StreamTimeouts {
        first_byte: optional_timeout(s, diag, "first_byte_timeout"),
        max_lifetime: optional_timeout(s, diag, "max_lifetime"),
        idle_client: optional_timeout(s, diag, "idle_timeout_client"),
        idle_server: optional_timeout(s, diag, "idle_timeout_server"),
    };
    let log_open = s.bool(diag, "log_open", false);
    let log_progress = optional_timeout(s, diag, "log_progress");
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
    if proxy_protocol != ProxyProtocol::Off && proxy_protocol_from.is_empty() {
        // Every rule keyed on the client reads the PROXY header's word for who it is: from a
        // peer that is not the load balancer, that word is the client's own.
        let trusted: Vec<&str> = [
            ("allow", !allow.is_empty()),
            ("deny", !deny.is_empty()),
            ("allow_vpce", !allow_vpce.is_empty()),
            (
                "max_connections_per_source",
                max_connections_per_source.is_some(),
            ),
            (
                "max_connections_per_vpce",
                max_connections_per_vpce.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if !trusted.is_empty() {
            diag.warn(
                &s.span(),
                &s.key_path("proxy_protocol_from"),
                format!(
                    "not set: any client that reaches this listener directly can send a PROXY header naming any address and VPC endpoint, and so get past {}; set proxy_protocol_from to the load balancer's addresses (its subnets)",
                    trusted.join(", ")
                ),
            );
        }
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
            streams,
            log_open,
            log_progress,
            backlog,
            keepalive,
            relay,
            tls,
        },
        name,
        listen,
    })
}

/// An optional duration that must be greater than zero: leaving the key out is how to say
/// "none".
fn optional_timeout(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    key: &str,
) -> Option<Duration> {
    s.parsed(diag, key, |text| match parse_duration(text)? {
        d if d.is_zero() => Err("must be greater than zero (leave the key out for none)".into()),
        d => Ok(d),
    })
}

pub(super) fn read_keepalive(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Keepalive {
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

/// The index of the pool a section's `pool` key names.
fn pool_index(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    pools: &HashMap<String, usize>,
) -> Option<usize> {
    let at = s.required_string(diag, "pool")?;
    match pools.get(&at.value) {
        Some(&index) => Some(index),
        None => {
            diag.error(
                &at.span,
                &at.key,
                format!("no [[pool]] named \"{}\"", at.value),
            );
            None
        }
    }
}
