//! Small helpers around the testbed: interface facts, shell steps inside namespaces.

use anyhow::{anyhow, bail, Context, Result};
use ntm_testbed::{Role, Testbed};
use serde::Deserialize;

/// An interface of a namespace: name, index, MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its index in its namespace.
    pub ifindex: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
}

#[derive(Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    address: Option<String>,
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Reads `ip -j link show` output for one interface.
pub fn parse_ip_link(json: &str) -> Result<Link> {
    let links: Vec<IpLink> = serde_json::from_str(json).context("parsing `ip -j link` output")?;
    let l = links
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("`ip -j link` listed no interface"))?;
    let mac = l
        .address
        .as_deref()
        .and_then(parse_mac)
        .ok_or_else(|| anyhow!("{} has no Ethernet address", l.ifname))?;
    Ok(Link {
        name: l.ifname,
        ifindex: l.ifindex,
        mac,
    })
}

/// The interface `ifname` of `role`'s namespace.
pub fn link(tb: &Testbed, role: Role, ifname: &str) -> Result<Link> {
    let out = tb.output(role, ["ip", "-j", "link", "show", "dev", ifname])?;
    parse_ip_link(&out).with_context(|| format!("{ifname} in {role}"))
}

/// Runs a shell script in `role`'s namespace; an error carries its stderr.
pub fn sh(tb: &Testbed, role: Role, script: &str) -> Result<String> {
    tb.output(role, ["sh", "-ec", script])
        .with_context(|| format!("in {role}: {script}"))
}

/// `sysctl -w key=value` in `role`'s namespace; returns the old value.
pub fn sysctl(tb: &Testbed, role: Role, key: &str, value: &str) -> Result<String> {
    let old = tb.output(role, ["sysctl", "-n", key])?.trim().to_owned();
    tb.exec(role, ["sysctl", "-q", "-w", &format!("{key}={value}")])?;
    Ok(old)
}

/// Pins the calling thread to `cpu`; an error if that CPU does not exist.
pub fn pin(cpu: usize) -> Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == cpu)
        .ok_or_else(|| anyhow!("no CPU {cpu} on this machine"))?;
    if !core_affinity::set_for_current(id) {
        bail!("could not pin a thread to CPU {cpu}");
    }
    Ok(())
}

/// How many CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_reject() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01"),
            Some([2, 0, 0x0a, 0xff, 0x10, 1])
        );
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:07"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }

    #[test]
    fn ip_link_json() {
        let j = r#"[{"ifindex":5,"ifname":"lan0","flags":["UP"],"mtu":1500,"address":"6a:1b:2c:3d:4e:5f","broadcast":"ff:ff:ff:ff:ff:ff"}]"#;
        let l = parse_ip_link(j).unwrap();
        assert_eq!(l.ifindex, 5);
        assert_eq!(l.name, "lan0");
        assert_eq!(l.mac, [0x6a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert!(parse_ip_link("[]").is_err());
        assert!(parse_ip_link(r#"[{"ifindex":1,"ifname":"tun0"}]"#).is_err());
    }
}
