//! High-level representation of every message type of §4.

use core::net::{Ipv4Addr, SocketAddrV4};

use super::tlv::{TlvIter, TlvRef, TlvWriter, TLV_HEADER_LEN};
use super::{
    Fqdn, MessageType, Packet, Path, Role, Status, Suite, TlvType, HEADER_LEN, MAX_BODY_LEN,
    OVERHEAD, VERSION,
};
use crate::{Authenticator, Error, Result};

/// Longest REASON value in bytes.
pub const MAX_REASON_LEN: usize = 200;

/// A buffer of this many bytes holds every signaling datagram this crate
/// emits (the largest is a ROUTE_DIR with a 253-byte FQDN and both wrapped
/// keys, 412 bytes), as long as the `Repr` carries no [`ExtraTlvs`].
pub const MAX_SIGNALING_LEN: usize = 512;

/// Number of TLV type codes with a meaning (1..=18), plus slot 0.
const KNOWN_SLOTS: usize = 19;

/// The most TLVs any message type uses (ROUTE_DIR).
const MAX_USED: usize = 12;

/// Node capability flags (CAPS TLV).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Caps(pub u32);

impl Caps {
    /// Bit 0: a software node.
    pub const NODE: Caps = Caps(1);
    /// Bit 1: an adapter (NTMA) acting for a general node.
    pub const ADAPTER: Caps = Caps(2);
    /// Bit 2: a relay.
    pub const RELAY: Caps = Caps(4);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Caps) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Caps {
    type Output = Caps;
    fn bitor(self, rhs: Caps) -> Caps {
        Caps(self.0 | rhs.0)
    }
}

/// A VIP with its prefix length (VIP TLV).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, at most 32.
    pub prefix_len: u8,
}

/// Common header fields that a `Repr` carries. Version and suite are implied
/// (1 and HMAC-SHA256-128); the message type comes from the [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Tunnel id, node id or RS id, depending on the message type (§2).
    pub id: u32,
    /// Sequence number.
    pub seq: u64,
    /// Flag bit 0, RESPONSE-REQUIRED.
    pub response_required: bool,
}

/// REG_REQ: node → DC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegReq<'a> {
    /// Fresh random per registration (kept by retransmissions); REG_RESP echoes it.
    pub req_id: u32,
    /// The node's name; selects `K_node` at the DC.
    pub fqdn: Fqdn<'a>,
    /// The node's own address:port as it sees it.
    pub local_addr: SocketAddrV4,
    /// What the node is.
    pub caps: Caps,
}

/// What a successful REG_RESP grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The node id to use in the header of node-to-DC messages.
    pub node_id: u32,
    /// The node's VIP.
    pub vip: Vip,
    /// The source address:port the DC saw.
    pub observed: SocketAddrV4,
    /// Interval of the node's KEEPALIVE.
    pub keepalive_secs: u32,
    /// How long the registration lives.
    pub lifetime_secs: u32,
}

/// REG_RESP: DC → node. `Err` carries the non-OK STATUS, and then no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegResp {
    /// The REQ_ID of the REG_REQ answered.
    pub req_id: u32,
    /// The lease, or why there is none.
    pub result: core::result::Result<Lease, Status>,
}

/// KEEPALIVE_ACK: DC → node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveAck {
    /// The source address:port the DC saw.
    pub observed: SocketAddrV4,
}

/// DIR_REQ: node → DC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirReq<'a> {
    /// The requester's id for this request.
    pub req_id: u32,
    /// The target.
    pub fqdn: Fqdn<'a>,
}

/// The tunnel that a successful ROUTE_DIR describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Tunnel id, never 0.
    pub tunnel_id: u32,
    /// The peer's FQDN.
    pub peer_fqdn: Fqdn<'a>,
    /// The peer's VIP.
    pub peer_vip: Vip,
    /// Where to send the tunnel's messages.
    pub endpoint: SocketAddrV4,
    /// How the tunnel runs.
    pub path: Path,
    /// This node's role.
    pub role: Role,
    /// The tunnel's suite.
    pub suite: Suite,
    /// `K_tun`, wrapped with the "ntm1 key wrap" label.
    pub wrapped_key: [u8; 32],
    /// `K_relay`, wrapped with the "ntm1 relay wrap" label; present on RELAY paths.
    pub wrapped_relay_key: Option<[u8; 32]>,
    /// Receive-idle lifetime of the tunnel.
    pub lifetime_secs: u32,
}

