//! The GN-facing raw socket: AF_PACKET bound to one NIC, for the frames
//! the XDP program passes to the kernel (ARP, DHCP, DNS and everything not
//! for a tunnel) and for the slow path's frames to the GN. Built with nix,
//! without `unsafe`: the socket is bound with the interface's own AF_PACKET
//! address from getifaddrs, and sends use that binding.

use std::io;
use std::net::UdpSocket as StdUdpSocket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, recvfrom, send, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol,
    SockType,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::sys::Interface;

/// `sll_pkttype` of frames this host sent (`PACKET_OUTGOING`).
const PACKET_OUTGOING: u8 = 4;

/// Registers a non-blocking datagram-like descriptor (a raw socket, an
/// eventfd) with tokio's reactor, for readiness only. tokio's `AsyncFd`
/// constructors are `unsafe` (or deprecated as unsound); a `UdpSocket`
/// built from an owned descriptor is not, and tokio only hands the
/// descriptor to epoll. Every read and write goes through nix on the raw
/// descriptor, never through the `UdpSocket` methods.
pub fn readiness(fd: OwnedFd) -> io::Result<UdpSocket> {
    UdpSocket::from_std(StdUdpSocket::from(fd))
}

/// A raw socket on one interface, registered with tokio.
pub struct PacketSocket {
    fd: UdpSocket,
    ifindex: usize,
}

// For socket options (the raw datapath's slow-path filter).
impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PacketSocket {
    /// Opens a raw socket receiving every frame of `iface` (`ETH_P_ALL`).
    /// Needs CAP_NET_RAW and a tokio runtime.
    pub fn open(iface: &Interface) -> io::Result<PacketSocket> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )?;
        // The address from getifaddrs carries the index and protocol 0,
        // which keeps the protocol given to socket().
        bind(fd.as_raw_fd(), &iface.link)?;
        Ok(PacketSocket {
            fd: readiness(fd)?,
            ifindex: iface.index,
        })
    }

    /// The next frame received on the interface (frames the host sent
    /// itself are skipped). Cancel-safe.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let raw = self.fd.as_raw_fd();
        loop {
            self.fd.readable().await?;
            // WouldBlock clears tokio's readiness, so the next wait sleeps.
            match self.fd.try_io(Interest::READABLE, || {
                recvfrom::<LinkAddr>(raw, buf).map_err(io::Error::from)
            }) {
                Ok((n, addr)) => {
                    let inbound = addr.is_none_or(|a| {
                        a.pkttype() != PACKET_OUTGOING && a.ifindex() == self.ifindex
                    });
                    if inbound {
                        return Ok(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one complete Ethernet frame out of the interface, without
    /// waiting: a full socket buffer is an error (the caller counts it).
    pub fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        let n = send(self.fd.as_raw_fd(), frame, MsgFlags::MSG_DONTWAIT)?;
        if n == frame.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "short raw send"))
        }
    }
}
