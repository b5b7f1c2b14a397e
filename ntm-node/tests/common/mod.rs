//! A whole NTMobile world on the testbed for the integration tests: the
//! real `ntm-dc`, `ntm-rs` and `ntm-node` binaries with configurations
//! written from the testbed's keys into its state directory.
//!
//! Every test builds its own testbed (`unique_prefix`), needs root and
//! fails (never skips) without it.

#![allow(dead_code)] // each test binary uses a different part

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ntm_node::Status;
use ntm_testbed::{
    require_root, unique_prefix, wait_for, Child, Role, Signal, Testbed, DC_ADDR, NODE_FQDNS,
    RS_ADDR,
};

/// How long anything in a test may take to come about (generous: the
/// machine has two cores and tests run in parallel; nothing asserts time).
pub const PATIENCE: Duration = Duration::from_secs(20);
/// The fake upstream resolver's address (dc namespace).
pub const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(DC_ADDR, 5353);
/// The RS id in the DC's and the RS's configurations.
const RS_ID: u32 = 1;

/// Path of a workspace binary built beside this test (`cargo xtask test`
/// builds them all; `cargo build -p ntm-dc -p ntm-rs` for this crate alone).
pub fn sibling_bin(name: &str) -> PathBuf {
    ntm_testbed::bin_path(name).unwrap_or_else(|e| panic!("{e}"))
}

fn proto_key(k: &ntm_testbed::Key) -> ntm_proto::Key {
    k.to_hex().parse().expect("testbed keys are 64 hex digits")
}

/// The testbed with a DC and an RS running.
pub struct World {
    pub dc: Option<Child>,
    pub rs: Child,
    dc_config: PathBuf,
    /// Last field: dropped (torn down) after every process above.
    pub tb: Testbed,
}

impl World {
    /// Builds a testbed named after `tag` and starts the DC (keep-alive
    /// every 2 s, so a restart is noticed quickly) and the RS.
    pub fn up(tag: &str) -> World {
        World::up_with(tag, |_| {})
    }

    /// [`World::up`] with changes to the DC's configuration.
    pub fn up_with(tag: &str, tweak: impl FnOnce(&mut ntm_dc::Config)) -> World {
        require_root().expect("these integration tests need root");
        let tb = Testbed::up(&unique_prefix(tag)).expect("testbed up");
        let mut dc = ntm_dc::Config {
            keepalive_secs: 2,
            lease_secs: 600,
            stats_interval_secs: 0,
            ..ntm_dc::Config::default()
        };
        for fqdn in NODE_FQDNS {
            let k = tb.keys().node(fqdn).expect("every node has a key");
            dc.nodes.push(ntm_dc::NodeEntry::new(fqdn, &proto_key(k)));
        }
        tweak(&mut dc);
        let rs_key = proto_key(tb.keys().rs());
        dc.relays.push(ntm_dc::RelayEntry::new(
            RS_ID,
            SocketAddrV4::new(RS_ADDR, ntm_rs::DEFAULT_PORT),
            &rs_key,
        ));
        let dc_config = tb.state_dir().join("dc.toml");
        std::fs::write(&dc_config, dc.to_toml()).expect("write dc.toml");
        let mut rs = ntm_rs::Config::new(RS_ID, &rs_key);
        rs.stats_interval_secs = 0;
        let rs_config = tb.state_dir().join("rs.toml");
        std::fs::write(&rs_config, rs.to_toml()).expect("write rs.toml");
        let mut cmd = Command::new(sibling_bin("ntm-rs"));
        cmd.arg("--config").arg(&rs_config).env("RUST_LOG", "debug");
        let rs = tb.spawn(Role::Rs, &cmd).expect("start ntm-rs");
        let mut w = World {
            dc: None,
            rs,
            dc_config,
            tb,
        };
        w.start_dc();
        w
    }

    /// Starts the DC (again).
    pub fn start_dc(&mut self) {
        let mut cmd = Command::new(sibling_bin("ntm-dc"));
        cmd.arg("--config")
            .arg(&self.dc_config)
            .env("RUST_LOG", "debug");
        self.dc = Some(self.tb.spawn(Role::Dc, &cmd).expect("start ntm-dc"));
    }

    /// Stops the DC (SIGTERM).
    pub fn stop_dc(&mut self) {
        if let Some(mut dc) = self.dc.take() {
            dc.stop(Duration::from_secs(3)).expect("stop ntm-dc");
        }
    }

    /// Starts an `ntm-node` in `role`'s namespace registering `fqdn`.
    pub fn node(&self, role: Role, fqdn: &str) -> Node {
        let key = proto_key(self.tb.keys().node(fqdn).expect("node key"));
        let mut c = ntm_node::Config::new(
            fqdn,
            &key,
            SocketAddrV4::new(DC_ADDR, ntm_dc::DEFAULT_PORT),
            SocketAddr::V4(UPSTREAM),
        );
        let status = self.tb.state_dir().join(format!("{fqdn}.status.json"));
        c.status_file = Some(status.clone());
        c.stats_interval_secs = 0;
        let config = self.tb.state_dir().join(format!("{fqdn}.toml"));
        std::fs::write(&config, c.to_toml()).expect("write node config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ntm-node"));
        cmd.arg("--config").arg(&config).env("RUST_LOG", "debug");
        let child = self.tb.spawn(role, &cmd).expect("start ntm-node");
        Node {
            child,
            status,
            role,
            fqdn: fqdn.to_owned(),
        }
    }

    /// Runs a command in `role`'s namespace and returns its stdout; panics
    /// with its stderr on failure.
    pub fn sh(&self, role: Role, script: &str) -> String {
        self.tb
            .output(role, ["sh", "-c", script])
            .unwrap_or_else(|e| panic!("in {role}: `{script}`: {e}"))
    }
}

