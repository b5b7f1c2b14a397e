//! NTMobile wire protocol v1, sans-IO: typed packet views, authentication,
//! key wrap, replay window and signaling state machines.
//!
//! This crate does no I/O and reads no clock: callers hand it datagrams and
//! `Instant`s and take datagrams and deadlines back.
//!
//! * [`wire`]: [`Packet`] (zero-copy header/body/tag view), [`wire::TlvIter`],
//!   and [`Repr`] with one struct per message type of §4 (`parse`, `emit`).
//! * [`auth`]: [`Key`], [`Authenticator`] (HMAC-SHA256-128 keyed once,
//!   constant-time verify), key wrap and unwrap.
//! * [`replay`]: the 2048-packet [`ReplayWindow`].
//! * [`data`]: the DATA fast path, [`data::encap_in_place`] and [`data::decap`].
//!
//! # Example: build, seal, verify and parse a DIR_REQ
//!
//! ```
//! use ntm_proto::wire::{DirReq, Fqdn, Header, Message, Packet, Repr, MAX_SIGNALING_LEN};
//! use ntm_proto::{Authenticator, Key};
//!
//! let k_node = Authenticator::new(&Key::from_bytes([7; 32]));
//! let repr = Repr::new(
//!     Header { id: 7, seq: 1, response_required: true },
//!     Message::DirReq(DirReq { req_id: 42, fqdn: Fqdn::new("cn.ntm.test")? }),
//! );
//! let mut buf = [0u8; MAX_SIGNALING_LEN];
//! let len = repr.emit_sealed(&mut buf, &k_node)?;
//!
//! // Receiving: check the header, verify the tag, then parse.
//! let datagram = &buf[..len];
//! let packet = Packet::new_checked(datagram)?;
//! packet.check_header()?;
//! k_node.verify(datagram)?;
//! assert_eq!(Repr::parse(&packet)?, repr);
//! # Ok::<(), ntm_proto::Error>(())
//! ```

pub mod auth;
pub mod data;
mod error;
pub mod node;
pub mod replay;
pub mod retransmit;
pub mod wire;

pub use auth::{Authenticator, Key, ParseKeyError, WrapLabel, KEY_LEN};
pub use error::{DropCounters, Error, Result};
pub use replay::ReplayWindow;
pub use wire::{MessageType, Packet, Path, Repr, Role, Status, Suite};
