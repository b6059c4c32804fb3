//! Sets and elements: what of the configuration lives in nft's sets and
//! maps, one element per bridge, subnet or published port.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Family {
    Inet,
    Bridge,
}

impl Family {
    pub(super) fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// netloom's sets and maps, in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetId {
    Bridges,
    IntraBridge,
    InternalBridges,
    Subnets,
    MasqSubnets,
    Subnets6,
    MasqSubnets6,
    DnatAny,
    DnatHostIp,
    Dnat6Any,
    Dnat6HostIp,
    IsolatedSubnets,
    IsolatedSubnets6,
    VxlanGatewayMacs,
    VxlanGatewayIps,
}

pub(super) const ALL_SETS: [SetId; 15] = [
    SetId::Bridges,
    SetId::IntraBridge,
    SetId::InternalBridges,
    SetId::Subnets,
    SetId::MasqSubnets,
    SetId::Subnets6,
    SetId::MasqSubnets6,
    SetId::DnatAny,
    SetId::DnatHostIp,
    SetId::Dnat6Any,
    SetId::Dnat6HostIp,
    SetId::IsolatedSubnets,
    SetId::IsolatedSubnets6,
    SetId::VxlanGatewayMacs,
    SetId::VxlanGatewayIps,
];

impl SetId {
    pub(super) fn name(self) -> &'static str {
        match self {
            SetId::Bridges => "bridges",
            SetId::IntraBridge => "intra_bridge",
            SetId::InternalBridges => "internal_bridges",
            SetId::Subnets => "subnets",
            SetId::MasqSubnets => "masq_subnets",
            SetId::Subnets6 => "subnets6",
            SetId::MasqSubnets6 => "masq_subnets6",
            SetId::DnatAny => "dnat_any",
            SetId::DnatHostIp => "dnat_hostip",
            SetId::Dnat6Any => "dnat6_any",
            SetId::Dnat6HostIp => "dnat6_hostip",
            SetId::IsolatedSubnets => "isolated_subnets",
            SetId::IsolatedSubnets6 => "isolated_subnets6",
            SetId::VxlanGatewayMacs => "vxlan_gateway_macs",
            SetId::VxlanGatewayIps => "vxlan_gateway_ips",
        }
    }

    pub(super) fn family(self) -> Family {
        match self {
            SetId::IsolatedSubnets
            | SetId::IsolatedSubnets6
            | SetId::VxlanGatewayMacs
            | SetId::VxlanGatewayIps => Family::Bridge,
            _ => Family::Inet,
        }
    }

    /// Key type as nft prints it.
    pub(super) fn key_type(self) -> &'static str {
        match self {
            SetId::Bridges | SetId::InternalBridges => "ifname",
            SetId::IntraBridge => "ifname . ifname",
            SetId::Subnets | SetId::MasqSubnets | SetId::IsolatedSubnets => "ipv4_addr",
            SetId::Subnets6 | SetId::MasqSubnets6 | SetId::IsolatedSubnets6 => "ipv6_addr",
            SetId::DnatAny | SetId::Dnat6Any => "inet_proto . inet_service",
            SetId::DnatHostIp => "ipv4_addr . inet_proto . inet_service",
            SetId::Dnat6HostIp => "ipv6_addr . inet_proto . inet_service",
            SetId::VxlanGatewayMacs => "ifname . ether_addr",
            SetId::VxlanGatewayIps => "ifname . ipv4_addr",
        }
    }

    /// Data type of a map's values (the DNAT target), None for plain sets.
    pub(super) fn data_type(self) -> Option<&'static str> {
        match self {
            SetId::DnatAny | SetId::DnatHostIp => Some("ipv4_addr . inet_service"),
            SetId::Dnat6Any | SetId::Dnat6HostIp => Some("ipv6_addr . inet_service"),
            _ => None,
        }
    }

    pub(super) fn is_map(self) -> bool {
        self.data_type().is_some()
    }

    pub(super) fn is_interval(self) -> bool {
        matches!(
            self,
            SetId::Subnets
                | SetId::MasqSubnets
                | SetId::IsolatedSubnets
                | SetId::Subnets6
                | SetId::MasqSubnets6
                | SetId::IsolatedSubnets6
        )
    }

    pub(super) fn comment(self) -> &'static str {
        match self {
            SetId::Bridges => "bridge of every netloom network",
            SetId::IntraBridge => "forwarding within one network: BRIDGE . BRIDGE",
            SetId::InternalBridges => "bridges of internal networks",
            SetId::Subnets => "subnet of every netloom network",
            SetId::MasqSubnets => "subnets masqueraded when leaving by a non-bridge interface",
            SetId::Subnets6 => "IPv6 subnet of every dual-stack netloom network",
            SetId::MasqSubnets6 => {
                "IPv6 subnets masqueraded when leaving by a non-bridge interface"
            }
            SetId::DnatAny => "ports published on every host address",
            SetId::DnatHostIp => "ports published on one host address",
            SetId::Dnat6Any => "ports published on every IPv6 host address",
            SetId::Dnat6HostIp => "ports published on one IPv6 host address",
            SetId::IsolatedSubnets => "subnets of icc=false networks",
            SetId::IsolatedSubnets6 => "IPv6 subnets of icc=false networks",
            SetId::VxlanGatewayMacs => "VXLAN port . gateway MAC of each cluster network",
            SetId::VxlanGatewayIps => "VXLAN port . gateway address of each cluster network",
        }
    }

    pub(super) fn from_name(family: &str, name: &str) -> Option<SetId> {
        ALL_SETS
            .into_iter()
            .find(|s| s.family().name() == family && s.name() == name)
    }

    /// The declaration exactly as `nft -j list table` (1.0.6) prints it,
    /// without handle and elements.
    pub(super) fn expected_json(self) -> Value {
        let ty = match self.key_type().split(" . ").collect::<Vec<_>>() {
            parts if parts.len() == 1 => json!(parts[0]),
            parts => json!(parts),
        };
        let mut v = json!({
            "family": self.family().name(),
            "name": self.name(),
            "table": TABLE,
            "type": ty,
            "comment": self.comment(),
        });
        if self.is_interval() {
            v["flags"] = json!(["interval"]);
        }
        if let Some(data) = self.data_type() {
            v["map"] = json!(data);
            v["stmt"] = json!([{"counter": null}]);
        }
        v
    }
}

