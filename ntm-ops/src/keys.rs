//! Keys outside the configuration text: `key_file` in every configuration
//! (in place of an inline `key`), the permission check that refuses a key
//! file, or a configuration holding a key, that group or others can read,
//! and new random keys (`ntm-dc keygen`).
//!
//! A key file holds the 64 hex digits of one key (surrounding white space
//! and a trailing newline are ignored). A relative `key_file` is relative
//! to the directory of the configuration that names it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What is wrong with a key file or a file holding a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read it.
    #[error("{path} holds a key and is readable by {who} (mode {mode:04o}): run `chmod 600 {path}` (and give it to the user the daemon runs as)")]
    Readable {
        /// The file.
        path: PathBuf,
        /// "group", "others" or "group and others".
        who: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// Both or neither of `key` and `key_file`.
    #[error(
        "{who}: give either `key` (64 hex digits) or `key_file` (a file holding them), not {what}"
    )]
    Choice {
        /// Which entry.
        who: String,
        /// "both" or "neither".
        what: &'static str,
    },
}

/// Refuses `path` when group or others may read it.
pub fn check_private(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "group",
        (false, true) => "others",
        (true, true) => "group and others",
    };
    Err(KeyError::Readable {
        path: path.to_owned(),
        who,
        mode,
    })
}

/// Reads a key file (after [`check_private`]): its text, trimmed. The
/// caller parses it (and says which entry it belongs to when it is not a key).
pub fn read_key_file(path: &Path) -> Result<String, KeyError> {
    check_private(path)?;
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
    let key = text.trim().to_owned();
    // The copy with the white space goes; the caller's copy is its to wipe.
    text.clear();
    text.shrink_to_fit();
    Ok(key)
}

/// The key of one configuration entry: the inline `key`, or the text of
/// `key_file` (relative to `base`, the configuration's directory).
/// Exactly one of the two must be given. Returns the key text and whether
/// it came from the configuration itself (the file that then must be
/// private, [`check_private`]).
pub fn resolve(
    who: &str,
    key: &str,
    key_file: Option<&Path>,
    base: &Path,
) -> Result<(String, bool), KeyError> {
    match (key.is_empty(), key_file) {
        (false, None) => Ok((key.to_owned(), true)),
        (true, Some(f)) => {
            let path = if f.is_relative() {
                base.join(f)
            } else {
                f.to_owned()
            };
            Ok((read_key_file(&path)?, false))
        }
        (false, Some(_)) => Err(KeyError::Choice {
            who: who.to_owned(),
            what: "both",
        }),
        (true, None) => Err(KeyError::Choice {
            who: who.to_owned(),
            what: "neither",
        }),
    }
}

/// The directory relative key files are looked up in, for a configuration at `config`.
pub fn base_dir(config: &Path) -> PathBuf {
    match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A new random 256-bit key as 64 lower-case hex digits (OS randomness).
pub fn generate() -> anyhow::Result<String> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let hex = k.iter().map(|b| format!("{b:02x}")).collect();
    k.fill(0);
    Ok(hex)
}

/// Writes `text` to `path` readable by its owner only (mode 0600, whatever
/// the umask; an existing file is truncated and its mode set): for
/// configurations and key files.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ntm-ops-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn private_files_are_read_and_readable_ones_refused_with_the_fix() {
        let d = dir("perm");
        let p = d.join("node.key");
        write_private(&p, &format!("{K}\n")).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_key_file(&p).unwrap(), K);
        for (mode, who) in [
            (0o640, "group"),
            (0o604, "others"),
            (0o644, "group and others"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key_file(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", p.display())), "{e}");
            assert!(e.contains(&format!("readable by {who} ")), "{e}");
        }
        // Writable by group is not reading it.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(check_private(&p).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resolve_takes_one_of_key_and_key_file_relative_to_the_config() {
        let d = dir("resolve");
        write_private(&d.join("k"), K).unwrap();
        assert_eq!(resolve("n", K, None, &d).unwrap(), (K.to_owned(), true));
        assert_eq!(
            resolve("n", "", Some(Path::new("k")), &d).unwrap(),
            (K.to_owned(), false)
        );
        let abs = d.join("k");
        assert_eq!(resolve("n", "", Some(&abs), Path::new("/")).unwrap().0, K);
        let e = resolve("[[node]] x", K, Some(Path::new("k")), &d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[node]] x") && e.contains("not both"), "{e}");
        let e = resolve("n", "", None, &d).unwrap_err().to_string();
        assert!(e.contains("not neither"), "{e}");
        let e = resolve("n", "", Some(Path::new("missing")), &d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        assert_eq!(base_dir(Path::new("dc.toml")), PathBuf::from("."));
        assert_eq!(base_dir(&d.join("dc.toml")), d);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn generated_keys_are_64_hex_digits_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
