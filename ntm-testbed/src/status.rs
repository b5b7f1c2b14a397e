//! What of a testbed is up: namespaces, interfaces, addresses, routes, NAT
//! tables, and what is missing compared with the topology.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use crate::sys::{self, in_netns, read_sysctl, run};
use crate::testbed::{nat_table_name, state_dir, Options};
use crate::topology::{self, ifname, Role};
use crate::{Error, Result};

/// The state of one testbed, as found on the machine.
#[derive(Clone, Debug)]
pub struct Status {
    /// The prefix looked at.
    pub prefix: String,
    /// One entry per role, in [`Role::ALL`] order, present or not.
    pub namespaces: Vec<NamespaceStatus>,
    /// Other namespaces carrying the prefix (benchmark sources and sinks,
    /// say). `down` removes them too.
    pub extra_namespaces: Vec<String>,
    /// Links in the host namespace carrying the prefix. There should be
    /// none: the testbed creates its veths inside the namespaces.
    pub host_links: Vec<String>,
    /// Whether bpffs is mounted at /sys/fs/bpf.
    pub bpffs: bool,
    /// The state directory, if it exists.
    pub state_dir: Option<PathBuf>,
    /// Whether the state directory holds a complete key store.
    pub keys: bool,
    /// The options the testbed was built with, if recorded.
    pub options: Option<Options>,
    /// Everything that differs from the topology; empty when complete.
    pub problems: Vec<String>,
}

/// One namespace of the topology.
#[derive(Clone, Debug)]
pub struct NamespaceStatus {
    /// The role it plays.
    pub role: Role,
    /// Its name (prefix + role).
    pub name: String,
    /// Whether it exists.
    pub present: bool,
    /// Its interfaces, `lo` included.
    pub interfaces: Vec<Interface>,
    /// Its default route's gateway.
    pub default_route: Option<Ipv4Addr>,
    /// For nat1 and nat2: whether the NAT table is loaded.
    pub nat_table: Option<bool>,
    /// Whether IPv4 forwarding is on.
    pub ip_forward: bool,
    /// Whether the bridge here (lan, inet) hands frames to the IP and ARP hooks
    /// (br_netfilter's `bridge-nf-call-*`), which drop malformed IPv4.
    pub bridge_nf_call: bool,
    /// Whether `/etc/netns/<name>/resolv.conf` exists.
    pub resolv_conf: bool,
}

/// One interface inside a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Link kind (`veth`, `bridge`), `None` for `lo`.
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Operational state as the kernel reports it (`UP`, `DOWN`, `UNKNOWN`...).
    pub operstate: String,
    /// IPv4 addresses with prefix length.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// The bridge it is a port of.
    pub master: Option<String>,
    /// RX queue count.
    pub rx_queues: u32,
    /// TX queue count.
    pub tx_queues: u32,
    /// For the interfaces on the AF_XDP path: whether TX checksum offload
    /// is off.
    pub tx_csum_off: Option<bool>,
    /// For a bridge: whether it forwards on a new port at once (STP off,
    /// forward delay 0).
    pub forwards_at_once: Option<bool>,
    /// For a bridge port: its STP port state (`forwarding`, `disabled`...).
    pub port_state: Option<String>,
}

impl Status {
    /// Everything of the topology is there and as specified.
    pub fn is_complete(&self) -> bool {
        self.problems.is_empty()
    }

    /// Nothing carrying the prefix exists (what `down` leaves).
    pub fn is_absent(&self) -> bool {
        self.namespaces.iter().all(|n| !n.present && !n.resolv_conf)
            && self.extra_namespaces.is_empty()
            && self.host_links.is_empty()
            && self.state_dir.is_none()
    }

    /// The status of `role`'s namespace.
    pub fn namespace(&self, role: Role) -> &NamespaceStatus {
        self.namespaces
            .iter()
            .find(|n| n.role == role)
            .expect("status lists every role")
    }
}

