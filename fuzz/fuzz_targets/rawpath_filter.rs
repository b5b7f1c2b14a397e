//! The raw datapath's only pure code of its own: the classic BPF programs
//! `rawpath::filter::fast_path` and `slow_path` (its per-packet work is `uplink` and
//! `downlink`, which the `fastpath` and `downlink` targets cover). For an arbitrary
//! `Classify` (any prefix length, router, network) and frame, with any packet type,
//! a small interpreter of the opcodes they use (as the kernel runs them: a read past
//! the frame drops) checks that:
//!
//! * every jump lands inside the program and every path ends in a return;
//! * each frame has exactly one reader: the two programs accept complementary sets;
//! * the fast path takes exactly the IPv4 frames received (not sent) to an address in
//!   the VIP prefix other than the router, as the `ntma_lan` XDP program does.
#![no_main]

use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ntma_user::rawpath::filter::{fast_path, slow_path, to_sock_filter, Classify, Insn};

const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
const PACKET_OUTGOING: u32 = 4;

/// Runs `prog`: the accepted length (0: dropped).
fn run(prog: &[Insn], frame: &[u8], pkttype: u32) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    for _ in 0..=prog.len() {
        let i = *prog.get(pc).expect("jumped out of the program");
        pc += 1;
        let load = |at: u32, n: usize| -> Option<u32> {
            let at = at as usize;
            let b = frame.get(at..at.checked_add(n)?)?;
            Some(b.iter().fold(0u32, |v, x| (v << 8) | u32::from(*x)))
        };
        let loaded = match i.code {
            0x30 if i.k == AD_PKTTYPE => Some(pkttype),
            0x30 => load(i.k, 1),
            0x28 => load(i.k, 2),
            0x20 => load(i.k, 4),
            0x54 => Some(a & i.k),
            0x15 => {
                pc += usize::from(if a == i.k { i.jt } else { i.jf });
                Some(a)
            }
            0x06 => return i.k,
            other => panic!("opcode {other:#x} not modelled"),
        };
        match loaded {
            Some(v) => a = v,
            None => return 0,
        }
    }
    panic!("a program without a return on this path");
}

#[derive(Debug, Arbitrary)]
struct Input {
    vip_net: u32,
    vip_prefix_len: u8,
    router: u32,
    /// Packet types 0..=7 (4: outgoing).
    pkttype: u8,
    /// Put the router or an address of the prefix at the IPv4 destination.
    dst: Option<(bool, u32)>,
    ipv4: bool,
    frame: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let c = Classify {
        vip_net: Ipv4Addr::from(i.vip_net),
        vip_prefix_len: i.vip_prefix_len,
        router: Ipv4Addr::from(i.router),
    };
    let mut frame = i.frame;
    if i.ipv4 && frame.len() >= 14 {
        frame[12..14].copy_from_slice(&[8, 0]);
    }
    if let (Some((router, host)), true) = (i.dst, frame.len() >= 34) {
        let d = if router {
            i.router
        } else {
            i.vip_net ^ (host >> i.vip_prefix_len.min(31))
        };
        frame[30..34].copy_from_slice(&d.to_be_bytes());
    }
    let pkttype = u32::from(i.pkttype % 8);
    let fast = fast_path(&c);
    let slow = slow_path(&c);
    assert_eq!(to_sock_filter(&fast).len(), fast.len());
    let f = run(&fast, &frame, pkttype) != 0;
    let s = run(&slow, &frame, pkttype) != 0;
    // A frame too short for the loads is dropped by both (the kernel reads nothing).
    let long_enough = frame.len() >= 34 || (frame.len() >= 14 && frame[12..14] != [8, 0]);
    if pkttype == PACKET_OUTGOING || long_enough {
        assert_ne!(f, s, "one reader per frame: fast {f}, slow {s}");
    }
    let mask = match i.vip_prefix_len.min(32) {
        0 => 0,
        n => u32::MAX << (32 - n),
    };
    let want = pkttype != PACKET_OUTGOING && frame.len() >= 34 && frame[12..14] == [8, 0] && {
        let dst = u32::from_be_bytes([frame[30], frame[31], frame[32], frame[33]]);
        dst != i.router && dst & mask == i.vip_net & mask
    };
    assert_eq!(f, want, "fast path of {c:?}");
});
