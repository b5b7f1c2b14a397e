//! Configuration files, the same way for every daemon: TOML read with an
//! error naming the file, parsed with serde (each configuration keeps its
//! own `deny_unknown_fields`), the files it names (`key_file`) read
//! relative to its directory, checked by the configuration's own
//! `validate`, and written back as TOML (tests, `add-node`, the testbed).
//!
//! A configuration implements [`ConfigFile`]; [`load`], [`parse`] and
//! [`to_toml`] do the rest. The checks of settings that several daemons
//! share (counts, bounds, intervals, the list of DCs) are here too
//! ([`at_least_1`], [`at_most`], [`within`], [`interval`],
//! [`dc_addresses`]), so that one kind of setting is refused with one kind
//! of message.

use std::net::SocketAddrV4;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

/// A daemon's configuration file.
pub trait ConfigFile: Serialize + DeserializeOwned {
    /// The example configuration a syntax error points at
    /// ("ntm-dc/ntm-dc.example.toml"); `--config`'s help names it too.
    const EXAMPLE: &'static str;
    /// What a valid configuration gives the daemon.
    type Settings;
    /// What is wrong with a configuration (an [`Error`] is one).
    type Error: From<Error>;

    /// Reads the files the configuration names (its key files) into it;
    /// relative names are relative to `base`, the configuration's directory.
    fn read_files(&mut self, base: &Path) -> Result<(), Self::Error>;

    /// Whether a key is written in the file itself (which must then be
    /// private: [`crate::keys::check_private`]).
    fn holds_inline_key(&self) -> bool;

    /// Checks every setting and gives what the daemon runs on.
    fn validate(&self) -> Result<Self::Settings, Self::Error>;
}

/// The glue of a daemon's configuration `$config` (serde, `Serialize` and
/// `Deserialize`): the inherent `from_toml`, `load` and `to_toml` its
/// callers use, and [`ConfigFile`], whose `validate`, `read_key_files`
/// and `holds_inline_key` are `$config`'s own inherent methods.
/// `key of "who"` writes the last two for a configuration with one
/// `key`/`key_file` pair at its top (`who` names it in errors).
///
/// ```text
/// ntm_ops::config_file!(Config, Settings, ConfigError, "ntm-rs/ntm-rs.example.toml", key of "ntm-rs");
/// ```
#[macro_export]
macro_rules! config_file {
    ($config:ident, $settings:ty, $error:ty, $example:literal, key of $who:literal) => {
        $crate::config_file!($config, $settings, $error, $example);

        impl $config {
            /// Reads `key_file` (relative to `base`, the configuration's
            /// directory) into `key`, refusing a file others can read.
            fn read_key_files(&mut self, base: &::std::path::Path) -> Result<(), $error> {
                let file = self.key_file.as_deref();
                let key = $crate::keys::resolve($who, &self.key, file, base);
                self.key = key.map_err($crate::config::Error::Key)?.0;
                Ok(())
            }

            /// Whether the key is written in the file itself (which must
            /// then be private: [`ntm_ops::keys::check_private`]).
            pub fn holds_inline_key(&self) -> bool {
                self.key_file.is_none()
            }
        }
    };
    ($config:ident, $settings:ty, $error:ty, $example:literal) => {
        impl $config {
            /// Parses TOML text (named `<string>` in errors).
            pub fn from_toml(text: &str) -> Result<$config, $error> {
                Ok($crate::config::from_toml(text).map_err($crate::config::Error::Load)?)
            }

            /// Reads and parses a file, and the key files it names (not
            /// yet validated: see `validate`).
            pub fn load(path: &::std::path::Path) -> Result<$config, $error> {
                $crate::config::load(path)
            }

            /// The TOML text of this configuration.
            pub fn to_toml(&self) -> String {
                $crate::config::to_toml(self)
            }
        }

        impl $crate::config::ConfigFile for $config {
            const EXAMPLE: &'static str = $example;
            type Settings = $settings;
            type Error = $error;

            fn read_files(&mut self, base: &::std::path::Path) -> Result<(), $error> {
                $config::read_key_files(self, base)
            }

            fn holds_inline_key(&self) -> bool {
                $config::holds_inline_key(self)
            }

            fn validate(&self) -> Result<$settings, $error> {
                $config::validate(self)
            }
        }
    };
}

