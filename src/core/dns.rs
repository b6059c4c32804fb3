//! The records of the embedded DNS: which names each network's members
//! answer to. Built by the model with no I/O; served by the shell's DNS
//! server on each network's gateway.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;

/// One container attached to a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub aliases: Vec<String>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

/// The records of one network, served on its gateway address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    pub network: String,
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Network,
    pub members: Vec<Member>,
}
