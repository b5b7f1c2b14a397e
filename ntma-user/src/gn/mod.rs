//! The adapter's GN-facing services, sans-IO: proxy ARP, DHCP server, DNS
//! interception and forwarding, ICMP destination unreachable.
//!
//! [`Gn`] does no I/O and reads no clock (quinn-proto style). The slow-path
//! thread of the daemon pumps it:
//!
//! * every frame from the GN-facing NIC that the XDP program passed up
//!   (ARP, DHCP, DNS to the router address) goes into
//!   [`Gn::handle_frame`]; frames for the data path come back as
//!   [`Verdict::NotSlowPath`];
//! * every query to the upstream resolver ([`GnAction::Upstream`]) goes
//!   out from a socket of its own (UDP, or a TCP connection for a query
//!   that came over TCP), whose port [`Gn::upstream_sent`] learns; every
//!   answer received on such a socket goes into [`Gn::handle_upstream`]
//!   with the transport and port; [`GnAction::UpstreamDone`] closes the
//!   socket;
//! * DNS over TCP at the router address (RFC 7766): the daemon's kernel
//!   listener reports each connection ([`Gn::tcp_accept`]), the bytes it
//!   reads ([`Gn::tcp_data`]) and its end ([`Gn::tcp_eof`],
//!   [`Gn::tcp_closed`]); answers come back as [`GnAction::TcpReply`], and
//!   [`GnAction::TcpClose`] closes a connection;
//! * the control side answers each [`GnAction::Resolve`] with
//!   [`Gn::answer`], and tells the VIP the DC assigned with [`Gn::set_vip`];
//! * the data path asks for ICMP errors with [`Gn::unreachable`];
//! * after each call, drain [`Gn::poll_transmit`] (frames to the GN) and
//!   [`Gn::poll_action`] (work for the control side); call
//!   [`Gn::handle_timeout`] when [`Gn::poll_timeout`] is reached.
//!
//! Every drop is counted by its reason in [`Gn::counters`].

mod arp;
mod counters;
mod dhcp;
mod dns;
mod dns_tcp;
mod icmp;
pub mod wire;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;
use ntm_proto::dns::{StubConfig, IPV4_UDP_HEADERS};

pub use counters::{GnCounters, GnDrop, GnStat};
pub use dns::{PendingId, ResolveOutcome};
pub use dns_tcp::{ConnId, MAX_TCP_CONNECTIONS};
pub use ntm_proto::dns::Transport;
pub use wire::{Ipv4Frame, MacAddr, Unreachable};

use crate::wire::{ethernet, ipv4};
use dns::DnsState;
use dns_tcp::TcpConns;
use icmp::TokenBucket;
use wire::{parse_eth, parse_ipv4, parse_udp};

/// Largest frame the slow path ever emits (Ethernet header + 1500-byte IPv4
/// packet): a buffer of this size always fits [`Gn::poll_transmit`].
pub const MAX_FRAME_LEN: usize = ethernet::HEADER_LEN + 1500;

/// Most GNs one adapter serves (§6 asks for at least 254). The XDP program's
/// map of GN VIPs has room for this many.
pub const MAX_GNS: usize = ntma_common::MAX_GNS as usize;

/// Index of a GN in [`GnConfig::gns`]: stable for the adapter's life.
pub type GnIndex = usize;

/// One GN the adapter serves (§6): its FQDN and, optionally, the MAC that
/// binds it. An entry without a MAC is taken by the first unknown MAC that
/// asks DHCP, and kept for it while its lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GnSpec {
    /// The GN's FQDN (its DNS identity and its registration at the DC).
    pub fqdn: String,
    /// The MAC that binds it, if configured.
    pub mac: Option<MacAddr>,
}

/// Settings of the GN-facing services. Build with [`GnConfig::new`] and
/// adjust fields; [`Gn::new`] validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GnConfig {
    /// The GNs, in configuration order (their [`GnIndex`]).
    pub gns: Vec<GnSpec>,
    /// MAC of the NTMA's GN-facing NIC: source of every frame to the GN and
    /// the answer of every proxy ARP reply.
    pub ntma_mac: MacAddr,
    /// The VIP pool's first address: router, DNS server and DHCP server
    /// identifier given to the GN (100.64.0.1 in the testbed).
    pub router: Ipv4Addr,
    /// Prefix length of the VIP pool (10 for 100.64.0.0/10): the subnet mask
    /// the GN gets, so every VIP is on-link.
    pub vip_prefix_len: u8,
    /// Interface MTU option for the GN (1440 leaves room for the tunnel).
    pub mtu: u16,
    /// DHCP lease time in seconds.
    pub lease_secs: u32,
    /// How long an OFFER reserves the VIP for the client it went to.
    pub offer_hold: Duration,
    /// NTM domain suffix (names under it are resolved through the DC).
    pub ntm_suffix: String,
    /// TTL of A records for NTM names (at most 60 s).
    pub dns_ttl: u32,
    /// Bound of each DNS pending table (queries waiting for the DC, queries
    /// waiting for the upstream resolver).
    pub dns_max_pending: usize,
    /// Queries waiting for the DC get SERVFAIL after this long.
    pub dns_resolve_timeout: Duration,
    /// Queries forwarded upstream are forgotten after this long (those that
    /// came over TCP get SERVFAIL).
    pub dns_forward_timeout: Duration,
    /// DNS over TCP: connections open at once (more are refused), at most
    /// [`MAX_TCP_CONNECTIONS`].
    pub dns_tcp_max_connections: usize,
    /// DNS over TCP: a connection with no query pending and nothing
    /// received or sent for this long is closed.
    pub dns_tcp_idle_timeout: Duration,
    /// ICMP code for packets to destinations that are not VIPs.
    pub non_vip_unreachable: Unreachable,
    /// ICMP errors per second (token bucket refill rate).
    pub icmp_rate_per_sec: u32,
    /// ICMP token bucket depth.
    pub icmp_burst: u32,
    /// Verify non-zero UDP checksums of frames from the GN. Turn off only
    /// where TX checksum offload on the GN's side leaves partial checksums.
    pub verify_udp_checksum: bool,
    /// Bound of the queue of frames to the GN.
    pub tx_queue_max: usize,
    /// Bound of the queue of actions for the control side.
    pub action_queue_max: usize,
    /// Seed for the forwarded-query DNS ids; the daemon passes OS randomness.
    pub seed: u64,
}

