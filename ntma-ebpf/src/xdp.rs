//! The two XDP programs and their maps.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use ntma_common::{
    net::{eth, ipv4, udp},
    ntm, Verdict, XdpConfig, MAX_GNS, MAX_QUEUES,
};

const ETH_HLEN: usize = eth::HEADER_LEN;
const IPV4_MIN_HLEN: usize = ipv4::MIN_HEADER_LEN;

#[map(name = "NTMA_CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

#[map(name = "NTMA_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// The GNs' VIPs (host order); the value is unused.
#[map(name = "NTMA_GN_VIPS")]
static GN_VIPS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_GNS, 0);

#[map(name = "NTMA_LAN_XSKS")]
static LAN_XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map(name = "NTMA_WAN_XSKS")]
static WAN_XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// The frame is shorter than the header we need to read.
struct Short;

/// A pointer to a `T` at `offset` from the start of the frame, if the whole `T` lies
/// inside the frame. Every packet access goes through here, so this one check is what
/// the verifier sees for each read.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Short> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Short);
    }
    Ok((start + offset) as *const T)
}

/// Reads `N` bytes at `offset`.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Short> {
    let p = ptr_at::<[u8; N]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the N bytes lie between data and data_end, which the
    // kernel keeps valid for the program's whole run; a byte array has alignment 1.
    Ok(unsafe { p.read() })
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(c) = COUNTERS.get_ptr_mut(verdict.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array value: valid, aligned
        // for u64, and nothing else writes it while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// Whether `addr` (host order) is a GN's VIP. Only the presence of the key is read, so
/// no value is dereferenced.
#[inline(always)]
fn is_gn(addr: u32) -> bool {
    GN_VIPS.get_ptr(&addr).is_some()
}

#[inline(always)]
fn config() -> Option<XdpConfig> {
    CONFIG.get(0).copied().filter(XdpConfig::enabled)
}

/// The fixed 20-byte IPv4 header of an IPv4 frame, or `None` for other EtherTypes.
/// One bounds check covers every fixed field the programs read.
#[inline(always)]
fn ipv4_header(ctx: &XdpContext) -> Result<Option<[u8; IPV4_MIN_HLEN]>, Short> {
    let ethertype = u16::from_be_bytes(bytes_at::<2>(ctx, eth::field::ETHERTYPE.start)?);
    if ethertype != eth::ETHERTYPE_IPV4 {
        return Ok(None);
    }
    let ip = bytes_at::<IPV4_MIN_HLEN>(ctx, ETH_HLEN)?;
    if ip[0] >> 4 != 4 || usize::from(ip[0] & 0x0f) * 4 < IPV4_MIN_HLEN {
        return Err(Short);
    }
    Ok(Some(ip))
}

/// Offset of the L4 header (after IPv4 options). Reads there are checked on their own:
/// the verifier cannot carry a check at a variable offset over to constant ones.
#[inline(always)]
fn l4_offset(ip: &[u8; IPV4_MIN_HLEN]) -> usize {
    ETH_HLEN + usize::from(ip[0] & 0x0f) * 4
}

#[xdp]
pub fn ntma_lan(ctx: XdpContext) -> u32 {
    let (verdict, action) = match try_ntma_lan(&ctx) {
        Ok(v) => v,
        Err(Short) => (Verdict::LanMalformed, XDP_PASS),
    };
    count(verdict);
    action
}

fn try_ntma_lan(ctx: &XdpContext) -> Result<(Verdict, u32), Short> {
    let Some(cfg) = config() else {
        return Ok((Verdict::Unconfigured, XDP_PASS));
    };
    let Some(ip) = ipv4_header(ctx)? else {
        return Ok((Verdict::LanNotIpv4, XDP_PASS));
    };
    let at = ipv4::field::DST.start;
    let dst = u32::from_be_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    if dst == cfg.router_addr {
        return Ok((Verdict::LanToRouter, XDP_PASS));
    }
    if !cfg.is_vip(dst) {
        return Ok((Verdict::LanNotVip, XDP_PASS));
    }
    let at = ipv4::field::SRC.start;
    let src = u32::from_be_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    if !is_gn(src) {
        return Ok((Verdict::LanFromNonGn, XDP_PASS));
    }
    // The adapter does not answer ARP for GN VIPs, so GNs talk to each other directly;
    // such a frame reaches us only when a bridge floods it.
    if is_gn(dst) {
        return Ok((Verdict::LanGnToGn, XDP_PASS));
    }
    Ok(redirect(
        &LAN_XSKS,
        ctx,
        Verdict::LanRedirect,
        Verdict::LanNoSocket,
    ))
}

#[xdp]
pub fn ntma_wan(ctx: XdpContext) -> u32 {
    let (verdict, action) = match try_ntma_wan(&ctx) {
        Ok(v) => v,
        Err(Short) => (Verdict::WanMalformed, XDP_PASS),
    };
    count(verdict);
    action
}

fn try_ntma_wan(ctx: &XdpContext) -> Result<(Verdict, u32), Short> {
    let Some(cfg) = config() else {
        return Ok((Verdict::Unconfigured, XDP_PASS));
    };
    let Some(ip) = ipv4_header(ctx)? else {
        return Ok((Verdict::WanNotIpv4, XDP_PASS));
    };
    if ip[ipv4::field::PROTOCOL] != ipv4::PROTO_UDP {
        return Ok((Verdict::WanNotUdp, XDP_PASS));
    }
    let at = ipv4::field::FLG_OFF.start;
    let frag = u16::from_be_bytes([ip[at], ip[at + 1]]);
    if frag & (ipv4::MF | ipv4::OFFSET_MASK) != 0 {
        return Ok((Verdict::WanFragment, XDP_PASS));
    }
    let l4 = l4_offset(&ip);
    let dport = u16::from_be_bytes(bytes_at::<2>(ctx, l4 + udp::field::DST_PORT.start)?);
    if dport != cfg.ntm_port {
        return Ok((Verdict::WanOtherPort, XDP_PASS));
    }
    // Message type and version decide; length, tunnel, suite and tag are checked in
    // userspace, which counts each failure by its reason.
    let classify = bytes_at::<{ ntm::CLASSIFY.end }>(ctx, l4 + udp::HEADER_LEN)?;
    let msg_type = classify[ntm::field::TYPE];
    if msg_type != ntm::TYPE_DATA && msg_type != ntm::TYPE_TUN_KEEPALIVE {
        return Ok((Verdict::WanSignaling, XDP_PASS));
    }
    if classify[ntm::field::VERSION] != ntm::VERSION {
        // Another protocol version: the kernel's socket, whose endpoint counts it.
        return Ok((Verdict::WanOtherVersion, XDP_PASS));
    }
    Ok(redirect(
        &WAN_XSKS,
        ctx,
        Verdict::WanRedirect,
        Verdict::WanNoSocket,
    ))
}

/// Redirects to the AF_XDP socket of the frame's RX queue; passes the frame to the kernel
/// when no socket is registered for that queue.
#[inline(always)]
fn redirect(xsks: &XskMap, ctx: &XdpContext, ok: Verdict, none: Verdict) -> (Verdict, u32) {
    match xsks.redirect(ctx.rx_queue_index(), u64::from(XDP_PASS)) {
        Ok(action) => (ok, action),
        Err(action) if action == XDP_PASS => (none, XDP_PASS),
        // Unreachable with the XDP_PASS fallback above; abort so it shows in tracepoints.
        Err(_) => (none, XDP_ABORTED),
    }
}
