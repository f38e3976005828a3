//! The `check` warning about egress capacity: a listener whose connection limit is more than
//! its pools' source addresses have local ports for. Linux gives each (source address,
//! destination `IP:port`) pair at most the ephemeral port range of concurrent connections, so
//! connects past that fail with EADDRNOTAVAIL whatever the CPU (see `upstream::egress`).

use super::reader::{Diagnostics, Section};
use super::Global;
use crate::inbound::listener::ListenerConfig;
use crate::upstream::egress::PortRange;
use crate::upstream::pool::{PoolConfig, ServerAddress};

/// Warns, naming the keys, when `listener`'s limit exceeds what a pool it sends to can open:
/// sources × ports per destination × destinations (a server given by name counts as one
/// address, as it may resolve to one). Only where egress is planned: the pool names its
/// `source` addresses, or the listener has a limit of its own; the process-wide default limit
/// alone, with the kernel's choice of address, is a guard rather than a plan, and a warning on
/// every such config would teach operators to skip warnings.
pub(super) fn warn_capacity(
    s: &Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    listener: &ListenerConfig,
    global: &Global,
    pools: &[PoolConfig],
) {
    let range = PortRange::current();
    let (limit, limit_key) = match listener.max_connections {
        Some(max) if max < global.max_connections => (max, s.key_path("max_connections")),
        _ => (global.max_connections, "global.max_connections".to_string()),
    };
    let mut indexes: Vec<usize> = std::iter::once(listener.pool)
        .chain(listener.routes.pools())
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    for index in indexes {
        let Some(pool) = pools.get(index) else {
            continue;
        };
        if pool.sources.is_empty() && listener.max_connections.is_none() {
            continue;
        }
        if let Some(message) = shortfall(limit, &limit_key, index, pool, range) {
            diag.warn(&s.span(), &limit_key, message);
        }
    }
}