/// ROUTE_DIR: DC → node. `Err` carries the non-OK STATUS, and then no tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDir<'a> {
    /// The DIR_REQ's REQ_ID, 0 towards the responder.
    pub req_id: u32,
    /// The tunnel, or why there is none.
    pub result: core::result::Result<Route<'a>, Status>,
}

/// ROUTE_ACK: node → DC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAck {
    /// The acknowledged tunnel.
    pub tunnel_id: u32,
}

/// TUN_REQ: initiator → responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunReq<'a> {
    /// The sender's FQDN.
    pub fqdn: Fqdn<'a>,
    /// The sender's VIP.
    pub vip: Vip,
}

/// TUN_RESP: responder → initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunResp<'a> {
    /// OK, or why the responder refuses.
    pub status: Status,
    /// The sender's FQDN.
    pub fqdn: Fqdn<'a>,
    /// The sender's VIP.
    pub vip: Vip,
}

/// RELAY_DIR: DC → RS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayDir {
    /// The relayed tunnel.
    pub tunnel_id: u32,
    /// `K_relay`, wrapped with `K_rs` and the "ntm1 relay wrap" label.
    pub wrapped_relay_key: [u8; 32],
    /// Idle lifetime of the binding.
    pub lifetime_secs: u32,
}

/// RELAY_ACK: RS → DC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAck {
    /// The acknowledged tunnel.
    pub tunnel_id: u32,
}

/// RELAY_BIND: node → RS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayBind {
    /// The sender's role in the tunnel.
    pub role: Role,
}

/// ERROR: any → any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMsg<'a> {
    /// What went wrong.
    pub status: Status,
    /// Optional text, at most 200 bytes of UTF-8.
    pub reason: Option<&'a str>,
}

/// The body of a datagram, by message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// DATA: one inner IPv4 packet, not interpreted here.
    Data {
        /// The inner packet.
        payload: &'a [u8],
    },
    /// TUN_KEEPALIVE.
    TunKeepalive,
    /// REG_REQ.
    RegReq(RegReq<'a>),
    /// REG_RESP.
    RegResp(RegResp),
    /// KEEPALIVE.
    Keepalive,
    /// KEEPALIVE_ACK.
    KeepaliveAck(KeepaliveAck),
    /// DEREG.
    Dereg,
    /// DIR_REQ.
    DirReq(DirReq<'a>),
    /// ROUTE_DIR.
    RouteDir(RouteDir<'a>),
    /// ROUTE_ACK.
    RouteAck(RouteAck),
    /// TUN_REQ.
    TunReq(TunReq<'a>),
    /// TUN_RESP.
    TunResp(TunResp<'a>),
    /// RELAY_DIR.
    RelayDir(RelayDir),
    /// RELAY_ACK.
    RelayAck(RelayAck),
    /// RELAY_BIND.
    RelayBind(RelayBind),
    /// ERROR.
    Error(ErrorMsg<'a>),
}

impl Message<'_> {
    /// The header type code of this message.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Data { .. } => MessageType::Data,
            Message::TunKeepalive => MessageType::TunKeepalive,
            Message::RegReq(_) => MessageType::RegReq,
            Message::RegResp(_) => MessageType::RegResp,
            Message::Keepalive => MessageType::Keepalive,
            Message::KeepaliveAck(_) => MessageType::KeepaliveAck,
            Message::Dereg => MessageType::Dereg,
            Message::DirReq(_) => MessageType::DirReq,
            Message::RouteDir(_) => MessageType::RouteDir,
            Message::RouteAck(_) => MessageType::RouteAck,
            Message::TunReq(_) => MessageType::TunReq,
            Message::TunResp(_) => MessageType::TunResp,
            Message::RelayDir(_) => MessageType::RelayDir,
            Message::RelayAck(_) => MessageType::RelayAck,
            Message::RelayBind(_) => MessageType::RelayBind,
            Message::Error(_) => MessageType::Error,
        }
    }
}

/// TLVs that a message carried but its type does not use (unknown types
/// below 0x80, or known types that belong to other messages), kept verbatim
/// with their position so that re-encoding reproduces the datagram. Only the
/// first [`ExtraTlvs::CAPACITY`] are kept; the rest are skipped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtraTlvs<'a> {
    items: [(u8, TlvRef<'a>); ExtraTlvs::CAPACITY],
    len: u8,
}

impl<'a> ExtraTlvs<'a> {
    /// How many extra TLVs are kept.
    pub const CAPACITY: usize = 4;

    /// No extra TLVs.
    pub const EMPTY: ExtraTlvs<'static> = ExtraTlvs {
        items: [(
            0,
            TlvRef {
                tlv_type: 0,
                value: &[],
            },
        ); ExtraTlvs::CAPACITY],
        len: 0,
    };

    /// Add a TLV to emit before the used TLV number `position` (in the
    /// message's canonical order; past the last one means at the end).
    /// Returns false when full. The caller keeps positions non-decreasing and
    /// types distinct from each other and from the message's own TLVs.
    pub fn push(&mut self, position: u8, tlv: TlvRef<'a>) -> bool {
        let i = usize::from(self.len);
        if i == Self::CAPACITY {
            return false;
        }
        self.items[i] = (position, tlv);
        self.len += 1;
        true
    }

    /// Number kept.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(position, tlv)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, TlvRef<'a>)> + '_ {
        self.items[..self.len()].iter().copied()
    }
}

/// A TLV value to emit.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    U8(u8),
    U32(u32),
    Addr(SocketAddrV4),
    Vip(Vip),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::U8(_) => 1,
            Value::U32(_) => 4,
            Value::Addr(_) => 6,
            Value::Vip(_) => 5,
            Value::Bytes(b) => b.len(),
        }
    }

    fn put(&self, tlv_type: u8, w: &mut TlvWriter<'_>) {
        let mut tmp = [0u8; 6];
        let bytes: &[u8] = match *self {
            Value::U8(v) => {
                tmp[0] = v;
                &tmp[..1]
            }
            Value::U32(v) => {
                tmp[..4].copy_from_slice(&v.to_be_bytes());
                &tmp[..4]
            }
            Value::Addr(a) => {
                tmp[..4].copy_from_slice(&a.ip().octets());
                tmp[4..].copy_from_slice(&a.port().to_be_bytes());
                &tmp[..6]
            }
            Value::Vip(v) => {
                tmp[..4].copy_from_slice(&v.addr.octets());
                tmp[4] = v.prefix_len;
                &tmp[..5]
            }
            Value::Bytes(b) => b,
        };
        w.put(tlv_type, bytes);
    }
}

