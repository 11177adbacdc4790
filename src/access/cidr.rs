//! `allow_cidrs` entries: address ranges over [`ipnet`], with the two rules the crate leaves to
//! us: IPv4-mapped IPv6 is IPv4, and an entry with host bits set is a mistake, not a range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address means that one address
/// (`/32` or `/128`).
///
/// IPv4-mapped IPv6 is treated as IPv4 on both sides: a dual-stack listener reports an IPv4
/// client as `::ffff:a.b.c.d`, and an allow-list written for IPv4 must still apply to it (and a
/// deny by omission must not be bypassed by connecting over the mapped form). An entry written
/// in mapped form with a prefix of at least 96 (`::ffff:127.0.0.0/104`) is stored as the IPv4
/// range it denotes (`127.0.0.0/8`). Otherwise an IPv6 range matches only IPv6 peers: `::/0`
/// does not admit IPv4 clients; write `0.0.0.0/0` as well for that.
///
/// ```
/// use medusa_auth_proxy::access::Cidr;
///
/// let office: Cidr = "10.0.0.0/8".parse().unwrap();
/// assert!(office.contains("10.1.2.3".parse().unwrap()));
/// assert!(office.contains("::ffff:10.1.2.3".parse().unwrap()));
/// assert!("10.1.2.3/8".parse::<Cidr>().is_err(), "host bits are refused");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(
    /// Always truncated (host bits are refused at parse time) and never in IPv4-mapped form.
    IpNet,
);

/// `127.0.0.0/8`: every range inside it is loopback only.
const LOOPBACK_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8);

impl Cidr {
    /// Whether `ip` is inside the range (IPv4-mapped IPv6 compared as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// Whether every address in the range is a loopback address (inside `127.0.0.0/8`, or
    /// exactly `::1`). Used to decide whether an allow-list lets anyone remote in at all.
    pub fn is_loopback_only(&self) -> bool {
        match self.0 {
            IpNet::V4(net) => LOOPBACK_V4.contains(&net),
            IpNet::V6(net) => net.prefix_len() == 128 && net.addr() == Ipv6Addr::LOCALHOST,
        }
    }
}

impl FromStr for Cidr {
    /// A message that quotes the entry, e.g. `"10.0.0.0/33": prefix length 33 is longer than
    /// 32`, for the config layer to prefix with the key.
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        // std's parser is strict (no `010.0.0.1` octal look-alikes, no `127.1`, no zone ids),
        // so what is accepted here means one thing only. (`IpNet::from_str` would do for the
        // `a/n` form, but not for a bare address, nor name the part that is wrong.)
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{s:?}: {addr_text:?} is not an IP address"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                // Digits only: `u8::from_str` would also take `+8`.
                let not_a_number =
                    || format!("{s:?}: prefix length {p:?} is not a number from 0 to {max}");
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(not_a_number());
                }
                let n: u16 = p.parse().map_err(|_| not_a_number())?;
                if n > u16::from(max) {
                    return Err(format!("{s:?}: prefix length {n} is longer than {max}"));
                }
                u8::try_from(n).map_err(|_| not_a_number())?
            }
        };
        let net = IpNet::new(addr, prefix)
            .map_err(|_| format!("{s:?}: prefix length {prefix} is longer than {max}"))?;
        // Refuse host bits rather than silently masking them: `10.1.2.3/8` is more likely a
        // typo for one host than a wish to admit all of 10/8, and widening an allow-list by
        // accident is the wrong way to fail.
        let network = net.trunc();
        if network != net {
            return Err(format!(
                "{s:?}: has bits set after the first {prefix}; did you mean \"{network}\"?"
            ));
        }
        Ok(Cidr(unmapped(network)))
    }
}

/// `::ffff:a.b.c.d/n` with `n >= 96` is the IPv4 range `a.b.c.d/(n - 96)`.
fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new_assert(v4, v6.prefix_len() - 96)),
            None => net,
        },
        _ => net,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