impl GnConfig {
    /// The testbed's defaults (router 100.64.0.1/10, suffix `ntm.test`, one
    /// GN `gn.ntm.test` without a fixed MAC) for the NIC with MAC `ntma_mac`.
    pub fn new(ntma_mac: MacAddr) -> Self {
        Self {
            gns: vec![GnSpec {
                fqdn: "gn.ntm.test".to_owned(),
                mac: None,
            }],
            ntma_mac,
            router: Ipv4Addr::new(100, 64, 0, 1),
            vip_prefix_len: 10,
            mtu: 1440,
            lease_secs: 600,
            offer_hold: Duration::from_secs(30),
            ntm_suffix: "ntm.test".to_owned(),
            dns_ttl: 30,
            dns_max_pending: 256,
            dns_resolve_timeout: Duration::from_secs(5),
            dns_forward_timeout: Duration::from_secs(5),
            dns_tcp_max_connections: 64,
            dns_tcp_idle_timeout: Duration::from_secs(10),
            non_vip_unreachable: Unreachable::Net,
            icmp_rate_per_sec: 10,
            icmp_burst: 20,
            verify_udp_checksum: true,
            tx_queue_max: 256,
            action_queue_max: 256,
            seed: 0x6e74_6d61_2d67_6e00,
        }
    }

    /// Subnet mask of the VIP prefix.
    pub fn netmask(&self) -> Ipv4Addr {
        prefix_mask(self.vip_prefix_len)
    }

    /// True when `ip` is inside the VIP prefix.
    pub fn in_vip_prefix(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask());
        u32::from(ip) & m == u32::from(self.router) & m
    }

    /// The DNS stub's settings: the `dns_*` fields, and the largest UDP
    /// answer the GN's link carries in one frame (`mtu` minus 28).
    pub fn stub_config(&self) -> StubConfig {
        StubConfig {
            ttl: self.dns_ttl,
            max_pending: self.dns_max_pending,
            resolve_timeout: self.dns_resolve_timeout,
            forward_timeout: self.dns_forward_timeout,
            max_udp_payload: usize::from(self.mtu).saturating_sub(IPV4_UDP_HEADERS),
            seed: self.seed,
        }
    }

    fn validate(&self) -> Result<Name, GnConfigError> {
        if !self.ntma_mac.is_unicast() {
            return Err(GnConfigError::NtmaMac(self.ntma_mac));
        }
        self.validate_gns()?;
        if !(8..=30).contains(&self.vip_prefix_len) {
            return Err(GnConfigError::PrefixLen(self.vip_prefix_len));
        }
        let m = u32::from(self.netmask());
        let r = u32::from(self.router);
        if r & !m == 0 || r & !m == !m || self.router.is_multicast() || self.router.is_loopback() {
            return Err(GnConfigError::Router(self.router, self.vip_prefix_len));
        }
        if !(576..=1500).contains(&self.mtu) {
            return Err(GnConfigError::Mtu(self.mtu));
        }
        if self.lease_secs < 60 {
            return Err(GnConfigError::LeaseSecs(self.lease_secs));
        }
        if self.dns_ttl > 60 {
            return Err(GnConfigError::DnsTtl(self.dns_ttl));
        }
        for (name, v) in [
            ("dns_max_pending", self.dns_max_pending),
            ("dns_tcp_max_connections", self.dns_tcp_max_connections),
            ("tx_queue_max", self.tx_queue_max),
            ("action_queue_max", self.action_queue_max),
            ("icmp_burst", self.icmp_burst as usize),
        ] {
            if v == 0 {
                return Err(GnConfigError::ZeroLimit(name));
            }
        }
        if self.dns_max_pending > dns::MAX_PENDING_LIMIT {
            return Err(GnConfigError::TooLarge(
                "dns_max_pending",
                dns::MAX_PENDING_LIMIT,
            ));
        }
        if self.dns_tcp_max_connections > MAX_TCP_CONNECTIONS {
            return Err(GnConfigError::TooLarge(
                "dns_tcp_max_connections",
                MAX_TCP_CONNECTIONS,
            ));
        }
        for (name, v) in [
            ("offer_hold", self.offer_hold),
            ("dns_resolve_timeout", self.dns_resolve_timeout),
            ("dns_forward_timeout", self.dns_forward_timeout),
            ("dns_tcp_idle_timeout", self.dns_tcp_idle_timeout),
        ] {
            if v.is_zero() {
                return Err(GnConfigError::ZeroLimit(name));
            }
        }
        dns::parse_suffix(&self.ntm_suffix)
            .ok_or_else(|| GnConfigError::Suffix(self.ntm_suffix.clone()))
    }
}