impl NamespaceStatus {
    /// The interface `name`, if present.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let present = self.namespaces.iter().filter(|n| n.present).count();
        let verdict = if self.is_complete() {
            "complete".to_owned()
        } else if self.is_absent() {
            "down (nothing carries the prefix)".to_owned()
        } else {
            format!("INCOMPLETE ({} problems)", self.problems.len())
        };
        writeln!(
            f,
            "testbed {:?}: {verdict}, {present}/{} namespaces",
            self.prefix,
            self.namespaces.len()
        )?;
        if self.is_absent() {
            return Ok(());
        }
        for ns in &self.namespaces {
            ns.fmt_with(f, &self.prefix)?;
        }
        for ns in &self.extra_namespaces {
            writeln!(f, "  {ns:<12} (extra namespace carrying the prefix)")?;
        }
        for l in &self.host_links {
            writeln!(f, "  host link {l} carries the prefix")?;
        }
        self.fmt_host(f)
    }
}

impl Status {
    /// The lines about the host: bpffs, the state directory, the build
    /// options and the problems.
    fn fmt_host(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  bpffs {}",
            if self.bpffs {
                "mounted at /sys/fs/bpf"
            } else {
                "NOT mounted"
            }
        )?;
        match &self.state_dir {
            Some(d) => writeln!(
                f,
                "  state {} (keys {})",
                d.display(),
                if self.keys { "present" } else { "MISSING" }
            )?,
            None => writeln!(f, "  no state directory")?,
        }
        if let Some(o) = &self.options {
            writeln!(f, "  built with {} queue(s) on the AF_XDP path", o.queues)?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "problems:")?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        Ok(())
    }
}

impl NamespaceStatus {
    /// The namespace's line and one line per interface; `prefix` names
    /// its NAT table.
    fn fmt_with(&self, f: &mut fmt::Formatter<'_>, prefix: &str) -> fmt::Result {
        if !self.present {
            return writeln!(f, "  {:<12} absent", self.name);
        }
        let mut notes = Vec::new();
        if let Some(gw) = self.default_route {
            notes.push(format!("default via {gw}"));
        }
        if let Some(loaded) = self.nat_table {
            let t = nat_table_name(prefix);
            notes.push(if loaded {
                format!("nft table {t} loaded")
            } else {
                format!("nft table {t} MISSING")
            });
        }
        if self.ip_forward {
            notes.push("ip_forward on".into());
        }
        if self.bridge_nf_call {
            notes.push("bridge-nf-call ON".into());
        }
        if !self.resolv_conf {
            notes.push("no resolv.conf".into());
        }
        let line = format!("  {:<12} {}", self.name, notes.join(", "));
        writeln!(f, "{}", line.trim_end())?;
        for i in &self.interfaces {
            writeln!(f, "{}", i.line().trim_end())?;
        }
        Ok(())
    }
}

impl Interface {
    /// Its line in the status: name, state, addresses, and what else is
    /// worth knowing.
    fn line(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(|(a, l)| format!("{a}/{l}")).collect();
        let addrs = if addrs.is_empty() {
            "-".to_owned()
        } else {
            addrs.join(" ")
        };
        let mut extra = Vec::new();
        if let Some(k) = &self.kind {
            extra.push(k.clone());
        }
        if let Some(m) = &self.master {
            match &self.port_state {
                Some(st) => extra.push(format!("port of {m} ({st})")),
                None => extra.push(format!("port of {m}")),
            }
        }
        match self.forwards_at_once {
            Some(true) => extra.push("no STP, no forward delay".into()),
            Some(false) => extra.push("STP or forward delay ON".into()),
            None => {}
        }
        if self.kind.as_deref() == Some("veth") {
            extra.push(format!("{}rx/{}tx queues", self.rx_queues, self.tx_queues));
        }
        match self.tx_csum_off {
            Some(true) => extra.push("tx-csum off".into()),
            Some(false) => extra.push("tx-csum ON".into()),
            None => {}
        }
        let state = if self.up {
            self.operstate.clone()
        } else {
            "ADMIN-DOWN".into()
        };
        format!(
            "      {:<6} {:<8} {:<18} {}",
            self.name,
            state,
            addrs,
            extra.join(", ")
        )
    }
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    operstate: Option<String>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    num_tx_queues: Option<u32>,
    #[serde(default)]
    num_rx_queues: Option<u32>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Default, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
    #[serde(default)]
    info_data: Option<BridgeData>,
    #[serde(default)]
    info_slave_data: Option<PortData>,
}