/// What every daemon's configuration can get wrong: its file, a key file,
/// a number (each daemon's own error has a variant holding this).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read or is not valid TOML for this schema.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A `key_file` cannot be used, or an entry has both or neither of
    /// `key` and `key_file`.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// A number out of range.
    #[error(transparent)]
    BadValue(#[from] BadValue),
    /// The DC addresses cannot be used.
    #[error(transparent)]
    BadDcs(#[from] BadDcs),
}

/// A DC address, or the list of them, that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{field} = {value}: {why}")]
pub struct BadDcs {
    /// The setting, as written in the file.
    pub field: String,
    /// Its value.
    pub value: String,
    /// The rule.
    pub why: String,
}

/// A configuration file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message} (see {example} for the format)")]
    Parse {
        /// The file (`<string>` when parsed from memory).
        path: PathBuf,
        /// The TOML parser's message, with line and column, on one line.
        message: String,
        /// The example configuration.
        example: &'static str,
    },
}

/// Parses TOML `text` (`origin` names it in errors).
pub fn parse<C: ConfigFile>(text: &str, origin: &Path) -> Result<C, LoadError> {
    toml::from_str(text).map_err(|e| LoadError::Parse {
        path: origin.to_owned(),
        // One line: daemons print errors as one line (`crate::cli::exit`).
        message: e.to_string().trim_end().replace('\n', " "),
        example: C::EXAMPLE,
    })
}

/// Parses TOML text held in memory (named `<string>` in errors).
pub fn from_toml<C: ConfigFile>(text: &str) -> Result<C, LoadError> {
    parse(text, Path::new("<string>"))
}

/// Reads and parses the file at `path` without reading the files it names:
/// for `status` and `add-node`, which may run as an operator who cannot
/// read the key files. The text is wiped once parsed (it may hold keys).
pub fn parse_file<C: ConfigFile>(path: &Path) -> Result<C, LoadError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|error| LoadError::Read {
            path: path.to_owned(),
            error,
        })?,
    );
    parse(&text, path)
}

/// Reads and parses the file at `path` and the files it names, relative to
/// its directory (not yet validated: see [`ConfigFile::validate`]).
pub fn load<C: ConfigFile>(path: &Path) -> Result<C, C::Error> {
    let mut c: C = parse_file(path).map_err(Error::Load)?;
    c.read_files(&crate::keys::base_dir(path))?;
    Ok(c)
}

/// The TOML text of a configuration.
pub fn to_toml<C: Serialize>(c: &C) -> String {
    // Configurations are plain strings, numbers, addresses and tables of
    // them, which always serialize.
    toml::to_string(c).expect("plain configuration serializes")
}

/// What is wrong with `c`'s file at `path` when it holds a key that group
/// or others can read ([`crate::keys::check_private`]): daemons refuse to
/// start with it, `--check` warns.
pub fn exposed_key<C: ConfigFile>(c: &C, path: &Path) -> Option<crate::keys::KeyError> {
    if c.holds_inline_key() {
        crate::keys::check_private(path).err()
    } else {
        None
    }
}

/// A number out of range, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {why}")]
pub struct BadValue {
    /// The setting, as written in the file.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// The rule.
    pub why: &'static str,
}

/// Refuses 0 for `field` (counts, sizes, timeouts).
pub fn at_least_1(field: &'static str, value: u64) -> Result<(), Error> {
    within(field, value, 1..=u64::MAX, "must be at least 1")
}

/// Refuses more than `max` for `field`; `why` says what to use.
pub fn at_most(field: &'static str, value: u64, max: u64, why: &'static str) -> Result<(), Error> {
    within(field, value, 0..=max, why)
}

/// Refuses `field` outside `range`; `why` says what to use.
pub fn within(
    field: &'static str,
    value: u64,
    range: RangeInclusive<u64>,
    why: &'static str,
) -> Result<(), Error> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(BadValue { field, value, why }.into())
    }
}

