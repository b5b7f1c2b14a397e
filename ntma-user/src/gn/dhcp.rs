//! DHCP server for the GNs behind the adapter (RFC 2131/2132).
//!
//! A client is one of the GN entries (§6): the entry configured with its
//! MAC, else the entry whose lease or offer it holds, else (DISCOVER, or a
//! client that asks for an entry's VIP after an adapter restart) the first
//! entry without a configured MAC and without a running lease. A MAC that
//! is none of them gets nothing ([`GnDrop::DhcpUnknownMac`]).
//!
//! A GN is only ever offered the VIP the DC assigned to its FQDN, with a subnet mask of the
//! whole VIP prefix (every VIP on-link), router and DNS server = the router
//! address, and the tunnel-sized interface MTU. Replies leave from the router
//! address and the NTMA's MAC, to the L2/L3 destination RFC 2131 §4.1 asks
//! for (broadcast flag, ciaddr, NAK always broadcast).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, CLIENT_PORT, MAGIC,
    MIN_PACKET_SIZE,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::wire::{build_udp_frame, Eth, MacAddr, Udp, UdpEnds};
use super::{Gn, GnAction, GnDrop, GnIndex, GnStat, GnState, Lease};

/// DHCP server port.
pub(super) const SERVER_PORT: u16 = 67;

/// Offset of the magic cookie in a BOOTP message.
const MAGIC_OFFSET: usize = 236;

/// Why a NAK goes out.
#[derive(Debug, Clone, Copy)]
enum NakWhy {
    WrongAddress,
    WrongServer,
    NoVip,
}

/// Where a reply goes (RFC 2131 §4.1, giaddr = 0).
struct Dest {
    mac: MacAddr,
    ip: Ipv4Addr,
}

/// Whether dhcproto 0.15 may decode these options (the bytes after the magic cookie)
/// without panicking: it asserts some options' lengths (`debug_assert!`, and `len - n`
/// that overflows), so one frame from the GN would abort a build with debug assertions.
/// Walks the options as its decoder does: adjacent options with one code are one value
/// (RFC 3396), pad and end separate them; a truncated option ends the walk (dhcproto
/// stops there too).
fn options_decodable(opts: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&code) = opts.get(at) {
        if code == 0 || code == 255 {
            at += 1;
            continue;
        }
        let mut value = 0usize;
        while opts.get(at) == Some(&code) {
            let Some(&len) = opts.get(at + 1) else {
                return true;
            };
            value += usize::from(len);
            at += 2 + usize::from(len);
        }
        let fits = match code {
            80 => value == 0,        // rapid commit
            81 => value >= 3,        // client FQDN: flags, rcode1, rcode2, name
            94 => value == 3,        // client network interface
            151 => value >= 1,       // bulk lease query status code
            152..=155 => value == 4, // bulk lease query times
            _ => true,
        };
        if !fits {
            return false;
        }
    }
    true
}