/// The part of a bridge's `info_data` that says when a port forwards
/// (other kinds have other keys, all ignored).
#[derive(Deserialize)]
struct BridgeData {
    #[serde(default)]
    stp_state: Option<u32>,
    #[serde(default)]
    forward_delay: Option<u32>,
}

#[derive(Deserialize)]
struct PortData {
    #[serde(default)]
    state: Option<String>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    gateway: Option<String>,
}

/// Parses `ip -j -d addr show`.
pub(crate) fn parse_ip_addr(json: &str) -> Result<Vec<Interface>> {
    let links: Vec<IpLink> = serde_json::from_str(json).map_err(|e| Error::Parse {
        cmd: "ip -j -d addr show".into(),
        why: e.to_string(),
    })?;
    Ok(links
        .into_iter()
        .map(|l| {
            let info = l.linkinfo.unwrap_or_default();
            let forwards_at_once = (info.info_kind.as_deref() == Some("bridge")).then(|| {
                info.info_data
                    .is_some_and(|b| b.stp_state == Some(0) && b.forward_delay == Some(0))
            });
            Interface {
                up: l.flags.iter().any(|f| f == "UP"),
                operstate: l.operstate.unwrap_or_else(|| "UNKNOWN".into()),
                kind: info.info_kind,
                forwards_at_once,
                port_state: info.info_slave_data.and_then(|p| p.state),
                master: l.master,
                rx_queues: l.num_rx_queues.unwrap_or(1),
                tx_queues: l.num_tx_queues.unwrap_or(1),
                addrs: l
                    .addr_info
                    .iter()
                    .filter(|a| a.family.as_deref() == Some("inet"))
                    .filter_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen?)))
                    .collect(),
                name: l.ifname,
                tx_csum_off: None,
            }
        })
        .collect())
}

/// Parses `ip -j route show default`: the first gateway.
pub(crate) fn parse_default_route(json: &str) -> Result<Option<Ipv4Addr>> {
    let routes: Vec<IpRoute> = serde_json::from_str(json).map_err(|e| Error::Parse {
        cmd: "ip -j route show default".into(),
        why: e.to_string(),
    })?;
    Ok(routes
        .iter()
        .find_map(|r| r.gateway.as_deref()?.parse().ok()))
}

/// Parses `ethtool -k IF`: whether `tx-checksumming` is off.
pub(crate) fn parse_tx_csum_off(text: &str) -> Option<bool> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("tx-checksumming:")?.trim();
        Some(v.starts_with("off"))
    })
}

/// Everything `status` learns from inside one namespace.
#[derive(Default)]
struct Inside {
    interfaces: Vec<Interface>,
    default_route: Option<Ipv4Addr>,
    nat_table: Option<bool>,
    ip_forward: bool,
    bridge_nf_call: bool,
}

fn look_inside(ns: &str, role: Role, nat_table: &str) -> Result<Inside> {
    in_netns(ns, || -> Result<Inside> {
        let mut interfaces = parse_ip_addr(&run(
            Command::new("ip").args(["-j", "-d", "addr", "show"]),
            None,
        )?)?;
        for i in &mut interfaces {
            if topology::TX_CSUM_OFF.contains(&(role, i.name.as_str())) {
                let k = run(Command::new("ethtool").args(["-k", &i.name]), None)?;
                i.tx_csum_off = parse_tx_csum_off(&k);
            }
        }
        let default_route = parse_default_route(&run(
            Command::new("ip").args(["-j", "route", "show", "default"]),
            None,
        )?)?;
        let nat_table = if topology::NATS.contains(&role) {
            let tables = run(Command::new("nft").args(["list", "tables"]), None)?;
            let want = format!("table ip {nat_table}");
            Some(tables.lines().any(|l| l.trim() == want))
        } else {
            None
        };
        Ok(Inside {
            interfaces,
            default_route,
            nat_table,
            ip_forward: read_sysctl("net/ipv4/ip_forward").as_deref() == Some("1"),
            // Namespaces without a bridge have nothing to call it for.
            bridge_nf_call: topology::BRIDGES.contains(&role)
                && topology::BRIDGE_NF_CALL
                    .iter()
                    .any(|k| read_sysctl(k).as_deref() == Some("1")),
        })
    })?
}

