//! The reduced topology of `ntm-bench dp`: three namespaces of its own,
//!
//! ```text
//!  src ──veth── lan0 [dut] wan0 ──veth── dst
//! ```
//!
//! no NAT, no bridge. `src` plays the GN (its VIP on `eth0`), `dst` the tunnel's peer (its
//! address and its VIP on `eth0`); a counting XDP sink (`perf_sink`) sits on both `eth0`s.
//! The DUT namespace holds the datapath under test. Neighbours are static, so nothing
//! waits for ARP. Everything is removed when the value is dropped (and left-overs of a
//! killed run with the same prefix when it is made).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::{fmt_mac, CN_VIP, GN_ADDR};
use crate::net::{parse_ip_link, Link};
use crate::xdp::Sink;

/// The DUT's GN-facing address (the router address ntma's XDP config names).
pub const DUT_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The DUT's uplink address: outer source of the tunnel.
pub const DUT_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The tunnel peer's address in `dst`: outer destination of the tunnel.
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// One of the three namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The GN's end (uplink source, downlink sink).
    Src,
    /// The datapath under test.
    Dut,
    /// The peer's end (downlink source, uplink sink).
    Dst,
}

impl Side {
    fn suffix(self) -> &'static str {
        match self {
            Side::Src => "src",
            Side::Dut => "dut",
            Side::Dst => "dst",
        }
    }
}

/// The four veth ends.
#[derive(Clone, Debug)]
pub struct Links {
    /// `src` `eth0`.
    pub src: Link,
    /// DUT `lan0`.
    pub lan0: Link,
    /// DUT `wan0`.
    pub wan0: Link,
    /// `dst` `eth0`.
    pub dst: Link,
}

/// The namespaces, links and sinks; removed on drop.
pub struct Topo {
    prefix: String,
    /// The interfaces.
    pub links: Links,
    /// Sinks on `src` and `dst` `eth0` (dropped before the namespaces go).
    sinks: Vec<(Side, Sink)>,
}

