//! The configuration: reading a TOML file into a validated `Config`.
//!
//! A `Config` that exists is a valid one: every cross-reference resolved, every number in range.
//! `load` reports all problems at once (file, line, key), which is what `l4relay check` prints.
//! Runtime objects (sockets, pools with live counters) are built from it elsewhere; this module
//! does no I/O beyond reading the file (and the files it names: a health check's CA file, the
//! admin token file, TLS certificates, keys and CA files, so `check` finds their problems; and
//! the kernel's ephemeral port range, to warn when the source addresses cannot carry a
//! listener's limit) and never resolves DNS names. TLS files are turned into rustls configs here (`crate::tls`), so a
//! reload with a bad certificate fails like any other config error.

mod admin;
mod drain;
mod egress;
mod global;
mod listener;
mod pool;
mod reader;
mod tls;
pub mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use crate::inbound::listener::ListenerConfig;
use crate::upstream::pool::PoolConfig;

use admin::read_admin;
pub use admin::{Admin, AdminToken};
use drain::read_drain;
pub use drain::Drain;
use global::read_global;
pub use global::{Global, DEFAULT_MAX_CONNECTIONS};
use listener::read_listener;
use pool::read_pool;
pub use reader::ConfigError;
use reader::{Diagnostics, Section};
pub use values::{parse_duration, parse_size};
pub use values::{parse_server_address, parse_socket_addr};

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

    /// What differs in `next` that only a restart can apply, one message per key. A reload
    /// with any is refused as a whole: applying the rest would leave the running process
    /// different from the file it says it loaded.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<String> {
        fn change<T: PartialEq + fmt::Debug>(out: &mut Vec<String>, key: &str, old: T, new: T) {
            if old != new {
                out.push(format!(
                    "{key}: {old:?} -> {new:?} takes effect only at a restart"
                ));
            }
        }
        let mut out = Vec::new();
        let (old, new) = (&self.global, &next.global);
        change(&mut out, "global.workers", old.workers, new.workers);
        change(&mut out, "global.log_level", &old.log_level, &new.log_level);
        change(
            &mut out,
            "global.log_format",
            old.log_format,
            new.log_format,
        );
        change(
            &mut out,
            "global.log_skip_empty",
            old.log_skip_empty,
            new.log_skip_empty,
        );
        // The access-log writer is set up per worker at start; a rotated file is reopened by
        // SIGUSR1.
        change(
            &mut out,
            "global.access_log",
            &old.access_log,
            &new.access_log,
        );
        change(
            &mut out,
            "global.access_log_buffer",
            old.access_log_buffer,
            new.access_log_buffer,
        );
        change(
            &mut out,
            "global.access_log_flush",
            old.access_log_flush,
            new.access_log_flush,
        );
        // The recorder is process-wide and installed once.
        change(
            &mut out,
            "admin.metrics",
            self.admin.metrics,
            next.admin.metrics,
        );
        // Set on the listening socket when it is bound; a reload keeps the socket open.
        for new in &next.listeners {
            let Some(old) = self.listeners.iter().find(|l| l.listen == new.listen) else {
                continue;
            };
            let at = format!("listener \"{}\" ({})", new.name, new.listen);
            let mut socket = Vec::new();
            change(&mut socket, "backlog", old.backlog, new.backlog);
            let (k_old, k_new) = (&old.keepalive, &new.keepalive);
            match (k_old.idle, k_new.idle) {
                (Some(idle_old), Some(idle_new)) => {
                    change(&mut socket, "keepalive_idle", idle_old, idle_new);
                    change(
                        &mut socket,
                        "keepalive_interval",
                        k_old.interval,
                        k_new.interval,
                    );
                    change(&mut socket, "keepalive_count", k_old.count, k_new.count);
                }
                (idle_old, idle_new) => {
                    change(
                        &mut socket,
                        "keepalive",
                        idle_old.is_some(),
                        idle_new.is_some(),
                    );
                }
            }
            out.extend(socket.into_iter().map(|m| {
                format!("{at}: {m}, as its listening socket stays open (or give it a new address)")
            }));
        }
        out
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
        None => read_admin(&mut Section::root(&empty_table()), diag),
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
                egress::warn_capacity(&section, diag, &l.config, &global, &pools);
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

