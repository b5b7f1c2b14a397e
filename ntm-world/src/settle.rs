//! Waiting for a state before asserting on traffic: what makes an end-to-end
//! test hold on a loaded machine. A tunnel carries every packet once it is up
//! at both ends; before that, the first packets wait in a hold queue (§6
//! "Data") for as long as the set-up takes, which on two busy cores can
//! outlast a ping's patience. Tests that are not about that first packet wait
//! here first, then assert that no ping is lost.

use anyhow::Result;

use crate::{Node, Ntma};

/// Waits until the tunnel between the adapter's GN `gn` and the node `peer`
/// is up at both ends: in the adapter's status and in the node's.
pub fn tunnel_up_at_both_ends(ntma: &mut Ntma, gn: &str, peer: &mut Node) -> Result<()> {
    let fqdn = peer.fqdn.clone();
    ntma.wait(&format!("{gn}'s tunnel to {fqdn} up"), |s| {
        s.tunnel_between(gn, &fqdn).is_some_and(|t| t.up)
    })?;
    peer.wait(&format!("tunnel to {gn} up"), |s| s.tunnel_to(gn).is_some())?;
    Ok(())
}

/// Waits until the adapter has sent `n` more packets on its tunnel to
/// `peer` than when called: traffic started in the background (a `ping`
/// child) is flowing, so that what the test does next happens under it.
pub fn flowing(ntma: &mut Ntma, peer: &str, n: u64) -> Result<()> {
    let sent = |s: &ntma_user::status::Status| s.tunnel_to(peer).map_or(0, |t| t.tx_packets);
    let base = ntma.status().map_or(0, |s| sent(&s));
    ntma.wait(&format!("{n} more packets to {peer}"), |s| {
        sent(s) >= base + n
    })?;
    Ok(())
}