/// The used TLVs of a message in canonical order, without allocation.
struct UsedTlvs<'a> {
    items: [(u8, Value<'a>); MAX_USED],
    len: usize,
}

impl<'a> UsedTlvs<'a> {
    fn push(&mut self, t: TlvType, v: Value<'a>) {
        self.items[self.len] = (t.into(), v);
        self.len += 1;
    }

    fn as_slice(&self) -> &[(u8, Value<'a>)] {
        &self.items[..self.len]
    }

    /// STATUS OK and the lease of a granting REG_RESP.
    fn push_lease(&mut self, l: &Lease) {
        use TlvType as T;
        self.push(T::Status, Value::U8(Status::Ok.into()));
        self.push(T::NodeId, Value::U32(l.node_id));
        self.push(T::Vip, Value::Vip(l.vip));
        self.push(T::ObservedAddr, Value::Addr(l.observed));
        self.push(T::KeepaliveSecs, Value::U32(l.keepalive_secs));
        self.push(T::LifetimeSecs, Value::U32(l.lifetime_secs));
    }

    /// STATUS OK and the route of a directing ROUTE_DIR.
    fn push_route(&mut self, r: &'a Route<'a>) {
        use TlvType as T;
        self.push(T::Status, Value::U8(Status::Ok.into()));
        self.push(T::TunnelId, Value::U32(r.tunnel_id));
        self.push(T::Fqdn, Value::Bytes(r.peer_fqdn.as_bytes()));
        self.push(T::Vip, Value::Vip(r.peer_vip));
        self.push(T::Endpoint, Value::Addr(r.endpoint));
        self.push(T::Path, Value::U8(r.path.into()));
        self.push(T::Role, Value::U8(r.role.into()));
        self.push(T::Suite, Value::U8(r.suite.into()));
        self.push(T::WrappedKey, Value::Bytes(&r.wrapped_key));
        if let Some(k) = &r.wrapped_relay_key {
            self.push(T::WrappedRelayKey, Value::Bytes(k));
        }
        self.push(T::LifetimeSecs, Value::U32(r.lifetime_secs));
    }
}

impl Message<'_> {
    fn used_tlvs(&self) -> UsedTlvs<'_> {
        use TlvType as T;
        let mut u = UsedTlvs {
            items: [(0, Value::U8(0)); MAX_USED],
            len: 0,
        };
        match self {
            Message::Data { .. } | Message::TunKeepalive | Message::Keepalive | Message::Dereg => {}
            Message::RegReq(r) => {
                u.push(T::ReqId, Value::U32(r.req_id));
                u.push(T::Fqdn, Value::Bytes(r.fqdn.as_bytes()));
                u.push(T::LocalAddr, Value::Addr(r.local_addr));
                u.push(T::Caps, Value::U32(r.caps.0));
            }
            Message::RegResp(r) => {
                u.push(T::ReqId, Value::U32(r.req_id));
                match &r.result {
                    Ok(l) => u.push_lease(l),
                    Err(s) => u.push(T::Status, Value::U8((*s).into())),
                }
            }
            Message::KeepaliveAck(k) => u.push(T::ObservedAddr, Value::Addr(k.observed)),
            Message::DirReq(d) => {
                u.push(T::ReqId, Value::U32(d.req_id));
                u.push(T::Fqdn, Value::Bytes(d.fqdn.as_bytes()));
            }
            Message::RouteDir(d) => {
                u.push(T::ReqId, Value::U32(d.req_id));
                match &d.result {
                    Ok(r) => u.push_route(r),
                    Err(s) => u.push(T::Status, Value::U8((*s).into())),
                }
            }
            Message::RouteAck(a) => u.push(T::TunnelId, Value::U32(a.tunnel_id)),
            Message::TunReq(t) => {
                u.push(T::Fqdn, Value::Bytes(t.fqdn.as_bytes()));
                u.push(T::Vip, Value::Vip(t.vip));
            }
            Message::TunResp(t) => {
                u.push(T::Status, Value::U8(t.status.into()));
                u.push(T::Fqdn, Value::Bytes(t.fqdn.as_bytes()));
                u.push(T::Vip, Value::Vip(t.vip));
            }
            Message::RelayDir(r) => {
                u.push(T::TunnelId, Value::U32(r.tunnel_id));
                u.push(T::WrappedRelayKey, Value::Bytes(&r.wrapped_relay_key));
                u.push(T::LifetimeSecs, Value::U32(r.lifetime_secs));
            }
            Message::RelayAck(a) => u.push(T::TunnelId, Value::U32(a.tunnel_id)),
            Message::RelayBind(b) => u.push(T::Role, Value::U8(b.role.into())),
            Message::Error(e) => {
                u.push(T::Status, Value::U8(e.status.into()));
                if let Some(r) = e.reason {
                    u.push(T::Reason, Value::Bytes(r.as_bytes()));
                }
            }
        }
        u
    }
}

