//! Raw frames for the tests: an AF_PACKET socket on one interface of a
//! namespace (to send frames a stock tool would never send, and to see
//! exactly what arrives), and builders for Ethernet/IPv4/UDP frames.
//! Built with nix, without `unsafe`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{
    bind, recvfrom, send, setsockopt, socket, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// `sll_pkttype` of frames the host sent.
pub const PACKET_OUTGOING: u8 = 4;

/// A raw socket bound to one interface. Open it inside the namespace
/// ([`ntm_testbed::Testbed::in_netns`]); it keeps working from any thread.
pub struct RawSocket {
    fd: OwnedFd,
    mac: [u8; 6],
}

/// A frame as received, with the kernel's packet type.
#[derive(Debug, Clone)]
pub struct Received {
    /// The whole Ethernet frame.
    pub frame: Vec<u8>,
    /// `PACKET_HOST`, `PACKET_OUTGOING`, ...
    pub pkttype: u8,
}

impl RawSocket {
    /// Opens a raw socket on `ifname` of the calling thread's namespace.
    pub fn open(ifname: &str) -> Result<RawSocket> {
        let link = getifaddrs()
            .context("getifaddrs")?
            .filter(|i| i.interface_name == ifname)
            .find_map(|i| i.address.and_then(|a| a.as_link_addr().copied()))
            .ok_or_else(|| anyhow!("no interface {ifname} here"))?;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .context("AF_PACKET socket (root?)")?;
        bind(fd.as_raw_fd(), &link).context("binding the raw socket")?;
        Ok(RawSocket {
            fd,
            mac: link.addr().unwrap_or([0; 6]),
        })
    }

    /// The interface's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        send(self.fd.as_raw_fd(), frame, MsgFlags::empty())
            .with_context(|| format!("sending a {}-byte raw frame", frame.len()))?;
        Ok(())
    }

    /// The next frame within `timeout`, if any.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Received>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let tv = TimeVal::new(left.as_secs() as _, left.subsec_micros().max(1) as _);
            setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv)?;
            match recvfrom::<LinkAddr>(self.fd.as_raw_fd(), &mut buf) {
                Ok((n, addr)) => {
                    return Ok(Some(Received {
                        frame: buf[..n].to_vec(),
                        pkttype: addr.map_or(0, |a| a.pkttype()),
                    }))
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("raw receive"),
            }
        }
    }

    /// Frames until `timeout` passes, for which `keep` holds.
    pub fn collect(
        &self,
        timeout: Duration,
        mut keep: impl FnMut(&Received) -> bool,
    ) -> Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(r) = self.recv(deadline.saturating_duration_since(Instant::now()))? {
            if keep(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// The RFC 1071 checksum to write over `bytes`: the wire layer's, checked
/// there against RFC 1071's own example.
pub fn checksum(bytes: &[u8]) -> u16 {
    ntma_user::wire::checksum::internet(bytes)
}

/// The fields of an IPv4 header a test may want to get wrong.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4 {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Flags and fragment offset field (0x2000 = more fragments).
    pub frag: u16,
    /// Total length to write instead of the true one.
    pub total_len: Option<u16>,
    /// IHL (in 32-bit words) to write instead of 5.
    pub ihl: Option<u8>,
}

impl Ipv4 {
    /// A plain header from `src` to `dst`.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            proto,
            frag: 0,
            total_len: None,
            ihl: None,
        }
    }
}

/// Ethernet + IPv4 header (checksummed) + `l4`.
pub fn ipv4_frame(dst_mac: [u8; 6], src_mac: [u8; 6], ip: Ipv4, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = ip.total_len.unwrap_or((20 + l4.len()) as u16);
    f.push(0x40 | ip.ihl.unwrap_or(5));
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34]);
    f.extend_from_slice(&ip.frag.to_be_bytes());
    f.push(64);
    f.push(ip.proto);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&ip.src.octets());
    f.extend_from_slice(&ip.dst.octets());
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

/// A UDP header + payload with checksum 0 (none, allowed over IPv4).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An ICMP echo request with `id`, `seq` and `payload`.
pub fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A parsed IPv4/UDP frame.
#[derive(Debug, Clone)]
pub struct UdpFrame {
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP ports.
    pub src_port: u16,
    /// UDP ports.
    pub dst_port: u16,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// The IPv4 packet inside an Ethernet frame (cut to its total length).
pub fn ipv4_packet(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    frame.get(14..14 + total)
}

/// Parses an unfragmented IPv4/UDP frame.
pub fn parse_udp(frame: &[u8]) -> Option<UdpFrame> {
    let ip = ipv4_packet(frame)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let u = &ip[ihl..];
    let ulen = usize::from(u16::from_be_bytes([u[4], u[5]]));
    Some(UdpFrame {
        dst_mac: frame[0..6].try_into().ok()?,
        src_mac: frame[6..12].try_into().ok()?,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([u[0], u[1]]),
        dst_port: u16::from_be_bytes([u[2], u[3]]),
        payload: u.get(8..ulen)?.to_vec(),
    })
}

/// The frame of `orig` with its UDP payload replaced (lengths and IPv4
/// checksum fixed, UDP checksum 0).
pub fn with_udp_payload(orig: &UdpFrame, payload: &[u8]) -> Vec<u8> {
    ipv4_frame(
        orig.dst_mac,
        orig.src_mac,
        Ipv4::new(orig.src, orig.dst, 17),
        &udp(orig.src_port, orig.dst_port, payload),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = ipv4_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17),
            &udp(1000, 7700, b"hello"),
        );
        assert_eq!(checksum(&f[14..34]), 0);
        let u = parse_udp(&f).unwrap();
        assert_eq!((u.src_port, u.dst_port), (1000, 7700));
        assert_eq!(u.payload, b"hello");
        let g = with_udp_payload(&u, b"bye");
        assert_eq!(parse_udp(&g).unwrap().payload, b"bye");
        assert_eq!(checksum(&icmp_echo(1, 2, b"x")), 0);
    }
}
