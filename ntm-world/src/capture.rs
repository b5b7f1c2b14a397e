//! Packet captures with the stock `tcpdump` inside a testbed namespace, to
//! check what crosses a link (e.g. that suite 2 leaves no known payload
//! byte on the internet side of the tunnel).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use ntm_testbed::{wait_until, Child, Role, Signal};

use crate::{World, PATIENCE};

/// How many bytes of each frame a capture keeps: headers, the NTM header and
/// a few hundred bytes of body, enough to look for a known pattern.
pub const SNAPLEN: usize = 512;

/// The bytes iperf3 `--repeating-payload` sends: the digits, again and
/// again (as iperf2 did). 32 of them in a row are what a check looks for.
pub const IPERF_PATTERN: &[u8; 32] = b"01234567890123456789012345678901";

/// A running tcpdump; [`Capture::finish`] stops it and returns the frames.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl World {
    /// Starts `tcpdump -i ifname -c count -w <state dir>/<tag>.pcap filter`
    /// in `role`'s namespace and returns once it listens. It stops by itself
    /// after `count` frames (so that a capture of a bulk transfer stays small).
    pub fn capture(
        &self,
        role: Role,
        ifname: &str,
        filter: &str,
        count: usize,
        tag: &str,
    ) -> Result<Capture> {
        let path = self.tb.state_dir().join(format!("{tag}.pcap"));
        let mut cmd = Command::new("tcpdump");
        let (snaplen, count) = (SNAPLEN.to_string(), count.to_string());
        cmd.args(["-i", ifname, "-n", "--immediate-mode", "-U"])
            .args(["-s", &snaplen, "-c", &count, "-w"])
            .arg(&path)
            .args(filter.split_whitespace());
        let child = self
            .tb
            .spawn(role, &cmd)
            .map_err(|e| anyhow!("start tcpdump in {role}: {e}"))?;
        let mut c = Capture { child, path };
        if !wait_until(PATIENCE, || c.child.log().contains("listening on")) {
            let running = c.child.is_running();
            bail!(
                "tcpdump in {role} on {ifname} never listened (running: {running}): {}",
                c.child.log()
            );
        }
        Ok(c)
    }
}

impl Capture {
    /// Waits (at most [`PATIENCE`]) for tcpdump to stop by itself after its
    /// `count` frames, then returns them like [`Capture::finish`].
    pub fn finish_when_full(mut self) -> Result<Vec<Vec<u8>>> {
        let done = self
            .child
            .wait_timeout(PATIENCE)
            .map_err(|e| anyhow!("wait for tcpdump: {e}"))?;
        if done.is_none() {
            bail!(
                "tcpdump did not capture its frames in time: {}",
                self.child.log()
            );
        }
        self.finish()
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns every
    /// captured frame, cut at [`SNAPLEN`] bytes.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        let _ = self.child.signal(Signal::SIGINT);
        if self
            .child
            .wait_timeout(Duration::from_secs(10))
            .ok()
            .flatten()
            .is_none()
        {
            let _ = self.child.stop(Duration::from_secs(1));
        }
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("read the capture {}", self.path.display()))?;
        parse_pcap(&bytes)
    }
}

/// The frames of a classic pcap file (either byte order, micro- or
/// nanosecond time stamps).
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let magic = bytes.get(..4).context("a pcap file has a 24-byte header")?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        other => bail!("not a pcap file (magic {other:02x?})"),
    };
    let u32_at = |at: usize| -> Result<u32> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .context("pcap record cut short")?
            .try_into()
            .expect("four bytes");
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32_at(at + 8)? as usize;
        let data = bytes
            .get(at + 16..at + 16 + incl)
            .context("pcap record cut short")?;
        frames.push(data.to_vec());
        at += 16 + incl;
    }
    Ok(frames)
}

/// The UDP payload (as far as captured) of an Ethernet/IPv4/UDP frame with
/// `port` as source or destination port.
pub fn udp_payload_on_port(frame: &[u8], port: u16) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    let (src, dst) = (
        u16::from_be_bytes([*udp.first()?, *udp.get(1)?]),
        u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]),
    );
    (src == port || dst == port).then(|| udp.get(8..)).flatten()
}

/// Whether `haystack` holds `needle` anywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_little_endian_pcap_and_finds_udp_payloads() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        ip.extend_from_slice(&[0x1e, 0x14, 0x9c, 0x40, 0, 12, 0, 0]);
        ip.extend_from_slice(b"abcd");
        frame.extend_from_slice(&ip);
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1];
        pcap.extend_from_slice(&[0; 20]);
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
        let frames = parse_pcap(&pcap).unwrap();
        assert_eq!(frames, vec![frame.clone()]);
        assert_eq!(udp_payload_on_port(&frame, 7700), Some(&b"abcd"[..]));
        assert_eq!(udp_payload_on_port(&frame, 40000), Some(&b"abcd"[..]));
        assert_eq!(udp_payload_on_port(&frame, 53), None);
        assert!(contains(b"xxabcdxx", b"abcd"));
        assert!(parse_pcap(b"nope").is_err());
    }
}
