//! Several DCs, one world: the testbed with a three-member etcd cluster in
//! the `etcd` namespace (198.18.0.5), the usual DC (`dc1`, 198.18.0.2)
//! and a second one (`dc2`, in the `dc2` namespace at 198.18.0.4), both on
//! that cluster (`[store] kind = "etcd"`), and the RS taking RELAY_DIR from
//! both. Nodes and the adapter are given both DCs, in the order a test
//! chooses ([`MultiDc::cn_with_dcs`], [`MultiDc::ntma_with_dcs`]).
//!
//! The etcd members listen on ports of their own (12379 on, not the 2379
//! of a system etcd) inside the testbed's namespace, and keep their data in
//! its state directory: testbeds with other prefixes never collide.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use ntm_testbed::{unique_prefix, wait_for, Child, Signal, Testbed, DC2_ADDR, DC_ADDR, ETCD_ADDR};

use crate::{bin, require_root, tail, write_private, Node, Ntma, Ping, Role, World, CN_FQDN};

/// Members of the cluster.
pub const ETCD_MEMBERS: usize = 3;
/// The first member's client port; member `i` uses `+ 10 * i`, and the
/// port after its client port for its peers.
const ETCD_PORT: u16 = 12379;
/// The DCs' keep-alive interval here: nodes give a silent DC up after 3.5
/// intervals (7 s), so that a failover test does not wait a minute.
pub const KEEPALIVE_SECS: u32 = 2;
/// How long a failover, or a cluster's election, may take on a loaded
/// machine (nothing asserts a time).
pub const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);
/// The first DC's address, as nodes and the adapter are given it.
pub const DC1: SocketAddrV4 = SocketAddrV4::new(DC_ADDR, ntm_dc::DEFAULT_PORT);
/// The second DC's.
pub const DC2: SocketAddrV4 = SocketAddrV4::new(DC2_ADDR, ntm_dc::DEFAULT_PORT);

fn client_port(i: usize) -> u16 {
    ETCD_PORT + 10 * i as u16
}

fn client_url(i: usize) -> String {
    format!("http://{ETCD_ADDR}:{}", client_port(i))
}

/// A three-member etcd cluster in the testbed's `etcd` namespace.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
}

/// What `etcdctl endpoint health` says of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// Its client URL.
    pub endpoint: String,
    /// Whether it committed a proposal in time.
    pub healthy: bool,
}

