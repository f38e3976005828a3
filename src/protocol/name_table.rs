//! Routing a connection to a pool by the server name in its TLS ClientHello, without
//! terminating TLS.
//!
//! Names match case-insensitively, exactly or by a leading `*.` wildcard that stands for one
//! label (as in certificates: `*.example.com` matches `a.example.com`, not `example.com` nor
//! `a.b.example.com`). Exact names win over wildcards. No match, no SNI, or not TLS at all: the
//! listener's default pool, unless the listener says to refuse.

use std::collections::HashMap;

/// A listener's SNI routes, pools given by index into the config's pools.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after "*." (e.g. "example.com").
    wildcard: HashMap<String, usize>,
}

impl NameTable {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Adds a name; false if it was already routed.
    pub fn insert(&mut self, name: &str, pool: usize) -> bool {
        let name = name.to_ascii_lowercase();
        let (table, key) = match name.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_string()),
            None => (&mut self.exact, name),
        };
        match table.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(pool);
                true
            }
        }
    }

    /// Every pool a route leads to (with repeats).
    pub fn pools(&self) -> impl Iterator<Item = usize> + '_ {
        self.exact.values().chain(self.wildcard.values()).copied()
    }

    /// The pool for `server_name`, if a route matches. `server_name` is already lowercase.
    pub fn find(&self, server_name: &str) -> Option<usize> {
        if let Some(&pool) = self.exact.get(server_name) {
            return Some(pool);
        }
        let (_, parent) = server_name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }
}

/// Validates a route's server name: a host name, optionally starting with "*.".
pub fn parse_server_name(text: &str) -> Result<String, String> {
    let bad = || {
        format!("\"{text}\" is not a server name (e.g. \"api.example.com\" or \"*.example.com\")")
    };
    let host = text.strip_prefix("*.").unwrap_or(text);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_names() {
        let mut routes = NameTable::default();
        assert!(routes.insert("API.example.com", 1));
        assert!(routes.insert("*.example.com", 2));
        assert!(!routes.insert("api.example.com", 3), "duplicate");
        assert_eq!(
            routes.find("api.example.com"),
            Some(1),
            "exact beats wildcard"
        );
        assert_eq!(routes.find("chat.example.com"), Some(2));
        assert_eq!(routes.find("example.com"), None, "wildcard needs a label");
        assert_eq!(
            routes.find("a.b.example.com"),
            None,
            "wildcard is one label"
        );
        assert_eq!(routes.find("other.org"), None);
    }

    #[test]
    fn server_names() {
        assert_eq!(
            parse_server_name("*.Example.com"),
            Ok("*.example.com".into())
        );
        for bad in ["", "*.", "a..b", "exa mple.com", "*", "a.*.com"] {
            assert!(parse_server_name(bad).is_err(), "{bad:?}");
        }
    }
}
