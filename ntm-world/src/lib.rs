//! A whole NTMobile world on the testbed, for the demo (`ntm-demo`) and the
//! adapter's integration tests: the testbed of `docs/testbed.md` with the
//! real `ntm-dc`, `ntm-rs`, `ntm-node` and `ntma` binaries, started from
//! configurations written with the testbed's keys into its state directory,
//! a fake upstream resolver, and helpers that run the stock tools of the
//! GN (dhclient, dig, ping, iperf3, nc) inside the namespaces.
//!
//! Also the harness of the software nodes' tests (`tests/node_world.rs`). Binaries are found
//! beside the running executable (`target/<profile>/`): build them with
//! `cargo build --workspace --bins` (`cargo xtask test` and `cargo xtask
//! demo` do). Everything needs root.
//!
//! ```no_run
//! use ntm_world::{World, CN_FQDN};
//! use ntm_testbed::Role;
//!
//! let w = World::up("doc")?;
//! let mut cn = w.node(Role::Cn, CN_FQDN)?;
//! let mut ntma = w.ntma(|_| {})?;
//! cn.registered()?;
//! let gn_vip = ntma.registered()?;
//! assert_eq!(w.dhclient()?, gn_vip);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod attack;
pub mod capture;
pub mod counters;
pub mod dns;
pub mod fault;
pub mod multidc;
pub mod raw;
pub mod settle;
pub mod traffic;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use ntm_testbed::{
    ifname, unique_prefix, wait_for, wait_until, Child, Testbed, DC_ADDR, NODE_FQDNS, RS_ADDR,
};

pub use ntm_testbed::{Role, CN2_FQDN, CN_FQDN, GN2_FQDN, GN_FQDN, NTMA_LAN_ADDR};

/// How long anything may take to come about (generous: two cores, tests
/// in parallel; nothing asserts a time).
pub const PATIENCE: Duration = Duration::from_secs(20);
/// The fake upstream resolver (dc namespace).
pub const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(DC_ADDR, 5353);
/// What the fake upstream answers to every A query.
pub const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// The RS id in the DC's and RS's configurations.
const RS_ID: u32 = 1;
/// The general nodes on the adapter's LAN, each with its own namespace
/// and `eth0`.
pub const GNS: [Role; 2] = [Role::Gn, Role::Gn2];

/// `role` if it is a GN; the helpers that run a GN's DHCP client refuse
/// any other namespace rather than touch its interfaces.
fn gn(role: Role) -> Result<Role> {
    ensure!(GNS.contains(&role), "{role} is not a GN (one of {GNS:?})");
    Ok(role)
}

/// Fails with the testbed's message unless running as root.
pub fn require_root() -> Result<()> {
    ntm_testbed::require_root().map_err(|e| anyhow!("{e}"))
}

/// A workspace binary built beside the running executable.
pub fn bin(name: &str) -> Result<PathBuf> {
    ntm_testbed::bin_path(name).map_err(|e| anyhow!("{e}"))
}

fn proto_key(k: &ntm_testbed::Key) -> ntm_proto::Key {
    k.to_hex().parse().expect("testbed keys are 64 hex digits")
}

/// The testbed with the DC, the RS and a fake upstream resolver running.
pub struct World {
    /// The fake upstream resolver.
    pub upstream: Option<FakeUpstream>,
    /// The DC (None while stopped).
    pub dc: Option<Child>,
    /// The RS.
    pub rs: Child,
    dc_config: PathBuf,
    /// Last field: torn down after every process above.
    pub tb: Testbed,
}

impl World {
    /// A testbed named after `tag` (unique per process and call) with the
    /// DC, RS and fake upstream running.
    pub fn up(tag: &str) -> Result<World> {
        World::up_with(&unique_prefix(tag), |_| {})
    }

    /// [`World::up`] with a given testbed prefix and changes to the DC's
    /// configuration.
    pub fn up_with(prefix: &str, tweak: impl FnOnce(&mut ntm_dc::Config)) -> Result<World> {
        World::up_with_rs(prefix, tweak, |_| {})
    }

    /// [`World::up_with`] with changes to the RS's configuration too.
    pub fn up_with_rs(
        prefix: &str,
        tweak: impl FnOnce(&mut ntm_dc::Config),
        tweak_rs: impl FnOnce(&mut ntm_rs::Config),
    ) -> Result<World> {
        require_root()?;
        let tb = Testbed::up(prefix).map_err(|e| anyhow!("testbed up: {e}"))?;
        World::on(tb, tweak, tweak_rs)
    }

