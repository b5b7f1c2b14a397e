//! The software node as a gateway: `ntm-node` (TUN + UDP socket) in the ntma namespace,
//! the namespace forwarding gn's traffic into its TUN with masquerade to the node's VIP
//! (the node accepts only its own VIP as inner source), the peer `ntm-node` in cn, and a
//! DC in dc that directs the tunnel. Both nodes get fixed VIPs away from gn's address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ntm_ops::keys::write_private;
use ntm_proto::Key;
use ntm_testbed::{Child, Role, CN_FQDN, DC_ADDR, NODE_FQDN};

use super::{tunnel_flow, Gateway, Undo};
use crate::bench::{Bench, Direction, Flow, CN_PORT, ECHO_PORT, GN_ADDR, GN_PORT, NTM_PORT};
use crate::latency::Echo;
use crate::net;

/// The gateway node's VIP.
pub const NODE_VIP: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 2);
/// cn's VIP.
pub const CN_NODE_VIP: Ipv4Addr = Ipv4Addr::new(100, 100, 0, 20);
/// The TUN of both nodes.
const TUN: &str = "ntm0";
/// An upstream resolver nobody answers at (the bench asks only NTM names).
const NO_UPSTREAM: SocketAddrV4 = SocketAddrV4::new(DC_ADDR, 5353);

fn key_of(bench: &Bench, fqdn: &str) -> Result<Key> {
    bench
        .tb
        .keys()
        .node(fqdn)
        .ok_or_else(|| anyhow!("no key for {fqdn} in the testbed"))?
        .to_hex()
        .parse()
        .map_err(|_| anyhow!("the testbed key of {fqdn} is not 64 hex digits"))
}

/// DC, two nodes and the forwarding around the gateway node.
pub struct NodeGateway {
    // Field order: processes stop before the undo steps run.
    _gw: Child,
    _cn: Child,
    _dc: Child,
    gw_status: PathBuf,
    _undo: Undo,
}

impl NodeGateway {
    /// Starts the DC, both nodes, waits for their registration, resolves cn's name
    /// through the gateway node's DNS stub (the tunnel is directed on demand) and sets up
    /// forwarding with masquerade in ntma.
    pub fn start(bench: &Bench) -> Result<NodeGateway> {
        let dc = start_dc(bench)?;
        let (mut cn, cn_status) = start_node(bench, Role::Cn, CN_FQDN, None)?;
        let (mut gw, gw_status) = start_node(bench, Role::Ntma, NODE_FQDN, Some(1))?;
        for (child, status, fqdn) in [
            (&mut cn, &cn_status, CN_FQDN),
            (&mut gw, &gw_status, NODE_FQDN),
        ] {
            let ok = ntm_testbed::wait_until(Duration::from_secs(20), || {
                ntm_node::Status::load(status).is_some_and(|s| s.vip.is_some())
            });
            if !ok {
                bail!(
                    "ntm-node {fqdn} did not register within 20 s (running: {}): {}",
                    child.is_running(),
                    child.log().trim()
                );
            }
        }
        // The name through the gateway node's stub: the DC now knows the pair, and
        // the node knows which FQDN cn's VIP belongs to.
        let answer = net::sh(
            &bench.tb,
            Role::Ntma,
            &format!("dig @127.0.0.1 +short +time=3 +tries=3 {CN_FQDN} A"),
        )?;
        if !answer.lines().any(|l| l.trim() == CN_NODE_VIP.to_string()) {
            bail!(
                "the gateway node's DNS stub answered {answer:?} for {CN_FQDN}, not {CN_NODE_VIP}"
            );
        }
        Ok(NodeGateway {
            _gw: gw,
            _cn: cn,
            _dc: dc,
            gw_status,
            _undo: masquerade(bench)?,
        })
    }
}

fn bin(name: &str) -> Result<PathBuf> {
    ntm_testbed::bin_path(name).map_err(|e| anyhow!("{e}"))
}

