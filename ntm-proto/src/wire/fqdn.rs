//! FQDN TLV value rules (§4).

use core::fmt;

use crate::{Error, Result};

/// Longest FQDN in bytes.
pub const MAX_FQDN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Check an FQDN: ASCII lower-case, 1-253 bytes, dot-separated labels of
/// 1-63 bytes of `a-z 0-9 -`. No trailing dot.
pub fn validate_fqdn(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > MAX_FQDN_LEN {
        return Err(Error::BadFqdn);
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(Error::BadFqdn);
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::BadFqdn);
        }
    }
    Ok(())
}

/// A validated FQDN borrowed from a datagram or a caller's string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fqdn<'a>(&'a str);

impl<'a> Fqdn<'a> {
    /// Validate `name`.
    pub fn new(name: &'a str) -> Result<Fqdn<'a>> {
        validate_fqdn(name.as_bytes())?;
        Ok(Fqdn(name))
    }

    /// Validate raw TLV bytes.
    pub fn from_bytes(name: &'a [u8]) -> Result<Fqdn<'a>> {
        validate_fqdn(name)?;
        // Validation admits only ASCII, so this cannot fail.
        core::str::from_utf8(name)
            .map(Fqdn)
            .map_err(|_| Error::BadFqdn)
    }

    /// The name.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Fqdn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Fqdn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid() {
        for n in ["cn.ntm.test", "a", "gn1.ntm.test", "x-1.y", &"a".repeat(63)] {
            assert!(Fqdn::new(n).is_ok(), "{n}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(Fqdn::new(&long).is_ok());
    }

    #[test]
    fn rejects_invalid() {
        let too_long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        for n in [
            "",
            "CN.ntm.test",
            "cn..ntm.test",
            ".cn",
            "cn.",
            "cn_1.test",
            "cn ntm",
            "é.test",
            &"a".repeat(64),
            &too_long,
        ] {
            assert_eq!(Fqdn::new(n), Err(Error::BadFqdn), "{n:?}");
        }
        assert_eq!(Fqdn::from_bytes(&[0xff]), Err(Error::BadFqdn));
    }
}