    /// [`World::up_with_rs`] on a testbed that is already up (with
    /// processes of the caller's own in it, such as an etcd cluster).
    pub fn on(
        tb: Testbed,
        tweak: impl FnOnce(&mut ntm_dc::Config),
        tweak_rs: impl FnOnce(&mut ntm_rs::Config),
    ) -> Result<World> {
        let mut dc = ntm_dc::Config {
            keepalive_secs: 5,
            lease_secs: 600,
            stats_interval_secs: 0,
            ..ntm_dc::Config::default()
        };
        for fqdn in NODE_FQDNS {
            let k = tb.keys().node(fqdn).context("every node has a key")?;
            dc.nodes.push(ntm_dc::NodeEntry::new(fqdn, &proto_key(k)));
        }
        // The status sockets live in the state directory, one per testbed.
        dc.status_socket = tb.state_dir().join("dc.sock");
        // The DC's store too: testbeds run in parallel, each DC on its own file.
        dc.store = ntm_dc::config::StoreConfig::redb_in(tb.state_dir());
        tweak(&mut dc);
        let rs_key = proto_key(tb.keys().rs());
        dc.relays.push(ntm_dc::RelayEntry::new(
            RS_ID,
            SocketAddrV4::new(RS_ADDR, ntm_rs::DEFAULT_PORT),
            &rs_key,
        ));
        let dc_config = tb.state_dir().join("dc.toml");
        // The daemons refuse configurations holding a key that others can read.
        write_private(&dc_config, &dc.to_toml()).context("write dc.toml")?;
        let mut rs = ntm_rs::Config::new(RS_ID, &rs_key);
        rs.stats_interval_secs = 0;
        rs.status_socket = tb.state_dir().join("rs.sock");
        tweak_rs(&mut rs);
        let rs_config = tb.state_dir().join("rs.toml");
        write_private(&rs_config, &rs.to_toml()).context("write rs.toml")?;
        let mut cmd = Command::new(bin("ntm-rs")?);
        cmd.arg("--config").arg(&rs_config).env("RUST_LOG", "info");
        let rs = tb
            .spawn(Role::Rs, &cmd)
            .map_err(|e| anyhow!("start ntm-rs: {e}"))?;
        let mut w = World {
            upstream: None,
            dc: None,
            rs,
            dc_config,
            tb,
        };
        w.upstream = Some(FakeUpstream::start(&w)?);
        w.start_dc()?;
        Ok(w)
    }

