//! Builders of zones and members for the DNS tests of the core and of the
//! server (`host::dns`).

use std::net::Ipv4Addr;

use super::{Member, Zone};

/// `s` as an IPv4 address.
pub(crate) fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// A member with its aliases and addresses.
pub(crate) fn member(name: &str, aliases: &[&str], ipv4: &str, ipv6: Option<&str>) -> Member {
    Member {
        name: name.to_string(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ipv4: ip(ipv4),
        ipv6: ipv6.map(|v6| v6.parse().expect("test address")),
    }
}

/// An IPv4-only zone.
pub(crate) fn zone(network: &str, gateway: &str, subnet: &str, members: Vec<Member>) -> Zone {
    Zone {
        network: network.to_string(),
        gateway: ip(gateway),
        subnet: subnet.parse().expect("test subnet"),
        gateway6: None,
        subnet6: None,
        members,
    }
}