/// An interval given in seconds, where 0 turns it off
/// (`stats_interval_secs`).
pub fn interval(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The DCs a node or adapter registers with, in failover order, from a
/// setting for one (`one`: its name and value) or one for a list (`many`);
/// exactly one of them, at most `max` distinct unicast addresses with a port.
pub fn dc_addresses(
    one: (&str, Option<SocketAddrV4>),
    many: (&str, &[SocketAddrV4]),
    max: usize,
) -> Result<Vec<SocketAddrV4>, BadDcs> {
    let bad = |field: &str, value: String, why: &str| BadDcs {
        field: field.to_owned(),
        value,
        why: why.to_owned(),
    };
    let list = match (one.1, many.1) {
        (Some(a), []) => vec![a],
        (None, [_, ..]) => many.1.to_vec(),
        (None, []) => {
            let why = "give the DC's address and port, e.g. \"198.18.0.2:7710\" (or a list of DCs)";
            return Err(bad(one.0, "(missing)".into(), why));
        }
        (Some(a), _) => {
            let why = "give either one DC or the list, not both: put every DC in the list";
            return Err(bad(one.0, a.to_string(), why));
        }
    };
    let shown = || format!("{list:?}");
    if list.len() > max {
        let why = format!("too many DCs: at most {max}");
        return Err(bad(many.0, shown(), &why));
    }
    for (i, a) in list.iter().enumerate() {
        let ip = a.ip();
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a.port() == 0 {
            let why = "each DC must be a unicast address with its port, e.g. \"198.18.0.2:7710\"";
            return Err(bad(one.0, a.to_string(), why));
        }
        if list[..i].contains(a) {
            return Err(bad(many.0, shown(), "a DC is listed twice"));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn dc_lists_are_checked() {
        let a: SocketAddrV4 = "198.18.0.2:7710".parse().unwrap();
        let b: SocketAddrV4 = "198.18.0.4:7710".parse().unwrap();
        let check = |one, many: &[SocketAddrV4]| {
            dc_addresses(("dc.address", one), ("dc.addresses", many), 8)
        };
        assert_eq!(check(Some(a), &[]).unwrap(), vec![a]);
        assert_eq!(check(None, &[a, b]).unwrap(), vec![a, b]);
        let msg = |r: Result<Vec<SocketAddrV4>, BadDcs>| r.unwrap_err().to_string();
        assert!(msg(check(None, &[])).contains("dc.address = (missing)"));
        assert!(msg(check(Some(a), &[b])).contains("not both"));
        assert!(msg(check(None, &[a, a])).contains("twice"));
        let zero: SocketAddrV4 = "0.0.0.0:7710".parse().unwrap();
        assert!(msg(check(None, &[a, zero])).contains("unicast"));
        let no_port: SocketAddrV4 = "198.18.0.2:0".parse().unwrap();
        assert!(msg(check(Some(no_port), &[])).contains("port"));
        let nine: Vec<SocketAddrV4> = (1..=9)
            .map(|i| SocketAddrV4::new([198, 18, 0, i].into(), 7710))
            .collect();
        assert!(
            msg(check(None, &nine)).contains("at most 8"),
            "{}",
            msg(check(None, &nine))
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        port: u16,
        #[serde(default)]
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
    }

    #[derive(Debug, thiserror::Error)]
    enum DemoError {
        #[error(transparent)]
        Common(#[from] Error),
    }

    impl ConfigFile for Demo {
        const EXAMPLE: &'static str = "demo.example.toml";
        type Settings = u16;
        type Error = DemoError;
        fn read_files(&mut self, base: &Path) -> Result<(), DemoError> {
            let key = crate::keys::resolve("demo", &self.key, self.key_file.as_deref(), base);
            self.key = key.map_err(Error::Key)?.0;
            Ok(())
        }
        fn holds_inline_key(&self) -> bool {
            self.key_file.is_none()
        }
        fn validate(&self) -> Result<u16, DemoError> {
            at_least_1("port", self.port.into())?;
            Ok(self.port)
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ntm-ops-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_with_key_files_relative_to_the_file_and_round_trips() {
        let d = dir("load");
        crate::keys::write_private(&d.join("k"), "abc\n").unwrap();
        std::fs::write(d.join("demo.toml"), "port = 7\nkey_file = \"k\"\n").unwrap();
        let c: Demo = load(&d.join("demo.toml")).unwrap();
        assert_eq!(c.key, "abc");
        assert!(!c.holds_inline_key());
        assert_eq!(c.validate().unwrap(), 7);
        // Without its key files, for operators who cannot read them.
        let bare: Demo = parse_file(&d.join("demo.toml")).unwrap();
        assert_eq!(bare.key, "");
        let back: Demo = from_toml(&to_toml(&c)).unwrap();
        assert_eq!(back, c);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn errors_name_the_file_on_one_line() {
        let e = load::<Demo>(Path::new("/nonexistent/demo.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read the configuration file /nonexistent/demo.toml"),
            "{e}"
        );
        let e = parse::<Demo>("port = 7\ncolour = 1\n", Path::new("d.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.toml: ") && e.contains("colour"), "{e}");
        assert!(e.contains("see demo.example.toml"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = from_toml::<Demo>("port = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "port = 0: must be at least 1");
    }

    #[test]
    fn bounds_and_intervals() {
        assert!(at_most("n", 5, 5, "at most 5").is_ok());
        assert_eq!(
            at_most("n", 6, 5, "at most 5").unwrap_err().to_string(),
            "n = 6: at most 5"
        );
        assert!(within("mtu", 575, 576..=1500, "use 576..=1500").is_err());
        assert!(within("mtu", 1500, 576..=1500, "use 576..=1500").is_ok());
        assert_eq!(interval(0), None);
        assert_eq!(interval(60), Some(Duration::from_secs(60)));
    }
}
