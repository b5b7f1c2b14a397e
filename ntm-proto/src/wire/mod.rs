//! Wire format of NTMobile v2 (§2, §4 of the spec): zero-copy views and
//! high-level representations.
//!
//! The layering follows smoltcp:
//!
//! * [`Packet`] is a typed view over any `T: AsRef<[u8]>` (add `AsMut` for the
//!   setters). [`Packet::new_unchecked`] wraps a buffer without looking at it;
//!   [`Packet::check_len`] makes every accessor panic-free afterwards, and
//!   [`Packet::new_checked`] does both. Never call `new_checked` on a reused
//!   transmit buffer: its length says nothing about the datagram about to be
//!   written; size it with [`Repr::buffer_len`] instead.
//! * [`TlvIter`] walks a TLV body and [`Tlv`] views one TLV.
//! * [`Repr`] is the parsed meaning of a whole datagram: [`Repr::parse`]
//!   checks version, suite, message type and every TLV rule of §4, and
//!   [`Repr::emit`] writes it back. The tag is not part of the `Repr`: verify
//!   it with [`crate::Authenticator::verify`] before acting on anything, seal
//!   it with [`crate::Authenticator::seal`] after emitting (or use
//!   [`Repr::emit_sealed`]).
//!
//! Emitting writes the TLVs of each message type in the order of the table
//! in §4 (the order of the conformance vectors). TLVs that a message type does
//! not use (unknown types below 0x80, or known ones that do not belong to it)
//! are skipped by the parser but kept, up to [`ExtraTlvs::CAPACITY`], with
//! their position, so that parse→emit reproduces a canonical datagram byte
//! for byte.

mod fqdn;
mod packet;
mod repr;
mod tlv;

pub use fqdn::{validate_fqdn, Fqdn, MAX_FQDN_LEN};
pub use packet::{Packet, HEADER_LEN, MAX_BODY_LEN, MAX_DATAGRAM_LEN, OVERHEAD, TAG_LEN, VERSION};
pub use repr::{
    Caps, DirReq, ErrorMsg, ExtraTlvs, Header, KeepaliveAck, Lease, Message, RegReq, RegResp,
    RelayAck, RelayBind, RelayDir, Repr, Route, RouteAck, RouteDir, TunReq, TunResp, Vip,
    MAX_REASON_LEN, MAX_SIGNALING_LEN,
};
pub use tlv::{Tlv, TlvIter, TlvRef, TLV_HEADER_LEN};

/// Defines a `u8`-coded enum whose unknown codes are kept as `Unknown(u8)`.
macro_rules! enum_with_unknown {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+,
            /// A code this implementation does not know.
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(value: u8) -> Self {
                match value {
                    $( $value => $name::$variant ),+,
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value ),+,
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

enum_with_unknown! {
    /// Message type (header byte 1), §4.
    pub enum MessageType {
        /// 0x01: tunnel data.
        Data = 0x01,
        /// 0x02: tunnel keep-alive.
        TunKeepalive = 0x02,
        /// 0x10: registration request.
        RegReq = 0x10,
        /// 0x11: registration response.
        RegResp = 0x11,
        /// 0x12: node-to-DC keep-alive.
        Keepalive = 0x12,
        /// 0x13: keep-alive acknowledgement.
        KeepaliveAck = 0x13,
        /// 0x14: deregistration.
        Dereg = 0x14,
        /// 0x20: direction request.
        DirReq = 0x20,
        /// 0x21: route direction.
        RouteDir = 0x21,
        /// 0x22: route direction acknowledgement.
        RouteAck = 0x22,
        /// 0x30: tunnel request.
        TunReq = 0x30,
        /// 0x31: tunnel response.
        TunResp = 0x31,
        /// 0x40: relay direction (DC to RS).
        RelayDir = 0x40,
        /// 0x41: relay acknowledgement (RS to DC).
        RelayAck = 0x41,
        /// 0x42: relay binding (node to RS).
        RelayBind = 0x42,
        /// 0x7f: error.
        Error = 0x7f,
    }
}

enum_with_unknown! {
    /// Protection suite (header byte 3, SUITE TLV), §2.1.
    pub enum Suite {
        /// 1: HMAC-SHA256 truncated to 128 bits: integrity only. Every
        /// signaling message with the DC and the RS.
        HmacSha256_128 = 1,
        /// 2: AES-256-GCM: integrity and confidentiality. The DC's default
        /// tunnel suite.
        Aes256Gcm = 2,
    }
}

enum_with_unknown! {
    /// STATUS TLV values.
    pub enum Status {
        /// 0
        Ok = 0,
        /// 1
        NotFound = 1,
        /// 2
        Denied = 2,
        /// 3
        Unreachable = 3,
        /// 4
        BadRequest = 4,
        /// 5
        Exhausted = 5,
        /// 6
        Internal = 6,
    }
}

enum_with_unknown! {
    /// PATH TLV values. `Unknown` never comes out of [`Repr::parse`].
    pub enum Path {
        /// 1: straight between the nodes.
        Direct = 1,
        /// 2: the node behind NAT opens the tunnel towards the other.
        Reverse = 2,
        /// 3: through the relay server.
        Relay = 3,
    }
}

enum_with_unknown! {
    /// ROLE TLV values. `Unknown` never comes out of [`Repr::parse`].
    pub enum Role {
        /// 1: sends TUN_REQ.
        Initiator = 1,
        /// 2: answers TUN_RESP.
        Responder = 2,
    }
}

impl Path {
    /// Lower-case name for logs and status output.
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reverse => "reverse",
            Path::Relay => "relay",
            Path::Unknown(_) => "unknown",
        }
    }
}

impl Suite {
    /// Lower-case name for logs and status output.
    pub fn name(self) -> &'static str {
        match self {
            Suite::HmacSha256_128 => "hmac-sha256-128",
            Suite::Aes256Gcm => "aes-256-gcm",
            Suite::Unknown(_) => "unknown",
        }
    }
}

impl Role {
    /// Lower-case name for logs and status output.
    pub fn name(self) -> &'static str {
        match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
            Role::Unknown(_) => "unknown",
        }
    }
}

enum_with_unknown! {
    /// TLV type codes, §4.
    pub enum TlvType {
        /// 1
        Fqdn = 1,
        /// 2
        LocalAddr = 2,
        /// 3
        Vip = 3,
        /// 4
        NodeId = 4,
        /// 5
        Status = 5,
        /// 6
        ReqId = 6,
        /// 7
        TunnelId = 7,
        /// 8
        Path = 8,
        /// 9
        Role = 9,
        /// 10
        Suite = 10,
        /// 11
        WrappedKey = 11,
        /// 12
        KeepaliveSecs = 12,
        /// 13
        LifetimeSecs = 13,
        /// 14
        ObservedAddr = 14,
        /// 15
        Endpoint = 15,
        /// 16
        Caps = 16,
        /// 17
        WrappedRelayKey = 17,
        /// 18
        Reason = 18,
    }
}

impl TlvType {
    /// Types at or above this code are critical: unknown ones make a message invalid.
    pub const CRITICAL: u8 = 0x80;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(MessageType::from(v)), v);
            assert_eq!(u8::from(Status::from(v)), v);
            assert_eq!(u8::from(TlvType::from(v)), v);
            assert_eq!(u8::from(Path::from(v)), v);
            assert_eq!(u8::from(Role::from(v)), v);
            assert_eq!(u8::from(Suite::from(v)), v);
        }
        assert_eq!(MessageType::from(0x21), MessageType::RouteDir);
        assert_eq!(MessageType::from(0x03), MessageType::Unknown(3));
    }
}
