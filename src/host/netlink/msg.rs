//! Building and parsing rtnetlink messages (links, addresses, routes),
//! with no socket: everything here is a function of its arguments.

use super::*;

pub(super) fn inner_messages(
    replies: Vec<NetlinkMessage<RouteNetlinkMessage>>,
) -> Vec<RouteNetlinkMessage> {
    replies
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::InnerMessage(inner) => Some(inner),
            _ => None,
        })
        .collect()
}

/// The link called `name` among echoed/answered messages.
pub(super) fn echoed_link(msgs: Vec<RouteNetlinkMessage>, name: &str) -> Option<Link> {
    msgs.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => {
            let link = parse_link(&link);
            (link.name == name).then_some(link)
        }
        _ => None,
    })
}

pub(super) fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        alias: None,
        peer_index: None,
        link_netnsid: None,
        hairpin: None,
        vxlan: None,
    };
    let mut iflink = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::Link(index) => iflink = Some(*index),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            let mut v = VxlanInfo::default();
                            for a in attrs {
                                match a {
                                    InfoVxlan::Id(id) => v.vni = *id,
                                    InfoVxlan::Local(ip) => v.local = Some(*ip),
                                    InfoVxlan::Port(p) => v.port = *p,
                                    InfoVxlan::Learning(l) => v.learning = *l,
                                    InfoVxlan::Proxy(x) => v.proxy = *x,
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(v);
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            link.hairpin = port.iter().find_map(|p| match p {
                                InfoBridgePort::HairpinMode(on) => Some(*on),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // IFLA_LINK means "parent device" for vlan/macvlan/tunnels; only for veth
    // is it the peer.
    if link.kind.as_deref() == Some("veth") {
        link.peer_index = iflink;
    }
    link
}

pub(super) fn is_ipv6_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

pub(super) fn parse_addr(msg: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs from it
    // only for point-to-point peers, and IPv6 sends only IFA_ADDRESS.
    let ip = local.or(address)?;
    if let IpAddr::V6(v6) = ip {
        if is_ipv6_link_local(&v6) {
            return None;
        }
    }
    Some(Addr {
        index: msg.header.index,
        ip,
        prefix: msg.header.prefix_len,
    })
}

pub(super) fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub(super) fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let unspecified = match msg.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            // RTA_TABLE carries the full 32-bit id; the header only 8 bits.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_address(a),
            RouteAttribute::Gateway(a) => gateway = route_address(a),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = dst.unwrap_or(unspecified);
    let prefix = msg.header.destination_prefix_length;
    if let IpAddr::V6(v6) = dst {
        if prefix >= 10 && is_ipv6_link_local(&v6) {
            return None;
        }
    }
    Some(Route {
        dst,
        prefix,
        gateway,
        oif,
        protocol: u8::from(msg.header.protocol),
    })
}

pub(super) fn check_prefix(ip: IpAddr, prefix: u8) -> Result<()> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("invalid prefix length /{prefix} for {ip}");
    }
    Ok(())
}

pub(super) fn address_message(
    index: u32,
    ip: IpAddr,
    prefix: u8,
    adding: bool,
) -> Result<AddressMessage> {
    check_prefix(ip, prefix)?;
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = prefix;
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv6() && adding {
        // Like Docker: the address is usable at once instead of staying
        // tentative for a second of duplicate address detection; IPAM
        // already guarantees it is unique on the network.
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    if let IpAddr::V4(v4) = ip {
        // Same rule as iproute2's `brd +`: no broadcast on /31 and /32.
        if adding && prefix <= 30 {
            let host_mask = u32::MAX >> prefix;
            msg.attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                    u32::from(v4) | host_mask,
                )));
        }
    }
    Ok(msg)
}

/// Main-table route message with destination, gateway and oif; the caller
/// sets protocol, scope and type.
pub(super) fn route_message(
    dst: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<RouteMessage> {
    check_prefix(dst, prefix)?;
    let mut msg = RouteMessage::default();
    msg.header.address_family = match dst {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    if prefix > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    }
    if let Some(gw) = gateway {
        if gw.is_ipv4() != dst.is_ipv4() {
            bail!("gateway {gw} is not of the same family as {dst}");
        }
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    Ok(msg)
}

pub(super) fn describe_route(
    dst: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> String {
    let mut s = format!("{dst}/{prefix}");
    if let Some(gw) = gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    s
}