/// Known TLVs of a body by type code, with a record of which ones the message
/// type used.
struct Tlvs<'a> {
    known: [Option<&'a [u8]>; KNOWN_SLOTS],
    used: u32,
}

impl<'a> Tlvs<'a> {
    fn get(&mut self, t: TlvType) -> Option<&'a [u8]> {
        let code = usize::from(u8::from(t));
        let v = self.known[code];
        if v.is_some() {
            self.used |= 1 << code;
        }
        v
    }

    fn req(&mut self, t: TlvType) -> Result<&'a [u8]> {
        self.get(t).ok_or(Error::MissingTlv)
    }

    fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N]> {
        v.try_into().map_err(|_| Error::BadTlvLength)
    }

    fn u8(&mut self, t: TlvType) -> Result<u8> {
        Ok(Self::fixed::<1>(self.req(t)?)?[0])
    }

    fn u32(&mut self, t: TlvType) -> Result<u32> {
        Ok(u32::from_be_bytes(Self::fixed(self.req(t)?)?))
    }

    fn tunnel_id(&mut self) -> Result<u32> {
        match self.u32(TlvType::TunnelId)? {
            0 => Err(Error::BadTlvValue),
            id => Ok(id),
        }
    }

    fn addr(&mut self, t: TlvType) -> Result<SocketAddrV4> {
        let b: [u8; 6] = Self::fixed(self.req(t)?)?;
        Ok(SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            u16::from_be_bytes([b[4], b[5]]),
        ))
    }

    fn vip(&mut self) -> Result<Vip> {
        let b: [u8; 5] = Self::fixed(self.req(TlvType::Vip)?)?;
        if b[4] > 32 {
            return Err(Error::BadTlvValue);
        }
        Ok(Vip {
            addr: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            prefix_len: b[4],
        })
    }

    fn key(&mut self, t: TlvType) -> Result<[u8; 32]> {
        Self::fixed(self.req(t)?)
    }

    fn opt_key(&mut self, t: TlvType) -> Result<Option<[u8; 32]>> {
        self.get(t).map(Self::fixed).transpose()
    }

    fn fqdn(&mut self) -> Result<Fqdn<'a>> {
        Fqdn::from_bytes(self.req(TlvType::Fqdn)?)
    }

    fn status(&mut self) -> Result<Status> {
        self.u8(TlvType::Status).map(Status::from)
    }

    fn path(&mut self) -> Result<Path> {
        match Path::from(self.u8(TlvType::Path)?) {
            Path::Unknown(_) => Err(Error::BadTlvValue),
            p => Ok(p),
        }
    }

    fn role(&mut self) -> Result<Role> {
        match Role::from(self.u8(TlvType::Role)?) {
            Role::Unknown(_) => Err(Error::BadTlvValue),
            r => Ok(r),
        }
    }

    fn reason(&mut self) -> Result<Option<&'a str>> {
        match self.get(TlvType::Reason) {
            None => Ok(None),
            Some(v) if v.len() > MAX_REASON_LEN => Err(Error::BadTlvValue),
            Some(v) => core::str::from_utf8(v)
                .map(Some)
                .map_err(|_| Error::BadTlvValue),
        }
    }

    fn is_used(&self, code: u8) -> bool {
        usize::from(code) < KNOWN_SLOTS && self.used & (1 << code) != 0
    }
}

