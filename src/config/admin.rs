//! `[admin]`: the admin listener (metrics, health, status, the POST endpoints) and its token.

use std::net::SocketAddr;

use super::reader::{Diagnostics, Section};
use super::values::parse_socket_addr;

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

pub(super) fn read_admin(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Admin {
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
pub(super) fn read_admin_token(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
) -> Option<String> {
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
