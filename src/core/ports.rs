//! Docker's `-p` syntax: `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|udp|sctp]`,
//! where an IPv6 HOST_IP is written in brackets: `[fd00::1]:8080:80`,
//! `[::]:8080:80` (every IPv6 address only).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::core::firewall::Proto;

/// One parsed `-p` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None`: every host address of both families (`0.0.0.0` is read as
    /// that too); `Some(::)`: every IPv6 address only.
    pub host_ip: Option<IpAddr>,
    /// `None`: pick from `port_range` (Docker's `-P`).
    pub host: Option<PortRange>,
    /// Ports inside the container; as many as `host` holds, when given.
    pub container: PortRange,
    /// `tcp` unless the value says otherwise.
    pub proto: Proto,
}

/// An inclusive range of ports; a single port is `start == end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// First port (ports are 1..=65535).
    pub start: u16,
    /// Last port, `>= start`.
    pub end: u16,
}

impl PortRange {
    /// Number of ports, at least 1.
    pub fn len(&self) -> u16 {
        self.end - self.start + 1
    }
    /// Always false: a range holds at least one port (for clippy's
    /// `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Why a `-p` value or a port range is not valid; the message is shown at
/// the value's position in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Not digits.
    #[error("`{0}` is not a port number")]
    NotANumber(String),
    /// 0 or above 65535.
    #[error("port {0} is out of range 1-65535")]
    OutOfRange(String),
    /// `N-M` with `N > M`.
    #[error("port range {0} is reversed")]
    Reversed(String),
    /// After the `/`.
    #[error("unknown protocol `{0}` (expected tcp, udp or sctp)")]
    UnknownProtocol(String),
    /// `[…` without the closing bracket or the address is not IPv6.
    #[error("`{0}` is not an IPv6 host address in brackets ([ADDR]:HOST_PORT:CONTAINER_PORT)")]
    BadHostIp6(String),
    /// Too many or too few `:`-separated parts.
    #[error("`{0}` is not [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]")]
    Syntax(String),
    /// The part before the host port.
    #[error("`{0}` is not an IPv4 host address (write IPv6 ones as [ADDR])")]
    BadHostIp(String),
    /// `8080-8081:80`.
    #[error("host ports {host} and container ports {container} are ranges of different length")]
    LengthMismatch {
        /// The host side.
        host: PortRange,
        /// The container side.
        container: PortRange,
    },
}

fn parse_port(s: &str) -> Result<u16, PortError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::NotANumber(s.into()));
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(PortError::OutOfRange(s.into())),
    }
}

/// Parses `N` or `N-M` (`N <= M`).
pub fn parse_range(s: &str) -> Result<PortRange, PortError> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (parse_port(a)?, parse_port(b)?),
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
    };
    if a > b {
        return Err(PortError::Reversed(s.into()));
    }
    Ok(PortRange { start: a, end: b })
}

/// Parses one `-p` value.
pub fn parse(s: &str) -> Result<PortSpec, PortError> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) => (
            r,
            p.parse::<Proto>()
                .map_err(|_| PortError::UnknownProtocol(p.into()))?,
        ),
        None => (s, Proto::Tcp),
    };
    // An IPv6 host address has colons of its own: take it out first.
    let (v6, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (ip, after) = r
                .split_once(']')
                .ok_or_else(|| PortError::BadHostIp6(rest.into()))?;
            let ip = ip
                .parse::<Ipv6Addr>()
                .map_err(|_| PortError::BadHostIp6(format!("[{ip}]")))?;
            let after = after
                .strip_prefix(':')
                .ok_or_else(|| PortError::Syntax(s.into()))?;
            (Some(ip), after)
        }
        None => (None, rest),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (v6, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(*ip), if h.is_empty() { None } else { Some(*h) }, *c),
        (Some(_), [h, c]) => (None, if h.is_empty() { None } else { Some(*h) }, *c),
        _ => {
            return Err(PortError::Syntax(s.into()));
        }
    };
    let host_ip = match (v6, ip) {
        (Some(ip), _) => Some(IpAddr::V6(ip)),
        (None, None) => None,
        (None, Some(ip)) => Some(IpAddr::V4(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| PortError::BadHostIp(ip.into()))?,
        )),
    };
    let container = parse_range(container)?;
    let host = match host {
        None => None,
        Some(h) => Some(parse_range(h)?),
    };
    if let Some(h) = host {
        if h.len() != container.len() {
            return Err(PortError::LengthMismatch { host: h, container });
        }
    }
    Ok(PortSpec {
        // 0.0.0.0 is "every address" (both families, as before IPv6 was
        // published); [::] stays: every IPv6 address only.
        host_ip: host_ip.filter(|ip| !(ip.is_ipv4() && ip.is_unspecified())),
        host,
        container,
        proto,
    })
}

/// Host ports in use, as disjoint ranges merged with their neighbours, so
/// that finding the lowest free run of ports skips whole taken blocks.
#[derive(Clone, Debug, Default)]
pub struct BusyPorts {
    /// start -> end, inclusive, disjoint and never adjacent.
    ranges: BTreeMap<u32, u32>,
}