    /// Starts the DC (again).
    pub fn start_dc(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin("ntm-dc")?);
        cmd.arg("--config")
            .arg(&self.dc_config)
            .env("RUST_LOG", "info");
        self.dc = Some(
            self.tb
                .spawn(Role::Dc, &cmd)
                .map_err(|e| anyhow!("start ntm-dc: {e}"))?,
        );
        Ok(())
    }

    /// Stops the DC (SIGTERM).
    pub fn stop_dc(&mut self) -> Result<()> {
        if let Some(mut dc) = self.dc.take() {
            dc.stop(Duration::from_secs(3))
                .map_err(|e| anyhow!("stop ntm-dc: {e}"))?;
        }
        Ok(())
    }

    /// Stops every process and removes the testbed, reporting what failed.
    pub fn down(mut self) -> Result<()> {
        self.upstream = None;
        self.stop_dc()?;
        let World { rs, tb, .. } = self;
        drop(rs);
        tb.down().map_err(|e| anyhow!("testbed down: {e}"))
    }

    /// The DC's log so far.
    pub fn dc_log(&self) -> String {
        self.dc.as_ref().map(Child::log).unwrap_or_default()
    }

    /// Starts an `ntm-node` in `role`'s namespace registering `fqdn`.
    pub fn node(&self, role: Role, fqdn: &str) -> Result<Node> {
        self.node_with(role, fqdn, |_| {})
    }

    /// [`World::node`] with changes to its configuration.
    pub fn node_with(
        &self,
        role: Role,
        fqdn: &str,
        tweak: impl FnOnce(&mut ntm_node::Config),
    ) -> Result<Node> {
        let key = proto_key(self.tb.keys().node(fqdn).context("node key")?);
        let mut c = ntm_node::Config::new(
            fqdn,
            &key,
            SocketAddrV4::new(DC_ADDR, ntm_dc::DEFAULT_PORT),
            SocketAddr::V4(UPSTREAM),
        );
        let status = self.tb.state_dir().join(format!("{fqdn}.status.json"));
        let _ = std::fs::remove_file(&status);
        c.status_file = Some(status.clone());
        c.stats_interval_secs = 0;
        tweak(&mut c);
        let config = self.tb.state_dir().join(format!("{fqdn}.toml"));
        write_private(&config, &c.to_toml()).context("write node config")?;
        let mut cmd = Command::new(bin("ntm-node")?);
        cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
        let child = self
            .tb
            .spawn(role, &cmd)
            .map_err(|e| anyhow!("start ntm-node: {e}"))?;
        Ok(Node {
            child,
            status,
            role,
            fqdn: fqdn.to_owned(),
        })
    }

    /// The adapter's configuration for this testbed (GNs `gn.ntm.test`, any
    /// MAC, and `gn2.ntm.test`, bound to gn2's MAC; lan0/wan0, the testbed's
    /// queue count, status socket in the state directory), before `tweak`.
    pub fn ntma_config(&self) -> Result<ntma_user::config::Config> {
        let key = proto_key(self.tb.keys().node(GN_FQDN).context("GN key")?);
        let mut c = ntma_user::config::Config::new(
            GN_FQDN,
            &key,
            SocketAddrV4::new(DC_ADDR, ntm_dc::DEFAULT_PORT),
            UPSTREAM,
        );
        let key2 = proto_key(self.tb.keys().node(GN2_FQDN).context("gn2 key")?);
        let mut gn2 = ntma_user::config::GnEntry::new(GN2_FQDN, &key2);
        gn2.mac = Some(ntma_user::gn::MacAddr(self.mac(Role::Gn2, ifname::ETH0)?).to_string());
        c.gn.push(gn2);
        c.status_socket = Some(self.tb.state_dir().join("ntma.sock"));
        c.stats_interval_secs = 0;
        c.lan.interface = ifname::NTMA_LAN.into();
        c.wan.interface = ifname::NTMA_WAN.into();
        c.datapath.queues = u32::from(self.tb.options().queues);
        // The last core: the first one runs the rest of the world.
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        c.datapath.cores = vec![ncpu - 1];
        Ok(c)
    }

    /// Starts `ntma run` in the ntma namespace with [`World::ntma_config`]
    /// changed by `tweak`.
    pub fn ntma(&self, tweak: impl FnOnce(&mut ntma_user::config::Config)) -> Result<Ntma> {
        let mut c = self.ntma_config()?;
        tweak(&mut c);
        let config = self.tb.state_dir().join("ntma.toml");
        write_private(&config, &c.to_toml()).context("write ntma.toml")?;
        let mut cmd = Command::new(bin("ntma")?);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,ntma_user=debug");
        let child = self
            .tb
            .spawn(Role::Ntma, &cmd)
            .map_err(|e| anyhow!("start ntma: {e}"))?;
        Ok(Ntma {
            child,
            socket: c.status_socket_path(),
            config,
        })
    }

    /// Runs a shell command in `role`'s namespace; its stdout, or an error
    /// with its stderr.
    pub fn sh(&self, role: Role, script: &str) -> Result<String> {
        self.tb
            .output(role, ["sh", "-c", script])
            .map_err(|e| anyhow!("in {role}: `{script}`: {e}"))
    }

    /// Stock `dhclient` in gn, once; see [`World::dhclient_in`].
    pub fn dhclient(&self) -> Result<Ipv4Addr> {
        self.dhclient_in(Role::Gn)
    }

    /// Stock `dhclient` in the GN `gn` ([`GNS`]), once, with its lease and
    /// pid files in the testbed's state directory (never the host's), one
    /// pair per GN ([`World::lease_file`], [`World::dhclient_pid_file`]);
    /// returns the address it configured on eth0.
    pub fn dhclient_in(&self, gn: Role) -> Result<Ipv4Addr> {
        let out = self.sh(
            self::gn(gn)?,
            &format!(
                "dhclient -4 -v -1 -lf {} -pf {} eth0 2>&1",
                self.lease_file(gn).display(),
                self.dhclient_pid_file(gn).display()
            ),
        )?;
        self.gn_addr_in(gn)?
            .ok_or_else(|| anyhow!("dhclient in {gn} ran but eth0 has no address: {out}"))
    }

    /// The lease file of the GN `gn`'s dhclient (`gn-dhclient.leases`,
    /// `gn2-dhclient.leases`) in the state directory.
    pub fn lease_file(&self, gn: Role) -> PathBuf {
        self.tb.state_dir().join(format!("{gn}-dhclient.leases"))
    }

    /// The pid file of the GN `gn`'s dhclient (`gn-dhclient.pid`, ...).
    pub fn dhclient_pid_file(&self, gn: Role) -> PathBuf {
        self.tb.state_dir().join(format!("{gn}-dhclient.pid"))
    }

    /// [`World::fake_lease_in`] for gn.
    pub fn fake_lease(&self, addr: Ipv4Addr) -> Result<()> {
        self.fake_lease_in(Role::Gn, addr)
    }

    /// Writes a lease file claiming `addr` for the GN `gn`'s eth0, so that
    /// its next [`World::dhclient_in`] starts by asking for it
    /// (INIT-REBOOT).
    pub fn fake_lease_in(&self, gn: Role, addr: Ipv4Addr) -> Result<()> {
        let path = self.lease_file(self::gn(gn)?);
        let text = format!(
            "lease {{\n  interface \"eth0\";\n  fixed-address {addr};\n  option subnet-mask 255.192.0.0;\n  option routers 100.64.0.1;\n  option dhcp-server-identifier 100.64.0.1;\n  renew 4 2099/01/01 00:00:00;\n  rebind 4 2099/01/01 00:00:00;\n  expire 4 2099/01/01 00:00:00;\n}}\n"
        );
        std::fs::write(&path, text).with_context(|| format!("write the fake lease for {gn}"))
    }

    /// gn's IPv4 address on eth0, if any.
    pub fn gn_addr(&self) -> Result<Option<Ipv4Addr>> {
        self.gn_addr_in(Role::Gn)
    }

    /// The GN `gn`'s IPv4 address on eth0, if any.
    pub fn gn_addr_in(&self, gn: Role) -> Result<Option<Ipv4Addr>> {
        let out = self.sh(self::gn(gn)?, "ip -4 -o addr show dev eth0")?;
        Ok(out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok()))
    }

    /// `dig @server name A` in `role`'s namespace, one try, patient: an
    /// answer after the whole set-up or its retransmissions (SERVFAIL after
    /// 7.75 s) still counts on a loaded machine.
    pub fn dig(&self, role: Role, server: &str, name: &str) -> Result<Dig> {
        let secs = PATIENCE.as_secs();
        let out = self.sh(
            role,
            &format!("dig @{server} +tries=1 +time={secs} +noedns {name} A"),
        )?;
        Ok(Dig::parse(&out))
    }

    /// `ping -c count` from `role` to `dst` (200 ms apart).
    pub fn ping(&self, role: Role, dst: Ipv4Addr, count: u32) -> Result<Ping> {
        self.ping_every(role, dst, count, Duration::from_millis(200))
    }

    /// `ping -c count` from `role` to `dst`, `interval` apart (under 200 ms
    /// needs root, which the testbed has).
    pub fn ping_every(
        &self,
        role: Role,
        dst: Ipv4Addr,
        count: u32,
        interval: Duration,
    ) -> Result<Ping> {
        // ping exits non-zero when replies are missing: the caller decides.
        // -W: how long to wait when no reply came yet, i.e. for packets held
        // while a tunnel is set up (the hold queue keeps them up to 10 s).
        let i = interval.as_secs_f64();
        let out = self.sh(
            role,
            &format!("ping -n -c {count} -i {i} -W 10 {dst} 2>&1; true"),
        )?;
        Ok(Ping::parse(&out))
    }

    /// One A query for `name` to `server` from a socket in `role`'s
    /// namespace, timed to the microsecond (dig prints whole ms). Returns
    /// (query to answer, the A records, the response code).
    pub fn timed_a_query(
        &self,
        role: Role,
        server: SocketAddrV4,
        name: &str,
    ) -> Result<(Duration, Vec<Ipv4Addr>, String)> {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RData, RecordType};

        let sock = self
            .tb
            .in_netns(role, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .map_err(|e| anyhow!("{e}"))?
            .context("bind a DNS client socket")?;
        sock.set_read_timeout(Some(PATIENCE))?;
        let mut q = Message::new(0x5a5a, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_str(&format!("{name}.")).context("name")?,
            RecordType::A,
        ));
        let bytes = q.to_vec().context("query encodes")?;
        let mut buf = [0u8; 1500];
        let t0 = Instant::now();
        sock.send_to(&bytes, server).context("send the query")?;
        // A signal to this process (the testbed's handlers) interrupts the
        // wait; the deadline is the socket's read timeout either way.
        let n = loop {
            match sock.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.context("DNS answer in time")?,
            }
        };
        let took = t0.elapsed();
        let m = Message::from_vec(&buf[..n]).context("the answer parses")?;
        let a = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        Ok((took, a, format!("{:?}", m.metadata.response_code)))
    }

    /// iperf3 for `secs` seconds from `client` to a server on
    /// `server_addr` in `server`'s namespace (`reverse`: the server sends).
    pub fn iperf3(
        &self,
        server: Role,
        server_addr: Ipv4Addr,
        client: Role,
        secs: u32,
        reverse: bool,
    ) -> Result<Iperf> {
        let how = format!("-t {secs}{}", if reverse { " -R" } else { "" });
        self.iperf3_with(server, server_addr, client, &how)
    }

    /// iperf3 from `client` to a server on `server_addr` in `server`'s
    /// namespace, with the client options `how` (`-t 2 -R`, `-n 8M`, ...).
    pub fn iperf3_with(
        &self,
        server: Role,
        server_addr: Ipv4Addr,
        client: Role,
        how: &str,
    ) -> Result<Iperf> {
        let mut srv = Command::new("iperf3");
        srv.args(["-s", "-1", "-B", &server_addr.to_string(), "-p", "5201"]);
        let mut srv = self
            .tb
            .spawn(server, &srv)
            .map_err(|e| anyhow!("start iperf3 -s: {e}"))?;
        // A known payload (the digits, repeated) instead of random bytes, so
        // that a capture can check that none of it crosses the internet in clear.
        let cmd = format!("iperf3 -c {server_addr} -p 5201 {how} --repeating-payload -J");
        // The server is ready when its socket is: retry the client until
        // then (iperf3 -J may exit 0 with "unable to connect" in its JSON).
        let out = wait_for(PATIENCE, || {
            self.sh(client, &cmd)
                .ok()
                .filter(|o| !o.contains("unable to connect"))
        })
        .ok_or_else(|| anyhow!("`{cmd}` in {client} never connected: {}", srv.log()))?;
        let _ = srv.wait_timeout(Duration::from_secs(5));
        Iperf::parse(&out)
    }

    /// Sends `data` with nc from `from` to `to_addr:port`, listening in `to`;
    /// returns what the listener received.
    pub fn nc_transfer(
        &self,
        to: Role,
        to_addr: Ipv4Addr,
        from: Role,
        port: u16,
        data: &[u8],
        tag: &str,
    ) -> Result<Vec<u8>> {
        let dir = self.tb.state_dir();
        let src = dir.join(format!("{tag}.in"));
        let dst = dir.join(format!("{tag}.out"));
        std::fs::write(&src, data)?;
        let mut listen = Command::new("sh");
        listen
            .arg("-c")
            .arg(format!("exec nc -l {to_addr} {port} > {}", dst.display()));
        let mut listener = self
            .tb
            .spawn(to, &listen)
            .map_err(|e| anyhow!("start nc -l: {e}"))?;
        let send = format!("nc -N -w 10 {to_addr} {port} < {}", src.display());
        if !wait_until(PATIENCE, || self.sh(from, &send).is_ok()) {
            bail!("nc from {from} to {to_addr}:{port} never connected");
        }
        let status = listener
            .wait_timeout(PATIENCE)
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("nc -l did not finish"))?;
        if !status.success() {
            bail!("nc -l failed: {status}");
        }
        Ok(std::fs::read(&dst)?)
    }

    /// The Ethernet address of `ifname` in `role`'s namespace.
    pub fn mac(&self, role: Role, ifname: &str) -> Result<[u8; 6]> {
        let out = self.sh(role, &format!("ip -o link show dev {ifname}"))?;
        let text = out
            .split_whitespace()
            .skip_while(|x| *x != "link/ether")
            .nth(1)
            .with_context(|| format!("no Ethernet address in `{out}`"))?;
        let mut m = [0u8; 6];
        for (b, h) in m.iter_mut().zip(text.split(':')) {
            *b = u8::from_str_radix(h, 16).with_context(|| format!("MAC {text}"))?;
        }
        Ok(m)
    }

    /// The GN leased (stock dhclient) and a tunnel gn -> cn up and pinged
    /// (cn must be running): returns the GN's VIP and cn's.
    pub fn leased_with_tunnel(&self, ntma: &mut Ntma) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let gn_vip = ntma.registered()?;
        let leased = self.dhclient()?;
        ensure!(leased == gn_vip, "DHCP gave {leased}, the DC gave {gn_vip}");
        let d = self.dig(Role::Gn, &NTMA_LAN_ADDR.to_string(), CN_FQDN)?;
        ensure!(d.status == "NOERROR" && d.a.len() == 1, "{d:?}");
        let cn_vip = d.a[0];
        ntma.wait("tunnel to cn up", |s| {
            s.tunnel_between(GN_FQDN, CN_FQDN).is_some_and(|t| t.up)
        })?;
        let p = self.ping(Role::Gn, cn_vip, 2)?;
        ensure!(p.received == p.sent, "{}", p.output);
        Ok((gn_vip, cn_vip))
    }

    /// [`World::leased_with_tunnel`] with cn's node registered first, and
    /// its name resolved to its own VIP: returns the GN's VIP and cn's.
    pub fn tunnel_to_cn(&self, cn: &mut Node, ntma: &mut Ntma) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let cn_vip = cn.registered()?;
        let (gn_vip, resolved) = self.leased_with_tunnel(ntma)?;
        ensure!(
            resolved == cn_vip,
            "{CN_FQDN} resolved to {resolved}, cn has {cn_vip}"
        );
        Ok((gn_vip, cn_vip))
    }

    /// `len` bytes over TCP through the tunnel, gn -> cn to `port` (seed
    /// `seed`), then cn -> gn to `port + 1` (seed `seed + 1`), each checked
    /// intact.
    pub fn tcp_both_ways(
        &self,
        (gn_vip, cn_vip): (Ipv4Addr, Ipv4Addr),
        len: usize,
        seed: u64,
        port: u16,
    ) -> Result<()> {
        let ways = [
            ("gn -> cn", Role::Cn, cn_vip, Role::Gn, "up"),
            ("cn -> gn", Role::Gn, gn_vip, Role::Cn, "down"),
        ];
        for ((what, to, to_vip, from, tag), i) in ways.into_iter().zip(0..) {
            let data = payload(len, seed + i);
            let got = self.nc_transfer(to, to_vip, from, port + i as u16, &data, tag)?;
            ensure!(
                got == data,
                "{what}: {} of {} bytes, or different",
                got.len(),
                data.len()
            );
        }
        Ok(())
    }

    /// Interfaces of `role`'s namespace that have an XDP program attached,
    /// as `ip link show` reports them.
    pub fn xdp_attached(&self, role: Role) -> Result<Vec<String>> {
        let out = self.sh(role, "ip -o link show")?;
        Ok(out
            .lines()
            .filter(|l| l.contains(" xdp"))
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect())
    }
}

