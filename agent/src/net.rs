//! Addresses as podflow carries them: the wire form of a record's address, IPv4-mapped IPv6
//! folded to IPv4 for lookups, and CIDR prefixes ([`IpNet`], the `ipnet` crate's).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

/// Parses the wire form of an address (a record's `src_ip`/`dst_ip`): 4 bytes IPv4, 16 bytes
/// IPv6, else `None`.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as IPv4; every other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn wire_forms_and_mapped_addresses() {
        assert_eq!(ip_from_bytes(&[10, 0, 0, 1]), Some(ip("10.0.0.1")));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_from_bytes(&v6), Some(ip("::1")));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("fd00::1")), ip("fd00::1"));
    }

    #[test]
    fn prefixes() {
        let n: IpNet = "10.244.0.0/16".parse().unwrap_or_default();
        assert!(n.contains(&ip("10.244.255.1")) && !n.contains(&ip("10.245.0.1")));
        assert!(!n.contains(&ip("::1")));
        let v6: IpNet = "fd00::/8".parse().unwrap_or_default();
        assert!(v6.contains(&ip("fd12::1")) && !v6.contains(&ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err() && "10.0.0.0".parse::<IpNet>().is_err());
    }
}