impl GnConfig {
    fn validate_gns(&self) -> Result<(), GnConfigError> {
        if self.gns.is_empty() || self.gns.len() > MAX_GNS {
            return Err(GnConfigError::GnCount(self.gns.len()));
        }
        for (i, g) in self.gns.iter().enumerate() {
            if let Some(mac) = g.mac {
                if !mac.is_unicast() || mac == self.ntma_mac {
                    return Err(GnConfigError::GnMac(g.fqdn.clone(), mac));
                }
            }
            let earlier = &self.gns[..i];
            if earlier.iter().any(|e| e.fqdn == g.fqdn) {
                return Err(GnConfigError::GnDuplicate(g.fqdn.clone()));
            }
            if g.mac.is_some() && earlier.iter().any(|e| e.mac == g.mac) {
                return Err(GnConfigError::GnDuplicate(g.fqdn.clone()));
            }
        }
        Ok(())
    }
}

fn prefix_mask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
}

/// A setting that [`Gn::new`] or [`Gn::set_vip`] refuses; the message says
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GnConfigError {
    /// MAC not usable as a frame source.
    #[error("GN-facing MAC {0} is not a unicast address: set it to the MAC of the GN-facing NIC")]
    NtmaMac(MacAddr),
    /// VIP prefix length out of range.
    #[error("VIP prefix length /{0} is out of range: use 8..=30 (the testbed uses /10)")]
    PrefixLen(u8),
    /// Router address not a host of the VIP prefix.
    #[error("router address {0} is not a host address of its /{1} VIP prefix: use the pool's first address (e.g. 100.64.0.1)")]
    Router(Ipv4Addr, u8),
    /// MTU out of range.
    #[error(
        "GN interface MTU {0} is out of range: use 576..=1500 (1440 leaves room for the tunnel)"
    )]
    Mtu(u16),
    /// Lease too short.
    #[error("DHCP lease time {0} s is too short: use at least 60 s")]
    LeaseSecs(u32),
    /// TTL above the protocol's limit.
    #[error("DNS TTL {0} s for NTM names is above the 60 s limit: lower it")]
    DnsTtl(u32),
    /// A bound or timeout of zero.
    #[error("{0} must be greater than zero")]
    ZeroLimit(&'static str),
    /// A bound above what the implementation supports.
    #[error("{0} is too large: use at most {1}")]
    TooLarge(&'static str, usize),
    /// Suffix not a valid DNS name.
    #[error(
        "NTM suffix {0:?} is not a DNS name of letters, digits, '-' and '.': use e.g. \"ntm.test\""
    )]
    Suffix(String),
    /// No GN, or more than the adapter serves.
    #[error("{0} GNs configured: give between 1 and {MAX_GNS} [[gn]] entries")]
    GnCount(usize),
    /// A GN's MAC that cannot be a host's.
    #[error("GN {0}: MAC {1} is not a unicast address of another host: give the GN's own NIC address, or none")]
    GnMac(String, MacAddr),
    /// Two GN entries with the same FQDN or MAC.
    #[error(
        "GN {0}: its FQDN or MAC is already used by another [[gn]] entry: each GN needs its own"
    )]
    GnDuplicate(String),
    /// VIP from the DC not usable with this prefix.
    #[error("VIP {0} assigned by the DC is not a host of the router's VIP prefix: make the DC's pool and the adapter's router/prefix agree")]
    VipOutsidePrefix(Ipv4Addr),
}

/// What the NTMA knows about one of its GNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GnState {
    fqdn: String,
    /// The configured MAC, if any: only that MAC is this GN.
    fixed_mac: Option<MacAddr>,
    mac: Option<MacAddr>,
    /// A frame from it was seen (DHCP, ARP, or a packet from its VIP).
    seen: bool,
    vip: Option<Ipv4Addr>,
    lease: Option<Lease>,
}

/// The DHCP lease (or offer) of a GN's VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Client identifier (option 61) or, without one, the hardware address.
    pub client_id: Vec<u8>,
    /// Client hardware address.
    pub mac: MacAddr,
    /// End of the lease (or of the offer's reservation).
    pub expires: Instant,
    /// ACKed (true) or only offered (false).
    pub bound: bool,
}

impl GnState {
    fn new(spec: &GnSpec) -> GnState {
        GnState {
            fqdn: spec.fqdn.clone(),
            fixed_mac: spec.mac,
            mac: spec.mac,
            seen: false,
            vip: None,
            lease: None,
        }
    }

    /// The GN's FQDN.
    pub fn fqdn(&self) -> &str {
        &self.fqdn
    }

    /// Whether frames from `mac` may be this GN's: its configured MAC, or any
    /// without one (then DHCP and its frames teach it).
    fn may_be(&self, mac: MacAddr) -> bool {
        self.fixed_mac.is_none_or(|m| m == mac)
    }