/// Check TLV framing and the type rules, and index the known TLVs.
fn scan(body: &[u8]) -> Result<Tlvs<'_>> {
    let mut seen: u128 = 0;
    let mut tlvs = Tlvs {
        known: [None; KNOWN_SLOTS],
        used: 0,
    };
    for item in TlvIter::new(body) {
        let tlv = item?;
        if tlv.tlv_type >= TlvType::CRITICAL {
            // No type at or above 0x80 is defined in version 1.
            return Err(Error::UnknownCriticalTlv);
        }
        let bit = 1u128 << tlv.tlv_type;
        if seen & bit != 0 {
            return Err(Error::DuplicateTlv);
        }
        seen |= bit;
        if usize::from(tlv.tlv_type) < KNOWN_SLOTS && tlv.tlv_type != 0 {
            tlvs.known[usize::from(tlv.tlv_type)] = Some(tlv.value);
        }
    }
    Ok(tlvs)
}

/// The lease of a REG_RESP with STATUS OK.
fn parse_lease(t: &mut Tlvs<'_>) -> Result<Lease> {
    use TlvType as T;
    Ok(Lease {
        node_id: t.u32(T::NodeId)?,
        vip: t.vip()?,
        observed: t.addr(T::ObservedAddr)?,
        keepalive_secs: t.u32(T::KeepaliveSecs)?,
        lifetime_secs: t.u32(T::LifetimeSecs)?,
    })
}

/// The route of a ROUTE_DIR with STATUS OK (RELAY needs WRAPPED_RELAY_KEY).
fn parse_route<'a>(t: &mut Tlvs<'a>) -> Result<Route<'a>> {
    use TlvType as T;
    let tunnel_id = t.tunnel_id()?;
    let peer_fqdn = t.fqdn()?;
    let peer_vip = t.vip()?;
    let endpoint = t.addr(T::Endpoint)?;
    let path = t.path()?;
    let role = t.role()?;
    let suite = Suite::from(t.u8(T::Suite)?);
    let wrapped_key = t.key(T::WrappedKey)?;
    let wrapped_relay_key = t.opt_key(T::WrappedRelayKey)?;
    if path == Path::Relay && wrapped_relay_key.is_none() {
        return Err(Error::MissingTlv);
    }
    let lifetime_secs = t.u32(T::LifetimeSecs)?;
    Ok(Route {
        tunnel_id,
        peer_fqdn,
        peer_vip,
        endpoint,
        path,
        role,
        suite,
        wrapped_key,
        wrapped_relay_key,
        lifetime_secs,
    })
}