/// The DC in dc, knowing both nodes with their fixed VIPs.
fn start_dc(bench: &Bench) -> Result<Child> {
    let dir = bench.tb.state_dir();
    let mut dc = ntm_dc::Config {
        stats_interval_secs: 0,
        ..ntm_dc::Config::default()
    };
    for (fqdn, vip) in [(NODE_FQDN, NODE_VIP), (CN_FQDN, CN_NODE_VIP)] {
        let mut e = ntm_dc::NodeEntry::new(fqdn, &key_of(bench, fqdn)?);
        e.vip = Some(vip);
        dc.nodes.push(e);
    }
    dc.status_socket = dir.join("bench-dc.sock");
    dc.store = ntm_dc::config::StoreConfig::redb_in(dir);
    let dc_toml = dir.join("bench-dc.toml");
    write_private(&dc_toml, &dc.to_toml())?;
    let mut c = Command::new(bin("ntm-dc")?);
    c.arg("--config").arg(&dc_toml);
    bench.tb.spawn(Role::Dc, &c).context("starting ntm-dc")
}

/// `ntm-node` `fqdn` in `role`'s namespace, pinned to `cpu` if given; returns it and
/// its status file.
fn start_node(
    bench: &Bench,
    role: Role,
    fqdn: &str,
    cpu: Option<usize>,
) -> Result<(Child, PathBuf)> {
    let dir = bench.tb.state_dir();
    let mut cfg = ntm_node::Config::new(
        fqdn,
        &key_of(bench, fqdn)?,
        SocketAddrV4::new(DC_ADDR, ntm_dc::DEFAULT_PORT),
        SocketAddr::V4(NO_UPSTREAM),
    );
    let status = dir.join(format!("bench-{fqdn}.status.json"));
    let _ = std::fs::remove_file(&status);
    cfg.status_file = Some(status.clone());
    cfg.stats_interval_secs = 0;
    cfg.tun_name = TUN.into();
    let toml = dir.join(format!("bench-{fqdn}.toml"));
    write_private(&toml, &cfg.to_toml())?;
    let mut c = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin("ntm-node")?);
            c
        }
        None => Command::new(bin("ntm-node")?),
    };
    c.arg("--config").arg(&toml).env("RUST_LOG", "warn");
    let child = bench
        .tb
        .spawn(role, &c)
        .with_context(|| format!("starting ntm-node {fqdn} in {role}"))?;
    Ok((child, status))
}

/// Forwarding in ntma, cn's VIP routed into the gateway node's TUN with masquerade
/// to the node's VIP; undone on drop.
fn masquerade(bench: &Bench) -> Result<Undo> {
    let mut undo = Undo::default();
    undo.ip_forward(bench)?;
    let table = format!("{}node", bench.tb.prefix().trim_end_matches('-'));
    net::sh(
        &bench.tb,
        Role::Ntma,
        &format!(
            "ip route replace {CN_NODE_VIP}/32 dev {TUN}\n\
             nft -f - <<EOF\n\
             table ip {table} {{\n\
               chain post {{ type nat hook postrouting priority 100; oifname \"{TUN}\" masquerade; }}\n\
             }}\n\
             EOF"
        ),
    )?;
    undo.push(bench, Role::Ntma, format!("nft delete table ip {table}"));
    Ok(undo)
}

impl Gateway for NodeGateway {
    fn name(&self) -> String {
        "ntm-node".into()
    }

    fn flow(&mut self, bench: &Bench, dir: Direction) -> Result<Flow> {
        let gn = SocketAddrV4::new(GN_ADDR, GN_PORT);
        let cn = SocketAddrV4::new(CN_NODE_VIP, CN_PORT);
        // Through the tunnel (set up on the first packet): gn's masqueraded address.
        let mapped = bench
            .learn_mapping(Role::Gn, gn, cn, Role::Cn, cn)
            .context("no packet from gn through the ntm-node tunnel")?;
        Ok(tunnel_flow(dir, gn, cn, mapped, NTM_PORT))
    }

    fn echo(&mut self, _bench: &Bench) -> Result<Echo> {
        Ok(Echo::udp(SocketAddrV4::new(CN_NODE_VIP, ECHO_PORT)))
    }

    fn notes(&self) -> Option<String> {
        let s = ntm_node::Status::load(&self.gw_status)?;
        let drops: Vec<String> = s.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        Some(if drops.is_empty() {
            "no drops".into()
        } else {
            format!("drops: {}", drops.join(", "))
        })
    }
}