    /// The GN's MAC: configured, or learned from DHCP and from frames
    /// sourced from its VIP.
    pub fn mac(&self) -> Option<MacAddr> {
        self.mac
    }

    /// Whether the GN has shown itself on the LAN (DHCP, ARP, or a packet
    /// from its VIP).
    pub fn seen(&self) -> bool {
        self.seen
    }

    /// The VIP the DC assigned to the GN.
    pub fn vip(&self) -> Option<Ipv4Addr> {
        self.vip
    }

    /// The current lease or offer, expired or not.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The lease or offer still running at `now`.
    pub fn active_lease(&self, now: Instant) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires > now)
    }
}

/// What [`Gn::dispatch`] made of a frame it did not drop.
enum Outcome<'a> {
    Consumed,
    NotSlowPath(Ipv4Frame<'a>),
}

/// What [`Gn::handle_frame`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A slow-path service took it; replies and actions may be queued.
    Consumed,
    /// Dropped (counted), possibly after queueing an error reply.
    Dropped(GnDrop),
    /// Not for the slow-path services: an IPv4 packet for the data path
    /// (tunnel, hold queue, ICMP unreachable, NAT) or the kernel.
    NotSlowPath,
}

/// Work for the control side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GnAction {
    /// Resolve the NTM name `fqdn` (lower-case, no trailing dot) through the
    /// DC (DIR_REQ); report the result with [`Gn::answer`]`(pending_id, ..)`.
    Resolve {
        /// The GN that asked (its source VIP): the resolution is its own.
        gn: GnIndex,
        /// The peer's FQDN.
        fqdn: String,
        /// Key for [`Gn::answer`].
        pending_id: PendingId,
    },
    /// Send `payload` to the configured upstream resolver from a new socket
    /// bound to a random port (port 0): one UDP datagram, or over TCP one
    /// message with its 2-byte length prefix on a new connection. Report
    /// that port with [`Gn::upstream_sent`], and feed the answer that comes
    /// back on that socket to [`Gn::handle_upstream`] with the transport and
    /// port, until [`GnAction::UpstreamDone`] names it. The query carries a
    /// random id drawn for it alone.
    Upstream {
        /// Names the query in [`Gn::upstream_sent`] (not the id on the wire).
        upstream_id: u16,
        /// The query, ready to send (without a length prefix).
        payload: Vec<u8>,
        /// UDP, or TCP for a query that came over TCP.
        transport: Transport,
    },
    /// The query sent from `port` is answered or timed out: close its socket.
    UpstreamDone {
        /// The socket's transport.
        transport: Transport,
        /// The socket's local port.
        port: u16,
    },
    /// Write `message` (a DNS answer with its 2-byte length prefix) on the
    /// GN's TCP connection `conn`.
    TcpReply {
        /// The connection ([`Gn::tcp_accept`]).
        conn: ConnId,
        /// The framed answer.
        message: Vec<u8>,
    },
    /// Close the GN's TCP connection `conn` once what was written on it is
    /// sent (idle, or the client finished and every answer went out).
    TcpClose {
        /// The connection.
        conn: ConnId,
    },
    /// The GN's MAC was learned or changed: the fast path addresses frames to
    /// the GN with it.
    GnMac {
        /// The GN.
        gn: GnIndex,
        /// New MAC.
        mac: MacAddr,
    },
    /// The GN took the VIP (first DHCPACK of a lease).
    LeaseBound {
        /// The GN.
        gn: GnIndex,
        /// The VIP.
        vip: Ipv4Addr,
        /// The client's MAC.
        mac: MacAddr,
    },
    /// The GN's lease ended (RELEASE, DECLINE, or the VIP changed).
    LeaseEnded {
        /// The GN.
        gn: GnIndex,
        /// The VIP it held.
        vip: Ipv4Addr,
    },
}

/// The GN-facing services of one adapter.
#[derive(Debug)]
pub struct Gn {
    cfg: GnConfig,
    gns: Vec<GnState>,
    dns: DnsState,
    tcp: TcpConns,
    icmp: TokenBucket,
    counters: GnCounters,
    tx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    actions: VecDeque<GnAction>,
}

