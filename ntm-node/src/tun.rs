//! The TUN device in batches, with the kernel's offloads (as wireguard-go's
//! `tun_linux.go` uses them), and the device's own counters.
//!
//! With `tun_offload` (the default) the device is opened with a virtio-net
//! header (`IFF_VNET_HDR`) and TSO (and USO where the kernel has it): the
//! stack hands the node one TCP super-packet of up to 64 KiB per read
//! instead of one per MTU, so the device's queue (its `txqueuelen`) fills
//! far more slowly. [`TunRx`] splits each read into MTU-size packets (GSO
//! split, checksums filled in). [`TunTx`] gathers the packets that tunnels
//! deliver and writes them in one batch, coalescing TCP and UDP segments of
//! the same flow into super-packets (GRO), so the stack on the other side
//! of the device sees few large packets.
//!
//! Without offload the same types read and write one packet per system
//! call, as before.
//!
//! [`read_counters`] reads what the kernel counts for the device
//! (`/sys/class/net/<dev>/statistics`), above all `tx_dropped`: packets the
//! stack routed to the device that the node did not read in time (the
//! queue was full); every one is a loss the node's own counters cannot see.

use std::collections::BTreeMap;
use std::io;

use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Packets per batch: what one read can be split into, and what one write
/// gathers. 128 segments hold a 64 KiB super-packet down to an MSS of 512.
pub const BATCH: usize = IDEAL_BATCH_SIZE;
/// Largest read or coalesced write (an IPv4 packet's total length limit).
const MAX_PACKET: usize = 65_535;
/// Where a packet starts in a [`TunTx`] buffer: room for the virtio-net
/// header in front of it.
const TX_OFFSET: usize = VIRTIO_NET_HDR_LEN;

/// Is `e`, from a read or write on the TUN device, the device failing
/// (fatal: gone, closed) rather than one packet the offload code could not
/// split or join? tun-rs reports the latter as errors without an OS code.
pub fn is_device_error(e: &io::Error) -> bool {
    e.raw_os_error().is_some()
        && !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
}

/// Buffers for reading the device: one read (a super-packet with its
/// virtio-net header) and the packets it is split into.
pub struct TunRx {
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    n: usize,
}

impl TunRx {
    /// Buffers for packets of up to `mtu` bytes.
    pub fn new(mtu: u16) -> TunRx {
        // Without offload one read lands whole in bufs[0]: let it hold any
        // packet, in case the device's MTU is raised behind the node's back.
        let mut bufs = vec![vec![0u8; usize::from(mtu).max(1500)]; BATCH];
        bufs[0].resize(MAX_PACKET, 0);
        TunRx {
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            bufs,
            sizes: vec![0; BATCH],
            n: 0,
        }
    }

    /// Waits for one read and splits it; returns the number of packets.
    pub async fn recv(&mut self, dev: &AsyncDevice) -> io::Result<usize> {
        self.n = 0;
        self.n = dev
            .recv_multiple(&mut self.raw, &mut self.bufs, &mut self.sizes, 0)
            .await?;
        Ok(self.n)
    }

    /// One more read if one is queued (`WouldBlock` if not).
    pub fn try_recv(&mut self, dev: &AsyncDevice) -> io::Result<usize> {
        self.n = 0;
        self.n = dev.try_recv_multiple(&mut self.raw, &mut self.bufs, &mut self.sizes, 0)?;
        Ok(self.n)
    }

    /// The packets of the last read.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.sizes)
            .take(self.n)
            .map(|(b, &len)| &b[..len])
    }
}

/// Packets gathered for one batched write to the device.
pub struct TunTx {
    bufs: Vec<Vec<u8>>,
    n: usize,
    gro: GROTable,
}

impl Default for TunTx {
    fn default() -> Self {
        TunTx::new()
    }
}

