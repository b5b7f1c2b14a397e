//! XDP programs that a dead ntma left on its interfaces.
//!
//! ntma attaches its programs through bpf_link descriptors (kernel 5.9 and
//! later): the kernel detaches them when the last descriptor closes, so a
//! process that dies, even by SIGKILL, leaves nothing behind (the testbed's
//! `faults_ntma` test checks it). On older kernels aya falls back to a
//! netlink attachment, which outlives the process; so does a program
//! attached by an older build or by hand. [`clear_stale`] runs before
//! ntma attaches: an `ntma_lan` or `ntma_wan` program found on the interface
//! is detached with a log line, so that the new one takes its place. A live
//! ntma's program cannot be detached that way (the kernel refuses to touch
//! an XDP program held by a bpf_link): that is another ntma on the same
//! interface, and ntma says so instead of starting. A foreign program is
//! left alone (the attach then fails and says why).
//!
//! The rtnetlink messages (`RTM_GETLINK` for `IFLA_XDP`, `RTM_SETLINK`
//! with `IFLA_XDP_FD = -1` to detach) are built and parsed by the
//! `netlink-packet-route`/`netlink-packet-core` crates, which check every
//! length, and sent on a `netlink-sys` socket.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use ntma_common::programs;

/// The `XDP_FLAGS_*` mode (linux/if_link.h) to detach a program with.
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_FLAGS_HW_MODE: u32 = 8;

/// The XDP program attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// Its program id.
    pub prog_id: u32,
    /// `IFLA_XDP_ATTACHED`: native, generic or offloaded.
    pub mode: XdpAttached,
}

/// What [`clear_stale`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// No XDP program on the interface.
    None,
    /// A program of a dead ntma (name, id), detached.
    Replaced(String, u32),
    /// Another program (name, id), left alone.
    Foreign(String, u32),
}

/// Detaches an `ntma_lan`/`ntma_wan` program left on `ifname` (index
/// `ifindex`) by a dead ntma; `Err` when a live one holds it (another ntma
/// runs on the interface) or the kernel cannot be asked.
pub fn clear_stale(ifname: &str, ifindex: u32) -> io::Result<Stale> {
    let Some(a) = attached(ifindex)? else {
        return Ok(Stale::None);
    };
    let name = prog_name(a.prog_id).unwrap_or_default();
    if name != programs::LAN && name != programs::WAN {
        tracing::warn!(interface = ifname, program = %name, id = a.prog_id, "another XDP program is attached: ntma's cannot take its place (detach it: `ip link set dev {ifname} xdp off`)");
        return Ok(Stale::Foreign(name, a.prog_id));
    }
    match detach(ifindex, a.mode) {
        Ok(()) => {
            tracing::warn!(interface = ifname, program = %name, id = a.prog_id, "replacing the XDP program a dead ntma left attached");
            Ok(Stale::Replaced(name, a.prog_id))
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another ntma runs on {ifname}: its XDP program {name} (id {}) is held by a live process; stop it first", a.prog_id),
        )),
        Err(e) => Err(e),
    }
}

/// The name of the loaded program `id`, if it is still loaded.
fn prog_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}

/// The XDP program attached to interface `ifindex`, if any.
pub fn attached(ifindex: u32) -> io::Result<Option<Attached>> {
    let reply = request(
        RouteNetlinkMessage::GetLink(link(ifindex, vec![])),
        NLM_F_REQUEST,
    )?;
    parse_link(&reply, ifindex)
}

/// Detaches the XDP program of interface `ifindex` attached in `mode`.
pub fn detach(ifindex: u32, mode: XdpAttached) -> io::Result<()> {
    let flags = match mode {
        XdpAttached::SocketBuffer => XDP_FLAGS_SKB_MODE,
        XdpAttached::Hardware => XDP_FLAGS_HW_MODE,
        _ => XDP_FLAGS_DRV_MODE,
    };
    set_fd(ifindex, -1, flags)
}

/// Attaches program `fd` to `ifindex` by netlink (as an old kernel or an
/// old build did): for the tests, which need a program that outlives them.
pub fn attach_by_netlink(ifindex: u32, fd: i32, flags: u32) -> io::Result<()> {
    set_fd(ifindex, fd, flags)
}

fn set_fd(ifindex: u32, fd: i32, flags: u32) -> io::Result<()> {
    let xdp = LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)]);
    let reply = request(
        RouteNetlinkMessage::SetLink(link(ifindex, vec![xdp])),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    parse_ack(&reply)
}

/// A link message about `ifindex` (family `AF_UNSPEC`) carrying `attributes`.
fn link(ifindex: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes = attributes;
    m
}

/// `payload` as a whole netlink message with header `flags`.
fn encode(payload: NetlinkPayload<RouteNetlinkMessage>, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Sends `msg` on a fresh rtnetlink socket; the first reply.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<u8>> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    let msg = encode(NetlinkPayload::InnerMessage(msg), flags);
    // Port 0: the kernel.
    socket.send_to(&msg, &SocketAddr::new(0, 0), 0)?;
    Ok(socket.recv_from_full()?.0)
}