impl BusyPorts {
    /// Marks `start..=end` as taken.
    pub fn insert(&mut self, start: u32, end: u32) {
        let (mut s, mut e) = (start, end);
        // Absorb every range that overlaps or touches [s, e].
        while let Some((&a, &b)) = self.ranges.range(..=e.saturating_add(1)).next_back() {
            if b.saturating_add(1) < s {
                break;
            }
            self.ranges.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.ranges.insert(s, e);
    }

    /// The taken range that overlaps `start..=end`, if any (at most one
    /// needs checking: ranges are disjoint and sorted).
    fn blocker(&self, start: u32, end: u32) -> Option<u32> {
        let (_, &b) = self.ranges.range(..=end).next_back()?;
        (b >= start).then_some(b)
    }

    /// Whether `start..=end` is entirely free.
    pub fn is_free(&self, start: u32, end: u32) -> bool {
        self.blocker(start, end).is_none()
    }

    /// The lowest `s >= first` with `s..s+len` free and inside `..=last`.
    pub fn first_free(&self, first: u32, last: u32, len: u16) -> Option<u32> {
        let len = u32::from(len.max(1));
        let mut s = first;
        loop {
            let e = s.checked_add(len - 1)?;
            if e > last {
                return None;
            }
            match self.blocker(s, e) {
                Some(b) => s = b.checked_add(1)?,
                None => return Some(s),
            }
        }
    }
}

/// Key of an auto-published mapping: `container/raw`.
pub fn port_key(container: &str, raw: &str) -> String {
    format!("{container}/{raw}")
}

/// Why [`allocate_auto`] failed: the key of the first mapping left without
/// host ports, and how many consecutive ports it needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRoom {
    /// The mapping's key ([`port_key`]).
    pub key: String,
    /// Consecutive host ports it needed.
    pub len: u16,
}

/// Host ports for mappings without HOST_PORT (Docker's `-P`), first fit in
/// `first..=last`, avoiding `busy` (every explicitly published range).
/// `wanted` is (key, number of ports) in file order; a port `prev` gave a
/// key is kept when it is still free. Pure, so validation can run it
/// against an empty history and IPAM against the recorded one.
pub fn allocate_auto(
    (first, last): (u16, u16),
    mut busy: BusyPorts,
    wanted: &[(String, u16)],
    prev: &BTreeMap<String, u16>,
) -> Result<BTreeMap<String, u16>, NoRoom> {
    let (first, last) = (u32::from(first), u32::from(last));
    let mut out = BTreeMap::new();
    for (key, len) in wanted {
        if let Some(&p) = prev.get(key) {
            let (s, e) = (u32::from(p), u32::from(p) + u32::from(*len) - 1);
            if s >= first && e <= last && busy.is_free(s, e) {
                busy.insert(s, e);
                out.insert(key.clone(), p);
            }
        }
    }
    for (key, len) in wanted {
        if out.contains_key(key) {
            continue;
        }
        let Some(s) = busy.first_free(first, last, *len) else {
            return Err(NoRoom {
                key: key.clone(),
                len: *len,
            });
        };
        busy.insert(s, s + u32::from(*len) - 1);
        // `s <= last <= 65535`: the conversion cannot fail.
        out.insert(key.clone(), u16::try_from(s).unwrap_or(u16::MAX));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_forms() {
        let p = parse("8080:80").unwrap();
        assert_eq!(
            p.host,
            Some(PortRange {
                start: 8080,
                end: 8080
            })
        );
        assert_eq!(p.container.start, 80);
        assert_eq!(p.proto, Proto::Tcp);
        let p = parse("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(p.proto, Proto::Udp);
        let p = parse("127.0.0.1::80").unwrap();
        assert_eq!(p.host, None);
        let p = parse("80").unwrap();
        assert_eq!(p.host, None);
        let p = parse("8000-8010:9000-9010/sctp").unwrap();
        assert_eq!(p.container.len(), 11);
        assert_eq!(parse("0.0.0.0:80:80").unwrap().host_ip, None);
    }

    #[test]
    fn ipv6_host_addresses() {
        let p = parse("[fd00::1]:8080:80/udp").unwrap();
        assert_eq!(p.host_ip, Some("fd00::1".parse().unwrap()));
        assert_eq!(p.host.map(|h| h.start), Some(8080));
        assert_eq!(p.container.start, 80);
        assert_eq!(p.proto, Proto::Udp);
        let p = parse("[fd00::1]::80").unwrap();
        assert_eq!(p.host, None);
        // [::] is "every IPv6 address", not both families.
        assert_eq!(
            parse("[::]:80:80").unwrap().host_ip,
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        );
        assert!(matches!(
            parse("[fd00::1:8080:80"),
            Err(PortError::BadHostIp6(_))
        ));
        assert!(matches!(
            parse("[10.0.0.1]:80:80"),
            Err(PortError::BadHostIp6(_))
        ));
        assert!(matches!(parse("[fd00::1]:80"), Err(PortError::Syntax(_))));
        assert!(matches!(parse("fd00::1:80:80"), Err(PortError::Syntax(_))));
    }

    #[test]
    fn errors() {
        assert_eq!(parse("0:80"), Err(PortError::OutOfRange("0".into())));
        assert_eq!(
            parse("65536:80"),
            Err(PortError::OutOfRange("65536".into()))
        );
        assert!(matches!(
            parse("8000-8001:80"),
            Err(PortError::LengthMismatch { .. })
        ));
        assert!(
            parse("8000-8001:80")
                .unwrap_err()
                .to_string()
                .contains("different length")
        );
        assert_eq!(
            parse("80/icmp"),
            Err(PortError::UnknownProtocol("icmp".into()))
        );
        assert_eq!(parse("a:b:c:d"), Err(PortError::Syntax("a:b:c:d".into())));
        assert_eq!(
            parse("300.0.0.1:80:80"),
            Err(PortError::BadHostIp("300.0.0.1".into()))
        );
        assert_eq!(parse("90-80"), Err(PortError::Reversed("90-80".into())));
        assert_eq!(parse(""), Err(PortError::NotANumber("".into())));
    }
}