/// Looks at the testbed with `prefix` (already validated) and compares it
/// with the topology.
pub(crate) fn gather(prefix: &str) -> Result<Status> {
    let all_ns = sys::list_netns()?;
    let dir = state_dir(prefix);
    let options = std::fs::read_to_string(dir.join(crate::testbed::OPTIONS_FILE))
        .ok()
        .and_then(|t| toml::from_str::<Options>(&t).ok());
    let mut problems = Vec::new();
    let namespaces = Role::ALL
        .into_iter()
        .map(|role| namespace_status(prefix, role, &all_ns, options.as_ref(), &mut problems))
        .collect::<Result<Vec<_>>>()?;

    let known: Vec<String> = Role::ALL.iter().map(|r| r.ns(prefix)).collect();
    let mut extra_namespaces: Vec<String> = all_ns
        .into_iter()
        .filter(|n| n.starts_with(prefix) && !known.contains(n))
        .collect();
    extra_namespaces.sort();

    let host_links = host_links(prefix)?;
    for l in &host_links {
        problems.push(format!("host namespace: stray link {l}"));
    }
    let bpffs = sys::bpffs_mounted();
    if !bpffs {
        problems.push(format!("bpffs not mounted at {}", sys::BPFFS));
    }
    let state_dir = dir.is_dir().then_some(dir.clone());
    let keys = crate::keys::Keys::load(&dir).is_ok();
    if !keys {
        problems.push(format!("no key store in {}", dir.display()));
    }
    if options.is_none() {
        problems.push(format!(
            "no record of the build options in {}",
            dir.display()
        ));
    }
    Ok(Status {
        prefix: prefix.to_owned(),
        namespaces,
        extra_namespaces,
        host_links,
        bpffs,
        state_dir,
        keys,
        options,
        problems,
    })
}

/// Looks at `role`'s namespace (`all_ns`: the namespaces that exist) and
/// adds what differs from the topology to `problems`.
fn namespace_status(
    prefix: &str,
    role: Role,
    all_ns: &[String],
    options: Option<&Options>,
    problems: &mut Vec<String>,
) -> Result<NamespaceStatus> {
    let name = role.ns(prefix);
    let present = all_ns.contains(&name);
    let resolv_conf = std::path::Path::new(sys::NETNS_ETC_DIR)
        .join(&name)
        .join("resolv.conf")
        .is_file();
    if !resolv_conf {
        problems.push(format!("{name}: /etc/netns/{name}/resolv.conf missing"));
    }
    let inside = if present {
        match look_inside(&name, role, &nat_table_name(prefix)) {
            Ok(inside) => inside,
            // A namespace file without a namespace behind it (an `ip netns
            // add` that died half-way) is something to repair, not a reason
            // to give up.
            Err(e @ Error::Netns { .. }) => {
                problems.push(format!("{name}: {e}"));
                Inside::default()
            }
            Err(e) => return Err(e),
        }
    } else {
        problems.push(format!("{name}: namespace missing"));
        Inside::default()
    };
    if present {
        check_namespace(&name, role, &inside, options, problems);
    }
    Ok(NamespaceStatus {
        role,
        name,
        present,
        interfaces: inside.interfaces,
        default_route: inside.default_route,
        nat_table: inside.nat_table,
        ip_forward: inside.ip_forward,
        bridge_nf_call: inside.bridge_nf_call,
        resolv_conf,
    })
}