/// The answer to an `NLM_F_ACK` request: `Ok` for an acknowledgement, the
/// kernel's error otherwise.
fn parse_ack(b: &[u8]) -> io::Result<()> {
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(b).map(|m| m.payload) {
        Ok(NetlinkPayload::Error(e)) if e.code.is_none() => Ok(()),
        Ok(NetlinkPayload::Error(e)) => Err(e.to_io()),
        _ => Err(io::Error::other("bad rtnetlink answer to RTM_SETLINK")),
    }
}

/// `IFLA_XDP` of an `RTM_NEWLINK` reply about `ifindex`.
fn parse_link(b: &[u8], ifindex: u32) -> io::Result<Option<Attached>> {
    let bad = || io::Error::other("bad rtnetlink answer to RTM_GETLINK");
    let link = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(b).map(|m| m.payload) {
        Ok(NetlinkPayload::Error(e)) if e.code.is_some() => return Err(e.to_io()),
        Ok(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)))
            if l.header.index == ifindex =>
        {
            l
        }
        _ => return Err(bad()),
    };
    let Some(xdp) = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(x) => Some(x),
        _ => None,
    }) else {
        return Ok(None);
    };
    let mut mode = XdpAttached::None;
    let mut prog_id = 0;
    for x in xdp {
        match x {
            LinkXdp::Attached(m) => mode = *m,
            LinkXdp::ProgId(id) => prog_id = *id,
            _ => {}
        }
    }
    Ok((mode != XdpAttached::None && prog_id != 0).then_some(Attached { prog_id, mode }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `payload` as the kernel would send it.
    fn reply(payload: RouteNetlinkMessage) -> Vec<u8> {
        encode(NetlinkPayload::InnerMessage(payload), 0)
    }

    fn new_link(ifindex: u32, attributes: Vec<LinkAttribute>) -> Vec<u8> {
        reply(RouteNetlinkMessage::NewLink(link(ifindex, attributes)))
    }

    fn error(code: i32) -> Vec<u8> {
        let mut e = netlink_packet_core::ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        encode(NetlinkPayload::Error(e), 0)
    }

    #[test]
    fn replies_are_parsed_with_lengths_checked() {
        let xdp = LinkAttribute::Xdp(vec![
            LinkXdp::Attached(XdpAttached::Driver),
            LinkXdp::ProgId(77),
        ]);
        let mut answer = new_link(5, vec![LinkAttribute::IfName("lan0".into()), xdp]);
        let found = Some(Attached {
            prog_id: 77,
            mode: XdpAttached::Driver,
        });
        assert_eq!(parse_link(&answer, 5).unwrap(), found);
        assert!(parse_link(&answer, 6).is_err(), "another interface");
        // A length that cuts an attribute short, or runs past the end.
        let whole = answer.len() as u32;
        answer[..4].copy_from_slice(&(whole - 8).to_ne_bytes());
        assert!(parse_link(&answer, 5).is_err());
        answer[..4].copy_from_slice(&(whole + 8).to_ne_bytes());
        assert!(parse_link(&answer, 5).is_err());
        assert!(parse_link(&answer[..10], 5).is_err());
        // No program: no IFLA_XDP, or ATTACHED none.
        assert_eq!(parse_link(&new_link(5, vec![]), 5).unwrap(), None);
        let none = LinkAttribute::Xdp(vec![LinkXdp::Attached(XdpAttached::None)]);
        assert_eq!(parse_link(&new_link(5, vec![none]), 5).unwrap(), None);
        // Error answers, and an acknowledgement.

        assert_eq!(
            parse_link(&error(-libc::ENODEV), 5)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENODEV)
        );
        assert_eq!(
            parse_ack(&error(-libc::EBUSY)).unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
        assert!(parse_ack(&error(0)).is_ok());
        assert!(parse_ack(&new_link(5, vec![])).is_err(), "not an answer");
    }

    fn ip(args: &str) {
        let out = std::process::Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args}: {out:?}");
    }

    /// In a network namespace of its own thread (needs root): a program left
    /// attached by netlink (an old kernel, or a crash of an old build) is
    /// found and detached; one held by a live bpf_link is refused.
    #[test]
    fn a_left_program_is_replaced_and_a_live_one_refused() {
        use crate::ebpf::{AttachMode, Side, XdpPrograms};
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("this test needs root (a network namespace)");
            ip("link add xa type veth peer name xb");
            ip("link set xa up");
            ip("link set xb up");
            let idx = nix::net::if_::if_nametoindex("xa").unwrap();
            assert_eq!(clear_stale("xa", idx).unwrap(), Stale::None);
            let mut progs = XdpPrograms::load().unwrap();
            attach_by_netlink(idx, progs.program_fd(Side::Lan), XDP_FLAGS_DRV_MODE).unwrap();
            // The loader goes (as a process dies): the attachment stays.
            drop(progs);
            let left = attached(idx).unwrap().expect("still attached");
            assert_eq!(
                clear_stale("xa", idx).unwrap(),
                Stale::Replaced(programs::LAN.into(), left.prog_id)
            );
            assert_eq!(attached(idx).unwrap(), None);
            // A live ntma's program is not touched.
            let mut live = XdpPrograms::load().unwrap();
            live.attach(Side::Lan, "xa", AttachMode::Native).unwrap();
            let e = clear_stale("xa", idx).unwrap_err();
            assert!(e.to_string().contains("another ntma runs on xa"), "{e}");
            assert!(attached(idx).unwrap().is_some());
        })
        .join()
        .unwrap();
    }
}
