//! The peer names each GN's [`Host`] learned (peer VIP → FQDN), kept in a
//! small file beside the status socket (`<status socket>` with the
//! extension `.peers`) so that they survive a restart of ntma, crash or
//! SIGKILL included.
//!
//! Why: DIR_REQ names its target by FQDN only (docs/protocol.md §4). A GN
//! that keeps talking to a peer's VIP across an adapter restart sends
//! packets to a VIP the new process has never heard of; with the names of
//! the previous run, [`Host::route`] sets the tunnel up again by name at
//! the first packet (§5 "Data"), without a new DNS query. The DC keeps a
//! VIP for its FQDN while the lease lives, so the names stay right as long
//! as the leases they came from; a stale one only leads to a direction
//! request for that name. It lives on the runtime directory (a tmpfs under
//! `/run`), so a reboot forgets it along with the GNs' connections.
//!
//! Format: one line per name, `<gn fqdn> <peer vip> <peer fqdn>`, written
//! whole to a temporary file and renamed over the old one (a crash leaves
//! the old file or the new one, never half of one). Read back with every
//! line checked (the FQDNs as §4 wants them, the VIP as an address), at most
//! [`MAX_FILE`] bytes; a bad line is skipped and counted in the log.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ntm_proto::host::{Host, MAX_NAMES};

/// Longest file read: every GN's [`MAX_NAMES`] lines of the longest names
/// would be far more; a file this long is cut (its last lines ignored).
const MAX_FILE: u64 = 4 << 20;

/// The file of the adapter whose status socket is `status_socket`.
pub fn path_for(status_socket: &Path) -> PathBuf {
    status_socket.with_extension("peers")
}

/// One name: (GN FQDN, peer VIP, peer FQDN).
pub(super) type Entry = (String, Ipv4Addr, String);

/// The lines of the file at `path` that parse, and how many did not; an
/// absent file is empty.
pub(super) fn load(path: &Path) -> std::io::Result<(Vec<Entry>, usize)> {
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            // Invalid UTF-8 ends the read: what was read before it is kept.
            let _ = f.take(MAX_FILE).read_to_string(&mut text);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    }
    let mut bad = 0;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse(line) {
            Some(e) => out.push(e),
            None => bad += 1,
        }
    }
    Ok((out, bad))
}

fn parse(line: &str) -> Option<Entry> {
    let mut w = line.split_whitespace();
    let (gn, vip, peer) = (w.next()?, w.next()?, w.next()?);
    if w.next().is_some() {
        return None;
    }
    ntm_proto::wire::validate_fqdn(gn.as_bytes()).ok()?;
    ntm_proto::wire::validate_fqdn(peer.as_bytes()).ok()?;
    Some((gn.to_owned(), vip.parse().ok()?, peer.to_owned()))
}

/// The names of every GN's host, in a stable order (so that an unchanged
/// set is recognised and not written again).
pub(super) fn collect<'a>(hosts: impl Iterator<Item = (&'a str, &'a Host)>) -> BTreeSet<Entry> {
    hosts
        .flat_map(|(gn, h)| {
            h.names()
                .take(MAX_NAMES)
                .map(move |(vip, peer)| (gn.to_owned(), vip, peer.to_owned()))
        })
        .collect()
}

/// Writes `names` to `path` atomically (temporary file, fsync, rename).
pub(super) fn store(path: &Path, names: &BTreeSet<Entry>) -> std::io::Result<()> {
    let mut text = String::new();
    for (gn, vip, peer) in names {
        text.push_str(&format!("{gn} {vip} {peer}\n"));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_lines_are_skipped() {
        let dir = std::env::temp_dir().join(format!("ntma-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_for(&dir.join("ntma.sock"));
        assert_eq!(path, dir.join("ntma.peers"));
        assert_eq!(load(&path).unwrap(), (vec![], 0), "absent: empty");
        let names: BTreeSet<Entry> = [
            (
                "gn.ntm.test".into(),
                Ipv4Addr::new(100, 64, 0, 3),
                "cn.ntm.test".into(),
            ),
            (
                "gn2.ntm.test".into(),
                Ipv4Addr::new(100, 64, 0, 9),
                "cn2.ntm.test".into(),
            ),
        ]
        .into();
        store(&path, &names).unwrap();
        let (back, bad) = load(&path).unwrap();
        assert_eq!((back.into_iter().collect::<BTreeSet<_>>(), bad), (names, 0));
        std::fs::write(
            &path,
            "gn.ntm.test 100.64.0.3 cn.ntm.test\ngn.ntm.test 300.1.1.1 cn.ntm.test\nGN x y\ngn.ntm.test 100.64.0.4 cn.ntm.test extra\n\n",
        )
        .unwrap();
        let (back, bad) = load(&path).unwrap();
        assert_eq!((back.len(), bad), (1, 3));
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