#[cfg(test)]
mod test_support {
    use super::*;

    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("t.toml"), text)
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect())
    }

    pub const MINIMAL: &str = r#"
[[listener]]
name = "l"
listen = "127.0.0.1:8443"
pool = "p"

[[pool]]
name = "p"
  [[pool.server]]
  address = "127.0.0.1:9000"
"#;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::{parse, MINIMAL};
    use super::*;

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
}

#[cfg(test)]
mod reload_tests {
    use super::test_support::{parse, MINIMAL};

    /// Keys a reload cannot apply are named, each once; the rest pass.
    #[test]
    fn restart_only_changes_are_named() {
        let old = parse(MINIMAL).unwrap();
        assert!(old.restart_only_changes(&old).is_empty());
        let live = parse(&MINIMAL.replace(
            "pool = \"p\"",
            "pool = \"p\"\nidle_timeout = \"10s\"\nmax_connections = 5",
        ))
        .unwrap();
        assert!(old.restart_only_changes(&live).is_empty());

        let text = format!(
            "[global]\nworkers = 3\nlog_level = \"debug\"\nlog_format = \"json\"\nlog_skip_empty = true\n[admin]\nmetrics = false\n{}",
            MINIMAL.replace(
                "pool = \"p\"",
                "pool = \"p\"\nbacklog = 128\nkeepalive_idle = \"30s\"\nkeepalive_count = 5"
            )
        );
        let changes = old.restart_only_changes(&parse(&text).unwrap());
        let keys: Vec<&str> = changes
            .iter()
            .map(|c| c.split(" -> ").next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "global.workers: 0",
                "global.log_level: \"info\"",
                "global.log_format: Text",
                "global.log_skip_empty: false",
                "admin.metrics: true",
                "listener \"l\" (127.0.0.1:8443): backlog: 4096",
                "listener \"l\" (127.0.0.1:8443): keepalive_idle: 60s",
                "listener \"l\" (127.0.0.1:8443): keepalive_count: 3",
            ],
            "{changes:#?}"
        );

        // Keepalive turned off is one change, not one per keepalive key.
        let off =
            parse(&MINIMAL.replace("pool = \"p\"", "pool = \"p\"\nkeepalive = false")).unwrap();
        assert_eq!(old.restart_only_changes(&off).len(), 1);
        // A listener on a new address binds a new socket: its backlog is free to differ.
        let moved = parse(
            &MINIMAL
                .replace("127.0.0.1:8443", "127.0.0.1:8444")
                .replace("pool = \"p\"", "pool = \"p\"\nbacklog = 128"),
        )
        .unwrap();
        assert!(old.restart_only_changes(&moved).is_empty());
    }

    #[test]
    fn proxy_listener_without_proxy_protocol_from_is_warned_about() {
        let with = |extra: &str| {
            let config = parse(&MINIMAL.replace(
                "pool = \"p\"",
                &format!("pool = \"p\"\nproxy_protocol = \"v2\"\n{extra}"),
            ))
            .unwrap();
            config
                .warnings
                .iter()
                .filter(|w| w.key == "listener[0].proxy_protocol_from")
                .map(|w| w.message.clone())
                .collect::<Vec<_>>()
        };
        let warned = with("allow = [\"10.0.0.0/8\"]\nmax_connections_per_vpce = 10");
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("get past allow, max_connections_per_vpce;"),
            "{warned:?}"
        );
        assert_eq!(with("allow_vpce = [\"vpce-0123456789abcdef0\"]").len(), 1);
        assert_eq!(with("max_connections_per_source = 3").len(), 1);
        assert!(
            with("allow = [\"10.0.0.0/8\"]\nproxy_protocol_from = [\"10.1.0.0/16\"]").is_empty()
        );
        // Nothing keyed on the client: the other warning (no allowlist) covers it.
        assert!(with("").is_empty());
    }
}
