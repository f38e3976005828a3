//! Relay config text: a one-listener, one-pool config, or whole tables assembled.

use std::net::SocketAddr;

/// A minimal config: one listener to one pool of `servers`, plus `extra` lines appended to the
/// listener and pool tables through the placeholders.
pub fn config(
    listen: SocketAddr,
    servers: &[SocketAddr],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    let mut text = format!(
        "[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n{listener_extra}\n\n[[pool]]\nname = \"p\"\n{pool_extra}\n"
    );
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"s{i}\"\n  address = \"{server}\"\n"
        ));
    }
    text
}

/// `config`, with the admin listener on `admin`.
pub fn config_with_admin(
    admin: SocketAddr,
    listen: SocketAddr,
    servers: &[SocketAddr],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    config(listen, servers, listener_extra, pool_extra).replace(
        "[admin]\nlisten = \"off\"",
        &format!("[admin]\nlisten = \"{admin}\""),
    )
}

/// A relay config of whole tables: the admin listener (or none), then the listeners (with
/// their `[[listener.route]]` tables), which must all come before the pools.
pub fn assemble_config(
    admin: Option<SocketAddr>,
    listeners: &[String],
    pools: &[String],
) -> String {
    let admin = admin.map_or("off".to_string(), |a| a.to_string());
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n{}{}",
        listeners.concat(),
        pools.concat()
    )
}

/// A `[[listener]]` table.
pub fn listener(name: &str, listen: SocketAddr, pool: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\npool = \"{pool}\"\n{extra}\n\n"
    )
}

/// A `[[pool]]` table whose servers are named `{name}-0`, `{name}-1`, ...
pub fn pool(name: &str, servers: &[SocketAddr], extra: &str) -> String {
    let mut text = format!("[[pool]]\nname = \"{name}\"\n{extra}\n");
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"{name}-{i}\"\n  address = \"{server}\"\n"
        ));
    }
    text.push('\n');
    text
}