/// Writes a configuration (or key file) readable by its owner only: the
/// daemons refuse one holding a key that group or others can read.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    ntm_ops::keys::write_private(path, text)
}

/// The DC's configuration file and its status socket.
impl World {
    /// Where the DC's configuration is (rewrite it, then [`World::reload_dc`]).
    pub fn dc_config_path(&self) -> &std::path::Path {
        &self.dc_config
    }

    /// The DC's status, over its status socket.
    pub fn dc_status(&self) -> Result<ntm_dc::Status> {
        let c = ntm_dc::Config::load(&self.dc_config)?;
        let text = ntm_ops::unix::query(&c.status_socket, "ntm-dc")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// SIGHUP to the DC.
    pub fn reload_dc(&self) -> Result<()> {
        let dc = self.dc.as_ref().context("the DC is not running")?;
        dc.signal(ntm_testbed::Signal::SIGHUP)
            .map_err(|e| anyhow!("SIGHUP to ntm-dc: {e}"))
    }
}

/// A deterministic pseudo-random payload (xorshift), to check transfers
/// byte for byte.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A running `ntm-node`.
pub struct Node {
    /// The process.
    pub child: Child,
    /// Its status file.
    pub status: PathBuf,
    /// Where it runs.
    pub role: Role,
    /// Its FQDN.
    pub fqdn: String,
}

impl Node {
    /// The latest status file, if written yet.
    pub fn status(&self) -> Option<ntm_node::Status> {
        ntm_node::Status::load(&self.status)
    }