impl EtcdCluster {
    /// Starts every member, with its data in the testbed's state
    /// directory, and waits until each is healthy.
    pub fn start(tb: &Testbed) -> Result<EtcdCluster> {
        let etcd = ntm_testbed::etcd::binary().map_err(|e| anyhow!(e))?;
        let peers: Vec<String> = (0..ETCD_MEMBERS)
            .map(|i| format!("m{i}=http://{ETCD_ADDR}:{}", client_port(i) + 1))
            .collect();
        let token = format!("{}etcd", tb.prefix());
        let mut members = Vec::new();
        for i in 0..ETCD_MEMBERS {
            let dir = tb.state_dir().join(format!("etcd-m{i}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
            let (curl, purl) = (
                client_url(i),
                format!("http://{ETCD_ADDR}:{}", client_port(i) + 1),
            );
            let cmd = ntm_testbed::etcd::member_command(
                &etcd,
                &ntm_testbed::etcd::Member {
                    name: &format!("m{i}"),
                    data_dir: &dir,
                    client_url: &curl,
                    peer_url: &purl,
                    initial_cluster: &peers.join(","),
                    token: &token,
                },
            );
            let child = tb
                .spawn(Role::Etcd, &cmd)
                .map_err(|e| anyhow!("start etcd member {i}: {e}"))?;
            members.push(Some(child));
        }
        let cluster = EtcdCluster { members };
        cluster.wait_healthy(tb, ETCD_MEMBERS)?;
        Ok(cluster)
    }

    /// Every member's client URL (what the DCs are given).
    pub fn endpoints() -> Vec<String> {
        (0..ETCD_MEMBERS).map(client_url).collect()
    }

    /// `etcdctl endpoint health` of every member, from the etcd namespace.
    pub fn health(&self, tb: &Testbed) -> Result<Vec<MemberHealth>> {
        let script = format!(
            "ETCDCTL_API=3 etcdctl --endpoints={} --dial-timeout=2s --command-timeout=3s endpoint health 2>&1; true",
            EtcdCluster::endpoints().join(",")
        );
        let out = tb
            .output(Role::Etcd, ["sh", "-c", &script])
            .map_err(|e| anyhow!("etcdctl endpoint health: {e}"))?;
        let mut v: Vec<MemberHealth> = EtcdCluster::endpoints()
            .into_iter()
            .map(|endpoint| MemberHealth {
                healthy: out
                    .lines()
                    .any(|l| l.starts_with(&format!("{endpoint} is healthy"))),
                endpoint,
            })
            .collect();
        v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        Ok(v)
    }

    /// Waits until exactly `n` members say they are healthy.
    pub fn wait_healthy(&self, tb: &Testbed, n: usize) -> Result<Vec<MemberHealth>> {
        let count = |h: &Vec<MemberHealth>| h.iter().filter(|m| m.healthy).count();
        let got = wait_for(FAILOVER_PATIENCE, || {
            self.health(tb).ok().filter(|h| count(h) == n)
        });
        got.ok_or_else(|| {
            anyhow!(
                "etcd: not {n} healthy members within {FAILOVER_PATIENCE:?}: {:?}",
                self.health(tb)
            )
        })
    }

    /// The index of the member that leads now (`etcdctl endpoint status`).
    pub fn leader(&self, tb: &Testbed) -> Result<usize> {
        let script = format!(
            "ETCDCTL_API=3 etcdctl --endpoints={} --dial-timeout=2s endpoint status 2>&1; true",
            EtcdCluster::endpoints().join(",")
        );
        let out = tb
            .output(Role::Etcd, ["sh", "-c", &script])
            .map_err(|e| anyhow!("etcdctl endpoint status: {e}"))?;
        // "URL, ID, version, db size, is leader, is learner, ..."
        let line = out
            .lines()
            .find(|l| l.split(", ").nth(4) == Some("true"))
            .ok_or_else(|| anyhow!("no etcd member leads: {out}"))?;
        let url = line.split(", ").next().unwrap_or_default();
        (0..ETCD_MEMBERS)
            .find(|i| client_url(*i) == url)
            .ok_or_else(|| anyhow!("leader {url} is not a member"))
    }

    /// `etcdctl put` then `get` of `key` through `endpoint`: the value read.
    pub fn put_get(&self, tb: &Testbed, endpoint: usize, key: &str, value: &str) -> Result<String> {
        let ctl = format!(
            "ETCDCTL_API=3 etcdctl --endpoints={} --command-timeout=5s",
            client_url(endpoint)
        );
        let script =
            format!("{ctl} put {key} {value} >/dev/null && {ctl} get --print-value-only {key}");
        let out = tb
            .output(Role::Etcd, ["sh", "-c", &script])
            .map_err(|e| anyhow!("etcdctl put/get through member {endpoint}: {e}"))?;
        Ok(out.trim().to_owned())
    }

    /// Kills member `i` (SIGKILL, as a crash would).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let mut m = self.members[i]
            .take()
            .ok_or_else(|| anyhow!("etcd member {i} is not running"))?;
        m.signal(Signal::SIGKILL)
            .map_err(|e| anyhow!("kill etcd member {i}: {e}"))?;
        m.wait_timeout(FAILOVER_PATIENCE)
            .map_err(|e| anyhow!("wait for etcd member {i}: {e}"))?;
        Ok(())
    }
}

/// The world of the module docs. Fields drop in order: the second DC and
/// the cluster before the world and its testbed.
pub struct MultiDc {
    /// The second DC (None while killed).
    pub dc2: Option<Child>,
    dc2_config: PathBuf,
    /// The etcd cluster.
    pub etcd: EtcdCluster,
    /// The testbed, the first DC (`world.dc`), the RS and the upstream.
    pub world: World,
}

impl MultiDc {
    /// Up: the testbed named after `tag`, the cluster, both DCs.
    pub fn up(tag: &str) -> Result<MultiDc> {
        require_root()?;
        let tb = Testbed::up(&unique_prefix(tag)).map_err(|e| anyhow!("testbed up: {e}"))?;
        let etcd = EtcdCluster::start(&tb)?;
        let world = World::on(
            tb,
            |dc| {
                dc.keepalive_secs = KEEPALIVE_SECS;
                dc.store = ntm_dc::config::StoreConfig::etcd(EtcdCluster::endpoints(), "dc1");
            },
            |rs| rs.dcs = vec![DC1, DC2],
        )?;
        let mut dc2 = ntm_dc::Config::load(world.dc_config_path())?;
        dc2.store.dc_name = "dc2".into();
        dc2.status_socket = world.tb.state_dir().join("dc2.sock");
        dc2.store.state_dir = world.tb.state_dir().join("dc2");
        let dc2_config = world.tb.state_dir().join("dc2.toml");
        write_private(&dc2_config, &dc2.to_toml()).context("write dc2.toml")?;
        let mut w = MultiDc {
            dc2: None,
            dc2_config,
            etcd,
            world,
        };
        w.start_dc2()?;
        w.wait_dc_up(Role::Dc)?;
        w.wait_dc_up(Role::Dc2)?;
        Ok(w)
    }

    /// Starts the second DC (again).
    pub fn start_dc2(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin("ntm-dc")?);
        cmd.arg("--config")
            .arg(&self.dc2_config)
            .env("RUST_LOG", "info");
        let child = (self.world.tb)
            .spawn(Role::Dc2, &cmd)
            .map_err(|e| anyhow!("start the second ntm-dc: {e}"))?;
        self.dc2 = Some(child);
        Ok(())
    }

