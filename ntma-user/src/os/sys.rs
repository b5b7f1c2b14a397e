//! What the daemon reads from the kernel about its NICs, in its own network
//! namespace: MAC, index and IPv4 address of an interface (getifaddrs), the
//! default gateway (`/proc/net/route`) and the neighbour table
//! (`/proc/net/arp`). The parsers are pure functions, tested on fixtures.

use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::LinkAddr;

use crate::gn::MacAddr;

/// One interface as the kernel reports it.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Index.
    pub index: usize,
    /// MAC address.
    pub mac: MacAddr,
    /// IPv4 addresses with prefix lengths.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// Administratively up.
    pub up: bool,
    /// The AF_PACKET address of the interface (binds raw sockets to it).
    pub link: LinkAddr,
}

/// Why an interface cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// getifaddrs failed.
    #[error("cannot list the network interfaces: {0}")]
    List(#[from] nix::Error),
    /// No interface with that name.
    #[error("interface {0} does not exist in this network namespace (check `ip link`; under ip netns, run the daemon inside the namespace)")]
    Missing(String),
}

fn prefix_len(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// Looks up `name`.
pub fn interface(name: &str) -> Result<Interface, IfaceError> {
    let mut found: Option<Interface> = None;
    let mut ipv4 = Vec::new();
    for ifa in getifaddrs()? {
        if ifa.interface_name != name {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            found = Some(Interface {
                name: name.to_owned(),
                index: link.ifindex(),
                mac: MacAddr(link.addr().unwrap_or([0; 6])),
                ipv4: Vec::new(),
                up: ifa.flags.contains(InterfaceFlags::IFF_UP),
                link: *link,
            });
        } else if let Some(sin) = addr.as_sockaddr_in() {
            let len = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| prefix_len(m.ip())))
                .unwrap_or(32);
            ipv4.push((sin.ip(), len));
        }
    }
    let mut i = found.ok_or_else(|| IfaceError::Missing(name.to_owned()))?;
    i.ipv4 = ipv4;
    Ok(i)
}

/// The default route's gateway through `ifname`, from `/proc/net/route` text.
pub fn parse_default_gateway(route: &str, ifname: &str) -> Option<Ipv4Addr> {
    route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != ifname || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        // The kernel prints the address's bytes as a native-endian u32.
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        let gw = Ipv4Addr::from(gw.to_ne_bytes());
        (!gw.is_unspecified()).then_some(gw)
    })
}

/// The complete neighbour entry of `ip` on `ifname`, from `/proc/net/arp` text.
pub fn parse_neighbour(arp: &str, ip: Ipv4Addr, ifname: &str) -> Option<MacAddr> {
    const ATF_COM: u32 = 0x02;
    arp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != ifname || f[0].parse::<Ipv4Addr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & ATF_COM == 0 {
            return None;
        }
        let mut mac = [0u8; 6];
        let mut parts = f[3].split(':');
        for b in &mut mac {
            *b = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        let mac = MacAddr(mac);
        mac.is_unicast().then_some(mac)
    })
}

/// The default gateway through `ifname` now.
pub fn default_gateway(ifname: &str) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&text, ifname)
}

/// The MAC of neighbour `ip` on `ifname`, once the kernel resolved it.
pub fn neighbour(ip: Ipv4Addr, ifname: &str) -> Option<MacAddr> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_neighbour(&text, ip, ifname)
}

/// The MTU of interface `name` (`/sys/class/net/<name>/mtu`).
pub fn mtu(name: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads a sysctl under `/proc/sys` (`net/ipv4/ip_forward`).
pub fn read_sysctl(key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(format!("/proc/sys/{key}")).map(|s| s.trim().to_owned())
}

/// Writes a sysctl under `/proc/sys`.
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
lan0\t00004064\t00000000\t0001\t0\t0\t0\t0000C0FF\t0\t0\t0\n\
wan0\t00000000\t010AA8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
wan0\t000AA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device\n\
192.168.10.1     0x1         0x2         0a:1b:2c:3d:4e:5f     *        wan0\n\
192.168.10.7     0x1         0x0         00:00:00:00:00:00     *        wan0\n\
100.64.0.2       0x1         0x2         02:00:00:00:00:0a     *        lan0\n";

    #[test]
    fn default_gateway_of_an_interface() {
        assert_eq!(
            parse_default_gateway(ROUTE, "wan0"),
            Some(Ipv4Addr::new(192, 168, 10, 1))
        );
        assert_eq!(parse_default_gateway(ROUTE, "lan0"), None);
        assert_eq!(parse_default_gateway("", "wan0"), None);
        assert_eq!(parse_default_gateway("hdr\nwan0 00000000 zz", "wan0"), None);
    }

    #[test]
    fn complete_neighbours_only() {
        let gw = Ipv4Addr::new(192, 168, 10, 1);
        assert_eq!(
            parse_neighbour(ARP, gw, "wan0"),
            Some(MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]))
        );
        assert_eq!(parse_neighbour(ARP, gw, "lan0"), None);
        assert_eq!(
            parse_neighbour(ARP, Ipv4Addr::new(192, 168, 10, 7), "wan0"),
            None
        );
        assert_eq!(
            parse_neighbour(
                "h\n1.2.3.4 0x1 0x2 zz:00 * wan0",
                Ipv4Addr::new(1, 2, 3, 4),
                "wan0"
            ),
            None
        );
    }

    #[test]
    fn loopback_is_found_and_missing_interfaces_are_explained() {
        let lo = interface("lo").unwrap();
        assert!(lo.ipv4.contains(&(Ipv4Addr::LOCALHOST, 8)), "{lo:?}");
        assert!(lo.index > 0);
        let e = interface("nosuchif0").unwrap_err().to_string();
        assert!(e.contains("nosuchif0") && e.contains("ip link"), "{e}");
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 192, 0, 0)), 10);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), 32);
        assert_eq!(prefix_len(Ipv4Addr::UNSPECIFIED), 0);
    }
}