impl TunTx {
    /// An empty batch. Each buffer has room for a coalesced 64 KiB packet
    /// (GRO only joins segments into a buffer with the capacity for them);
    /// the memory is touched only as far as it is used.
    pub fn new() -> TunTx {
        TunTx {
            bufs: (0..BATCH)
                .map(|_| Vec::with_capacity(2 * TX_OFFSET + MAX_PACKET))
                .collect(),
            n: 0,
            gro: GROTable::new(),
        }
    }

    /// Adds a copy of `pkt`; returns true when the batch is full (flush).
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        let b = &mut self.bufs[self.n];
        b.clear();
        b.resize(TX_OFFSET, 0);
        b.extend_from_slice(pkt);
        self.n += 1;
        self.n == BATCH
    }

    /// Writes the batch (GRO-coalesced when the device has offload) without
    /// waiting: a TUN write goes straight into the stack. Returns the
    /// number of packets written, or the error and the number of packets
    /// in the batch: tun-rs does not say which of its writes failed, so
    /// the caller counts them all.
    pub fn flush(&mut self, dev: &AsyncDevice) -> Result<usize, (io::Error, usize)> {
        let n = std::mem::take(&mut self.n);
        if n == 0 {
            return Ok(0);
        }
        // The synchronous send_multiple of the device (through Deref): its
        // descriptor is non-blocking, and the async one would wait between
        // the writes of one batch.
        let r =
            tun_rs::DeviceImpl::send_multiple(dev, &mut self.gro, &mut self.bufs[..n], TX_OFFSET);
        match r {
            Ok(_) => Ok(n),
            Err(e) => Err((e, n)),
        }
    }
}

/// The counters of `/sys/class/net/<dev>/statistics` shown in the status.
/// Kernel direction: `tx_*` is the stack to the node (what the node reads),
/// `rx_*` the node to the stack (what it writes).
pub const COUNTERS: &[&str] = &[
    "tx_packets",
    "tx_dropped",
    "tx_errors",
    "tx_fifo_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
    "rx_packets",
    "rx_dropped",
    "rx_errors",
    "rx_fifo_errors",
    "rx_missed_errors",
    "rx_over_errors",
    "rx_frame_errors",
    "rx_length_errors",
];

/// The [`COUNTERS`] of the device `name` whose interface index is
/// `ifindex` ([`ntm_ops::netdev::counters`]).
pub fn read_counters(name: &str, ifindex: u32) -> io::Result<BTreeMap<String, u64>> {
    ntm_ops::netdev::counters(name, ifindex, COUNTERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_counters_are_readable() {
        // Every Linux namespace has lo; its index is 1.
        let m = read_counters("lo", 1).unwrap();
        assert!(
            m.contains_key("tx_dropped") && m.contains_key("rx_dropped"),
            "{m:?}"
        );
        // A wrong index falls back to /proc/self/net/dev, which has lo too,
        // with counters of the same names.
        let p = read_counters("lo", u32::MAX).unwrap();
        assert!(p.contains_key("tx_dropped"), "{p:?}");
        assert!(p.keys().all(|k| COUNTERS.contains(&k.as_str())), "{p:?}");
        assert!(read_counters("no-such-dev0", u32::MAX).is_err());
    }

    #[test]
    fn device_errors_are_told_from_packet_errors() {
        assert!(is_device_error(&io::Error::from_raw_os_error(77))); // EBADFD
        assert!(!is_device_error(&io::Error::from_raw_os_error(11))); // EAGAIN
        assert!(!is_device_error(&io::Error::other(
            "tcp header len is invalid: 4"
        )));
    }

    #[test]
    fn a_batch_fills_and_empties() {
        let mut tx = TunTx::new();
        assert_eq!(tx.n, 0);
        for i in 0..BATCH - 1 {
            assert!(!tx.push(&[0x45, i as u8]));
        }
        assert!(tx.push(&[0x45]));
        assert_eq!(tx.n, BATCH);
        assert_eq!(&tx.bufs[1][..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x45, 1]);
    }
}