fn parse_message<'a>(msg_type: MessageType, t: &mut Tlvs<'a>) -> Result<Message<'a>> {
    use TlvType as T;
    Ok(match msg_type {
        MessageType::Data | MessageType::Unknown(_) => return Err(Error::UnknownType),
        MessageType::TunKeepalive => Message::TunKeepalive,
        MessageType::Keepalive => Message::Keepalive,
        MessageType::Dereg => Message::Dereg,
        MessageType::RegReq => Message::RegReq(RegReq {
            req_id: t.u32(T::ReqId)?,
            fqdn: t.fqdn()?,
            local_addr: t.addr(T::LocalAddr)?,
            caps: Caps(t.u32(T::Caps)?),
        }),
        MessageType::RegResp => Message::RegResp(RegResp {
            req_id: t.u32(T::ReqId)?,
            result: match t.status()? {
                Status::Ok => Ok(parse_lease(t)?),
                s => Err(s),
            },
        }),
        MessageType::KeepaliveAck => Message::KeepaliveAck(KeepaliveAck {
            observed: t.addr(T::ObservedAddr)?,
        }),
        MessageType::DirReq => Message::DirReq(DirReq {
            req_id: t.u32(T::ReqId)?,
            fqdn: t.fqdn()?,
        }),
        MessageType::RouteDir => {
            let req_id = t.u32(T::ReqId)?;
            let result = match t.status()? {
                Status::Ok => Ok(parse_route(t)?),
                s => Err(s),
            };
            Message::RouteDir(RouteDir { req_id, result })
        }
        MessageType::RouteAck => Message::RouteAck(RouteAck {
            tunnel_id: t.tunnel_id()?,
        }),
        MessageType::TunReq => Message::TunReq(TunReq {
            fqdn: t.fqdn()?,
            vip: t.vip()?,
        }),
        MessageType::TunResp => Message::TunResp(TunResp {
            status: t.status()?,
            fqdn: t.fqdn()?,
            vip: t.vip()?,
        }),
        MessageType::RelayDir => Message::RelayDir(RelayDir {
            tunnel_id: t.tunnel_id()?,
            wrapped_relay_key: t.key(T::WrappedRelayKey)?,
            lifetime_secs: t.u32(T::LifetimeSecs)?,
        }),
        MessageType::RelayAck => Message::RelayAck(RelayAck {
            tunnel_id: t.tunnel_id()?,
        }),
        MessageType::RelayBind => Message::RelayBind(RelayBind { role: t.role()? }),
        MessageType::Error => Message::Error(ErrorMsg {
            status: t.status()?,
            reason: t.reason()?,
        }),
    })
}

/// A whole datagram's meaning, without the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// Header fields.
    pub header: Header,
    /// The message.
    pub message: Message<'a>,
    /// TLVs that the message type does not use, kept for re-encoding.
    pub extra: ExtraTlvs<'a>,
}

impl<'a> Repr<'a> {
    /// A message with no extra TLVs.
    pub fn new(header: Header, message: Message<'a>) -> Repr<'a> {
        Repr {
            header,
            message,
            extra: ExtraTlvs::EMPTY,
        }
    }

    /// Parse and validate a datagram: length, version, suite, message type,
    /// then every TLV rule of §4 (unknown types below 0x80 skipped, 0x80 and
    /// up invalid, duplicates and overruns invalid, fixed lengths, FQDN
    /// rules, the TLVs each type requires). Does not check the tag.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        let msg_type = packet.check_header()?;
        let header = Header {
            id: packet.id(),
            seq: packet.seq(),
            response_required: packet.response_required(),
        };
        let body = packet.body();
        if msg_type == MessageType::Data {
            return Ok(Repr::new(header, Message::Data { payload: body }));
        }
        let mut tlvs = scan(body)?;
        let message = parse_message(msg_type, &mut tlvs)?;
        // Second pass: everything not used by the message becomes an extra,
        // positioned by how many used TLVs preceded it.
        let mut extra = ExtraTlvs::EMPTY;
        let mut used_before: u8 = 0;
        for tlv in TlvIter::new(body).flatten() {
            if tlvs.is_used(tlv.tlv_type) {
                used_before += 1;
            } else {
                // Beyond the capacity, extras are skipped like the spec says.
                let _ = extra.push(used_before, tlv);
            }
        }
        Ok(Repr {
            header,
            message,
            extra,
        })
    }

