//! Classic BPF socket filters that classify GN-side frames the way the `ntma_lan` XDP
//! program does, for hosts without AF_XDP: the raw datapath's AF_PACKET socket takes
//! [`fast_path`] frames (IPv4 from the GN side to a VIP other than the router address);
//! a slow-path raw socket can take the rest with [`slow_path`], so each frame has exactly
//! one reader in userspace, as with XDP. The filters do not know the GN set (it changes
//! without re-attaching them): the raw worker's `uplink` applies it, handing frames from
//! outside the set to the slow queue and dropping GN-to-GN copies (`lan_to_gn`), which
//! the kernel has anyway.
//!
//! The programs are data ([`Insn`]), checked here by a small interpreter of the few
//! opcodes they use, and handed to the kernel with [`to_sock_filter`].

use std::net::Ipv4Addr;

use crate::wire::{ethernet, ipv4};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_PKTTYPE`: loads the packet type (`sll_pkttype`).
const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
/// `PACKET_OUTGOING`: a frame this host sent.
const PACKET_OUTGOING: u32 = 4;
/// Offsets in an Ethernet frame: EtherType, IPv4 destination.
const ETHERTYPE_AT: u32 = ethernet::field::ETHERTYPE.start as u32;
const IPV4_DST_AT: u32 = (ethernet::HEADER_LEN + ipv4::field::DST.start) as u32;
const ETHERTYPE_IPV4: u32 = ethernet::ETHERTYPE_IPV4 as u32;
/// Accept: the whole frame.
const ACCEPT: u32 = 0x0004_0000;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The VIP prefix and the router address, as the XDP configuration has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classify {
    /// Network of the VIP prefix.
    pub vip_net: Ipv4Addr,
    /// Its length.
    pub vip_prefix_len: u8,
    /// The NTMA's address on the GN side (never the fast path's).
    pub router: Ipv4Addr,
}

impl Classify {
    fn mask(&self) -> u32 {
        match self.vip_prefix_len.min(32) {
            0 => 0,
            n => u32::MAX << (32 - n),
        }
    }

    /// The instructions up to the verdict: falls through to index 7 ("fast path") or
    /// jumps to index 8 ("not the fast path"). Outgoing frames are "not".
    fn decide(&self) -> [Insn; 7] {
        let mask = self.mask();
        [
            insn(LD_B_ABS, 0, 0, AD_PKTTYPE),
            insn(JEQ_K, 6, 0, PACKET_OUTGOING), // → 8
            insn(LD_H_ABS, 0, 0, ETHERTYPE_AT),
            insn(JEQ_K, 0, 4, ETHERTYPE_IPV4), // not IPv4 → 8
            insn(LD_W_ABS, 0, 0, IPV4_DST_AT),
            insn(JEQ_K, 2, 0, u32::from(self.router)), // router → 8
            insn(AND_K, 0, 0, mask),
        ]
    }
}

/// Accepts IPv4 frames received from the GN to a VIP other than the router address.
pub fn fast_path(c: &Classify) -> Vec<Insn> {
    let mut p = c.decide().to_vec();
    // 7: in the VIP prefix → accept (8), else drop (9)
    p.push(insn(JEQ_K, 0, 1, u32::from(c.vip_net) & c.mask()));
    p.push(insn(RET_K, 0, 0, ACCEPT));
    p.push(insn(RET_K, 0, 0, 0));
    // The "not" exits of decide() land on index 8; point them at the drop (index 9).
    p[1].jt = 7;
    p[3].jf = 5;
    p[5].jt = 3;
    p
}

/// Accepts every frame [`fast_path`] does not (outgoing frames included).
pub fn slow_path(c: &Classify) -> Vec<Insn> {
    let mut p = c.decide().to_vec();
    // 7: in the VIP prefix → drop (9), else accept (8); "not" exits land on 8 (accept).
    p.push(insn(JEQ_K, 1, 0, u32::from(c.vip_net) & c.mask()));
    p.push(insn(RET_K, 0, 0, ACCEPT));
    p.push(insn(RET_K, 0, 0, 0));
    p
}

/// The program in the form `socket2::Socket::attach_filter` takes.
pub fn to_sock_filter(p: &[Insn]) -> Vec<socket2::SockFilter> {
    p.iter()
        .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` on `frame` with packet type `pkttype` like the kernel would for these
    /// opcodes; returns the accepted length (0: dropped). Reads past the frame drop.
    fn run(prog: &[Insn], frame: &[u8], pkttype: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let load = |at: u32, n: usize| -> Option<u32> {
                let at = at as usize;
                let b = frame.get(at..at + n)?;
                Some(b.iter().fold(0u32, |v, x| (v << 8) | u32::from(*x)))
            };
            match i.code {
                LD_B_ABS if i.k == AD_PKTTYPE => a = pkttype,
                LD_B_ABS => match load(i.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_H_ABS => match load(i.k, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_W_ABS => match load(i.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                AND_K => a &= i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("opcode {other:#x} not modelled"),
            }
        }
    }

    fn frame(ethertype: u16, dst: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14] = 0x45;
        f[30..34].copy_from_slice(&dst.octets());
        f
    }

    const C: Classify = Classify {
        vip_net: Ipv4Addr::new(100, 64, 0, 0),
        vip_prefix_len: 10,
        router: Ipv4Addr::new(100, 64, 0, 1),
    };

    #[test]
    fn the_two_filters_split_frames_like_the_xdp_program() {
        let fast = fast_path(&C);
        let slow = slow_path(&C);
        let cases = [
            // (frame, pkttype, fast path?)
            (frame(0x0800, Ipv4Addr::new(100, 64, 0, 9)), 0, true),
            (frame(0x0800, Ipv4Addr::new(100, 127, 255, 254)), 0, true),
            (frame(0x0800, Ipv4Addr::new(100, 64, 0, 1)), 0, false),
            (frame(0x0800, Ipv4Addr::new(100, 128, 0, 1)), 0, false),
            (frame(0x0800, Ipv4Addr::new(198, 18, 0, 20)), 0, false),
            (frame(0x0806, Ipv4Addr::new(100, 64, 0, 9)), 0, false),
            (frame(0x86dd, Ipv4Addr::new(100, 64, 0, 9)), 0, false),
            // broadcast / multicast packet types are still from the GN
            (frame(0x0800, Ipv4Addr::new(100, 64, 0, 9)), 1, true),
            // what we sent ourselves never comes back to the fast path
            (
                frame(0x0800, Ipv4Addr::new(100, 64, 0, 9)),
                PACKET_OUTGOING,
                false,
            ),
        ];
        for (f, pkttype, want) in &cases {
            assert_eq!(run(&fast, f, *pkttype) != 0, *want, "fast {f:?} {pkttype}");
            assert_eq!(run(&slow, f, *pkttype) != 0, !*want, "slow {f:?} {pkttype}");
        }
        // A runt IPv4 frame: neither takes it (the kernel drops it as well).
        assert_eq!(run(&fast, &frame(0x0800, Ipv4Addr::LOCALHOST)[..20], 0), 0);
        assert_eq!(to_sock_filter(&fast).len(), fast.len());
    }

    #[test]
    fn prefix_lengths_edge_cases() {
        let all = Classify {
            vip_prefix_len: 0,
            ..C
        };
        let p = fast_path(&all);
        assert_ne!(run(&p, &frame(0x0800, Ipv4Addr::new(8, 8, 8, 8)), 0), 0);
        let host = Classify {
            vip_net: Ipv4Addr::new(100, 64, 0, 9),
            vip_prefix_len: 40,
            ..C
        };
        let p = fast_path(&host);
        assert_ne!(run(&p, &frame(0x0800, Ipv4Addr::new(100, 64, 0, 9)), 0), 0);
        assert_eq!(run(&p, &frame(0x0800, Ipv4Addr::new(100, 64, 0, 8)), 0), 0);
    }
}
