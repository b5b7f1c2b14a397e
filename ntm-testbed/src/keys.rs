//! The testbed's key store: a random `K_node` per node FQDN and a random
//! `K_rs`, made at `up` and kept in the testbed's state directory, from
//! which the DC, RS and node configurations are generated.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::topology::NODE_FQDNS;
use crate::{Error, Result};

/// File name of the key store inside the state directory.
pub const KEYS_FILE: &str = "keys.toml";

/// A 32-byte key (`K_node`, `K_rs`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// A fresh key from the OS random source.
    pub fn random() -> Result<Key> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| Error::Io {
            what: "reading random bytes for a testbed key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Key(k))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lower-case hex digits, as written into configs.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Key> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            k[i] = (hi * 16 + lo) as u8;
        }
        Some(Key(k))
    }
}

impl fmt::Debug for Key {
    // Enough to tell keys apart in a log, not enough to use one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// Every provisioned key of one testbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    rs: Key,
    nodes: BTreeMap<String, Key>,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// K_rs, shared by the RS and the DC.
    rs: String,
    /// K_node per FQDN, shared by the node and the DC.
    nodes: BTreeMap<String, String>,
}

impl Keys {
    /// Fresh random keys for [`NODE_FQDNS`] and the RS.
    pub fn generate() -> Result<Keys> {
        let mut nodes = BTreeMap::new();
        for fqdn in NODE_FQDNS {
            nodes.insert(fqdn.to_owned(), Key::random()?);
        }
        Ok(Keys {
            rs: Key::random()?,
            nodes,
        })
    }

    /// `K_rs`.
    pub fn rs(&self) -> &Key {
        &self.rs
    }

    /// `K_node` of `fqdn` (one of [`NODE_FQDNS`]).
    pub fn node(&self, fqdn: &str) -> Option<&Key> {
        self.nodes.get(fqdn)
    }

    /// Every `(FQDN, K_node)`, sorted by FQDN: what the DC's config lists.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &Key)> {
        self.nodes.iter().map(|(f, k)| (f.as_str(), k))
    }

    /// The TOML text of the key store.
    pub fn to_toml(&self) -> String {
        let file = KeyFile {
            rs: self.rs.to_hex(),
            nodes: self
                .nodes
                .iter()
                .map(|(f, k)| (f.clone(), k.to_hex()))
                .collect(),
        };
        let body = toml::to_string(&file).expect("a map of strings always serializes");
        format!("# ntm-testbed keys, random per testbed: K_rs and K_node per FQDN (hex).\n{body}")
    }

    /// Parses [`Keys::to_toml`]'s output; `None` if it is not a complete key store.
    pub fn from_toml(text: &str) -> Option<Keys> {
        let file: KeyFile = toml::from_str(text).ok()?;
        let rs = Key::from_hex(&file.rs)?;
        let mut nodes = BTreeMap::new();
        for (fqdn, hex) in file.nodes {
            nodes.insert(fqdn, Key::from_hex(&hex)?);
        }
        NODE_FQDNS
            .iter()
            .all(|f| nodes.contains_key(*f))
            .then_some(Keys { rs, nodes })
    }

    /// Loads the key store of a state directory.
    pub fn load(state_dir: &Path) -> Result<Keys> {
        let path = state_dir.join(KEYS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Keys {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Keys::from_toml(&text).ok_or_else(|| Error::Keys {
            path,
            why:
                "not a complete key store (K_rs and a K_node per testbed FQDN, 64 hex digits each)"
                    .into(),
        })
    }

    /// Writes the key store into a state directory, readable by root only.
    pub(crate) fn store(&self, state_dir: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join(KEYS_FILE);
        let io = |source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(self.to_toml().as_bytes()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let k = Key::random().unwrap();
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(k.to_hex().len(), 64);
        assert_eq!(Key::from_hex("00"), None);
        assert_eq!(Key::from_hex(&"g".repeat(64)), None);
        assert_eq!(Key::from_hex(&"é".repeat(32)), None);
        assert_eq!(Key::from_hex(&"AB".repeat(32)), Some(Key([0xab; 32])));
    }

    #[test]
    fn keys_are_random_per_generation_and_cover_every_node() {
        let a = Keys::generate().unwrap();
        let b = Keys::generate().unwrap();
        assert_ne!(a, b);
        for f in NODE_FQDNS {
            assert!(a.node(f).is_some(), "{f}");
        }
        let all: Vec<_> = a.nodes().map(|(_, k)| *k).chain([*a.rs()]).collect();
        for (i, k) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(k), "two equal keys");
        }
    }

    #[test]
    fn the_store_round_trips_through_toml_and_a_file() {
        let keys = Keys::generate().unwrap();
        let text = keys.to_toml();
        assert!(text.contains("\"gn.ntm.test\""), "{text}");
        assert_eq!(Keys::from_toml(&text), Some(keys.clone()));
        assert_eq!(Keys::from_toml("rs = \"00\""), None);
        let incomplete = text.replace("\"cn2.ntm.test\"", "\"other.ntm.test\"");
        assert_eq!(Keys::from_toml(&incomplete), None);

        let dir = std::env::temp_dir().join(format!("ntm-testbed-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        keys.store(&dir).unwrap();
        assert_eq!(Keys::load(&dir).unwrap(), keys);
        std::fs::write(dir.join(KEYS_FILE), "garbage").unwrap();
        assert!(Keys::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("key store"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_does_not_print_the_whole_key() {
        let k = Key([0x5a; 32]);
        assert_eq!(format!("{k:?}"), "Key(5a5a…)");
    }
}