/// Links in the host namespace whose names start with `prefix`.
pub(crate) fn host_links(prefix: &str) -> Result<Vec<String>> {
    // /sys/class/net is the host's view for a process in the host namespace.
    let mut v: Vec<String> = sys::entries_with_prefix("/sys/class/net", prefix)
        .into_iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    v.sort();
    Ok(v)
}

fn check_namespace(
    name: &str,
    role: Role,
    inside: &Inside,
    options: Option<&Options>,
    problems: &mut Vec<String>,
) {
    let find = |n: &str| inside.interfaces.iter().find(|i| i.name == n);
    match find("lo") {
        Some(lo) if lo.up => {}
        _ => problems.push(format!("{name}: lo is not up")),
    }
    for want in topology::interfaces(role) {
        match find(want) {
            Some(i) => check_interface(name, role, want, i, options, problems),
            None => problems.push(format!("{name}: interface {want} missing")),
        }
    }
    check_bridge(name, role, inside, problems);
    for (r, ifn, addr, len) in topology::ADDRS {
        if r != role {
            continue;
        }
        if let Some(i) = find(ifn) {
            if !i.addrs.contains(&(addr, len)) {
                problems.push(format!("{name}: {ifn} lacks {addr}/{len}"));
            }
        }
    }
    check_routing(name, role, inside, problems);
}

/// One interface `want` of `role`: up, its queues, TX checksum offload.
fn check_interface(
    name: &str,
    role: Role,
    want: &str,
    i: &Interface,
    options: Option<&Options>,
    problems: &mut Vec<String>,
) {
    // The kernel's link watcher updates a new bridge's operstate up to
    // a second late (UNKNOWN until then); it forwards all the same.
    let running = i.operstate == "UP" || (want == ifname::BRIDGE && i.operstate == "UNKNOWN");
    if !i.up || !running {
        problems.push(format!(
            "{name}: {want} is {} (admin {})",
            i.operstate,
            if i.up { "up" } else { "down" }
        ));
    }
    if let (Some(o), Some(q)) = (options, topology::queues_of(role, want, 1)) {
        let q = topology::queues_of(role, want, o.queues).unwrap_or(q);
        if i.rx_queues != u32::from(q) || i.tx_queues != u32::from(q) {
            problems.push(format!(
                "{name}: {want} has {}rx/{}tx queues, expected {q}",
                i.rx_queues, i.tx_queues
            ));
        }
    }
    if i.tx_csum_off == Some(false) {
        problems.push(format!("{name}: {want} has TX checksum offload on"));
    }
}

/// The namespace's bridge, if it has one: forwarding at once, every port
/// attached and forwarding, bridge-nf-call off.
fn check_bridge(name: &str, role: Role, inside: &Inside, problems: &mut Vec<String>) {
    let find = |n: &str| inside.interfaces.iter().find(|i| i.name == n);
    if let Some(br) = find(ifname::BRIDGE) {
        if br.forwards_at_once == Some(false) {
            problems.push(format!(
                "{name}: {} has STP on or a forward delay",
                ifname::BRIDGE
            ));
        }
    }
    for port in topology::bridge_ports(role) {
        let Some(i) = find(port) else { continue };
        if i.master.as_deref() != Some(ifname::BRIDGE) {
            problems.push(format!(
                "{name}: {port} is not a port of {}",
                ifname::BRIDGE
            ));
        } else if i.port_state.as_deref().is_some_and(|s| s != "forwarding") {
            problems.push(format!(
                "{name}: {port} is {} on {}, not forwarding",
                i.port_state.as_deref().unwrap_or_default(),
                ifname::BRIDGE
            ));
        }
    }
    if inside.bridge_nf_call {
        problems.push(format!(
            "{name}: bridge-nf-call-* is on, so {} drops malformed IPv4",
            ifname::BRIDGE
        ));
    }
}