impl Gn {
    pub(super) fn handle_dhcp(
        &mut self,
        now: Instant,
        eth: &Eth<'_>,
        udp: &Udp<'_>,
    ) -> Result<(), GnDrop> {
        let p = udp.payload();
        if p.len() < MAGIC_OFFSET + 4 || p[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
            return Err(GnDrop::DhcpMalformed);
        }
        if !options_decodable(&p[MAGIC_OFFSET + 4..]) {
            return Err(GnDrop::DhcpMalformed);
        }
        let msg = Message::decode(&mut Decoder::new(p)).map_err(|_| GnDrop::DhcpMalformed)?;
        if msg.opcode() != Opcode::BootRequest {
            return Err(GnDrop::DhcpNotRequest);
        }
        // hlen is checked before chaddr(), which slices by it.
        if msg.htype() != HType::Eth || msg.hlen() != 6 {
            return Err(GnDrop::DhcpBadHwAddr);
        }
        if !msg.giaddr().is_unspecified() {
            return Err(GnDrop::DhcpRelayed);
        }
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(msg.chaddr());
        let chaddr = MacAddr(chaddr);
        if !chaddr.is_unicast() {
            return Err(GnDrop::DhcpBadHwAddr);
        }
        let client_id = match msg.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => id.clone(),
            _ => chaddr.0.to_vec(),
        };
        let client = Client {
            msg: &msg,
            chaddr,
            client_id,
            eth_src: eth.src_addr(),
        };
        match msg.opts().msg_type() {
            Some(MessageType::Discover) => self.dhcp_discover(now, &client),
            Some(MessageType::Request) => self.dhcp_request(now, &client),
            Some(MessageType::Release) => self.dhcp_release(now, &client, false),
            Some(MessageType::Decline) => self.dhcp_release(now, &client, true),
            Some(MessageType::Inform) => self.dhcp_inform(&client),
            Some(_) => Err(GnDrop::DhcpNotRequest),
            None => Err(GnDrop::DhcpNoMessageType),
        }
    }

    /// The GN entry `c` is already: configured with its MAC, or holding
    /// a running lease or offer.
    fn gn_of_client(&self, now: Instant, c: &Client<'_>) -> Option<GnIndex> {
        let fixed = self.gns.iter().position(|g| g.fixed_mac == Some(c.chaddr));
        fixed.or_else(|| {
            self.gns.iter().position(|g| {
                g.fixed_mac.is_none()
                    && g.active_lease(now)
                        .is_some_and(|l| l.client_id == c.client_id)
            })
        })
    }

    /// The entry a new client takes: one without a configured MAC and
    /// without a running lease; the one whose VIP is `asked` if there is one
    /// (a GN renewing after an adapter restart), else the first with a VIP.
    /// `Err` when none is free.
    fn free_gn(&self, now: Instant, asked: Option<Ipv4Addr>) -> Result<GnIndex, GnDrop> {
        let free = |g: &GnState| g.fixed_mac.is_none() && g.active_lease(now).is_none();
        let found = asked
            .and_then(|v| self.gns.iter().position(|g| free(g) && g.vip == Some(v)))
            .or_else(|| self.gns.iter().position(|g| free(g) && g.vip.is_some()));
        match found {
            Some(i) => Ok(i),
            None if self.gns.iter().any(free) => Err(GnDrop::DhcpNoVip),
            None => Err(GnDrop::DhcpUnknownMac),
        }
    }

    /// GN `gn`'s VIP is leased or offered to someone other than `client`.
    fn vip_taken_by_other(&self, now: Instant, gn: GnIndex, client: &Client<'_>) -> bool {
        self.gns[gn]
            .active_lease(now)
            .is_some_and(|l| l.client_id != client.client_id)
    }

    fn dhcp_discover(&mut self, now: Instant, c: &Client<'_>) -> Result<(), GnDrop> {
        let gn = match self.gn_of_client(now, c) {
            Some(gn) => gn,
            None => self.free_gn(now, None)?,
        };
        let vip = self.gns[gn].vip.ok_or(GnDrop::DhcpNoVip)?;
        if self.vip_taken_by_other(now, gn, c) {
            return Err(GnDrop::DhcpVipInUse);
        }
        let keep_bound = self.gns[gn]
            .active_lease(now)
            .is_some_and(|l| l.bound && l.client_id == c.client_id);
        if !keep_bound {
            self.gns[gn].lease = Some(Lease {
                client_id: c.client_id.clone(),
                mac: c.chaddr,
                expires: now + self.cfg.offer_hold,
                bound: false,
            });
        }
        let dest = self.reply_dest(c, vip);
        self.send_dhcp(c, MessageType::Offer, vip, &dest)?;
        self.counters.stat(GnStat::DhcpOffer);
        Ok(())
    }

    fn dhcp_request(&mut self, now: Instant, c: &Client<'_>) -> Result<(), GnDrop> {
        let opts = c.msg.opts();
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let ciaddr = c.msg.ciaddr();
        let asked = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr));
        let gn = match self.gn_of_client(now, c) {
            Some(gn) => gn,
            // No record (an adapter restart, or an expired offer): the entry
            // whose VIP it asks for, if that one is free.
            None => self.free_gn(now, asked)?,
        };
        let vip = self.gns[gn].vip;
        // The address the client wants, by RFC 2131 §4.3.2 state.
        let wanted = if let Some(sid) = server_id {
            // SELECTING: answering our OFFER.
            if sid != self.cfg.router {
                return self.dhcp_nak(c, NakWhy::WrongServer);
            }
            if vip.is_none() {
                return self.dhcp_nak(c, NakWhy::NoVip);
            }
            requested
        } else if let Some(req) = requested {
            // INIT-REBOOT: with no VIP we have no record and stay silent.
            vip.ok_or(GnDrop::DhcpNoVip)?;
            Some(req)
        } else if !ciaddr.is_unspecified() {
            // RENEWING/REBINDING: silent without a VIP, so a GN keeps its
            // address across an adapter restart until registration is back.
            vip.ok_or(GnDrop::DhcpNoVip)?;
            Some(ciaddr)
        } else {
            return Err(GnDrop::DhcpMalformed);
        };
        let Some(vip) = vip else {
            return Err(GnDrop::DhcpNoVip);
        };
        if wanted != Some(vip) || self.vip_taken_by_other(now, gn, c) {
            return self.dhcp_nak(c, NakWhy::WrongAddress);
        }
        let was_bound = self.gns[gn]
            .active_lease(now)
            .is_some_and(|l| l.bound && l.client_id == c.client_id);
        let dest = self.reply_dest(c, vip);
        self.send_dhcp(c, MessageType::Ack, vip, &dest)?;
        self.gns[gn].lease = Some(Lease {
            client_id: c.client_id.clone(),
            mac: c.chaddr,
            expires: now + Duration::from_secs(u64::from(self.cfg.lease_secs)),
            bound: true,
        });
        self.set_gn_mac(gn, c.chaddr);
        if !was_bound {
            self.push_action(GnAction::LeaseBound {
                gn,
                vip,
                mac: c.chaddr,
            });
        }
        self.counters.stat(GnStat::DhcpAck);
        Ok(())
    }

    fn dhcp_nak(&mut self, c: &Client<'_>, why: NakWhy) -> Result<(), GnDrop> {
        let dest = Dest {
            mac: MacAddr::BROADCAST,
            ip: Ipv4Addr::BROADCAST,
        };
        self.send_dhcp(c, MessageType::Nak, Ipv4Addr::UNSPECIFIED, &dest)?;
        self.counters.stat(match why {
            NakWhy::WrongAddress => GnStat::DhcpNakWrongAddress,
            NakWhy::WrongServer => GnStat::DhcpNakWrongServer,
            NakWhy::NoVip => GnStat::DhcpNakNoVip,
        });
        Ok(())
    }

    fn dhcp_release(&mut self, now: Instant, c: &Client<'_>, decline: bool) -> Result<(), GnDrop> {
        let gn = self
            .gn_of_client(now, c)
            .ok_or(GnDrop::DhcpReleaseUnknown)?;
        let (Some(vip), Some(lease)) = (self.gns[gn].vip, self.gns[gn].lease.as_ref()) else {
            return Err(GnDrop::DhcpReleaseUnknown);
        };
        let addr = if decline {
            match c.msg.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => Ipv4Addr::UNSPECIFIED,
            }
        } else {
            c.msg.ciaddr()
        };
        if lease.client_id != c.client_id || addr != vip {
            return Err(GnDrop::DhcpReleaseUnknown);
        }
        let was_bound = lease.bound;
        self.gns[gn].lease = None;
        if was_bound {
            self.push_action(GnAction::LeaseEnded { gn, vip });
        }
        self.counters.stat(if decline {
            GnStat::DhcpDecline
        } else {
            GnStat::DhcpRelease
        });
        Ok(())
    }

    fn dhcp_inform(&mut self, c: &Client<'_>) -> Result<(), GnDrop> {
        let ciaddr = c.msg.ciaddr();
        // RFC 2131 §4.3.5: the ACK goes unicast to ciaddr.
        let dest = if ciaddr.is_unspecified() {
            Dest {
                mac: MacAddr::BROADCAST,
                ip: Ipv4Addr::BROADCAST,
            }
        } else {
            Dest {
                mac: c.eth_src,
                ip: ciaddr,
            }
        };
        self.send_dhcp(c, MessageType::Ack, Ipv4Addr::UNSPECIFIED, &dest)?;
        self.counters.stat(GnStat::DhcpInformAck);
        Ok(())
    }

    /// RFC 2131 §4.1 with giaddr = 0: to ciaddr if set, else broadcast if the
    /// client asked for it, else unicast to the new address and chaddr.
    fn reply_dest(&self, c: &Client<'_>, yiaddr: Ipv4Addr) -> Dest {
        let ciaddr = c.msg.ciaddr();
        if !ciaddr.is_unspecified() {
            Dest {
                mac: c.eth_src,
                ip: ciaddr,
            }
        } else if c.msg.flags().broadcast() {
            Dest {
                mac: MacAddr::BROADCAST,
                ip: Ipv4Addr::BROADCAST,
            }
        } else {
            Dest {
                mac: c.chaddr,
                ip: yiaddr,
            }
        }
    }

    /// Builds the reply of type `kind` to `c` and queues it. `yiaddr` is the
    /// leased address (OFFER/ACK) or 0 (NAK, ACK of INFORM).
    fn send_dhcp(
        &mut self,
        c: &Client<'_>,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        dest: &Dest,
    ) -> Result<(), GnDrop> {
        let req = c.msg;
        let router = self.cfg.router;
        let inform = kind == MessageType::Ack && yiaddr.is_unspecified();
        let ciaddr = if inform || kind == MessageType::Ack {
            req.ciaddr()
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let mut m = Message::new_with_id(
            req.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &c.chaddr.0,
        );
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(if req.flags().broadcast() {
                Flags::default().set_broadcast()
            } else {
                Flags::default()
            });
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(router));
        if let Some(DhcpOption::ClientIdentifier(id)) = req.opts().get(OptionCode::ClientIdentifier)
        {
            // RFC 6842: echo the client identifier.
            o.insert(DhcpOption::ClientIdentifier(id.clone()));
        }
        if kind == MessageType::Nak {
            o.insert(DhcpOption::Message(
                "address not available: only the VIP assigned by the DC".to_owned(),
            ));
        } else {
            if !inform {
                let lease = self.cfg.lease_secs;
                o.insert(DhcpOption::AddressLeaseTime(lease));
                o.insert(DhcpOption::Renewal(lease / 2));
                o.insert(DhcpOption::Rebinding(lease / 8 * 7));
            }
            o.insert(DhcpOption::SubnetMask(self.cfg.netmask()));
            o.insert(DhcpOption::Router(vec![router]));
            o.insert(DhcpOption::DomainNameServer(vec![router]));
            o.insert(DhcpOption::InterfaceMtu(self.cfg.mtu));
        }
        let mut payload = Vec::with_capacity(MIN_PACKET_SIZE);
        m.encode(&mut Encoder::new(&mut payload))
            .map_err(|_| GnDrop::DhcpMalformed)?;
        // Some clients ignore BOOTP messages shorter than 300 bytes.
        if payload.len() < MIN_PACKET_SIZE {
            payload.resize(MIN_PACKET_SIZE, 0);
        }
        let ends = UdpEnds {
            dst_mac: dest.mac,
            src_mac: self.cfg.ntma_mac,
            src_ip: router,
            dst_ip: dest.ip,
            src_port: SERVER_PORT,
            dst_port: CLIENT_PORT,
        };
        self.emit(|out| build_udp_frame(out, &ends, &payload))
    }
}

