//! What users run instead: a userspace WireGuard gateway in the ntma namespace
//! (`wireguard-go` from Debian, or `boringtun-cli` from crates.io, configured with `wg`),
//! its peer in cn running the same implementation. gn's traffic is routed through the
//! tunnel (site to site, no NAT): gn → 10.99.0.2 (cn's tunnel address), cn → gn's VIP.
//!
//! The gateway is pinned to CPU 1 like ntma's workers; the peer in cn is not pinned.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ntm_testbed::{Child, Role, CN_ADDR};

use super::{tunnel_flow, Gateway, Undo};
use crate::bench::{Bench, Direction, Flow, CN_PORT, ECHO_PORT, GN_ADDR, GN_PORT};
use crate::latency::Echo;
use crate::net;

/// WireGuard's UDP port on both ends.
pub const WG_PORT: u16 = 51820;
/// The gateway's tunnel address.
pub const NTMA_WG: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// cn's tunnel address: where gn's traffic goes.
pub const CN_WG: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Tunnel MTU: 1500 minus WireGuard's 60 (IPv4) bytes, as wg-quick sets it.
const WG_MTU: u16 = 1420;

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// wireguard-go (Debian package).
    Go,
    /// boringtun-cli (crates.io).
    Boringtun,
}

impl Impl {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Go => "wireguard-go",
            Impl::Boringtun => "boringtun",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Impl::Go => "wireguard-go",
            Impl::Boringtun => "boringtun-cli",
        }
    }

    /// The daemon creating interface `ifname`, in the foreground, logging to `log`.
    fn command(self, ifname: &str, log: &Path, cpu: Option<usize>) -> Command {
        let mut c = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), self.program()]);
                c
            }
            None => Command::new(self.program()),
        };
        match self {
            // It refuses to run where the kernel has WireGuard, module loaded or not.
            Impl::Go => {
                c.args(["-f", ifname])
                    .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
            }
            Impl::Boringtun => {
                c.args(["-f", "--disable-drop-privileges", "-l"])
                    .arg(log)
                    .arg(ifname);
            }
        }
        c
    }
}

/// A key pair from `wg genkey` / `wg pubkey`.
struct Keys {
    private: String,
    public: String,
}

fn wg_keys() -> Result<Keys> {
    let out = Command::new("wg")
        .arg("genkey")
        .output()
        .context("running `wg genkey` (install wireguard-tools: `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "`wg genkey` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let private = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running `wg pubkey`")?;
    {
        use std::io::Write;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("wg pubkey: no stdin"))?;
        writeln!(stdin, "{private}")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`wg pubkey` failed");
    }
    Ok(Keys {
        private,
        public: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    })
}

/// A userspace WireGuard gateway in ntma and its peer in cn.
pub struct WireGuard {
    which: Impl,
    // Field order: the daemons stop before the undo steps run.
    _ntma: Child,
    _cn: Child,
    _undo: Undo,
}

/// Interface names: distinct per namespace, because the UAPI sockets of userspace
/// implementations live in the host's shared /var/run/wireguard.
fn ifnames(bench: &Bench) -> (String, String) {
    let body: String = bench
        .tb
        .prefix()
        .trim_end_matches('-')
        .chars()
        .take(9)
        .collect();
    (format!("wg{body}n"), format!("wg{body}c"))
}

impl WireGuard {
    /// Starts both daemons and configures the tunnel; fails if either implementation is
    /// missing or does not come up.
    pub fn start(bench: &Bench, which: Impl) -> Result<WireGuard> {
        let (n_if, c_if) = ifnames(bench);
        let logs = bench.tb.state_dir().join("logs");
        let gw_keys = wg_keys()?;
        let peer_keys = wg_keys()?;
        let ntma = bench
            .tb
            .spawn(
                Role::Ntma,
                &which.command(&n_if, &logs.join(format!("{n_if}.log")), Some(1)),
            )
            .with_context(|| format!("starting {} in ntma", which.program()))?;
        let cn = bench
            .tb
            .spawn(
                Role::Cn,
                &which.command(&c_if, &logs.join(format!("{c_if}.log")), None),
            )
            .with_context(|| format!("starting {} in cn", which.program()))?;
        let mut wg = WireGuard {
            which,
            _ntma: ntma,
            _cn: cn,
            _undo: Undo::default(),
        };
        wg.wait_created(bench, &n_if, &c_if)?;
        wg._undo = configure(bench, (&n_if, &gw_keys), (&c_if, &peer_keys))?;
        Ok(wg)
    }