/// The key of one set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum ElemKey {
    Ifname(String),
    IfnamePair(String, String),
    Prefix(Ipv4Network),
    Prefix6(Ipv6Network),
    Port(Proto, u16),
    HostPort(Ipv4Addr, Proto, u16),
    HostPort6(Ipv6Addr, Proto, u16),
    IfnameMac(String, [u8; 6]),
    IfnameAddr(String, Ipv4Addr),
}

impl fmt::Display for ElemKey {
    /// nft syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemKey::Ifname(n) => write!(f, "\"{}\"", quote_safe(n)),
            ElemKey::IfnamePair(a, b) => write!(f, "\"{}\" . \"{}\"", quote_safe(a), quote_safe(b)),
            ElemKey::Prefix(p) => write!(f, "{}/{}", p.network(), p.prefix()),
            ElemKey::Prefix6(p) => write!(f, "{}/{}", p.network(), p.prefix()),
            ElemKey::Port(proto, port) => write!(f, "{proto} . {port}"),
            ElemKey::HostPort(ip, proto, port) => write!(f, "{ip} . {proto} . {port}"),
            ElemKey::HostPort6(ip, proto, port) => write!(f, "{ip} . {proto} . {port}"),
            ElemKey::IfnameMac(n, mac) => write!(f, "\"{}\" . {}", quote_safe(n), mac_text(mac)),
            ElemKey::IfnameAddr(n, ip) => write!(f, "\"{}\" . {ip}", quote_safe(n)),
        }
    }
}

/// What an element holds besides its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ElemData {
    /// Map value (DNAT target), None for plain sets.
    pub(super) target: Option<(IpAddr, u16)>,
    pub(super) comment: String,
}

