//! Parsers for values that mean the same wherever they appear: addresses, CIDRs, host names,
//! VPC endpoint IDs, durations and sizes. The bench tool's command line uses these too, so a value
//! means the same there as in a config file.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::protocol::vpce::VpceId;

use super::reader::At;
use crate::upstream::pool::ServerAddress;

pub(super) fn values<T>(list: Vec<At<T>>) -> Vec<T> {
    list.into_iter().map(|at| at.value).collect()
}

/// A DNS host name (for SNI).
pub fn parse_host_name(text: &str) -> Result<(), String> {
    match parse_server_address(&format!("{text}:1")) {
        Ok(ServerAddress::Name { .. }) => Ok(()),
        _ => Err(format!("\"{text}\" is not a host name")),
    }
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

pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("\"{text}\" is not an address or CIDR, e.g. \"10.0.0.0/8\""))
}

pub fn parse_vpce(text: &str) -> Result<VpceId, String> {
    VpceId::parse(text)
}

/// Parses "250ms", "5s", "1m30s", "2h"; units us, ms, s, m, h, d; no bare numbers (ambiguous).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("\"{text}\" is not a duration: write a number with a unit, e.g. \"250ms\", \"5s\", \"10m\"")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "us" | "µs" => Duration::from_micros(number),
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "d" => Duration::from_secs(number.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Parses "4096", "64KiB", "1MiB", "1GiB" (also "64K", "1M": binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("\"{text}\" is not a size: write bytes or a number with a unit, e.g. \"64KiB\", \"1MiB\"")
    };
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = t[..digits].parse().map_err(|_| bad())?;
    let multiplier: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn vpce_ids() {
        assert_eq!(
            parse_vpce("vpce-0123456789abcdef0"),
            VpceId::parse("vpce-0123456789abcdef0")
        );
        assert!(parse_vpce("vpce-").is_err());
        assert!(parse_vpce("vpc-0123").is_err());
        assert!(parse_vpce("vpce-xyz").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        for bad in [
            "",
            "5",
            "s",
            "5 sec",
            "-1s",
            "1.5s",
            "5x",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        for bad in ["", "KiB", "1.5MiB", "1TB", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
