//! The AWS VPC endpoint ID: one rule for the PROXY v2 TLV a load balancer sends, the config's
//! `allow_vpce` lists, and the bench tool's `--vpce`, so an ID means the same everywhere.
//!
//! An ID is "vpce-" and hex digits (AWS issues 17), at most 64 bytes in all, kept in lowercase.
//! It ends up in access rules, logs and metric labels, so nothing else passes.

use std::fmt;
use std::ops::Deref;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VpceId(Box<str>);

impl VpceId {
    /// Longest ID accepted; real ones are 22 bytes.
    pub const MAX_LEN: usize = 64;

    /// Parses an ID from text (a config file, a command line).
    pub fn parse(text: &str) -> Result<VpceId, String> {
        Self::from_bytes(text.as_bytes()).ok_or_else(|| {
            format!("\"{text}\" is not a VPC endpoint ID (\"vpce-\" followed by hex digits)")
        })
    }

    /// Parses an ID from the bytes of a PROXY v2 TLV.
    pub fn from_bytes(bytes: &[u8]) -> Option<VpceId> {
        let digits = bytes.strip_prefix(b"vpce-")?;
        let valid = !digits.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && digits.iter().all(u8::is_ascii_hexdigit);
        // Only ASCII passed, so the conversion cannot fail.
        valid.then(|| VpceId(String::from_utf8_lossy(bytes).to_ascii_lowercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for VpceId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VpceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_text_and_wire() {
        let id = VpceId::parse("vpce-0123456789abcdef0").unwrap();
        assert_eq!(id.as_str(), "vpce-0123456789abcdef0");
        assert_eq!(VpceId::from_bytes(b"vpce-0123456789ABCDEF0"), Some(id));
        for bad in [
            "",
            "vpce-",
            "vpc-0123",
            "vpce-xyz",
            "vpce-01 23",
            "VPCE-0123",
        ] {
            assert!(VpceId::parse(bad).is_err(), "{bad:?} accepted");
            assert_eq!(VpceId::from_bytes(bad.as_bytes()), None, "{bad:?} accepted");
        }
        let longest = format!("vpce-{}", "a".repeat(VpceId::MAX_LEN - 5));
        assert!(VpceId::parse(&longest).is_ok());
        assert!(VpceId::parse(&format!("{longest}a")).is_err());
    }
}