/// The warning's text, if `limit` is more than `pool` can carry.
fn shortfall(
    limit: usize,
    limit_key: &str,
    index: usize,
    pool: &PoolConfig,
    range: PortRange,
) -> Option<String> {
    let mut destinations: Vec<&ServerAddress> = pool
        .servers
        .iter()
        .filter(|s| !s.backup)
        .map(|s| &s.address)
        .collect();
    destinations.dedup();
    let destinations = destinations.len().max(1) as u64;
    let sources = pool.sources.len().max(1) as u64;
    let capacity = sources * u64::from(range.ports()) * destinations;
    if (limit as u64) <= capacity {
        return None;
    }
    let from = if pool.sources.is_empty() {
        format!("one source address (pool[{index}].source is not set)")
    } else {
        format!("{sources} source address(es) (pool[{index}].source)")
    };
    Some(format!(
        "allows {limit} connections ({limit_key}), but pool \"{}\" can open at most {capacity} to its {destinations} server address(es): {from} × {} local ports per destination (net.ipv4.ip_local_port_range {}-{}); past that, connects fail with EADDRNOTAVAIL (detail=source_ports_exhausted): add source addresses or lower the limit",
        pool.name,
        range.ports(),
        range.low,
        range.high
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    const RANGE: PortRange = PortRange::DEFAULT;

    fn config(global: usize, listener: &str, source: &str, servers: &[&str]) -> String {
        let mut text = format!(
            "[global]\nmax_connections = {global}\n\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:8443\"\npool = \"p\"\n{listener}\n\n[[pool]]\nname = \"p\"\n{source}\n"
        );
        for server in servers {
            text.push_str(&format!("  [[pool.server]]\n  address = \"{server}\"\n"));
        }
        text
    }

    fn shortfall_of(text: &str) -> Option<String> {
        let c = super::super::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let warned = c
            .warnings
            .iter()
            .find(|w| w.message.contains("can open at most"))
            .map(|w| format!("{}: {}", w.key, w.message));
        let listener = &c.listeners[0];
        let (limit, key) = match listener.max_connections {
            Some(max) if max < c.global.max_connections => {
                (max, "listener[0].max_connections".to_string())
            }
            _ => (
                c.global.max_connections,
                "global.max_connections".to_string(),
            ),
        };
        let computed = shortfall(limit, &key, 0, &c.pools[0], RANGE);
        // What `check` says, where this machine's range is Linux's default.
        if PortRange::current() == RANGE
            && (!c.pools[0].sources.is_empty() || listener.max_connections.is_some())
        {
            assert_eq!(
                warned,
                computed.as_ref().map(|m| format!("{key}: {m}")),
                "the warning check gives"
            );
        }
        computed
    }

    #[test]
    fn the_default_limit_without_sources_is_not_warned_about() {
        let text = config(100_000, "", "", &["myres.openai.azure.com:443"]);
        let c = super::super::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn sources_times_ports_times_destinations_against_the_limit() {
        let one = ["myres.openai.azure.com:443"];
        let warned = shortfall_of(&config(100_000, "", "", &one)).expect("one source");
        assert!(
            warned.contains("allows 100000 connections (global.max_connections)")
                && warned.contains("can open at most 28232")
                && warned.contains("pool[0].source is not set"),
            "{warned}"
        );
        let two = "source = [\"10.0.1.10\", \"10.0.1.11\"]";
        let warned = shortfall_of(&config(100_000, "", two, &one)).expect("two sources");
        assert!(
            warned.contains("at most 56464")
                && warned.contains("2 source address(es) (pool[0].source)"),
            "{warned}"
        );
        let four = "source = [\"10.0.1.10\", \"10.0.1.11\", \"10.0.1.12\", \"10.0.1.13\"]";
        assert_eq!(shortfall_of(&config(100_000, "", four, &one)), None);
        // The listener's own, lower limit is what counts, by its key.
        let warned = shortfall_of(&config(100_000, "max_connections = 60000", two, &one)).unwrap();
        assert!(warned.contains("(listener[0].max_connections)"), "{warned}");
        assert_eq!(
            shortfall_of(&config(100_000, "max_connections = 50000", two, &one)),
            None
        );
        // Each server address has its own ports.
        let servers = [
            "10.0.2.1:443",
            "10.0.2.2:443",
            "10.0.2.3:443",
            "10.0.2.4:443",
        ];
        assert_eq!(shortfall_of(&config(100_000, "", "", &servers)), None);
        assert_eq!(shortfall_of(&config(1000, "", "", &one)), None);
    }

    #[test]
    fn source_takes_one_address_or_a_list() {
        let one = ["10.0.2.1:443"];
        let c = parse(&config(1000, "", "source = \"10.0.1.10\"", &one)).unwrap();
        assert_eq!(
            c.pools[0].sources,
            ["10.0.1.10".parse::<std::net::IpAddr>().unwrap()]
        );
        let c = parse(&config(
            1000,
            "",
            "source = [\"10.0.1.10\", \"fd00::1\"]",
            &one,
        ))
        .unwrap();
        assert_eq!(c.pools[0].sources.len(), 2);
        let c = parse(&config(1000, "", "", &one)).unwrap();
        assert!(c.pools[0].sources.is_empty());
        let errors = parse(&config(
            1000,
            "",
            "source = [\"10.0.1.10\", \"10.0.1.10\", \"nope\", \"0.0.0.0\"]",
            &one,
        ))
        .unwrap_err();
        let expect = [
            "pool[0].source[1]: 10.0.1.10 is listed twice",
            "pool[0].source[2]: \"nope\" is not an IP address",
            "pool[0].source[3]: 0.0.0.0 is not an address of this host's",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|got| got.contains(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        let errors = parse(&config(1000, "", "source = 5", &one)).unwrap_err();
        assert!(
            errors[0].contains("pool[0].source: expected an array of strings"),
            "{errors:?}"
        );
    }
}