    /// Waits until the status satisfies `pred`.
    pub fn wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ntm_node::Status) -> bool,
    ) -> Result<ntm_node::Status> {
        match wait_for(PATIENCE, || self.status().filter(|s| pred(s))) {
            Some(s) => Ok(s),
            None => bail!(
                "{} ({}): {what}: not within {PATIENCE:?} (running: {}); last status: {:?}",
                self.fqdn,
                self.role,
                self.child.is_running(),
                self.status()
            ),
        }
    }

    /// Waits for the registration; returns the VIP.
    pub fn registered(&mut self) -> Result<Ipv4Addr> {
        Ok(self
            .wait("registered", |s| s.vip.is_some())?
            .vip
            .expect("checked"))
    }
}

/// A running `ntma`.
pub struct Ntma {
    /// The process.
    pub child: Child,
    /// Its status socket.
    pub socket: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Ntma {
    /// Its status, if it answers.
    pub fn status(&self) -> Option<ntma_user::status::Status> {
        ntma_user::status::query(&self.socket).ok()
    }

    /// Waits until its status satisfies `pred`.
    pub fn wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ntma_user::status::Status) -> bool,
    ) -> Result<ntma_user::status::Status> {
        match wait_for(PATIENCE, || self.status().filter(|s| pred(s))) {
            Some(s) => Ok(s),
            None => {
                let running = self.child.is_running();
                bail!(
                    "ntma: {what}: not within {PATIENCE:?} (running: {running}); last status: {:?}\nlog:\n{}",
                    self.status(),
                    tail(&self.child.log(), 40)
                )
            }
        }
    }

    /// Waits until the sum of the drop counts of `reasons` has grown by at
    /// least `n` since `before` (a status taken earlier); returns the growth.
    pub fn grows(
        &mut self,
        reasons: &[&str],
        before: &ntma_user::status::Status,
        n: u64,
    ) -> Result<u64> {
        let total = |s: &ntma_user::status::Status| -> u64 {
            reasons.iter().map(|r| s.drop_count(r)).sum()
        };
        let base = total(before);
        let st = self.wait(&format!("{reasons:?} +{n}"), |s| total(s) >= base + n)?;
        Ok(total(&st) - base)
    }

    /// Waits for the first GN's registration; returns its VIP.
    pub fn registered(&mut self) -> Result<Ipv4Addr> {
        Ok(self
            .wait("registered", |s| s.gns[0].registration.vip.is_some())?
            .gns[0]
            .registration
            .vip
            .expect("checked"))
    }

    /// Waits for the registration of the GN `fqdn`; returns its VIP.
    pub fn registered_gn(&mut self, fqdn: &str) -> Result<Ipv4Addr> {
        let vip = |s: &ntma_user::status::Status| s.gn(fqdn).and_then(|g| g.registration.vip);
        let st = self.wait(&format!("{fqdn} registered"), |s| vip(s).is_some())?;
        Ok(vip(&st).expect("checked"))
    }

    /// `ntma status` as text, from the real binary.
    pub fn status_text(&self) -> Result<String> {
        let out = Command::new(bin("ntma")?)
            .arg("status")
            .arg("--config")
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!("ntma status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM, and its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.child
            .stop(Duration::from_secs(10))
            .map_err(|e| anyhow!("stop ntma: {e}"))
    }

    /// SIGHUP: reload its configuration (rewrite [`Ntma::config`] first).
    pub fn reload(&self) -> Result<()> {
        self.child
            .signal(ntm_testbed::Signal::SIGHUP)
            .map_err(|e| anyhow!("SIGHUP to ntma: {e}"))
    }

    /// `ntma status --check` from the real binary: its exit code and line.
    pub fn check(&self) -> Result<(i32, String)> {
        let out = Command::new(bin("ntma")?)
            .args(["status", "--check", "--config"])
            .arg(&self.config)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// What `dig` answered.
#[derive(Debug, Clone)]
pub struct Dig {
    /// A records.
    pub a: Vec<Ipv4Addr>,
    /// NOERROR, NXDOMAIN, ...
    pub status: String,
    /// dig's query time, whole ms.
    pub query_ms: Option<u64>,
}

impl Dig {
    fn parse(out: &str) -> Dig {
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
                    if let Ok(a) = f[4].parse() {
                        d.a.push(a);
                    }
                }
            }
        }
        d
    }
}

