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

use super::{Gateway, Undo};
use crate::bench::{Bench, Direction, Flow, Source, CN_PORT, ECHO_PORT, GN_ADDR, GN_PORT};
use crate::check::Check;
use crate::latency::{Echo, EchoServer};
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
        let mut undo = Undo::default();
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
        for (role, ifname, child) in [
            (Role::Ntma, &n_if, &mut wg._ntma),
            (Role::Cn, &c_if, &mut wg._cn),
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
                    which.program(),
                    child.is_running(),
                    log.trim()
                );
            }
        }
        let keydir = bench.tb.state_dir();
        let gw_key = keydir.join(format!("{n_if}.key"));
        let peer_key = keydir.join(format!("{c_if}.key"));
        std::fs::write(&gw_key, format!("{}\n", gw_keys.private))?;
        std::fs::write(&peer_key, format!("{}\n", peer_keys.private))?;
        let old = net::sysctl(&bench.tb, Role::Ntma, "net.ipv4.ip_forward", "1")?;
        undo.push(
            bench,
            Role::Ntma,
            format!("sysctl -q -w net.ipv4.ip_forward={old}"),
        );
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
        wg._undo = undo;
        Ok(wg)
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

impl Gateway for WireGuard {
    fn name(&self) -> String {
        self.which.name().into()
    }

    fn flow(&mut self, bench: &Bench, dir: Direction) -> Result<Flow> {
        self.prime(bench)?;
        let gn = SocketAddrV4::new(GN_ADDR, GN_PORT);
        let cn = SocketAddrV4::new(CN_WG, CN_PORT);
        Ok(match dir {
            Direction::Up => Flow {
                from: Role::Gn,
                source: Source::Plain { bind: gn, dst: cn },
                sink_port: WG_PORT,
                // The peer decrypts the samples and delivers them to cn's tunnel address.
                check: Check::Delivered { bind: cn },
                offered_at: None,
            },
            Direction::Down => Flow {
                from: Role::Cn,
                source: Source::Plain { bind: cn, dst: gn },
                sink_port: GN_PORT,
                check: Check::None,
                offered_at: Some((Role::Cn, "eth0")),
            },
        })
    }

    fn echo(&mut self, bench: &Bench) -> Result<Echo> {
        self.prime(bench)?;
        let bind = SocketAddrV4::new(CN_WG, ECHO_PORT);
        Ok(Echo {
            target: bind,
            server: EchoServer::Udp { bind },
        })
    }
}