    /// Length of the body this `Repr` emits.
    pub fn body_len(&self) -> usize {
        match self.message {
            Message::Data { payload } => payload.len(),
            _ => {
                let used: usize = self
                    .message
                    .used_tlvs()
                    .as_slice()
                    .iter()
                    .map(|(_, v)| TLV_HEADER_LEN + v.len())
                    .sum();
                let extra: usize = self
                    .extra
                    .iter()
                    .map(|(_, t)| TLV_HEADER_LEN + t.value.len())
                    .sum();
                used + extra
            }
        }
    }

    /// Length of the whole datagram, tag included.
    pub fn buffer_len(&self) -> usize {
        OVERHEAD + self.body_len()
    }

    /// Write header and body into `packet`, whose buffer must be exactly
    /// [`Repr::buffer_len`] bytes long (it panics otherwise). The tag is left
    /// untouched: seal it next.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        assert_eq!(
            packet.total_len(),
            self.buffer_len(),
            "emit buffer must be buffer_len() bytes"
        );
        packet.set_version(VERSION);
        packet.set_msg_type(self.message.msg_type());
        packet.set_response_required(self.header.response_required);
        packet.set_suite(Suite::HmacSha256_128);
        packet.set_id(self.header.id);
        packet.set_seq(self.header.seq);
        let body = packet.body_mut();
        if let Message::Data { payload } = self.message {
            body.copy_from_slice(payload);
            return;
        }
        let used = self.message.used_tlvs();
        let mut w = TlvWriter::new(body);
        let mut extras = self.extra.iter().peekable();
        for (i, (t, v)) in used.as_slice().iter().enumerate() {
            while let Some((_, x)) = extras.next_if(|(pos, _)| usize::from(*pos) <= i) {
                w.put(x.tlv_type, x.value);
            }
            v.put(*t, &mut w);
        }
        for (_, x) in extras {
            w.put(x.tlv_type, x.value);
        }
        debug_assert_eq!(w.written(), self.body_len());
    }

    /// Emit into the front of `buf` and seal the tag with suite 1 (every
    /// signaling message, §2). Returns the datagram length.
    pub fn emit_sealed(&self, buf: &mut [u8], auth: &Authenticator) -> Result<usize> {
        let (out, len) = self.emit_front(buf)?;
        auth.seal(out)?;
        Ok(len)
    }

    /// Emit into the front of `buf` and seal it with a tunnel's direction
    /// key in the tunnel's suite (TUN_REQ, TUN_RESP, TUN_KEEPALIVE, DATA;
    /// suite 2 encrypts the body). Returns the datagram length.
    pub fn emit_sealed_with(&self, buf: &mut [u8], cipher: &crate::Cipher) -> Result<usize> {
        let (out, len) = self.emit_front(buf)?;
        cipher.seal(out)?;
        Ok(len)
    }

    fn emit_front<'b>(&self, buf: &'b mut [u8]) -> Result<(&'b mut [u8], usize)> {
        let body_len = self.body_len();
        if body_len > MAX_BODY_LEN {
            return Err(Error::TooLong);
        }
        let len = self.buffer_len();
        let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        self.emit(&mut Packet::new_unchecked(&mut *out));
        Ok((out, len))
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Check the header in the order of §5: length, version, a defined suite
    /// (1 or 2; whether it is the one expected for the key is the key's
    /// check, [`crate::Cipher::open`]), then that the message type is known.
    /// Returns the type.
    pub fn check_header(&self) -> Result<MessageType> {
        self.check_len()?;
        if self.version() != VERSION {
            return Err(Error::BadVersion);
        }
        if matches!(self.suite(), Suite::Unknown(_)) {
            return Err(Error::UnsupportedSuite);
        }
        match self.msg_type() {
            MessageType::Unknown(_) => Err(Error::UnknownType),
            t => Ok(t),
        }
    }
}