impl Gn {
    /// Validates `cfg` and starts with no VIP (no DHCP offers until
    /// [`Gn::set_vip`]).
    pub fn new(cfg: GnConfig) -> Result<Self, GnConfigError> {
        let suffix = cfg.validate()?;
        Ok(Self {
            dns: DnsState::new(suffix, &cfg),
            tcp: TcpConns::default(),
            icmp: TokenBucket::new(cfg.icmp_rate_per_sec, cfg.icmp_burst),
            gns: cfg.gns.iter().map(GnState::new).collect(),
            counters: GnCounters::default(),
            tx: VecDeque::with_capacity(cfg.tx_queue_max.min(1024)),
            spare: Vec::new(),
            actions: VecDeque::new(),
            cfg,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &GnConfig {
        &self.cfg
    }

    /// What is known about each GN, by [`GnIndex`].
    pub fn gns(&self) -> &[GnState] {
        &self.gns
    }

    /// The GN whose VIP is `ip`.
    pub fn gn_of_vip(&self, ip: Ipv4Addr) -> Option<GnIndex> {
        self.gns.iter().position(|g| g.vip == Some(ip))
    }

    /// Whether `ip` is the VIP of one of our GNs (their traffic to each other
    /// stays on their network, §6).
    pub fn is_gn_vip(&self, ip: Ipv4Addr) -> bool {
        self.gn_of_vip(ip).is_some()
    }

    /// Drop and event counters.
    pub fn counters(&self) -> &GnCounters {
        &self.counters
    }

    /// Sets (or withdraws, with `None`) the VIP the DC assigned to GN `gn`. A
    /// lease of another VIP ends, so the GN's next renewal gets a NAK and it
    /// starts over with the new VIP.
    pub fn set_vip(&mut self, gn: GnIndex, vip: Option<Ipv4Addr>) -> Result<(), GnConfigError> {
        if let Some(v) = vip {
            let host = u32::from(v) & !u32::from(self.cfg.netmask());
            if !self.cfg.in_vip_prefix(v)
                || v == self.cfg.router
                || host == 0
                || host == !u32::from(self.cfg.netmask())
            {
                return Err(GnConfigError::VipOutsidePrefix(v));
            }
        }
        let Some(st) = self.gns.get_mut(gn) else {
            return Ok(());
        };
        if st.vip == vip {
            return Ok(());
        }
        let old = std::mem::replace(&mut st.vip, vip);
        if let (Some(old), Some(lease)) = (old, st.lease.take()) {
            if lease.bound {
                self.push_action(GnAction::LeaseEnded { gn, vip: old });
            }
        }
        Ok(())
    }

    /// Replaces the GN list (a reload). A GN kept with the same MAC setting
    /// keeps its VIP, MAC and lease; the others start afresh. DNS queries in
    /// flight are forgotten (their asker indices change) and DNS TCP
    /// connections of removed GNs are closed. Returns, for each new GN, its
    /// index in the old list if it was kept.
    pub fn set_gns(&mut self, gns: Vec<GnSpec>) -> Result<Vec<Option<GnIndex>>, GnConfigError> {
        let mut cfg = self.cfg.clone();
        cfg.gns = gns;
        let suffix = cfg.validate()?;
        let kept: Vec<Option<GnIndex>> = cfg
            .gns
            .iter()
            .map(|g| {
                self.gns
                    .iter()
                    .position(|o| o.fqdn == g.fqdn && o.fixed_mac == g.mac)
            })
            .collect();
        let old = std::mem::take(&mut self.gns);
        self.gns = cfg
            .gns
            .iter()
            .zip(&kept)
            .map(|(g, k)| k.map_or_else(|| GnState::new(g), |i| old[i].clone()))
            .collect();
        for (gn, st) in old.iter().enumerate() {
            if let (false, Some(vip), Some(l)) = (kept.contains(&Some(gn)), st.vip, &st.lease) {
                if l.bound {
                    self.push_action(GnAction::LeaseEnded { gn, vip });
                }
            }
        }
        let closed = self.remap_tcp(&kept);
        for conn in closed {
            self.push_action(GnAction::TcpClose { conn });
        }
        self.dns = DnsState::new(suffix, &cfg);
        self.cfg = cfg;
        Ok(kept)
    }

    /// Changes the DNS settings (a reload): the NTM suffix, the TTL of its
    /// answers and how long a query waits for the DC. Queries in flight
    /// are forgotten (the GN's resolver asks again); nothing changes when
    /// the new settings are invalid.
    pub fn set_dns(
        &mut self,
        ntm_suffix: &str,
        ttl: u32,
        resolve_timeout: std::time::Duration,
    ) -> Result<(), GnConfigError> {
        let mut cfg = self.cfg.clone();
        cfg.ntm_suffix = ntm_suffix.to_owned();
        cfg.dns_ttl = ttl;
        cfg.dns_resolve_timeout = resolve_timeout;
        let suffix = cfg.validate()?;
        self.dns = DnsState::new(suffix, &cfg);
        self.cfg = cfg;
        Ok(())
    }

    /// Handles one frame from the GN-facing NIC.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Verdict {
        let r = self.dispatch(now, frame).map(|o| match o {
            Outcome::Consumed => Verdict::Consumed,
            Outcome::NotSlowPath(_) => Verdict::NotSlowPath,
        });
        self.settle(r)
    }

    /// [`Gn::handle_frame`] for the control side: the frame parsed once, when it is
    /// an IPv4 packet not for the slow-path services ([`Verdict::NotSlowPath`]).
    pub fn handle_lan<'a>(&mut self, now: Instant, frame: &'a [u8]) -> Option<Ipv4Frame<'a>> {
        match self.dispatch(now, frame) {
            Ok(Outcome::NotSlowPath(f)) => Some(f),
            Ok(Outcome::Consumed) => None,
            Err(why) => {
                self.counters.drop(why);
                None
            }
        }
    }

    fn settle(&mut self, r: Result<Verdict, GnDrop>) -> Verdict {
        match r {
            Ok(v) => v,
            Err(why) => {
                self.counters.drop(why);
                Verdict::Dropped(why)
            }
        }
    }