    /// The status of the DC in `role` (dc or dc2), over its socket.
    pub fn dc_status(&self, role: Role) -> Result<ntm_dc::Status> {
        let path = match role {
            Role::Dc => self.world.dc_config_path().to_owned(),
            Role::Dc2 => self.dc2_config.clone(),
            other => bail!("{other} runs no DC"),
        };
        let c = ntm_dc::Config::load(&path)?;
        let text = ntm_ops::unix::query(&c.status_socket, "ntm-dc")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Waits until the DC in `role` answers on its status socket (it has
    /// loaded the store from etcd and serves).
    pub fn wait_dc_up(&mut self, role: Role) -> Result<()> {
        if wait_for(FAILOVER_PATIENCE, || self.dc_status(role).ok()).is_some() {
            return Ok(());
        }
        let log = match role {
            Role::Dc => self.world.dc_log(),
            _ => self.dc2.as_ref().map(Child::log).unwrap_or_default(),
        };
        bail!(
            "the DC in {role} did not come up: {:?}\n{}",
            self.dc_status(role),
            tail(&log, 30)
        )
    }

    /// Kills the DC in `role` (SIGKILL, as a crash would: its etcd lease
    /// stays until its TTL runs out).
    pub fn kill_dc(&mut self, role: Role) -> Result<()> {
        let child = match role {
            Role::Dc => self.world.dc.take(),
            Role::Dc2 => self.dc2.take(),
            other => bail!("{other} runs no DC"),
        };
        let mut child = child.ok_or_else(|| anyhow!("the DC in {role} is not running"))?;
        child
            .signal(Signal::SIGKILL)
            .map_err(|e| anyhow!("kill the DC in {role}: {e}"))?;
        child
            .wait_timeout(FAILOVER_PATIENCE)
            .map_err(|e| anyhow!("wait for the DC in {role}: {e}"))?;
        Ok(())
    }

    /// `ntm-node` cn in the cn namespace, given `dcs` in that order.
    pub fn cn_with_dcs(&self, dcs: &[SocketAddrV4]) -> Result<Node> {
        self.node_with_dcs(Role::Cn, CN_FQDN, dcs)
    }

    /// `ntm-node` `fqdn` in `role`'s namespace, given `dcs` in that order.
    pub fn node_with_dcs(&self, role: Role, fqdn: &str, dcs: &[SocketAddrV4]) -> Result<Node> {
        self.world.node_with(role, fqdn, |c| {
            c.dc = None;
            c.dcs = dcs.to_vec();
        })
    }

    /// The adapter, given `dcs` in that order.
    pub fn ntma_with_dcs(&self, dcs: &[SocketAddrV4]) -> Result<Ntma> {
        self.world.ntma(|c| {
            c.dc.address = None;
            c.dc.addresses = dcs.to_vec();
        })
    }

    /// Stops everything and removes the testbed.
    pub fn down(mut self) -> Result<()> {
        drop(self.dc2.take());
        let MultiDc { etcd, world, .. } = self;
        drop(etcd);
        world.down()
    }
}

/// The DC a node's status names, once it holds a registration.
pub fn node_dc(s: &ntm_node::Status) -> Option<SocketAddrV4> {
    s.vip.and(s.dc)
}

/// Waits (up to [`FAILOVER_PATIENCE`]) until the node is registered at
/// `dc`; returns its VIP and when that was seen.
pub fn wait_node_at(node: &Node, dc: SocketAddrV4) -> Result<(Ipv4Addr, Instant)> {
    let got = wait_for(FAILOVER_PATIENCE, || {
        let s = node.status()?;
        (node_dc(&s) == Some(dc)).then(|| (s.vip.expect("checked"), Instant::now()))
    });
    got.ok_or_else(|| {
        anyhow!(
            "{}: not registered at {dc} within {FAILOVER_PATIENCE:?}; last status: {:?}\n{}",
            node.fqdn,
            node.status(),
            tail(&node.child.log(), 30)
        )
    })
}

/// A `ping` running in the background, parsed when it ends.
pub struct BackgroundPing {
    child: Child,
}

impl BackgroundPing {
    /// `ping -c count -i 0.2` from `role` to `dst`, started now.
    pub fn start(w: &World, role: Role, dst: Ipv4Addr, count: u32) -> Result<BackgroundPing> {
        let mut cmd = Command::new("ping");
        cmd.args(["-n", "-i", "0.2", "-W", "3", "-c", &count.to_string()])
            .arg(dst.to_string());
        let child =
            w.tb.spawn(role, &cmd)
                .map_err(|e| anyhow!("start ping in {role}: {e}"))?;
        Ok(BackgroundPing { child })
    }

    /// Replies so far.
    pub fn replies(&self) -> usize {
        self.child.log().matches("bytes from").count()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Waits for it to end (it ends by itself after its count); its summary.
    pub fn finish(mut self) -> Result<Ping> {
        let limit = FAILOVER_PATIENCE * 2;
        ensure!(
            self.child
                .wait_timeout(limit)
                .map_err(|e| anyhow!("wait for ping: {e}"))?
                .is_some(),
            "ping did not end within {limit:?}"
        );
        Ok(Ping::parse(&self.child.log()))
    }
}