/// What `ping` printed.
#[derive(Debug, Clone)]
pub struct Ping {
    /// Requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// min/avg/max RTT in ms.
    pub rtt: Option<(f64, f64, f64)>,
    /// The whole output.
    pub output: String,
}

impl Ping {
    fn parse(out: &str) -> Ping {
        let mut p = Ping {
            sent: 0,
            received: 0,
            rtt: None,
            output: out.to_owned(),
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
        p
    }
}

/// What iperf3 measured.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// Received at the far end, bits per second.
    pub received_bps: f64,
    /// Bytes received (counted until the sender ends the test: with `-n`,
    /// what is still in flight then is missing here).
    pub received_bytes: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// TCP retransmissions at the sender.
    pub retransmits: Option<u64>,
}

impl Iperf {
    fn parse(json: &str) -> Result<Iperf> {
        let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
        if let Some(e) = v.get("error") {
            bail!("iperf3: {e}");
        }
        let end = &v["end"];
        let recv = &end["sum_received"];
        Ok(Iperf {
            received_bps: recv["bits_per_second"]
                .as_f64()
                .ok_or_else(|| anyhow!("iperf3 output without sum_received: {json}"))?,
            received_bytes: recv["bytes"].as_u64().unwrap_or(0),
            sent_bytes: end["sum_sent"]["bytes"].as_u64().unwrap_or(0),
            retransmits: end["sum_sent"]["retransmits"].as_u64(),
        })
    }
}

