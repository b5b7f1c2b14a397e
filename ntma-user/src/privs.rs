//! Least privilege: once the adapter is set up (XDP attached, AF_XDP and
//! raw sockets open, UDP 53/67 bound, the nft table written), the control
//! thread keeps only what it still needs ([`KEEP`]) and the fast-path
//! workers, AF_XDP or raw, keep nothing ([`drop_all`]; the status shows
//! each worker's, [`of_thread`]). Capabilities are per thread in
//! Linux: each thread drops its own, from its bounding set too, so that
//! nothing it runs later (`nft` at exit) gets more.
//!
//! What the control thread still needs, and why:
//! * `CAP_NET_ADMIN`: detaching the XDP programs and deleting the nft table
//!   at exit;
//! * `CAP_NET_RAW`: binding the tunnel socket to the uplink device
//!   (SO_BINDTODEVICE) again when the uplink's address changes;
//! * `CAP_BPF`: reading the XDP programs' verdict counters (map lookups)
//!   for the status and the metrics.

use caps::{CapSet, Capability, CapsHashSet};

/// What the control thread keeps after set-up.
pub const KEEP: &[Capability] = &[
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_BPF,
];

/// Reduces the calling thread's capabilities to `keep` (those of them it
/// has): bounding set first (while CAP_SETPCAP is still there), then
/// inheritable and ambient, then permitted and effective. Returns what it
/// kept, by name.
pub fn drop_to(keep: &[Capability]) -> Result<Vec<String>, caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for c in caps::read(None, CapSet::Bounding)? {
            if !kept.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(names(&kept))
}

/// Drops every capability of the calling thread (a fast-path worker once
/// its sockets are bound). A failure is logged: the worker runs on.
pub fn drop_all() {
    if let Err(e) = drop_to(&[]) {
        tracing::warn!(error = %e, "cannot drop the worker's capabilities");
    }
}

/// The calling thread's effective capabilities, by name, sorted.
pub fn effective() -> Vec<String> {
    caps::read(None, CapSet::Effective)
        .map(|s| names(&s))
        .unwrap_or_default()
}

/// The effective capabilities of this process's thread named `name` (its
/// `comm`: the name `std::thread::Builder::name` gave it, at most 15
/// bytes), by name, sorted; `None` when no such thread runs. Read from the
/// outside (capget on its thread id): a worker's status is what the kernel
/// says it holds, not what it meant to drop.
pub fn of_thread(name: &str) -> Option<Vec<String>> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end_matches('\n') != name {
            continue;
        }
        let tid: i32 = task.file_name().to_str()?.parse().ok()?;
        return caps::read(Some(tid), CapSet::Effective)
            .ok()
            .map(|s| names(&s));
    }
    None
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (capabilities are per thread): as root, the
    /// thread keeps what it is told to and loses the rest, bounding set
    /// included; binding a port below 1024 then fails.
    #[test]
    fn a_thread_keeps_only_what_it_is_told() {
        if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
            panic!("this test needs root (CAP_SETPCAP): run it through `sudo -E cargo xtask test`");
        }
        std::thread::spawn(|| {
            let kept = drop_to(&[Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]).unwrap();
            assert_eq!(kept, vec!["CAP_NET_ADMIN", "CAP_NET_RAW"]);
            assert_eq!(effective(), kept);
            let bounding = caps::read(None, CapSet::Bounding).unwrap();
            assert_eq!(names(&bounding), kept);
            let e = std::net::UdpSocket::bind("127.0.0.1:7").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            drop_all();
            assert!(effective().is_empty());
        })
        .join()
        .unwrap();
        // Seen from another thread (as the status sees the workers).
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("privs-test-w".into())
            .spawn(move || {
                drop_all();
                dropped_tx.send(()).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        dropped_rx.recv().unwrap();
        assert_eq!(of_thread("privs-test-w"), Some(vec![]));
        assert_eq!(of_thread("no-such-thread"), None);
        drop(done_tx);
        t.join().unwrap();
        // The other threads are untouched.
        assert!(effective().contains(&"CAP_NET_BIND_SERVICE".to_owned()));
    }
}