/// `aa:bb:cc:dd:ee:ff`, as nft prints an `ether_addr`.
pub(super) fn mac_text(m: &[u8; 6]) -> String {
    let parts: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses a [`mac_text`] (either case).
pub(super) fn mac_bytes(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub(super) type Elements = BTreeMap<(SetId, ElemKey), ElemData>;

/// nft strings cannot contain a double quote, and comments are at most 128
/// bytes of user data in practice; names from the config never hit either,
/// but a bad key must not break the whole transaction's syntax.
pub(super) fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

pub(super) fn normalize_subnet(n: Ipv4Network) -> Ipv4Network {
    // nft stores the network address; 172.17.0.1/16 comes back as 172.17.0.0/16.
    Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)
}

pub(super) fn normalize_subnet6(n: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new(n.network(), n.prefix()).unwrap_or(n)
}

pub(super) fn network_comment(name: &str, n: &FwNetwork) -> String {
    format!(
        "{name} masquerade={} internal={} icc={}",
        n.masquerade, n.internal, n.icc
    )
}

/// The longest element comment nft accepts ("comment too long, 128
/// characters maximum allowed").
pub const COMMENT_MAX: usize = 128;

pub(super) fn port_comment(key: &str, p: &FwPort) -> String {
    port_comment_text(key, &p.container, &p.network, &p.bridge)
}

/// The comment of a port mapping's elements, from which observe rebuilds
/// the mapping. Validation measures it against [`COMMENT_MAX`].
pub fn port_comment_text(key: &str, container: &str, network: &str, bridge: &str) -> String {
    // Parsed from the right (see `parse_port_comment`): names cannot contain
    // spaces, the key might.
    format!("{key} {container} {network} {bridge}")
}

pub(super) fn parse_port_comment(c: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = c.rsplitn(4, ' ');
    let bridge = it.next()?;
    let network = it.next()?;
    let container = it.next()?;
    let key = it.next()?;
    Some((key, container, network, bridge))
}

/// Map, host-side key and DNAT target of each port of a mapping, per
/// family it is published on (see [`FwPort`]).
pub(super) fn port_elements(
    p: &FwPort,
) -> impl Iterator<Item = (SetId, ElemKey, (IpAddr, u16))> + '_ {
    (0..p.count.max(1)).flat_map(move |i| {
        let mut out = Vec::with_capacity(2);
        let (Some(hp), Some(cp)) = (p.host_port.checked_add(i), p.container_port.checked_add(i))
        else {
            return out;
        };
        let v4 = p.container_ip.map(|ip| (IpAddr::V4(ip), cp));
        let v6 = p.container_ip6.map(|ip| (IpAddr::V6(ip), cp));
        match p.host_ip {
            Some(IpAddr::V4(ip)) if !ip.is_unspecified() => {
                out.extend(v4.map(|t| (SetId::DnatHostIp, ElemKey::HostPort(ip, p.proto, hp), t)));
            }
            Some(IpAddr::V6(ip)) if !ip.is_unspecified() => {
                out.extend(
                    v6.map(|t| (SetId::Dnat6HostIp, ElemKey::HostPort6(ip, p.proto, hp), t)),
                );
            }
            Some(IpAddr::V6(_)) => {
                out.extend(v6.map(|t| (SetId::Dnat6Any, ElemKey::Port(p.proto, hp), t)));
            }
            _ => {
                out.extend(v4.map(|t| (SetId::DnatAny, ElemKey::Port(p.proto, hp), t)));
                out.extend(v6.map(|t| (SetId::Dnat6Any, ElemKey::Port(p.proto, hp), t)));
            }
        }
        out
    })
}

/// Every element the desired state needs.
pub(super) fn desired_elements(fw: &Firewall) -> Elements {
    let mut out = Elements::new();
    let mut put = |set: SetId, key: ElemKey, target, comment: String| {
        out.insert(
            (set, key),
            ElemData {
                target,
                comment: quote_safe(&comment),
            },
        );
    };
    for (name, n) in &fw.networks {
        let subnet = ElemKey::Prefix(normalize_subnet(n.subnet));
        put(
            SetId::Bridges,
            ElemKey::Ifname(n.bridge.clone()),
            None,
            network_comment(name, n),
        );
        put(
            SetId::IntraBridge,
            ElemKey::IfnamePair(n.bridge.clone(), n.bridge.clone()),
            None,
            name.clone(),
        );
        let subnet6 = n.subnet6.map(|s| ElemKey::Prefix6(normalize_subnet6(s)));
        put(SetId::Subnets, subnet.clone(), None, name.clone());
        if let Some(s6) = &subnet6 {
            put(SetId::Subnets6, s6.clone(), None, name.clone());
        }
        if n.internal {
            put(
                SetId::InternalBridges,
                ElemKey::Ifname(n.bridge.clone()),
                None,
                name.clone(),
            );
        } else if n.masquerade {
            put(SetId::MasqSubnets, subnet.clone(), None, name.clone());
            if let Some(s6) = &subnet6 {
                put(SetId::MasqSubnets6, s6.clone(), None, name.clone());
            }
        }
        if !n.icc {
            put(SetId::IsolatedSubnets, subnet, None, name.clone());
            if let Some(s6) = subnet6 {
                put(SetId::IsolatedSubnets6, s6, None, name.clone());
            }
        }
    }
    for (key, p) in fw.ports.iter() {
        let comment = port_comment(key, p);
        for (set, k, target) in port_elements(p) {
            put(set, k, Some(target), comment.clone());
        }
    }
    for (name, v) in &fw.vxlans {
        if let Some(mac) = mac_bytes(&v.gateway_mac) {
            put(
                SetId::VxlanGatewayMacs,
                ElemKey::IfnameMac(v.device.clone(), mac),
                None,
                name.clone(),
            );
        }
        put(
            SetId::VxlanGatewayIps,
            ElemKey::IfnameAddr(v.device.clone(), v.gateway),
            None,
            name.clone(),
        );
    }
    out
}

