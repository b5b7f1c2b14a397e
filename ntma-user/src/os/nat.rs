//! `non_vip = "nat"`: GN packets to destinations outside the VIP prefix
//! (which the XDP program passes to the kernel) are forwarded to the uplink
//! and masqueraded. The daemon turns IPv4 forwarding on and installs its
//! own nftables table; [`NatGuard`] removes the table and restores the
//! forwarding setting when dropped, so nothing outlives the daemon.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::sys;

const IP_FORWARD: &str = "net/ipv4/ip_forward";

/// The nftables table name for the adapter named `name`.
pub fn table_name(name: &str) -> String {
    format!("ntma_{}", name.replace('-', "_"))
}

/// The ruleset: lan → wan from the VIP prefix is accepted and masqueraded,
/// wan → lan only for connections the GN started; nothing else is forwarded
/// between the two NICs.
pub fn ruleset(table: &str, lan: &str, wan: &str, net: Ipv4Addr, prefix_len: u8) -> String {
    format!(
        "table ip {table} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname \"{lan}\" oifname \"{wan}\" ip saddr {net}/{prefix_len} counter accept
        iifname \"{wan}\" oifname \"{lan}\" ct state established,related counter accept
        iifname \"{lan}\" counter drop
        oifname \"{lan}\" counter drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{wan}\" ip saddr {net}/{prefix_len} counter masquerade
    }}
}}
"
    )
}

/// Undoes the NAT set-up when dropped.
#[derive(Debug)]
pub struct NatGuard {
    table: String,
    old_forward: String,
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run nft ({e}): install nftables, or set non_vip = \"icmp-unreachable\"")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NatGuard {
    /// Installs the table and turns forwarding on.
    pub fn install(
        name: &str,
        lan: &str,
        wan: &str,
        net: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<NatGuard, String> {
        let table = table_name(name);
        // A table left by a killed daemon is replaced, not added to.
        let _ = nft(&format!("delete table ip {table}\n"));
        nft(&ruleset(&table, lan, wan, net, prefix_len))?;
        let old_forward = sys::read_sysctl(IP_FORWARD).unwrap_or_else(|_| "0".into());
        if let Err(e) = sys::write_sysctl(IP_FORWARD, "1") {
            let _ = nft(&format!("delete table ip {table}\n"));
            return Err(format!("cannot turn IPv4 forwarding on: {e}"));
        }
        tracing::info!(%table, %lan, %wan, "non-VIP traffic is forwarded to the uplink with NAT");
        Ok(NatGuard { table, old_forward })
    }
}

impl Drop for NatGuard {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table ip {}\n", self.table)) {
            tracing::warn!(table = %self.table, error = %e, "could not remove the NAT table");
        }
        if let Err(e) = sys::write_sysctl(IP_FORWARD, &self.old_forward) {
            tracing::warn!(error = %e, "could not restore net.ipv4.ip_forward");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_the_vip_prefix_only() {
        let r = ruleset(
            &table_name("gw-1"),
            "lan0",
            "wan0",
            Ipv4Addr::new(100, 64, 0, 0),
            10,
        );
        assert!(r.starts_with("table ip ntma_gw_1 {"), "{r}");
        assert!(r.contains("oifname \"wan0\" ip saddr 100.64.0.0/10 counter masquerade"));
        assert!(r.contains("ct state established,related"));
    }
}