/// A parsed client message and who sent it.
struct Client<'a> {
    msg: &'a Message,
    chaddr: MacAddr,
    client_id: Vec<u8>,
    eth_src: MacAddr,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    use super::super::test_util::*;
    use super::super::wire::{build_udp_frame, parse_eth, parse_ipv4, parse_udp, MacAddr, UdpEnds};
    use super::super::{GnAction, GnDrop, GnStat, Verdict};

    const DISCOVER: &[u8] = include_bytes!("testdata/dhclient_discover.bin");
    const REBOOT: &[u8] = include_bytes!("testdata/dhclient_request_initreboot.bin");
    /// dhclient's REQUEST answering an OFFER of this server (captured in a
    /// netns pair against this code driven from an AF_PACKET socket).
    const SELECTING: &[u8] = include_bytes!("testdata/dhclient_request_selecting.bin");

    /// A REQUEST from the `gn` fuzz target whose option 153 (bulk lease query start
    /// time of state) is 12 bytes long: dhcproto's decoder asserts 4 and panicked.
    const FUZZ_OPTION_153: &[u8] = include_bytes!("testdata/fuzz_dhcp_option_153_len_12.bin");

    #[test]
    fn options_dhcproto_would_panic_on_are_malformed() {
        let mut g = gn_with_vip();
        assert_eq!(
            g.handle_frame(Instant::now(), FUZZ_OPTION_153),
            Verdict::Dropped(GnDrop::DhcpMalformed)
        );
        use super::options_decodable as ok;
        // (code, value length, decodable)
        for (code, len, want) in [
            (80, 0, true),
            (80, 1, false),
            (81, 2, false),
            (81, 3, true),
            (94, 2, false),
            (94, 3, true),
            (151, 0, false),
            (151, 1, true),
            (152, 4, true),
            (153, 3, false),
            (155, 12, false),
            (12, 0, true),
        ] {
            let mut o = vec![code, len];
            o.extend(std::iter::repeat_n(b'a', usize::from(len)));
            o.push(255);
            assert_eq!(ok(&o), want, "option {code} of {len} bytes");
        }
        // Split options are one value (RFC 3396): two 4-byte halves are 8 bytes.
        assert!(!ok(&[152, 4, 0, 0, 0, 1, 152, 4, 0, 0, 0, 2, 255]));
        // Pad ends a value (each half alone is short); a truncated option ends the walk.
        assert!(!ok(&[152, 2, 0, 0, 0, 152, 2, 0, 0]));
        assert!(ok(&[53, 1, 1, 152]));
        assert!(ok(&[]));
    }

    struct Reply {
        eth_dst: MacAddr,
        ip_src: Ipv4Addr,
        ip_dst: Ipv4Addr,
        msg: Message,
    }

    fn parse_reply(frame: &[u8]) -> Reply {
        let eth = parse_eth(frame).unwrap();
        assert_eq!(eth.src_addr(), NTMA_MAC);
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        let udp = parse_udp(&ip, true).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
        assert!(udp.payload().len() >= 300);
        Reply {
            eth_dst: eth.dst_addr(),
            ip_src: ip.src_addr(),
            ip_dst: ip.dst_addr(),
            msg: Message::decode(&mut Decoder::new(udp.payload())).unwrap(),
        }
    }

    fn only_reply(g: &mut super::super::Gn) -> Reply {
        let out = frames(g);
        assert_eq!(out.len(), 1, "expected exactly one reply");
        parse_reply(&out[0])
    }

    /// A client message as a frame from the GN (src 0.0.0.0 unless `ciaddr`).
    fn client_frame(build: impl FnOnce(&mut Message)) -> Vec<u8> {
        client_frame_from(GN_MAC, build)
    }

    /// [`client_frame`] from the NIC `mac`.
    fn client_frame_from(mac: MacAddr, build: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        build(&mut m);
        let src_ip = m.ciaddr();
        let dst_ip = if src_ip.is_unspecified() {
            Ipv4Addr::BROADCAST
        } else {
            ROUTER
        };
        let mut payload = Vec::new();
        m.encode(&mut Encoder::new(&mut payload)).unwrap();
        let mut f = Vec::new();
        build_udp_frame(
            &mut f,
            &UdpEnds {
                dst_mac: if dst_ip == ROUTER {
                    NTMA_MAC
                } else {
                    MacAddr::BROADCAST
                },
                src_mac: mac,
                src_ip,
                dst_ip,
                src_port: 68,
                dst_port: 67,
            },
            &payload,
        )
        .unwrap();
        f
    }

    fn msg_type(t: MessageType) -> DhcpOption {
        DhcpOption::MessageType(t)
    }

    fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(code)
    }

    fn assert_lease_options(m: &Message, with_lease: bool) {
        assert_eq!(
            opt(m, OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 192, 0, 0)))
        );
        assert_eq!(
            opt(m, OptionCode::Router),
            Some(&DhcpOption::Router(vec![ROUTER]))
        );
        assert_eq!(
            opt(m, OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![ROUTER]))
        );
        assert_eq!(
            opt(m, OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1440))
        );
        assert_eq!(
            opt(m, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(ROUTER))
        );
        assert_eq!(
            opt(m, OptionCode::AddressLeaseTime).is_some(),
            with_lease,
            "lease time present iff a lease"
        );
    }

    #[test]
    fn captured_discover_gets_offer_of_the_vip() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        assert_eq!(g.handle_frame(now, DISCOVER), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(r.msg.opcode(), Opcode::BootReply);
        assert_eq!(r.msg.yiaddr(), VIP);
        assert_eq!(r.msg.chaddr(), &GN_MAC.0);
        // dhclient leaves the broadcast flag clear: unicast to yiaddr/chaddr.
        assert!(!r.msg.flags().broadcast());
        assert_eq!(r.eth_dst, GN_MAC);
        assert_eq!(r.ip_dst, VIP);
        assert_eq!(r.ip_src, ROUTER);
        assert_lease_options(&r.msg, true);
        assert_eq!(
            opt(&r.msg, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(600))
        );
        // The xid of the captured DISCOVER is echoed.
        let disc = Message::decode(&mut Decoder::new(&DISCOVER[42..])).unwrap();
        assert_eq!(r.msg.xid(), disc.xid());
        let lease = g.gns()[0].lease().unwrap();
        assert!(!lease.bound);
    }

    #[test]
    fn no_offer_before_the_dc_assigned_a_vip() {
        let mut g = gn();
        let now = Instant::now();
        assert_eq!(
            g.handle_frame(now, DISCOVER),
            Verdict::Dropped(GnDrop::DhcpNoVip)
        );
        // INIT-REBOOT without a VIP: no record, silence.
        assert_eq!(
            g.handle_frame(now, REBOOT),
            Verdict::Dropped(GnDrop::DhcpNoVip)
        );
        assert!(frames(&mut g).is_empty());
        assert_eq!(g.counters()[GnDrop::DhcpNoVip], 2);
    }

    #[test]
    fn selecting_request_gets_ack_and_binds() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        g.handle_frame(now, DISCOVER);
        frames(&mut g);
        let req = client_frame(|m| {
            m.opts_mut().insert(msg_type(MessageType::Request));
            m.opts_mut().insert(DhcpOption::ServerIdentifier(ROUTER));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(VIP));
        });
        assert_eq!(g.handle_frame(now, &req), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.yiaddr(), VIP);
        assert_eq!((r.eth_dst, r.ip_dst), (GN_MAC, VIP));
        assert_lease_options(&r.msg, true);
        let lease = g.gns()[0].lease().unwrap();
        assert!(lease.bound);
        assert_eq!(lease.mac, GN_MAC);
        assert_eq!(lease.expires, now + Duration::from_secs(600));
        assert_eq!(g.gns()[0].mac(), Some(GN_MAC));
        assert_eq!(
            actions(&mut g),
            vec![
                GnAction::GnMac { gn: 0, mac: GN_MAC },
                GnAction::LeaseBound {
                    gn: 0,
                    vip: VIP,
                    mac: GN_MAC
                }
            ]
        );
    }

    #[test]
    fn captured_selecting_request_gets_ack() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let req = Message::decode(&mut Decoder::new(&SELECTING[42..])).unwrap();
        assert_eq!(
            opt(&req, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(ROUTER))
        );
        assert_eq!(g.handle_frame(now, SELECTING), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.xid(), req.xid());
        assert_eq!((r.eth_dst, r.ip_dst), (GN_MAC, VIP));
        assert_lease_options(&r.msg, true);
        assert!(g.gns()[0].lease().unwrap().bound);
    }

    #[test]
    fn captured_init_reboot_request_for_the_vip_gets_ack() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        assert_eq!(g.handle_frame(now, REBOOT), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.yiaddr(), VIP);
        assert_eq!(g.counters()[GnStat::DhcpAck], 1);
    }

    #[test]
    fn request_for_an_address_not_given_gets_broadcast_nak() {
        let mut g = gn();
        g.set_vip(0, Some(Ipv4Addr::new(100, 64, 0, 9))).unwrap();
        let now = Instant::now();
        // The captured INIT-REBOOT asks for 100.64.0.2.
        assert_eq!(g.handle_frame(now, REBOOT), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.eth_dst, MacAddr::BROADCAST);
        assert_eq!(r.ip_dst, Ipv4Addr::BROADCAST);
        assert!(opt(&r.msg, OptionCode::AddressLeaseTime).is_none());
        assert!(opt(&r.msg, OptionCode::Router).is_none());
        assert_eq!(g.counters()[GnStat::DhcpNakWrongAddress], 1);
        assert!(g.gns()[0].lease().is_none());
    }

    #[test]
    fn request_naming_another_server_gets_nak() {
        let mut g = gn_with_vip();
        let req = client_frame(|m| {
            m.opts_mut().insert(msg_type(MessageType::Request));
            m.opts_mut()
                .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(100, 64, 0, 99)));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(VIP));
        });
        g.handle_frame(Instant::now(), &req);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(g.counters()[GnStat::DhcpNakWrongServer], 1);
    }

    #[test]
    fn renewal_is_unicast_to_ciaddr_and_wrong_ciaddr_is_naked() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let renew = |ciaddr| {
            client_frame(move |m| {
                m.set_ciaddr(ciaddr);
                m.opts_mut().insert(msg_type(MessageType::Request));
            })
        };
        assert_eq!(g.handle_frame(now, &renew(VIP)), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.ciaddr(), VIP);
        assert_eq!((r.eth_dst, r.ip_dst), (GN_MAC, VIP));
        actions(&mut g);
        // A renewal later does not announce a new lease.
        let later = now + Duration::from_secs(300);
        g.handle_frame(later, &renew(VIP));
        only_reply(&mut g);
        assert!(actions(&mut g).is_empty());
        assert_eq!(
            g.gns()[0].lease().unwrap().expires,
            later + Duration::from_secs(600)
        );

        g.handle_frame(now, &renew(Ipv4Addr::new(100, 64, 0, 3)));
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
    }

    #[test]
    fn broadcast_flag_is_honoured() {
        let mut g = gn_with_vip();
        let f = client_frame(|m| {
            m.set_flags(Flags::default().set_broadcast());
            m.opts_mut().insert(msg_type(MessageType::Discover));
        });
        g.handle_frame(Instant::now(), &f);
        let r = only_reply(&mut g);
        assert_eq!(r.eth_dst, MacAddr::BROADCAST);
        assert_eq!(r.ip_dst, Ipv4Addr::BROADCAST);
        assert!(r.msg.flags().broadcast());
    }

    #[test]
    fn gns_are_bound_by_mac_and_unknown_macs_get_nothing() {
        const MAC2: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0c]);
        const MAC3: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0d]);
        const VIP2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
        let mut c = super::super::GnConfig::new(NTMA_MAC);
        c.gns.push(super::super::GnSpec {
            fqdn: "gn2.ntm.test".into(),
            mac: Some(MAC2),
        });
        let mut g = super::super::Gn::new(c).unwrap();
        g.set_vip(0, Some(VIP)).unwrap();
        g.set_vip(1, Some(VIP2)).unwrap();
        let now = Instant::now();
        let discover = |mac| {
            client_frame_from(mac, |m| {
                m.opts_mut().insert(msg_type(MessageType::Discover));
            })
        };
        // gn2's own NIC gets gn2's VIP, even when it asks first.
        g.handle_frame(now, &discover(MAC2));
        assert_eq!(only_reply(&mut g).msg.yiaddr(), VIP2);
        // An unknown MAC takes the entry without a MAC.
        g.handle_frame(now, &discover(GN_MAC));
        assert_eq!(only_reply(&mut g).msg.yiaddr(), VIP);
        // A third MAC matches no entry: no offer, counted.
        assert_eq!(
            g.handle_frame(now, &discover(MAC3)),
            Verdict::Dropped(GnDrop::DhcpUnknownMac)
        );
        assert!(frames(&mut g).is_empty());
        // The offer to GN_MAC lapses unanswered: the entry is free again.
        let later = now + Duration::from_secs(31);
        g.handle_frame(later, &discover(MAC3));
        assert_eq!(only_reply(&mut g).msg.yiaddr(), VIP);
        // gn2's entry never goes to another MAC.
        let request = client_frame_from(MAC3, |m| {
            m.opts_mut().insert(msg_type(MessageType::Request));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(VIP2));
        });
        g.handle_frame(later, &request);
        assert_eq!(
            only_reply(&mut g).msg.opts().msg_type(),
            Some(MessageType::Nak)
        );
        assert!(g.gns()[1].lease().is_none_or(|l| l.mac == MAC2));
    }

    #[test]
    fn a_second_mac_gets_nothing_while_the_lease_lives() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        g.handle_frame(now, REBOOT);
        frames(&mut g);
        let other = |t: MessageType| {
            client_frame(move |m| {
                m.set_chaddr(&[2, 0, 0, 0, 0, 0x77]);
                m.opts_mut().insert(msg_type(t));
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(VIP));
            })
        };
        // The one GN entry is bound to the first client's MAC (§6).
        for t in [MessageType::Discover, MessageType::Request] {
            assert_eq!(
                g.handle_frame(now, &other(t)),
                Verdict::Dropped(GnDrop::DhcpUnknownMac)
            );
        }
        assert!(frames(&mut g).is_empty());
        assert_eq!(g.counters()[GnDrop::DhcpUnknownMac], 2);
        // After the lease expired the other client may have it.
        let later = now + Duration::from_secs(601);
        assert_eq!(
            g.handle_frame(later, &other(MessageType::Discover)),
            Verdict::Consumed
        );
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
    }

    #[test]
    fn release_and_decline_end_the_lease_only_for_the_owner() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        g.handle_frame(now, REBOOT);
        frames(&mut g);
        actions(&mut g);
        let foreign = client_frame(|m| {
            m.set_chaddr(&[2, 0, 0, 0, 0, 0x77]);
            m.set_ciaddr(VIP);
            m.opts_mut().insert(msg_type(MessageType::Release));
        });
        assert_eq!(
            g.handle_frame(now, &foreign),
            Verdict::Dropped(GnDrop::DhcpReleaseUnknown)
        );
        let release = client_frame(|m| {
            m.set_ciaddr(VIP);
            m.opts_mut().insert(msg_type(MessageType::Release));
        });
        assert_eq!(g.handle_frame(now, &release), Verdict::Consumed);
        assert!(frames(&mut g).is_empty(), "RELEASE has no reply");
        assert!(g.gns()[0].lease().is_none());
        assert_eq!(
            actions(&mut g),
            vec![GnAction::LeaseEnded { gn: 0, vip: VIP }]
        );
        assert_eq!(
            g.handle_frame(now, &release),
            Verdict::Dropped(GnDrop::DhcpReleaseUnknown)
        );

        g.handle_frame(now, REBOOT);
        frames(&mut g);
        let decline = client_frame(|m| {
            m.opts_mut().insert(msg_type(MessageType::Decline));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(VIP));
        });
        assert_eq!(g.handle_frame(now, &decline), Verdict::Consumed);
        assert!(g.gns()[0].lease().is_none());
        assert_eq!(g.counters()[GnStat::DhcpDecline], 1);
    }

    #[test]
    fn inform_gets_ack_without_lease_to_ciaddr() {
        let mut g = gn();
        let ip = Ipv4Addr::new(100, 64, 0, 40);
        let f = client_frame(|m| {
            m.set_ciaddr(ip);
            m.opts_mut().insert(msg_type(MessageType::Inform));
        });
        assert_eq!(g.handle_frame(Instant::now(), &f), Verdict::Consumed);
        let r = only_reply(&mut g);
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!((r.eth_dst, r.ip_dst), (GN_MAC, ip));
        assert_lease_options(&r.msg, false);
        assert!(g.gns()[0].lease().is_none());
    }

    #[test]
    fn client_identifier_is_the_lease_key_and_is_echoed() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let f = client_frame(|m| {
            m.opts_mut().insert(msg_type(MessageType::Discover));
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier(b"\x01gn-box".to_vec()));
        });
        g.handle_frame(now, &f);
        let r = only_reply(&mut g);
        assert_eq!(
            opt(&r.msg, OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(b"\x01gn-box".to_vec()))
        );
        assert_eq!(g.gns()[0].lease().unwrap().client_id, b"\x01gn-box");
    }

    #[test]
    fn bad_messages_are_dropped_by_reason() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let cases: Vec<(Vec<u8>, GnDrop)> = vec![
            (
                client_frame(|m| {
                    m.set_opcode(Opcode::BootReply);
                    m.opts_mut().insert(msg_type(MessageType::Discover));
                }),
                GnDrop::DhcpNotRequest,
            ),
            (
                client_frame(|m| {
                    m.opts_mut().insert(msg_type(MessageType::Offer));
                }),
                GnDrop::DhcpNotRequest,
            ),
            (
                client_frame(|m| {
                    m.set_chaddr(&[1, 2, 3, 4, 5, 6, 7, 8]);
                    m.opts_mut().insert(msg_type(MessageType::Discover));
                }),
                GnDrop::DhcpBadHwAddr,
            ),
            (
                client_frame(|m| {
                    m.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
                    m.opts_mut().insert(msg_type(MessageType::Discover));
                }),
                GnDrop::DhcpRelayed,
            ),
            (client_frame(|_| {}), GnDrop::DhcpNoMessageType),
            (
                client_frame(|m| {
                    m.opts_mut().insert(msg_type(MessageType::Request));
                }),
                GnDrop::DhcpMalformed,
            ),
        ];
        for (f, why) in cases {
            assert_eq!(g.handle_frame(now, &f), Verdict::Dropped(why), "{why}");
        }
        // Truncated before the magic cookie, and a wrong cookie.
        let mut short = DISCOVER.to_vec();
        short.truncate(14 + 20 + 8 + 200);
        fix_lengths(&mut short);
        assert_eq!(
            g.handle_frame(now, &short),
            Verdict::Dropped(GnDrop::DhcpMalformed)
        );
        let mut cookie = DISCOVER.to_vec();
        cookie[42 + 236] = 0;
        fix_lengths(&mut cookie);
        assert_eq!(
            g.handle_frame(now, &cookie),
            Verdict::Dropped(GnDrop::DhcpMalformed)
        );
        // hlen = 200 would make a careless chaddr() slice panic.
        let mut hlen = DISCOVER.to_vec();
        hlen[42 + 2] = 200;
        fix_lengths(&mut hlen);
        assert_eq!(
            g.handle_frame(now, &hlen),
            Verdict::Dropped(GnDrop::DhcpBadHwAddr)
        );
        assert!(frames(&mut g).is_empty());
    }

    /// Rebuilds the IPv4/UDP headers (lengths, checksums) of a captured
    /// DHCP frame after a test edited or truncated its payload.
    fn fix_lengths(f: &mut Vec<u8>) {
        let payload = f[42..].to_vec();
        let ends = UdpEnds {
            dst_mac: MacAddr::BROADCAST,
            src_mac: GN_MAC,
            src_ip: Ipv4Addr::UNSPECIFIED,
            dst_ip: Ipv4Addr::BROADCAST,
            src_port: 68,
            dst_port: 67,
        };
        f.clear();
        build_udp_frame(f, &ends, &payload).unwrap();
    }
}
