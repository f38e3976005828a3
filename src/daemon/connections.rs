//! `GET /connections` and `POST /connections/{id}/close`: the live-connection table
//! (`inbound::registry`) over HTTP.
//!
//! `GET /connections?listener=&pool=&server=&client=&vpce=&phase=&order=&limit=` answers JSON:
//! how many connections are open, how many match, and the first `limit` of those (100 unless
//! said, at most 10,000), the longest-lived first (`order=longest`, the default) or the newest
//! (`order=newest`). `client` is an address or a CIDR, matched against the real client (the
//! PROXY header's source). An unknown parameter or a bad value is a 400 that says which.

use std::time::{Instant, SystemTime};

use ipnet::IpNet;

use super::admin::{percent_decode, Response};
use crate::inbound::registry::{Filter, Order, Phase, Registry};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// What a `GET /connections` asks for.
#[derive(Debug)]
struct Query {
    filter: Filter,
    order: Order,
    limit: usize,
}

fn parse_query(query: &str) -> Result<Query, String> {
    let mut parsed = Query {
        filter: Filter::default(),
        order: Order::Longest,
        limit: DEFAULT_LIMIT,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A form's spaces arrive as '+'; no name here has one, so it is only ever that.
        let value = percent_decode(&value.replace('+', " "))
            .ok_or_else(|| format!("{key}: invalid percent-encoding"))?;
        let filter = &mut parsed.filter;
        match key {
            "listener" => filter.listener = Some(value),
            "pool" => filter.pool = Some(value),
            "server" => filter.server = Some(value),
            "vpce" => filter.vpce = Some(value.to_ascii_lowercase()),
            "client" => filter.client = Some(parse_client(&value)?),
            "phase" => {
                filter.phase = Some(
                    Phase::ALL
                        .into_iter()
                        .find(|p| p.as_str() == value)
                        .ok_or_else(|| {
                            let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
                            format!("phase: \"{value}\" is not one of {}", names.join(", "))
                        })?,
                )
            }
            "order" | "sort" => {
                parsed.order = match value.as_str() {
                    "longest" | "oldest" => Order::Longest,
                    "newest" => Order::Newest,
                    _ => return Err(format!("{key}: \"{value}\" is not longest or newest")),
                }
            }
            "limit" => {
                parsed.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit: must be from 1 to {MAX_LIMIT}"))?
            }
            _ => {
                return Err(format!(
                    "unknown parameter \"{key}\" (listener, pool, server, client, vpce, phase, order, limit)"
                ))
            }
        }
    }
    Ok(parsed)
}

/// An address (a one-address network) or a CIDR.
fn parse_client(text: &str) -> Result<IpNet, String> {
    let parsed = match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip.to_canonical())),
        Err(_) => text.parse::<IpNet>().map(|net| net.trunc()),
    };
    parsed.map_err(|_| format!("client: \"{text}\" is not an address or a CIDR"))
}

/// `GET /connections`.
pub(super) fn list(registry: &Registry, query: &str) -> Response {
    let query = match parse_query(query) {
        Ok(query) => query,
        Err(message) => return Response::text(400, format!("bad request: {message}\n")),
    };
    let selection = registry.select(&query.filter, query.order, query.limit);
    let (now, wall) = (Instant::now(), SystemTime::now());
    let connections: Vec<serde_json::Value> = selection
        .entries
        .iter()
        .map(|entry| entry.to_json(now, wall))
        .collect();
    json(
        200,
        serde_json::json!({
            "open": selection.total,
            "matched": selection.matched,
            "order": match query.order {
                Order::Longest => "longest",
                Order::Newest => "newest",
            },
            "connections": connections,
        }),
    )
}

/// `POST /connections/{id}/close` (the caller has checked the method and the token).
pub(super) fn close(registry: &Registry, path: &str) -> Response {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["connections", id, "close"] = parts.as_slice() else {
        return Response::text(404, "not found\n");
    };
    let Ok(id) = id.parse::<u64>() else {
        return Response::text(
            400,
            format!("bad request: \"{id}\" is not a connection id\n"),
        );
    };
    match registry.close(id) {
        None => Response::text(404, format!("no open connection {id}\n")),
        Some(entry) => {
            tracing::info!(id, listener = %entry.connection.listener, client = %entry.connection.client, "admin: closing connection");
            json(
                200,
                serde_json::json!({
                    "id": id,
                    "closing": true,
                    "phase": entry.phase().as_str(),
                }),
            )
        }
    }
}

fn json(status: u16, value: serde_json::Value) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: value.to_string() + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query("").unwrap();
        assert_eq!((q.order, q.limit), (Order::Longest, DEFAULT_LIMIT));
        let q = parse_query("listener=openai&pool=azure%2Dopenai&client=10.0.0.0/8&order=newest&limit=5&vpce=VPCE-0123&phase=relaying")
            .unwrap();
        assert_eq!(q.filter.listener.as_deref(), Some("openai"));
        assert_eq!(q.filter.pool.as_deref(), Some("azure-openai"));
        assert_eq!(q.filter.client, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(q.filter.vpce.as_deref(), Some("vpce-0123"));
        assert_eq!(q.filter.phase, Some(Phase::Relaying));
        assert_eq!((q.order, q.limit), (Order::Newest, 5));
        let q = parse_query("client=::ffff:10.1.2.3&server=a+b").unwrap();
        assert_eq!(q.filter.client, Some("10.1.2.3/32".parse().unwrap()));
        assert_eq!(q.filter.server.as_deref(), Some("a b"));
        assert_eq!(
            parse_query("client=10.1.2.3/8").unwrap().filter.client,
            Some("10.0.0.0/8".parse().unwrap())
        );

        for (bad, says) in [
            ("limit=0", "limit"),
            ("limit=100000", "limit"),
            ("order=random", "order"),
            ("client=example.com", "client"),
            ("phase=sleeping", "phase"),
            ("colour=red", "unknown parameter \"colour\""),
            ("pool=%zz", "pool"),
        ] {
            let error = parse_query(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