const _: () = assert!(HEADER_LEN == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // The dir_req vector.
    const DIR_REQ: &str = "0220010100000007187afca767ca00010600040000002a01000b636e2e6e746d2e74657374575dca65fad3992414192aca10ab1965";

    fn dir_req_repr() -> Repr<'static> {
        Repr::new(
            Header {
                id: 7,
                seq: 0x187a_fca7_67ca_0001,
                response_required: true,
            },
            Message::DirReq(DirReq {
                req_id: 42,
                fqdn: Fqdn::new("cn.ntm.test").unwrap(),
            }),
        )
    }

    #[test]
    fn test_parse() {
        let bytes = hex(DIR_REQ);
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr, dir_req_repr());
    }

    #[test]
    fn test_emit() {
        let bytes = hex(DIR_REQ);
        let repr = dir_req_repr();
        assert_eq!(repr.buffer_len(), bytes.len());
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..out.len() - 16], &bytes[..bytes.len() - 16]);
    }

    fn body_repr(msg_type: u8, body: &[u8]) -> Result<Repr<'_>> {
        let mut d = vec![2, msg_type, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        d.extend_from_slice(body);
        d.extend_from_slice(&[0; 16]);
        let leaked: &'static [u8] = Box::leak(d.into_boxed_slice());
        Repr::parse(&Packet::new_unchecked(leaked))
    }

    #[test]
    fn missing_and_bad_values() {
        // DIR_REQ without FQDN.
        assert_eq!(
            body_repr(0x20, &[6, 0, 4, 0, 0, 0, 1]).unwrap_err(),
            Error::MissingTlv
        );
        // REQ_ID of 3 bytes.
        assert_eq!(
            body_repr(0x20, &[6, 0, 3, 0, 0, 1, 1, 0, 1, b'a']).unwrap_err(),
            Error::BadTlvLength
        );
        // ROUTE_ACK with TUNNEL_ID 0.
        assert_eq!(
            body_repr(0x22, &[7, 0, 4, 0, 0, 0, 0]).unwrap_err(),
            Error::BadTlvValue
        );
        // RELAY_BIND with ROLE 3.
        assert_eq!(
            body_repr(0x42, &[9, 0, 1, 3]).unwrap_err(),
            Error::BadTlvValue
        );
        // TUN_REQ with prefix 33.
        assert_eq!(
            body_repr(0x30, &[1, 0, 1, b'a', 3, 0, 5, 100, 64, 0, 2, 33]).unwrap_err(),
            Error::BadTlvValue
        );
        // ERROR with bad UTF-8 reason.
        assert_eq!(
            body_repr(0x7f, &[5, 0, 1, 6, 18, 0, 1, 0xff]).unwrap_err(),
            Error::BadTlvValue
        );
        // Unknown message type.
        assert_eq!(body_repr(0x03, &[]).unwrap_err(), Error::UnknownType);
        // Type 0 TLV is unknown and non-critical: skipped and kept.
        let r = body_repr(0x12, &[0, 0, 0]).unwrap();
        assert_eq!(r.message, Message::Keepalive);
        assert_eq!(r.extra.len(), 1);
    }

    #[test]
    fn non_ok_status_keeps_other_tlvs_as_extras() {
        // REG_RESP DENIED with a NODE_ID anyway.
        let body = [6, 0, 4, 0, 0, 0, 1, 5, 0, 1, 2, 4, 0, 4, 0, 0, 0, 9];
        let r = body_repr(0x11, &body).unwrap();
        assert_eq!(
            r.message,
            Message::RegResp(RegResp {
                req_id: 1,
                result: Err(Status::Denied)
            })
        );
        assert_eq!(r.extra.len(), 1);
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[16..16 + body.len()], &body);
    }

    #[test]
    fn extras_beyond_capacity_are_skipped() {
        let body: Vec<u8> = (0x60..0x66).flat_map(|t| [t, 0, 0]).collect();
        let r = body_repr(0x14, &body).unwrap();
        assert_eq!(r.message, Message::Dereg);
        assert_eq!(r.extra.len(), ExtraTlvs::CAPACITY);
    }

    #[test]
    fn emit_sealed_checks_size() {
        let auth = Authenticator::new(&crate::Key::from_bytes([7; 32]));
        let repr = dir_req_repr();
        let mut small = [0u8; 40];
        assert_eq!(
            repr.emit_sealed(&mut small, &auth),
            Err(Error::BufferTooSmall)
        );
        let mut buf = [0u8; MAX_SIGNALING_LEN];
        let n = repr.emit_sealed(&mut buf, &auth).unwrap();
        assert!(auth.verify(&buf[..n]).is_ok());
    }
}