/// `allow_cidrs`' default, loopback only: `127.0.0.0/8` and `::1/128`. The config module's
/// default is this list, so it is written here and nowhere else.
pub fn default_allow_cidrs() -> Vec<Cidr> {
    vec![
        Cidr(IpNet::V4(LOOPBACK_V4)),
        Cidr(IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The reference mask, written out independently of ipnet.
    fn mask_v4(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    fn mask_v6(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
    }

    #[test]
    fn cidr_parse_errors_name_the_entry_and_reason() {
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert_eq!(err, "\"10.0.0.0/33\": prefix length 33 is longer than 32");
        let err = "::/129".parse::<Cidr>().unwrap_err();
        assert_eq!(err, "\"::/129\": prefix length 129 is longer than 128");
        for bad in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.256/32",
            "localhost",
            "010.0.0.1",
            "127.1",
            " 10.0.0.0/8",
            "fe80::1%eth0/128",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.contains("is not an IP address"), "{bad:?}: {err}");
            assert!(err.starts_with(&format!("{bad:?}")), "{err}");
        }
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/x",
            "10.0.0.0/8/8",
            "10.0.0.0/1000",
            "10.0.0.0/ 8",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.contains("is not a number"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cidr_with_host_bits_is_refused_with_a_suggestion() {
        // Masking silently would turn a typo for one host into a whole /8.
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(err.contains("did you mean \"10.0.0.0/8\""), "{err}");
        assert!("fd00::1/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_v4_matching() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        let one = cidr("192.168.1.7/32");
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.6")));
        assert_eq!(cidr("192.168.1.7"), one, "a bare address is /32");
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("::1")), "an IPv4 range never matches IPv6");
    }

    #[test]
    fn cidr_v6_matching() {
        let c = cidr("fd00::/8");
        assert!(c.contains(ip("fd12::1")));
        assert!(!c.contains(ip("fe80::1")));
        let one = cidr("::1/128");
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
        assert_eq!(cidr("::1"), one, "a bare address is /128");
        let all = cidr("::/0");
        assert!(all.contains(ip("2001:db8::1")));
        assert!(!all.contains(ip("10.0.0.1")), "::/0 does not admit IPv4");
        assert!(
            !all.contains(ip("::ffff:10.0.0.1")),
            "nor mapped IPv4, which is IPv4"
        );
    }

    #[test]
    fn cidr_ipv4_mapped_is_ipv4() {
        // A dual-stack listener reports IPv4 peers in mapped form.
        let lo = cidr("127.0.0.0/8");
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("::ffff:128.0.0.1")));
        // And an entry in mapped form is the IPv4 range.
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert_eq!(mapped, cidr("10.0.0.0/8"));
        assert!(mapped.contains(ip("10.1.2.3")));
        assert_eq!(cidr("::ffff:127.0.0.1"), cidr("127.0.0.1/32"));
        assert_eq!(cidr("::ffff:0:0/96"), cidr("0.0.0.0/0"));
    }

    #[test]
    fn cidr_loopback_only() {
        for c in [
            "127.0.0.0/8",
            "127.0.0.1/32",
            "127.1.0.0/16",
            "::1/128",
            "::ffff:127.0.0.1/128",
        ] {
            assert!(cidr(c).is_loopback_only(), "{c}");
        }
        for c in [
            "126.0.0.0/7",
            "0.0.0.0/0",
            "10.0.0.0/8",
            "::/0",
            "::/127",
            "::2/128",
            "fd00::/8",
        ] {
            assert!(!cidr(c).is_loopback_only(), "{c}");
        }
    }

    #[test]
    fn cidr_display_round_trips() {
        for s in ["10.0.0.0/8", "::1/128", "0.0.0.0/0", "fd00::/8"] {
            assert_eq!(cidr(s).to_string(), s);
            assert_eq!(cidr(&cidr(s).to_string()), cidr(s));
        }
    }

    #[test]
    fn default_is_loopback_only() {
        assert_eq!(
            default_allow_cidrs(),
            [cidr("127.0.0.0/8"), cidr("::1/128")]
        );
        assert!(default_allow_cidrs().iter().all(Cidr::is_loopback_only));
    }

    proptest! {
        #[test]
        fn cidr_contains_matches_bitwise_reference(
            addr in any::<u32>(), prefix in 0u8..=32, probe in any::<u32>(),
        ) {
            let net = addr & mask_v4(prefix);
            let c: Cidr = format!("{}/{prefix}", Ipv4Addr::from(net)).parse().unwrap();
            // Reference: the first `prefix` bits agree, one bit at a time.
            let same = (0..prefix).all(|i| (net >> (31 - i)) & 1 == (probe >> (31 - i)) & 1);
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(probe))), same);
            let mapped = IpAddr::V6(Ipv4Addr::from(probe).to_ipv6_mapped());
            prop_assert_eq!(c.contains(mapped), same);
        }

        #[test]
        fn cidr_v6_contains_matches_bitwise_reference(
            addr in any::<u128>(), prefix in 0u8..=128, probe in any::<u128>(),
        ) {
            let net = addr & mask_v6(prefix);
            let text = format!("{}/{prefix}", Ipv6Addr::from(net));
            let c: Cidr = text.parse().unwrap();
            let probe_ip = Ipv6Addr::from(probe);
            let same = (0..prefix).all(|i| (net >> (127 - i)) & 1 == (probe >> (127 - i)) & 1);
            // Mapped ranges and probes are compared as IPv4; the reference is plain IPv6 bits,
            // which agree whenever neither side is in ::ffff:0:0/96.
            let mapped_space = |x: u128| x >> 32 == 0xffff;
            if !mapped_space(net) && !mapped_space(probe) {
                prop_assert_eq!(c.contains(IpAddr::V6(probe_ip)), same);
            }
        }

        #[test]
        fn host_bits_are_always_refused(addr in any::<u32>(), prefix in 0u8..=32) {
            let text = format!("{}/{prefix}", Ipv4Addr::from(addr));
            let has_host_bits = addr & !mask_v4(prefix) != 0;
            prop_assert_eq!(text.parse::<Cidr>().is_err(), has_host_bits, "{}", text);
        }
    }
}