    fn dispatch<'a>(&mut self, now: Instant, frame: &'a [u8]) -> Result<Outcome<'a>, GnDrop> {
        let eth = parse_eth(frame)?;
        if !eth.src_addr().is_unicast() {
            return Err(GnDrop::SrcMacInvalid);
        }
        match eth.ethertype() {
            ethernet::ETHERTYPE_ARP => self.handle_arp(&eth).map(|()| Outcome::Consumed),
            ethernet::ETHERTYPE_IPV4 => {
                let ip = parse_ipv4(eth.payload(), true)?;
                self.learn(eth.src_addr(), ip.src_addr());
                let to_router = ip.dst_addr() == self.cfg.router;
                let broadcast = ip.dst_addr() == Ipv4Addr::BROADCAST;
                if !(to_router || broadcast) || ip.protocol() != ipv4::PROTO_UDP {
                    return Ok(Outcome::NotSlowPath(Ipv4Frame { eth, ip }));
                }
                if ip.is_fragment() {
                    return Err(GnDrop::Ipv4Fragment);
                }
                let udp = parse_udp(&ip, self.cfg.verify_udp_checksum)?;
                match udp.dst_port() {
                    dhcp::SERVER_PORT => self
                        .handle_dhcp(now, &eth, &udp)
                        .map(|()| Outcome::Consumed),
                    dns::PORT if to_router => self
                        .handle_dns_query(now, &eth, &ip, &udp)
                        .map(|()| Outcome::Consumed),
                    _ => Ok(Outcome::NotSlowPath(Ipv4Frame { eth, ip })),
                }
            }
            _ => Err(GnDrop::EtherTypeUnsupported),
        }
    }

    /// Learns a GN's MAC from a frame whose source IPv4 address is its VIP.
    fn learn(&mut self, mac: MacAddr, src: Ipv4Addr) {
        if let Some(gn) = self.gn_of_vip(src) {
            self.set_gn_mac(gn, mac);
        }
    }

    /// GN `gn` is at `mac` (not for a GN bound to another MAC: counted).
    fn set_gn_mac(&mut self, gn: GnIndex, mac: MacAddr) {
        let st = &mut self.gns[gn];
        if !st.may_be(mac) {
            self.counters.drop(GnDrop::GnMacMismatch);
            return;
        }
        st.seen = true;
        if st.mac != Some(mac) {
            st.mac = Some(mac);
            self.counters.stat(GnStat::GnMacLearned);
            self.push_action(GnAction::GnMac { gn, mac });
        }
    }

    /// The query of [`GnAction::Upstream`] `upstream_id` went out from the
    /// socket of `transport` bound to local `port`.
    pub fn upstream_sent(&mut self, upstream_id: u16, transport: Transport, port: u16) {
        self.forward_sent(upstream_id, transport, port);
    }

    /// Handles one answer from the upstream resolver (the payload of a UDP
    /// datagram, or one TCP message without its length prefix) received on
    /// the query socket of `transport` bound to local `port`.
    pub fn handle_upstream(
        &mut self,
        now: Instant,
        transport: Transport,
        port: u16,
        payload: &[u8],
    ) -> Verdict {
        let r = self
            .relay_upstream(now, transport, port, payload)
            .map(|()| Verdict::Consumed);
        self.settle(r)
    }

    /// The control side's answer to [`GnAction::Resolve`].
    pub fn answer(&mut self, now: Instant, pending_id: PendingId, outcome: ResolveOutcome) {
        if let Err(why) = self.answer_resolve(now, pending_id, outcome) {
            self.counters.drop(why);
        }
    }

    /// Queues an ICMP destination unreachable (`code`) to the sender of
    /// `frame`, an IPv4 frame from the GN that cannot be delivered: `Host`
    /// for a VIP whose tunnel failed. Rate-limited; RFC 1812's exceptions
    /// (errors about ICMP errors, later fragments, non-unicast ends) apply.
    pub fn unreachable(
        &mut self,
        now: Instant,
        frame: &[u8],
        code: Unreachable,
    ) -> Result<(), GnDrop> {
        let r = Ipv4Frame::parse(frame, GnDrop::IcmpBadOriginal)
            .and_then(|f| self.icmp_unreachable(now, &f, code));
        self.count_err(r)
    }

    /// [`Gn::unreachable`] about a frame already parsed ([`Gn::handle_lan`]).
    pub fn unreachable_to(
        &mut self,
        now: Instant,
        frame: &Ipv4Frame<'_>,
        code: Unreachable,
    ) -> Result<(), GnDrop> {
        let r = self.icmp_unreachable(now, frame, code);
        self.count_err(r)
    }

    /// Counts the drop of `r`, if any, and hands it back.
    fn count_err(&mut self, r: Result<(), GnDrop>) -> Result<(), GnDrop> {
        if let Err(why) = r {
            self.counters.drop(why);
        }
        r
    }

    /// [`Gn::unreachable_to`] with the operator's code for non-VIP destinations.
    pub fn unreachable_non_vip(
        &mut self,
        now: Instant,
        frame: &Ipv4Frame<'_>,
    ) -> Result<(), GnDrop> {
        self.unreachable_to(now, frame, self.cfg.non_vip_unreachable)
    }

    /// Runs what is due at `now`: SERVFAIL for queries the DC did not answer
    /// in time, forgetting forwarded queries upstream never answered,
    /// closing idle TCP connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_dns(now);
        self.expire_tcp(now);
    }

    /// When [`Gn::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.dns.next_deadline(), self.tcp_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Copies the next frame for the GN into `buf` and returns its length.
    /// A `buf` of [`MAX_FRAME_LEN`] always fits; a frame that does not fit is
    /// dropped (counted) and the next one tried.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        while let Some(frame) = self.tx.pop_front() {
            let len = frame.len();
            let fits = len <= buf.len();
            if fits {
                buf[..len].copy_from_slice(&frame);
            } else {
                self.counters.drop(GnDrop::TxBufferTooSmall);
            }
            if self.spare.len() < 32 {
                self.spare.push(frame);
            }
            if fits {
                return Some(len);
            }
        }
        None
    }

    /// Next piece of work for the control side.
    pub fn poll_action(&mut self) -> Option<GnAction> {
        self.actions.pop_front()
    }

    /// Builds a frame with `build` into a recycled buffer and queues it.
    fn emit(
        &mut self,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), GnDrop>,
    ) -> Result<(), GnDrop> {
        if self.tx.len() >= self.cfg.tx_queue_max {
            return Err(GnDrop::TxQueueFull);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        match build(&mut buf) {
            Ok(()) => {
                self.tx.push_back(buf);
                Ok(())
            }
            Err(why) => {
                self.spare.push(buf);
                Err(why)
            }
        }
    }

    fn push_action(&mut self, action: GnAction) {
        if self.actions.len() >= self.cfg.action_queue_max {
            self.counters.drop(GnDrop::ActionQueueFull);
        } else {
            self.actions.push_back(action);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub const NTMA_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
    pub const GN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    pub const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    pub const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    pub fn gn() -> Gn {
        Gn::new(GnConfig::new(NTMA_MAC)).unwrap()
    }

    pub fn gn_with_vip() -> Gn {
        let mut g = gn();
        g.set_vip(0, Some(VIP)).unwrap();
        g
    }

    pub fn frames(g: &mut Gn) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let mut out = Vec::new();
        while let Some(n) = g.poll_transmit(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// With a VIP and the GN's MAC already known (no GnMac action pending).
    pub fn gn_ready() -> Gn {
        let mut g = gn_with_vip();
        g.set_gn_mac(0, GN_MAC);
        actions(&mut g);
        g
    }

    pub fn actions(g: &mut Gn) -> Vec<GnAction> {
        std::iter::from_fn(|| g.poll_action()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_validation_messages() {
        let ok = GnConfig::new(NTMA_MAC);
        assert!(Gn::new(ok.clone()).is_ok());
        assert_eq!(ok.netmask(), Ipv4Addr::new(255, 192, 0, 0));

        let mut c = ok.clone();
        c.ntma_mac = MacAddr::BROADCAST;
        assert_eq!(
            Gn::new(c).unwrap_err(),
            GnConfigError::NtmaMac(MacAddr::BROADCAST)
        );
        let mut c = ok.clone();
        c.vip_prefix_len = 31;
        assert_eq!(Gn::new(c).unwrap_err(), GnConfigError::PrefixLen(31));
        let mut c = ok.clone();
        c.router = Ipv4Addr::new(100, 64, 0, 0);
        assert!(matches!(Gn::new(c).unwrap_err(), GnConfigError::Router(..)));
        let mut c = ok.clone();
        c.dns_ttl = 61;
        assert_eq!(Gn::new(c).unwrap_err(), GnConfigError::DnsTtl(61));
        let mut c = ok.clone();
        c.ntm_suffix = "ntm..test".into();
        let e = Gn::new(c).unwrap_err();
        assert!(e.to_string().contains("ntm..test"), "{e}");
        let mut c = ok.clone();
        c.dns_max_pending = 0;
        assert_eq!(
            Gn::new(c).unwrap_err(),
            GnConfigError::ZeroLimit("dns_max_pending")
        );
        let mut c = ok;
        c.mtu = 9000;
        assert_eq!(Gn::new(c).unwrap_err(), GnConfigError::Mtu(9000));
    }

    #[test]
    fn set_vip_checks_prefix_and_ends_old_lease() {
        let mut g = gn();
        assert!(g.set_vip(0, Some(Ipv4Addr::new(10, 0, 0, 2))).is_err());
        assert!(g.set_vip(0, Some(ROUTER)).is_err());
        assert!(g
            .set_vip(0, Some(Ipv4Addr::new(100, 127, 255, 255)))
            .is_err());
        g.set_vip(0, Some(VIP)).unwrap();
        assert_eq!(g.gns()[0].vip(), Some(VIP));
        let now = Instant::now();
        g.gns[0].lease = Some(Lease {
            client_id: vec![1],
            mac: GN_MAC,
            expires: now + Duration::from_secs(60),
            bound: true,
        });
        g.set_vip(0, Some(Ipv4Addr::new(100, 64, 0, 3))).unwrap();
        assert!(g.gns()[0].lease().is_none());
        assert_eq!(
            actions(&mut g),
            vec![GnAction::LeaseEnded { gn: 0, vip: VIP }]
        );
    }

    #[test]
    fn non_ip_and_bad_source_frames_are_counted() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let mut f = include_bytes!("testdata/dig_noedns_a.bin").to_vec();
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            g.handle_frame(now, &f),
            Verdict::Dropped(GnDrop::EtherTypeUnsupported)
        );
        let mut f = include_bytes!("testdata/dig_noedns_a.bin").to_vec();
        f[6] = 0x01;
        assert_eq!(
            g.handle_frame(now, &f),
            Verdict::Dropped(GnDrop::SrcMacInvalid)
        );
        assert_eq!(
            g.handle_frame(now, &[]),
            Verdict::Dropped(GnDrop::FrameShort)
        );
        assert_eq!(g.counters()[GnDrop::FrameShort], 1);
        assert_eq!(g.counters().total_drops(), 3);
    }

    #[test]
    fn data_frames_are_not_slow_path_and_teach_the_gn_mac() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        // ICMP echo from the VIP to another VIP.
        let mut f = Vec::new();
        wire::build_udp_frame(
            &mut f,
            &wire::UdpEnds {
                dst_mac: NTMA_MAC,
                src_mac: GN_MAC,
                src_ip: VIP,
                dst_ip: Ipv4Addr::new(100, 64, 0, 9),
                src_port: 5000,
                dst_port: 53,
            },
            b"x",
        )
        .unwrap();
        assert_eq!(g.handle_frame(now, &f), Verdict::NotSlowPath);
        assert_eq!(g.gns()[0].mac(), Some(GN_MAC));
        assert_eq!(
            actions(&mut g),
            vec![GnAction::GnMac { gn: 0, mac: GN_MAC }]
        );
        // Same MAC again: no new action.
        assert_eq!(g.handle_frame(now, &f), Verdict::NotSlowPath);
        assert!(actions(&mut g).is_empty());
        assert!(frames(&mut g).is_empty());
    }

    #[test]
    fn tx_queue_is_bounded_and_small_buffers_are_counted() {
        let mut c = GnConfig::new(NTMA_MAC);
        c.tx_queue_max = 2;
        let mut g = Gn::new(c).unwrap();
        let now = Instant::now();
        let req = include_bytes!("testdata/arp_request_router.bin");
        for _ in 0..3 {
            g.handle_frame(now, req);
        }
        assert_eq!(g.counters()[GnDrop::TxQueueFull], 1);
        let mut small = [0u8; 10];
        assert_eq!(g.poll_transmit(&mut small), None);
        assert_eq!(g.counters()[GnDrop::TxBufferTooSmall], 2);
    }

    fn arb_gn() -> Gn {
        let mut g = gn_with_vip();
        g.set_gn_mac(0, GN_MAC);
        g
    }

    /// Captured frames with a few bytes overwritten: reaches deeper than
    /// random bytes, since the outer headers often stay valid.
    fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
        let fixtures: Vec<&'static [u8]> = vec![
            include_bytes!("testdata/arp_request_router.bin"),
            include_bytes!("testdata/dhclient_discover.bin"),
            include_bytes!("testdata/dhclient_request_initreboot.bin"),
            include_bytes!("testdata/dhclient_request_selecting.bin"),
            include_bytes!("testdata/dig_noedns_a.bin"),
            include_bytes!("testdata/dig_edns_a.bin"),
            include_bytes!("testdata/dig_noedns_mx_example.bin"),
        ];
        (
            proptest::sample::select(fixtures),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(f, edits, cut)| {
                let mut v = f.to_vec();
                for (i, b) in edits {
                    let i = i.index(v.len());
                    v[i] = b;
                }
                v.truncate(cut.index(v.len() + 1));
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let mut g = arb_gn();
            let now = Instant::now();
            g.handle_frame(now, &bytes);
            g.handle_upstream(now, Transport::Udp, 40_000, &bytes);
            g.handle_upstream(now, Transport::Tcp, 40_000, &bytes);
            let _ = g.unreachable(now, &bytes, Unreachable::Host);
            g.handle_timeout(now + Duration::from_secs(10));
            frames(&mut g);
            actions(&mut g);
        }

        #[test]
        fn mutated_frames_never_panic(frame in mutated_fixture(), reply in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut g = arb_gn();
            let now = Instant::now();
            g.handle_frame(now, &frame);
            let _ = g.unreachable(now, &frame, Unreachable::Net);
            for a in actions(&mut g) {
                match a {
                    GnAction::Resolve { pending_id, .. } => {
                        g.answer(now, pending_id, ResolveOutcome::Vip(Ipv4Addr::new(100, 64, 0, 9)));
                    }
                    GnAction::Upstream { upstream_id, payload, transport } => {
                        // The real reply shape with garbage after the header.
                        g.upstream_sent(upstream_id, transport, 40_000);
                        let mut r = payload.clone();
                        r[2] |= 0x80;
                        r.extend_from_slice(&reply);
                        g.handle_upstream(now, transport, 40_000, &r);
                        g.handle_upstream(now, transport, 40_000, &reply);
                    }
                    _ => {}
                }
            }
            g.handle_timeout(now + Duration::from_secs(10));
            let sent = frames(&mut g);
            for f in sent {
                // Everything we emit parses back with valid checksums.
                let eth = parse_eth(&f).unwrap();
                if eth.ethertype() == ethernet::ETHERTYPE_IPV4 {
                    let ip = parse_ipv4(eth.payload(), true).unwrap();
                    if ip.protocol() == ipv4::PROTO_UDP {
                        parse_udp(&ip, true).unwrap();
                    } else {
                        prop_assert!(crate::wire::checksum::verify(ip.payload()));
                    }
                }
            }
        }
    }
}