/// Problems in a desired firewall that nft would reject or that would make
/// two objects share one element (the later one would silently win).
/// The model should refuse such a state; `plan_transaction` does not check.
pub fn validate(fw: &Firewall) -> Vec<String> {
    let mut errs = Vec::new();
    let mut owner: BTreeMap<(SetId, ElemKey), &str> = BTreeMap::new();
    for (key, p) in fw.ports.iter() {
        if p.count == 0 {
            errs.push(format!("port {key}: count is 0"));
        }
        let last = u32::from(p.host_port) + u32::from(p.count.max(1)) - 1;
        let last_c = u32::from(p.container_port) + u32::from(p.count.max(1)) - 1;
        if last > 65535 || last_c > 65535 {
            errs.push(format!("port {key}: range runs past 65535"));
        }
        if port_comment(key, p).len() > COMMENT_MAX {
            errs.push(format!("port {key}: names too long for an nft comment"));
        }
        if !fw.networks.contains_key(&p.network) {
            errs.push(format!("port {key}: unknown network {:?}", p.network));
        }
        if p.container_ip.is_none() && p.container_ip6.is_none() {
            errs.push(format!("port {key}: no container address to forward to"));
        }
        if matches!(p.host_ip, Some(IpAddr::V6(_))) && p.container_ip6.is_none() {
            errs.push(format!(
                "port {key}: published on an IPv6 address but the container has none"
            ));
        }
        for (set, k, _) in port_elements(p) {
            if let Some(other) = owner.insert((set, k.clone()), key) {
                errs.push(format!("port {key}: host port {k} is also used by {other}"));
            }
        }
    }
    // An "any address" port and a HOST_IP port on the same port clash too:
    // which DNAT applies would depend on rule order.
    for ((_, k), key) in &owner {
        let any = match k {
            ElemKey::HostPort(_, proto, port) => (SetId::DnatAny, ElemKey::Port(*proto, *port)),
            ElemKey::HostPort6(_, proto, port) => (SetId::Dnat6Any, ElemKey::Port(*proto, *port)),
            _ => continue,
        };
        if let Some(other) = owner.get(&any) {
            let (_, ElemKey::Port(proto, port)) = &any else {
                continue;
            };
            errs.push(format!(
                "port {key}: host port {port}/{proto} is also used by {other}"
            ));
        }
    }
    let nets: Vec<_> = fw.networks.iter().collect();
    for (i, (a, na)) in nets.iter().enumerate() {
        for (b, nb) in &nets[i + 1..] {
            if na.subnet.overlaps(nb.subnet) {
                errs.push(format!(
                    "network {a}: subnet {} overlaps network {b}",
                    na.subnet
                ));
            }
            if let (Some(x), Some(y)) = (na.subnet6, nb.subnet6)
                && x.overlaps(y)
            {
                errs.push(format!("network {a}: subnet6 {x} overlaps network {b}"));
            }
            if na.bridge == nb.bridge {
                errs.push(format!(
                    "network {a}: bridge {} is also used by {b}",
                    na.bridge
                ));
            }
        }
    }
    for (name, v) in &fw.vxlans {
        if mac_bytes(&v.gateway_mac).is_none() {
            errs.push(format!(
                "network {name}: gateway MAC {:?} is not a MAC",
                v.gateway_mac
            ));
        }
    }
    for name in fw.networks.keys().chain(fw.vxlans.keys()) {
        if name.contains(char::is_whitespace) || quote_safe(name) != *name {
            errs.push(format!(
                "network {name:?}: name not usable in an nft comment"
            ));
        }
    }
    errs
}

/// Sysctls the firewall relies on, as (key, value). The caller sets them
/// (per network namespace) before or right after applying.
pub fn required_sysctls(fw: &Firewall) -> Vec<(String, String)> {
    let mut out = BTreeSet::new();
    if !fw.networks.is_empty() {
        out.insert(("net.ipv4.ip_forward".to_string(), "1".to_string()));
    }
    if fw.networks.values().any(|n| n.subnet6.is_some()) {
        // Also makes the host ignore router advertisements on interfaces
        // with accept_ra=1 (the README says how to keep SLAAC uplinks).
        out.insert(("net.ipv6.conf.all.forwarding".to_string(), "1".to_string()));
    }
    for p in fw.ports.values() {
        // Reaching a port via 127.0.0.1 routes a packet with a loopback
        // source out of the bridge; the kernel allows that only with
        // route_localnet on the outgoing interface.
        let via_loopback = p.container_ip.is_some()
            && match p.host_ip {
                None => true,
                Some(IpAddr::V4(ip)) => ip.is_unspecified() || ip.is_loopback(),
                Some(IpAddr::V6(_)) => false,
            };
        if via_loopback {
            out.insert((
                format!("net.ipv4.conf.{}.route_localnet", p.bridge),
                "1".to_string(),
            ));
        }
    }
    out.into_iter().collect()
}