/// A running `ntm-node`.
pub struct Node {
    pub child: Child,
    pub status: PathBuf,
    pub role: Role,
    pub fqdn: String,
}

impl Node {
    /// The latest status file, if written yet.
    pub fn status(&self) -> Option<Status> {
        Status::load(&self.status)
    }

    /// Waits until the status satisfies `pred`; panics (with the node's
    /// log, through the Child guard) if it does not within [`PATIENCE`].
    pub fn wait(&mut self, what: &str, mut pred: impl FnMut(&Status) -> bool) -> Status {
        let got = wait_for(PATIENCE, || self.status().filter(|s| pred(s)));
        match got {
            Some(s) => s,
            None => {
                let running = self.child.is_running();
                panic!(
                    "{} ({}): {what}: not within {PATIENCE:?} (running: {running}); last status: {:?}",
                    self.fqdn,
                    self.role,
                    self.status()
                )
            }
        }
    }

    /// Waits for the registration; returns the VIP.
    pub fn registered(&mut self) -> Ipv4Addr {
        self.wait("registered", |s| s.vip.is_some())
            .vip
            .expect("checked")
    }

    /// Asks for a status write and a stats log line now.
    pub fn poke(&self) {
        self.child.signal(Signal::SIGUSR1).expect("SIGUSR1");
    }
}

/// What `dig` answered.
#[derive(Debug)]
pub struct Dig {
    pub a: Vec<Ipv4Addr>,
    pub status: String,
    pub query_ms: Option<u64>,
}

/// `dig @<server> name A` in `role`'s namespace, one try.
pub fn dig(w: &World, role: Role, server: &str, name: &str) -> Dig {
    let out = w.sh(
        role,
        &format!("dig @{server} +tries=1 +time=10 +noedns {name} A"),
    );
    let mut d = Dig {
        a: Vec::new(),
        status: String::new(),
        query_ms: None,
    };
    let mut in_answer = false;
    for line in out.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_owned();
        }
        if let Some(rest) = line.strip_prefix(";; Query time: ") {
            d.query_ms = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                in_answer = false;
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 5 && f[3] == "A" {
                d.a.push(f[4].parse().expect("A record address"));
            }
        }
    }
    d
}

/// What `ping` printed.
#[derive(Debug)]
pub struct Ping {
    pub sent: u32,
    pub received: u32,
    /// min/avg/max RTT in ms.
    pub rtt: Option<(f64, f64, f64)>,
    /// What ping printed.
    pub output: String,
}

/// `ping -c count` from `role` to `dst`; panics when nothing came back.
pub fn ping(w: &World, role: Role, dst: Ipv4Addr, count: u32) -> Ping {
    let out =
        w.tb.output(
            role,
            [
                "ping",
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "3",
                &dst.to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("ping {dst} from {role}: {e}"));
    let mut p = Ping {
        sent: 0,
        received: 0,
        rtt: None,
        output: String::new(),
    };
    for line in out.lines() {
        if line.contains("packets transmitted") {
            let n: Vec<u32> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            if n.len() >= 2 {
                p.sent = n[0];
                p.received = n[1];
            }
        }
        if let Some(rest) = line.split(" = ").nth(1).filter(|_| line.starts_with("rtt")) {
            let v: Vec<f64> = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() >= 3 {
                p.rtt = Some((v[0], v[1], v[2]));
            }
        }
    }
    assert!(p.received > 0, "no ping reply from {dst} in {role}: {out}");
    p.output = out;
    p
}

/// Resolves `peer_fqdn` from `node`'s namespace through its stub and waits
/// until the tunnel is up at `node`; returns (peer VIP, dig answer).
pub fn connect(w: &World, node: &mut Node, peer_fqdn: &str) -> (Ipv4Addr, Dig) {
    let d = dig(w, node.role, "127.0.0.1", peer_fqdn);
    assert_eq!(d.status, "NOERROR", "{peer_fqdn}: {d:?}");
    assert_eq!(d.a.len(), 1, "{peer_fqdn}: {d:?}");
    let vip = d.a[0];
    node.wait(&format!("tunnel to {peer_fqdn} up"), |s| {
        s.tunnel_to(peer_fqdn).is_some()
    });
    (vip, d)
}

/// A name unique per test run, for files in the state directory.
pub fn unique(tag: &str) -> String {
    unique_prefix(tag).trim_end_matches('-').to_owned()
}

/// Sends one A query for `name` to the stub at 127.0.0.1:53 in `role`'s
/// namespace and times it to the microsecond (dig prints whole ms).
/// Returns (time from query to answer, the A records).
pub fn timed_a_query(w: &World, role: Role, name: &str) -> (Duration, Vec<Ipv4Addr>) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;

    let sock =
        w.tb.in_netns(role, || std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
            .expect("enter namespace")
            .expect("bind a DNS client socket");
    sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut q = Message::new(0x5a5a, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_str(&format!("{name}.")).expect("name"),
        RecordType::A,
    ));
    let bytes = q.to_vec().expect("query encodes");
    let mut buf = [0u8; 1500];
    let t0 = std::time::Instant::now();
    sock.send_to(&bytes, (Ipv4Addr::LOCALHOST, 53))
        .expect("send query");
    let n = sock.recv(&mut buf).expect("DNS answer in time");
    let took = t0.elapsed();
    let m = Message::from_vec(&buf[..n]).expect("answer parses");
    let a = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    (took, a)
}
