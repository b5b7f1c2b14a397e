//! What the durable store costs per registration, per direction and per
//! keep-alive, against the in-memory store: a timed loop through
//! `Coordinator::handle` with real sealed datagrams. A measurement, not a
//! test: it prints numbers and asserts nothing about them.
//!
//! ```sh
//! cargo run --release -p ntm-dc --example store_cost -- [NODES] [DIR]
//! ```
//!
//! NODES (default 1000) nodes register, each sends one DIR_REQ to the next
//! node and one KEEPALIVE. The redb file goes in DIR (default the system's
//! temporary directory; give a directory on the disk the DC would use, as
//! the cost is mostly that disk's fsync).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ntm_dc::{Config, Coordinator, DcStore, MemoryStore, NodeEntry, RedbStore};
use ntm_proto::wire::{Caps, DirReq, Fqdn, Header, Message, RegReq, Repr, MAX_SIGNALING_LEN};
use ntm_proto::{Authenticator, Key};

const UNIX: u64 = 1_800_000_000_000_000_000;

fn fqdn(i: usize) -> String {
    format!("n{i}.ntm.test")
}

fn key(i: usize) -> Key {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    Key::from_bytes(k)
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8), 7700)
}

fn seal(key: &Key, id: u32, seq: u64, message: Message<'_>) -> Vec<u8> {
    let repr = Repr::new(
        Header {
            id,
            seq,
            response_required: true,
        },
        message,
    );
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit_sealed(&mut b, &Authenticator::new(key))
        .expect("buffer of buffer_len");
    b
}

/// Per-operation wall time of each phase.
struct Costs {
    register: Duration,
    direct: Duration,
    keepalive: Duration,
}

fn run<S: DcStore>(config: &Config, store: S, n: usize) -> Costs {
    let now = Instant::now();
    let mut dc = Coordinator::with_store(config, store, now, UNIX, [1; 32]).expect("start");
    let mut buf = [0u8; MAX_SIGNALING_LEN];
    let mut drain = |dc: &mut Coordinator<S>| while dc.poll_transmit(now, &mut buf).is_some() {};
    let keys: Vec<Key> = (0..n).map(key).collect();
    let names: Vec<String> = (0..n).map(fqdn).collect();
    let regs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            seal(
                &keys[i],
                0,
                UNIX + 1,
                Message::RegReq(RegReq {
                    req_id: 1,
                    fqdn: Fqdn::new(&names[i]).expect("fqdn"),
                    local_addr: addr(i),
                    caps: Caps::NODE,
                }),
            )
        })
        .collect();
    let t = Instant::now();
    for (i, d) in regs.iter().enumerate() {
        dc.handle(now, addr(i), d).expect("registered");
        drain(&mut dc);
    }
    let register = t.elapsed() / n as u32;

    let ids: Vec<u32> = names
        .iter()
        .map(|f| dc.node_id(f).expect("configured"))
        .collect();
    let dirs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            seal(
                &keys[i],
                ids[i],
                UNIX + 2,
                Message::DirReq(DirReq {
                    req_id: 2,
                    fqdn: Fqdn::new(&names[(i + 1) % n]).expect("fqdn"),
                }),
            )
        })
        .collect();
    let t = Instant::now();
    for (i, d) in dirs.iter().enumerate() {
        dc.handle(now, addr(i), d).expect("directed");
        drain(&mut dc);
    }
    let direct = t.elapsed() / n as u32;

    let kas: Vec<Vec<u8>> = (0..n)
        .map(|i| seal(&keys[i], ids[i], UNIX + 3, Message::Keepalive))
        .collect();
    let t = Instant::now();
    for (i, d) in kas.iter().enumerate() {
        dc.handle(now, addr(i), d).expect("kept alive");
        drain(&mut dc);
    }
    let keepalive = t.elapsed() / n as u32;
    assert_eq!(dc.stats().dir_reqs as usize, n);
    Costs {
        register,
        direct,
        keepalive,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(1000, |a| a.parse().expect("NODES: a number"));
    let dir = args
        .next()
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from)
        .join(format!("ntm-dc-store-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the directory");
    let config = Config {
        nodes: (0..n).map(|i| NodeEntry::new(&fqdn(i), &key(i))).collect(),
        max_registrations: n + 1,
        ..Config::default()
    };
    let file = dir.join("dc.redb");
    let mem = run(&config, MemoryStore::new(), n);
    let redb = run(
        &config,
        RedbStore::open(&file, Instant::now(), UNIX).expect("open"),
        n,
    );
    let size = std::fs::metadata(&file).map_or(0, |m| m.len());
    println!("{n} nodes; per operation (wall time, one core):");
    println!("{:<12} {:>12} {:>12}", "", "memory", "redb");
    for (what, m, r) in [
        ("REG_REQ", mem.register, redb.register),
        ("DIR_REQ", mem.direct, redb.direct),
        ("KEEPALIVE", mem.keepalive, redb.keepalive),
    ] {
        println!("{what:<12} {:>12.1?} {:>12.1?}", m, r);
    }
    println!(
        "redb file {} after {n} registrations: {} KiB",
        file.display(),
        size / 1024
    );
    let _ = std::fs::remove_dir_all(&dir);
}