/// A fake upstream resolver in the dc namespace: answers every A query
/// with [`UPSTREAM_ANSWER`].
pub struct FakeUpstream {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start(w: &World) -> Result<FakeUpstream> {
        use hickory_proto::op::{Message, MessageType};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};

        let sock =
            w.tb.in_netns(Role::Dc, || UdpSocket::bind(UPSTREAM))
                .map_err(|e| anyhow!("{e}"))?
                .context("bind the fake upstream")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(mut m) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = m.queries.first().cloned() else {
                    continue;
                };
                m.metadata.message_type = MessageType::Response;
                m.metadata.recursion_available = true;
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A(UPSTREAM_ANSWER)),
                ));
                if let Ok(bytes) = m.to_vec() {
                    let _ = sock.send_to(&bytes, from);
                }
            }
        });
        Ok(FakeUpstream {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_output_parses() {
        let out = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ANSWER SECTION:\ncn.ntm.test.\t\t30\tIN\tA\t100.64.0.3\n\n;; Query time: 4 msec\n";
        let d = Dig::parse(out);
        assert_eq!(d.status, "NOERROR");
        assert_eq!(d.a, vec![Ipv4Addr::new(100, 64, 0, 3)]);
        assert_eq!(d.query_ms, Some(4));
    }

    #[test]
    fn ping_output_parses() {
        let out = "10 packets transmitted, 9 received, 10% packet loss, time 1805ms\nrtt min/avg/max/mdev = 0.051/0.080/0.120/0.020 ms\n";
        let p = Ping::parse(out);
        assert_eq!((p.sent, p.received), (10, 9));
        assert_eq!(p.rtt, Some((0.051, 0.080, 0.120)));
    }

    #[test]
    fn iperf_json_parses() {
        let j = r#"{"end":{"sum_sent":{"retransmits":3},"sum_received":{"bits_per_second":1.5e9,"bytes":123}}}"#;
        let i = Iperf::parse(j).unwrap();
        assert_eq!(i.received_bps, 1.5e9);
        assert_eq!(i.retransmits, Some(3));
        assert!(Iperf::parse(r#"{"error":"unable to connect"}"#).is_err());
    }

    #[test]
    fn the_gn_helpers_take_only_the_gns() {
        for role in GNS {
            assert_eq!(gn(role).unwrap(), role);
        }
        let e = gn(Role::Cn).unwrap_err().to_string();
        assert!(e.contains("cn is not a GN"), "{e}");
    }

    #[test]
    fn payloads_are_deterministic() {
        assert_eq!(payload(64, 7), payload(64, 7));
        assert_ne!(payload(64, 7), payload(64, 8));
    }
}