fn ip_batch(script: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("piped")
                .write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .context("running `ip -batch` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip -batch` failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Topo {
    /// Builds the topology with namespaces `<prefix>src`, `<prefix>dut`, `<prefix>dst`
    /// (a prefix as [`ntm_testbed::check_prefix`] wants it).
    pub fn up(prefix: &str) -> Result<Topo> {
        let prefix = ntm_testbed::check_prefix(prefix)?;
        // A killed run may have left its namespaces.
        ntm_testbed::down(&prefix).context("removing the left-overs of an earlier run")?;
        let mut topo = Topo {
            prefix,
            links: Links {
                src: placeholder(),
                lan0: placeholder(),
                wan0: placeholder(),
                dst: placeholder(),
            },
            sinks: Vec::new(),
        };
        // From here on, an error drops `topo`, which removes what was made.
        let (src, dut, dst) = (topo.ns(Side::Src), topo.ns(Side::Dut), topo.ns(Side::Dst));
        ip_batch(&format!(
            "netns add {src}\nnetns add {dut}\nnetns add {dst}\n\
             link add eth0 netns {src} type veth peer name lan0 netns {dut}\n\
             link add eth0 netns {dst} type veth peer name wan0 netns {dut}\n"
        ))?;
        topo.links = Links {
            src: topo.link(Side::Src, "eth0")?,
            lan0: topo.link(Side::Dut, "lan0")?,
            wan0: topo.link(Side::Dut, "wan0")?,
            dst: topo.link(Side::Dst, "eth0")?,
        };
        topo.addresses()?;
        for side in [Side::Src, Side::Dst] {
            let sink = Sink::attach(&topo.ns(side), "eth0", 0, 0)?;
            topo.sinks.push((side, sink));
        }
        Ok(topo)
    }

    fn addresses(&self) -> Result<()> {
        let l = &self.links;
        let (src_mac, dst_mac) = (fmt_mac(&l.src.mac), fmt_mac(&l.dst.mac));
        let rp = "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0";
        // src: the GN's VIP; the DUT's WAN address too, so that frames the l2fwd
        // reference passes through unchanged reach a checking socket.
        self.sh(
            Side::Src,
            &format!(
                "{rp}\nip link set lo up\nip link set eth0 up\n\
                 sysctl -qw net.ipv4.conf.eth0.rp_filter=0\n\
                 ip addr add {GN_ADDR}/32 dev eth0\nip addr add {DUT_WAN_ADDR}/32 dev eth0\n\
                 ip route add default dev eth0"
            ),
        )?;
        self.sh(
            Side::Dst,
            &format!(
                "{rp}\nip link set lo up\nip link set eth0 up\n\
                 sysctl -qw net.ipv4.conf.eth0.rp_filter=0\n\
                 ip addr add {PEER_ADDR}/24 dev eth0\nip addr add {CN_VIP}/32 dev eth0\n\
                 ip route add default dev eth0"
            ),
        )?;
        self.sh(
            Side::Dut,
            &format!(
                "{rp}\nip link set lo up\nip link set lan0 up\nip link set wan0 up\n\
                 sysctl -qw net.ipv4.conf.lan0.rp_filter=0 net.ipv4.conf.wan0.rp_filter=0\n\
                 ip addr add {DUT_LAN_ADDR}/32 dev lan0\nip addr add {DUT_WAN_ADDR}/24 dev wan0\n\
                 ip route add {GN_ADDR}/32 dev lan0\n\
                 ip route add {CN_VIP}/32 via {PEER_ADDR} dev wan0\n\
                 ip neigh replace {GN_ADDR} lladdr {src_mac} dev lan0 nud permanent\n\
                 ip neigh replace {PEER_ADDR} lladdr {dst_mac} dev wan0 nud permanent"
            ),
        )?;
        Ok(())
    }

    /// The namespace name of `side`.
    pub fn ns(&self, side: Side) -> String {
        format!("{}{}", self.prefix, side.suffix())
    }

    /// Runs a shell script in `side`'s namespace; an error carries its stderr.
    pub fn sh(&self, side: Side, script: &str) -> Result<String> {
        let ns = self.ns(side);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-ec", script])
            .output()
            .with_context(|| format!("running a script in {ns}"))?;
        if !out.status.success() {
            bail!(
                "in {ns}: {script}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn link(&self, side: Side, ifname: &str) -> Result<Link> {
        let out = self.sh(side, &format!("ip -j link show dev {ifname}"))?;
        parse_ip_link(&out).with_context(|| format!("{ifname} in {}", self.ns(side)))
    }

    /// The sink on `side`'s `eth0`.
    pub fn sink(&mut self, side: Side) -> Result<&mut Sink> {
        self.sinks
            .iter_mut()
            .find(|(s, _)| *s == side)
            .map(|(_, s)| s)
            .with_context(|| format!("no sink in {side:?}"))
    }

    /// Drop counters of `ifname` in `side`'s namespace: (rx_dropped, tx_dropped).
    pub fn drops(&self, side: Side, ifname: &str) -> Result<(u64, u64)> {
        // Through `ip netns exec`, which mounts the namespace's own sysfs.
        let dir = format!("/sys/class/net/{ifname}/statistics");
        let out = self.sh(side, &format!("cat {dir}/rx_dropped {dir}/tx_dropped"))?;
        let v: Vec<u64> = out
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {dir}: {out:?}"))?;
        match v[..] {
            [rx, tx] => Ok((rx, tx)),
            _ => bail!("{dir}: expected two counters, got {out:?}"),
        }
    }
}

fn placeholder() -> Link {
    Link {
        name: String::new(),
        ifindex: 0,
        mac: [0; 6],
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        // XDP programs are detached in their namespaces before these go.
        self.sinks.clear();
        if let Err(e) = ntm_testbed::down(&self.prefix) {
            eprintln!("ntm-bench dp: removing namespaces {}*: {e}", self.prefix);
        }
    }
}