    /// Waits for both daemons to create their interface and UAPI socket.
    fn wait_created(&mut self, bench: &Bench, n_if: &str, c_if: &str) -> Result<()> {
        for (role, ifname, child) in [
            (Role::Ntma, n_if, &mut self._ntma),
            (Role::Cn, c_if, &mut self._cn),
        ] {
            let up = ntm_testbed::wait_until(Duration::from_secs(10), || {
                bench
                    .tb
                    .output(role, ["ip", "link", "show", "dev", ifname])
                    .is_ok()
                    && Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists()
            });
            if !up {
                let log = child.log();
                bail!(
                    "{} did not create {ifname} in {role} within 10 s (running: {}): {}",
                    self.which.program(),
                    child.is_running(),
                    log.trim()
                );
            }
        }
        Ok(())
    }

    /// Sends through the tunnel until a packet arrives: the handshake is done.
    fn prime(&self, bench: &Bench) -> Result<()> {
        let gn = SocketAddrV4::new(GN_ADDR, GN_PORT);
        let cn = SocketAddrV4::new(CN_WG, CN_PORT);
        bench
            .learn_mapping(Role::Gn, gn, cn, Role::Cn, cn)
            .with_context(|| format!("no packet through the {} tunnel", self.which.name()))?;
        Ok(())
    }
}

/// Keys, addresses and peers of both interfaces (`n_if` in ntma with the gateway's
/// keys, `c_if` in cn with the peer's), the routes to gn's VIP prefix, and forwarding
/// in ntma (undone on drop).
fn configure(
    bench: &Bench,
    (n_if, gw_keys): (&str, &Keys),
    (c_if, peer_keys): (&str, &Keys),
) -> Result<Undo> {
    let keydir = bench.tb.state_dir();
    let gw_key = keydir.join(format!("{n_if}.key"));
    let peer_key = keydir.join(format!("{c_if}.key"));
    std::fs::write(&gw_key, format!("{}\n", gw_keys.private))?;
    std::fs::write(&peer_key, format!("{}\n", peer_keys.private))?;
    let mut undo = Undo::default();
    undo.ip_forward(bench)?;
    net::sh(
        &bench.tb,
        Role::Ntma,
        &format!(
            "wg set {n_if} private-key {} listen-port {WG_PORT} peer {} allowed-ips {CN_WG}/32 \
             endpoint {CN_ADDR}:{WG_PORT} persistent-keepalive 25\n\
             ip addr add {NTMA_WG}/24 dev {n_if}\n\
             ip link set {n_if} mtu {WG_MTU} up",
            gw_key.display(),
            peer_keys.public
        ),
    )?;
    net::sh(
        &bench.tb,
        Role::Cn,
        &format!(
            "wg set {c_if} private-key {} listen-port {WG_PORT} peer {} allowed-ips {NTMA_WG}/32,100.64.0.0/10\n\
             ip addr add {CN_WG}/24 dev {c_if}\n\
             ip link set {c_if} mtu {WG_MTU} up\n\
             ip route replace 100.64.0.0/10 dev {c_if}",
            peer_key.display(),
            gw_keys.public
        ),
    )?;
    Ok(undo)
}

impl Gateway for WireGuard {
    fn name(&self) -> String {
        self.which.name().into()
    }

    fn flow(&mut self, bench: &Bench, dir: Direction) -> Result<Flow> {
        self.prime(bench)?;
        let gn = SocketAddrV4::new(GN_ADDR, GN_PORT);
        let cn = SocketAddrV4::new(CN_WG, CN_PORT);
        Ok(tunnel_flow(dir, gn, cn, gn, WG_PORT))
    }

    fn echo(&mut self, bench: &Bench) -> Result<Echo> {
        self.prime(bench)?;
        Ok(Echo::udp(SocketAddrV4::new(CN_WG, ECHO_PORT)))
    }
}