/// The default route, NAT and forwarding of `role`.
fn check_routing(name: &str, role: Role, inside: &Inside, problems: &mut Vec<String>) {
    let want_route = topology::DEFAULT_ROUTES
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, gw)| *gw);
    if inside.default_route != want_route {
        problems.push(match (want_route, inside.default_route) {
            (Some(w), _) => format!("{name}: default route via {w} missing"),
            (None, Some(g)) => format!("{name}: unexpected default route via {g}"),
            (None, None) => unreachable!("equal when both are None"),
        });
    }
    if inside.nat_table == Some(false) {
        problems.push(format!("{name}: NAT table not loaded"));
    }
    if topology::NATS.contains(&role) && !inside.ip_forward {
        problems.push(format!("{name}: ip_forward is off"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed output of `ip -j -d addr show` from iproute2 6.1.
    const IP_ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN","num_tx_queues":1,"num_rx_queues":1,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
        {"ifindex":2,"ifname":"lan0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"operstate":"UP","linkinfo":{"info_kind":"veth"},"num_tx_queues":2,"num_rx_queues":2,"addr_info":[{"family":"inet","local":"100.64.0.1","prefixlen":10},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
        {"ifindex":4,"link":"p2","ifname":"dc","flags":["BROADCAST"],"master":"br0","operstate":"DOWN","linkinfo":{"info_kind":"veth","info_slave_kind":"bridge","info_slave_data":{"state":"disabled","priority":32,"cost":2}},"addr_info":[]},
        {"ifindex":5,"ifname":"br0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"operstate":"UP","linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":0,"hello_time":200,"max_age":2000,"ageing_time":30000,"stp_state":0,"priority":32768,"vlan_filtering":0,"bridge_id":"8000.0:0:0:0:0:0"}},"addr_info":[]}]"#;

    #[test]
    fn ip_addr_json_becomes_interfaces() {
        let ifs = parse_ip_addr(IP_ADDR).unwrap();
        assert_eq!(ifs.len(), 4);
        assert_eq!(ifs[0].name, "lo");
        assert!(ifs[0].up);
        assert_eq!(ifs[0].kind, None);
        assert_eq!(ifs[1].addrs, vec![(Ipv4Addr::new(100, 64, 0, 1), 10)]);
        assert_eq!((ifs[1].rx_queues, ifs[1].tx_queues), (2, 2));
        assert_eq!(ifs[2].master.as_deref(), Some("br0"));
        assert_eq!(ifs[2].port_state.as_deref(), Some("disabled"));
        assert!(!ifs[2].up);
        assert_eq!(
            (ifs[1].port_state.as_deref(), ifs[1].forwards_at_once),
            (None, None)
        );
        assert_eq!(ifs[3].kind.as_deref(), Some("bridge"));
        assert_eq!(ifs[3].forwards_at_once, Some(true));
        let stp = IP_ADDR.replace(r#""stp_state":0"#, r#""stp_state":1"#);
        assert_eq!(
            parse_ip_addr(&stp).unwrap()[3].forwards_at_once,
            Some(false)
        );
        assert!(parse_ip_addr("not json").is_err());
    }

    #[test]
    fn routes_and_ethtool_output_parse() {
        let r = r#"[{"dst":"default","gateway":"192.168.10.1","dev":"wan0","flags":[]}]"#;
        assert_eq!(
            parse_default_route(r).unwrap(),
            Some(topology::NAT1_LAN_ADDR)
        );
        assert_eq!(parse_default_route("[]").unwrap(), None);
        let k = "Features for lan0:\nrx-checksumming: on\ntx-checksumming: off\n\ttx-checksum-ipv4: off [fixed]\n";
        assert_eq!(parse_tx_csum_off(k), Some(true));
        assert_eq!(parse_tx_csum_off("tx-checksumming: on\n"), Some(false));
        assert_eq!(parse_tx_csum_off("nothing"), None);
    }

    fn inside(role: Role, options: &Options) -> Inside {
        let mut interfaces = vec![Interface {
            name: "lo".into(),
            kind: None,
            up: true,
            operstate: "UNKNOWN".into(),
            addrs: vec![],
            master: None,
            rx_queues: 1,
            tx_queues: 1,
            tx_csum_off: None,
            forwards_at_once: None,
            port_state: None,
        }];
        for n in topology::interfaces(role) {
            let q = u32::from(topology::queues_of(role, n, options.queues).unwrap_or(1));
            let bridge = n == ifname::BRIDGE;
            let port = topology::bridge_ports(role).any(|p| p == n);
            interfaces.push(Interface {
                name: n.into(),
                kind: Some(if bridge { "bridge" } else { "veth" }.into()),
                forwards_at_once: bridge.then_some(true),
                port_state: port.then(|| "forwarding".into()),
                up: true,
                operstate: "UP".into(),
                addrs: topology::ADDRS
                    .iter()
                    .filter(|(r, i, _, _)| *r == role && *i == n)
                    .map(|(_, _, a, l)| (*a, *l))
                    .collect(),
                master: port.then(|| "br0".into()),
                rx_queues: q,
                tx_queues: q,
                tx_csum_off: topology::TX_CSUM_OFF.contains(&(role, n)).then_some(true),
            });
        }
        Inside {
            interfaces,
            default_route: topology::DEFAULT_ROUTES
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, g)| *g),
            nat_table: topology::NATS.contains(&role).then_some(true),
            ip_forward: topology::NATS.contains(&role),
            bridge_nf_call: false,
        }
    }

    #[test]
    fn a_namespace_as_built_has_no_problems_and_each_defect_is_named() {
        let o = Options {
            queues: 2,
            ..Options::default()
        };
        for role in Role::ALL {
            let mut p = Vec::new();
            check_namespace("x", role, &inside(role, &o), Some(&o), &mut p);
            assert!(p.is_empty(), "{role}: {p:?}");
        }

        let mut p = Vec::new();
        let mut i = inside(Role::Ntma, &o);
        i.interfaces[1].addrs.clear();
        i.interfaces[2].rx_queues = 1;
        i.interfaces[2].tx_csum_off = Some(false);
        i.default_route = None;
        check_namespace("ntm-ntma", Role::Ntma, &i, Some(&o), &mut p);
        assert_eq!(
            p,
            [
                "ntm-ntma: wan0 has 1rx/2tx queues, expected 2",
                "ntm-ntma: wan0 has TX checksum offload on",
                "ntm-ntma: lan0 lacks 100.64.0.1/10",
                "ntm-ntma: default route via 192.168.10.1 missing",
            ]
        );

        let mut p = Vec::new();
        let mut i = inside(Role::Nat2, &o);
        i.nat_table = Some(false);
        i.ip_forward = false;
        i.interfaces.retain(|i| i.name != "lan");
        check_namespace("ntm-nat2", Role::Nat2, &i, Some(&o), &mut p);
        assert_eq!(
            p,
            [
                "ntm-nat2: interface lan missing",
                "ntm-nat2: NAT table not loaded",
                "ntm-nat2: ip_forward is off",
            ]
        );

        let mut p = Vec::new();
        let mut i = inside(Role::Inet, &o);
        i.interfaces[3].master = None;
        i.interfaces[4].up = false;
        check_namespace("ntm-inet", Role::Inet, &i, Some(&o), &mut p);
        assert_eq!(
            p,
            [
                "ntm-inet: rs is UP (admin down)",
                "ntm-inet: dc is not a port of br0"
            ]
        );

        let mut p = Vec::new();
        let mut i = inside(Role::Lan, &o);
        assert_eq!(i.interfaces[1].name, "br0");
        i.interfaces[1].forwards_at_once = Some(false);
        i.interfaces[2].port_state = Some("learning".into());
        i.interfaces[3].tx_csum_off = Some(false);
        i.interfaces[4].rx_queues = 1;
        i.bridge_nf_call = true;
        check_namespace("ntm-lan", Role::Lan, &i, Some(&o), &mut p);
        assert_eq!(
            p,
            [
                "ntm-lan: gn2 has TX checksum offload on",
                "ntm-lan: ntma has 1rx/2tx queues, expected 2",
                "ntm-lan: br0 has STP on or a forward delay",
                "ntm-lan: gn is learning on br0, not forwarding",
                "ntm-lan: bridge-nf-call-* is on, so br0 drops malformed IPv4",
            ]
        );
    }
}
