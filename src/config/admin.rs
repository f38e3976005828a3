//! `[admin]`: the admin listener (metrics, health, status, the POST endpoints), its token and the
//! host names it answers to; and the rule that nothing changes state off loopback without a
//! token.

use std::fmt;
use std::net::SocketAddr;

use super::reader::{Diagnostics, Section};
use super::values::{parse_host_name, parse_socket_addr};

#[derive(Debug, Clone)]
pub struct Admin {
    /// None: no admin listener.
    pub listen: Option<SocketAddr>,
    /// A second listener serving only /healthz and /readyz (for a load balancer).
    pub health_listen: Option<SocketAddr>,
    /// Record Prometheus metrics (off: /metrics answers 404 and nothing is counted).
    pub metrics: bool,
    /// Bearer token the POST endpoints require.
    pub token: Option<AdminToken>,
    /// Names (lowercase) accepted in the `Host` header besides IP addresses and `localhost`.
    pub host_names: Vec<String>,
}

impl Admin {
    /// Whether the POST endpoints answer: with a token, or without one on a loopback-only
    /// listener. Off loopback without a token they are off, so no default leaves a state change
    /// open to the network.
    pub fn posts_enabled(&self) -> bool {
        self.token.is_some() || self.listen.is_none_or(|addr| addr.ip().is_loopback())
    }
}

/// The admin token. It has no accessor and its `Debug` shows nothing: the only thing to do with
/// it is to compare a request's credentials against it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Compares in constant time: the time depends only on the length of `sent`, which the
    /// sender knows already, never on where it differs from the token or on the token's length.
    pub fn matches(&self, sent: &[u8]) -> bool {
        let token = self.0.as_bytes();
        // The token is never empty (at least 16 characters), so the index below is defined.
        let mut difference = usize::from(sent.len() != token.len());
        for (i, byte) in sent.iter().enumerate() {
            difference |= usize::from(byte ^ token[i % token.len()]);
        }
        std::hint::black_box(difference) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
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
    let host_names = s
        .list(diag, "host_names", |name| {
            let name = name.strip_suffix('.').unwrap_or(name);
            parse_host_name(name).map(|()| name.to_ascii_lowercase())
        })
        .into_iter()
        .map(|at| at.value)
        .collect();
    let admin = Admin {
        listen,
        health_listen,
        metrics,
        token,
        host_names,
    };
    if let Some(addr) = listen.filter(|addr| !addr.ip().is_loopback()) {
        let posts = if admin.posts_enabled() {
            "its POST endpoints need the token"
        } else {
            "its POST endpoints (drain or ready a server) are OFF until token or token_file is set"
        };
        diag.warn(
            &s.span(),
            &s.key_path("listen"),
            format!("the admin listener on {addr} is reachable from the network: /metrics and /status expose internals, {posts} (use health_listen for a load balancer)"),
        );
    }
    admin
}

/// `token` or `token_file` (its first line): what POST requests must send as
/// `Authorization: Bearer <token>`.
pub(super) fn read_admin_token(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
) -> Option<AdminToken> {
    let inline = s.string(diag, "token");
    let file = s.string(diag, "token_file");
    let token = match (inline, file) {
        (Some(_), Some(at)) => {
            diag.error(&at.span, &at.key, "set token or token_file, not both");
            return None;
        }
        (Some(at), None) => Some((at.value, at.span, at.key)),
        (None, Some(at)) => match std::fs::read_to_string(&at.value) {
            Ok(text) => {
                if let Some(mode) = shared_mode(&at.value) {
                    diag.warn(
                        &at.span,
                        &at.key,
                        format!("{} can be read or written by group or others (mode {mode:04o}): make it 0600, owned by the user l4relay runs as", at.value),
                    );
                }
                Some((
                    text.lines().next().unwrap_or("").trim().to_string(),
                    at.span,
                    at.key,
                ))
            }
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
    Some(AdminToken(token))
}

/// The permission bits of `path` when group or others have any access to it.
fn shared_mode(path: &str) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{parse, MINIMAL};

    fn token(text: &str) -> AdminToken {
        AdminToken(text.to_string())
    }

    #[test]
    fn token_comparison() {
        let t = token("0123456789abcdef");
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b""));
        // A prefix, an extension, and the token twice over: the cyclic index must not let a
        // longer or shorter value pass.
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdef0"));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdef"));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let text = format!("[admin]\ntoken = \"secret-0123456789abcdef\"\n{}", MINIMAL);
        let config = parse(&text).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret-0123456789abcdef"), "{shown}");
        assert!(config
            .admin
            .token
            .as_ref()
            .is_some_and(|t| t.matches(b"secret-0123456789abcdef")));
    }

    #[test]
    fn posts_are_off_off_loopback_without_a_token() {
        let admin = |listen: &str, token: bool| Admin {
            listen: (listen != "off").then(|| listen.parse().unwrap()),
            health_listen: None,
            metrics: true,
            token: token.then(|| AdminToken("0123456789abcdef".into())),
            host_names: Vec::new(),
        };
        assert!(admin("127.0.0.1:9090", false).posts_enabled());
        assert!(admin("[::1]:9090", false).posts_enabled());
        assert!(admin("off", false).posts_enabled());
        assert!(!admin("0.0.0.0:9090", false).posts_enabled());
        assert!(!admin("10.0.0.5:9090", false).posts_enabled());
        assert!(admin("0.0.0.0:9090", true).posts_enabled());
    }

    #[test]
    fn host_names_are_checked_and_lowercased() {
        let config = parse(&format!(
            "[admin]\nhost_names = [\"Relay-1.Internal.\", \"localhost\"]\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.admin.host_names, ["relay-1.internal", "localhost"]);
        let errors = parse(&format!("[admin]\nhost_names = [\"a b\"]\n{MINIMAL}")).unwrap_err();
        assert!(
            errors[0].contains("admin.host_names[0]: \"a b\" is not a host name"),
            "{errors:?}"
        );
    }
}
