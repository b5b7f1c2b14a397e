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
//! rtnetlink is spoken directly (`RTM_GETLINK` for `IFLA_XDP`, `RTM_SETLINK`
//! with `IFLA_XDP_FD = -1` to detach); the replies are parsed with every
//! length checked.

use std::io;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::os::fd::AsRawFd;

use ntma_common::programs;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
/// `XDP_ATTACHED_*` → the `XDP_FLAGS_*` mode to detach it with.
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_FLAGS_HW_MODE: u32 = 8;
const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;

/// The XDP program attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// Its program id.
    pub prog_id: u32,
    /// `IFLA_XDP_ATTACHED`: 1 native, 2 generic, 3 offloaded.
    pub mode: u8,
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
    let reply = request(&message(RTM_GETLINK, NLM_F_REQUEST, ifindex, &[]))?;
    parse_link(&reply, ifindex)
}

/// Detaches the XDP program of interface `ifindex` attached in `mode`.
pub fn detach(ifindex: u32, mode: u8) -> io::Result<()> {
    let flags = match mode {
        2 => XDP_FLAGS_SKB_MODE,
        3 => XDP_FLAGS_HW_MODE,
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
    let mut nested = attr(IFLA_XDP_FD, &fd.to_ne_bytes());
    nested.extend(attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes()));
    let attrs = attr(IFLA_XDP | NLA_F_NESTED, &nested);
    let reply = request(&message(
        RTM_SETLINK,
        NLM_F_REQUEST | NLM_F_ACK,
        ifindex,
        &attrs,
    ))?;
    match parse_ack(&reply) {
        Some(0) => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::Error::other("bad rtnetlink answer to RTM_SETLINK")),
    }
}

/// A netlink message: header, `ifinfomsg` for `ifindex`, then `attrs`.
fn message(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + IFINFO + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // seq
    m.extend(0u32.to_ne_bytes()); // port id: the kernel's
    m.extend([0u8; 4]); // family AF_UNSPEC, pad, type
    m.extend((ifindex as i32).to_ne_bytes());
    m.extend([0u8; 8]); // flags, change
    m.extend(attrs);
    m
}

/// One attribute, padded to 4 bytes.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend((len as u16).to_ne_bytes());
    a.extend(kind.to_ne_bytes());
    a.extend(value);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// Sends `msg` on a fresh rtnetlink socket; the first reply.
fn request(msg: &[u8]) -> io::Result<Vec<u8>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    sendto(
        fd.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 65536];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    buf.truncate(n);
    Ok(buf)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b`: (type without flags, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & !NLA_F_NESTED;
        let value = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// The error code of an `NLMSG_ERROR` reply (0: acknowledged).
fn parse_ack(b: &[u8]) -> Option<i32> {
    (u16_at(b, 4)? == NLMSG_ERROR).then_some(u32_at(b, NLMSG_HDR)? as i32)
}

/// `IFLA_XDP` of an `RTM_NEWLINK` reply about `ifindex`.
fn parse_link(b: &[u8], ifindex: u32) -> io::Result<Option<Attached>> {
    if let Some(e) = parse_ack(b).filter(|e| *e != 0) {
        return Err(io::Error::from_raw_os_error(-e));
    }
    let len = u32_at(b, 0).map_or(0, |l| l as usize);
    let ok = u16_at(b, 4) == Some(RTM_NEWLINK)
        && len <= b.len()
        && u32_at(b, NLMSG_HDR + 4) == Some(ifindex);
    if !ok {
        return Err(io::Error::other("bad rtnetlink answer to RTM_GETLINK"));
    }
    let Some((_, xdp)) = attrs(&b[NLMSG_HDR + IFINFO..len]).find(|(k, _)| *k == IFLA_XDP) else {
        return Ok(None);
    };
    let mut mode = 0;
    let mut prog_id = 0;
    for (k, v) in attrs(xdp) {
        match k {
            IFLA_XDP_ATTACHED => mode = v.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => prog_id = u32_at(v, 0).unwrap_or(0),
            _ => {}
        }
    }
    Ok((mode != 0 && prog_id != 0).then_some(Attached { prog_id, mode }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_built_and_replies_parsed_with_lengths_checked() {
        let xdp = [
            attr(IFLA_XDP_ATTACHED, &[1]),
            attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()),
        ]
        .concat();
        let body = [attr(3, b"lan0\0"), attr(IFLA_XDP | NLA_F_NESTED, &xdp)].concat();
        let mut reply = message(RTM_NEWLINK, 0, 5, &body);
        assert_eq!(reply.len(), 32 + 12 + 4 + 8 + 8);
        assert_eq!(
            parse_link(&reply, 5).unwrap(),
            Some(Attached {
                prog_id: 77,
                mode: 1
            })
        );
        assert!(parse_link(&reply, 6).is_err(), "another interface");
        // Cut short: the attributes past the end are not read.
        let whole = reply.len() as u32;
        reply[..4].copy_from_slice(&(whole - 8).to_ne_bytes());
        assert_eq!(parse_link(&reply, 5).unwrap(), None);
        reply[..4].copy_from_slice(&(whole + 8).to_ne_bytes());
        assert!(parse_link(&reply, 5).is_err());
        // No program: no IFLA_XDP, or ATTACHED 0.
        let none = message(
            RTM_NEWLINK,
            0,
            5,
            &attr(IFLA_XDP, &attr(IFLA_XDP_ATTACHED, &[0])),
        );
        assert_eq!(parse_link(&none, 5).unwrap(), None);
        // An error answer.
        let mut err = message(NLMSG_ERROR, 0, 0, &[]);
        err[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(parse_ack(&err), Some(-libc::ENODEV));
        assert_eq!(
            parse_link(&err, 5).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        // Truncated attributes end the walk.
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
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
