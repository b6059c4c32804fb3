//! The validated file: every value parsed into its type, defaults filled in.
//!
//! [`load`] turns the text of the file into a [`Spec`] or into the full list
//! of errors (TOML syntax, unknown keys, wrong types and every semantic
//! check), each at the position of the offending value.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use ipnetwork::{Ipv4Network, Ipv6Network};
use toml::Spanned;

use crate::core::config::{self, ConfigFile, NetworkConfig};
use crate::core::diag::{Diag, Diagnostics, hint_unknown_field, suggest};
use crate::core::firewall::{self, Proto};
use crate::core::ports::{self, PortSpec};
use crate::core::shape;

/// Name of Docker's default network.
pub const DEFAULT_NETWORK: &str = "bridge";

/// The whole file, validated, with defaults filled in.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `settings.state_dir` (`--state-dir` and `NETLOOM_STATE_DIR` win
    /// over it).
    pub state_dir: Option<PathBuf>,
    /// `settings.port_range`, inclusive: host ports for mappings without
    /// one (Docker's `-P`).
    pub port_range: (u16, u16),
    /// `settings.upstream_dns`; `None`: the host's resolv.conf servers.
    pub upstream_dns: Option<Vec<SocketAddr>>,
    /// By name, including the implicit default network when a container
    /// uses it undeclared.
    pub networks: BTreeMap<String, NetworkSpec>,
    /// In file order.
    pub containers: Vec<ContainerSpec>,
    /// Cluster mode; `None` for a single-host file.
    pub cluster: Option<crate::core::cluster::ClusterSpec>,
}

/// One network, every key resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The network's name (its key in the file).
    pub name: String,
    /// Bridge interface name, at most 15 bytes, unique among networks.
    pub bridge: String,
    /// IPv4 subnet, without host bits.
    pub subnet: Ipv4Network,
    /// The bridge's address: the file's, else the subnet's first host.
    pub gateway: Ipv4Addr,
    /// Embedded DNS is served on the gateway (default: not on `bridge`).
    pub dns: bool,
    /// Outbound NAT for the subnets.
    pub masquerade: bool,
    /// No route out, no NAT, no published ports.
    pub internal: bool,
    /// Members may reach each other.
    pub icc: bool,
    /// MTU of the bridge and of every veth on it.
    pub mtu: u32,
    /// IPv6 subnet for dual stack.
    pub subnet6: Option<Ipv6Network>,
    /// IPv6 gateway (`::1` of `subnet6`), set with it.
    pub gateway6: Option<Ipv6Addr>,
}

/// A container's `network_mode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Its own namespace, with a veth on each of its networks (the
    /// default).
    Bridge,
    /// Its own namespace with loopback only.
    None,
    /// The host's namespace: no networks, no ports.
    Host,
    /// The namespace of the named container (`container:NAME`).
    Container(String),
}

/// Where a container's network namespace comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSpec {
    /// `/run/netns/NAME`, created by netloom when missing.
    Named(String),
    /// An existing namespace netloom attaches to and never deletes.
    Path(PathBuf),
}

/// One container, every key resolved.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// The container's name (its key in the file).
    pub name: String,
    /// For its hosts file; default: the name.
    pub hostname: String,
    /// Its `network_mode`.
    pub mode: Mode,
    /// `None` for `host` and `container:` modes.
    pub netns: Option<NetnsSpec>,
    /// One per network, in the file's order: the first gets `eth0` and
    /// (unless internal) the default route.
    pub endpoints: Vec<EndpointSpec>,
    /// Published ports: (the value as written, parsed).
    pub ports: Vec<(String, PortSpec)>,
    /// (target container, alias)
    pub links: Vec<(String, Option<String>)>,
    /// Docker's name options: `extra_hosts`, `dns`, `dns_search`,
    /// `dns_options`, `domainname`.
    pub dns: crate::core::container_dns::DnsOptions,
}

/// A container's membership of one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The network's name.
    pub network: String,
    /// Fixed IPv4 address; `None`: allocated.
    pub ip: Option<Ipv4Addr>,
    /// Fixed IPv6 address; `None`: allocated on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
    /// Extra DNS names on this network.
    pub aliases: Vec<String>,
    /// Fixed MAC; `None`: derived from the IPv4 address as Docker does.
    pub mac: Option<[u8; 6]>,
}

/// Whether a network or container name is acceptable:
/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`, because names end up in interface
/// names, file paths and DNS names.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Interface names starting with this are netloom's own temporary names
/// (`model::temp_link_name`): a bridge name may not start with it.
pub const TEMP_LINK_PREFIX: &str = "nl~";

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b':')
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                && !l.starts_with('-')
        })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// Stable bridge name for a user-defined network: `br-` + 12 hex digits,
/// like Docker's `br-<network id>`.
pub fn default_bridge_name(network: &str) -> String {
    if network == DEFAULT_NETWORK {
        return "docker0".into();
    }
    format!(
        "br-{:012x}",
        crate::core::hash::fnv64(network.as_bytes()) >> 16
    )
}

/// The largest file netloom reads: 64 MiB holds several hundred thousand
/// containers; anything larger is a mistake (or an attack on the agent's
/// memory), refused before it is parsed.
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// The error for a file over [`MAX_FILE_BYTES`] (`len` bytes, or more).
pub fn too_large(path: &str, len: usize) -> Diagnostics {
    Diagnostics {
        lines: vec![format!(
            "{path}:1:1: the file is {len} bytes or more; netloom reads files of at most {} bytes (64 MiB)",
            MAX_FILE_BYTES
        )],
    }
}

/// Validates the file's raw bytes: text that is not UTF-8 is an error at
/// the first offending byte, like any other error of the file. The CLI and
/// the agent both load through here, so they accept exactly the same files.
pub fn load_bytes(path: &str, bytes: &[u8]) -> Result<Spec, Diagnostics> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large(path, bytes.len()));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => load(path, text),
        Err(e) => {
            let shown = String::from_utf8_lossy(bytes);
            // The lossy text has the same bytes up to the first invalid one.
            let offset = e.valid_up_to();
            Err(Diagnostics::render(
                path,
                &shown,
                vec![Diag::new(offset..offset, "the file is not valid UTF-8")],
            ))
        }
    }
}

/// Parses and validates the file's text, every error at its position.
/// `path` is only used in messages.
pub fn load(path: &str, text: &str) -> Result<Spec, Diagnostics> {
    let toml_error = |e: toml::de::Error| {
        let span = e.span().unwrap_or(0..0);
        Diag::new(span, hint_unknown_field(e.message().trim()))
    };
    // A syntax error leaves no document to check further.
    let mut doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => return Err(Diagnostics::render(path, text, vec![toml_error(e)])),
    };
    // Every unknown key and wrong type at once; what remains deserializes,
    // so the checks below still see every other value.
    let shape = shape::check(&mut doc, config::schema_value());
    let file: ConfigFile = match serde::Deserialize::deserialize(toml::de::Deserializer::from(doc))
    {
        Ok(f) => f,
        Err(e) => {
            // What the walk cannot see (a duplicate container key): the
            // shape errors and this one.
            let mut diags = shape.diags;
            diags.push(toml_error(e));
            return Err(Diagnostics::render(path, text, diags));
        }
    };
    let mut v = Validator::default();
    let spec = v.check(&file);
    // An error about a whole table whose entry was removed above (a
    // network "needs a subnet" whose subnet had the wrong type) is only
    // the echo of that entry's error.
    v.diags.retain(|d| !shape.pruned_tables.contains(&d.span));
    v.diags.extend(shape.diags);
    if v.diags.is_empty() {
        // A file whose addresses or ports cannot all be handed out would
        // only fail at plan time: run the allocator (pure) as a fresh host
        // would.
        v.check_allocations(&file, &spec);
    }
    if v.diags.is_empty() {
        Ok(spec)
    } else {
        Err(Diagnostics::render(path, text, v.diags))
    }
}

#[derive(Default)]
struct Validator {
    diags: Vec<Diag>,
}

fn sp<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

impl Validator {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.diags.push(Diag::new(span, msg));
    }

    fn check(&mut self, f: &ConfigFile) -> Spec {
        let settings = &f.settings;
        let state_dir = settings.state_dir.as_ref().and_then(|s| {
            let p = PathBuf::from(s.get_ref());
            if p.is_absolute() {
                Some(p)
            } else {
                self.err(sp(s), "state_dir must be an absolute path");
                None
            }
        });
        let port_range = match &settings.port_range {
            None => config::DEFAULT_PORT_RANGE,
            Some(r) => match ports::parse_range(r.get_ref()) {
                Ok(pr) if pr.start < pr.end => (pr.start, pr.end),
                Ok(_) => {
                    self.err(
                        sp(r),
                        "port_range must hold more than one port, as FIRST-LAST",
                    );
                    config::DEFAULT_PORT_RANGE
                }
                Err(e) => {
                    self.err(sp(r), format!("invalid port_range: {e}"));
                    config::DEFAULT_PORT_RANGE
                }
            },
        };
        let upstream_dns = settings.upstream_dns.as_ref().map(|list| {
            list.iter()
                .filter_map(|s| match parse_upstream(s.get_ref()) {
                    Some(a) => Some(a),
                    None => {
                        self.err(
                            sp(s),
                            format!("`{}` is not an IP address (or IP:PORT)", s.get_ref()),
                        );
                        None
                    }
                })
                .collect()
        });

        let mut networks = BTreeMap::new();
        for (key, net) in f.networks.0.iter() {
            if let Some(n) = self.network(key, net) {
                networks.insert(n.name.clone(), n);
            }
        }
        self.check_networks(f, &networks);

        // The implicit default network, when a container uses it.
        let uses_default = f.containers.iter().any(|(_, c)| {
            let c = c.get_ref();
            let bridge_mode = c
                .network_mode
                .as_ref()
                .is_none_or(|m| m.get_ref() == "bridge");
            bridge_mode
                && match &c.networks {
                    None => true,
                    Some(n) => n
                        .get_ref()
                        .0
                        .iter()
                        .any(|(k, _)| k.get_ref() == DEFAULT_NETWORK),
                }
        });
        if uses_default && !networks.contains_key(DEFAULT_NETWORK) {
            let implicit = implicit_default_network();
            if let Some((_, other)) = networks
                .iter()
                .find(|(_, n)| n.subnet.overlaps(implicit.subnet) || n.bridge == implicit.bridge)
            {
                // At the value that clashes: the subnet, else the bridge.
                let span = f
                    .networks
                    .get(&other.name)
                    .map(|v| {
                        let n = v.get_ref();
                        let value = if other.subnet.overlaps(implicit.subnet) {
                            n.subnet.as_ref()
                        } else {
                            n.bridge.as_ref()
                        };
                        value.map(sp).unwrap_or_else(|| sp(v))
                    })
                    .unwrap_or(0..0);
                self.err(
                    span,
                    format!(
                        "network `{}` clashes with the implicit default network `bridge` (docker0, 172.17.0.0/16) that containers use; declare [networks.bridge] with other values",
                        other.name
                    ),
                );
            }
            networks.insert(DEFAULT_NETWORK.to_string(), implicit);
        }

        let containers = self.containers(f, &networks);
        let placed: Vec<crate::core::cluster::Placed> = containers
            .iter()
            .map(|c| crate::core::cluster::Placed {
                name: &c.name,
                networks: c
                    .endpoints
                    .iter()
                    .map(|e| e.network.as_str())
                    .filter(|n| *n != DEFAULT_NETWORK)
                    .collect(),
                shares: match &c.mode {
                    Mode::Container(t) => Some(t),
                    _ => None,
                },
                links: c.links.iter().map(|(t, _)| t.as_str()).collect(),
            })
            .collect();
        let names = networks.keys().map(String::as_str).collect();
        let cluster = crate::core::cluster::check(f, &names, &placed, &mut self.diags);
        Spec {
            state_dir,
            port_range,
            upstream_dns,
            networks,
            containers,
            cluster,
        }
    }

    /// Allocation errors at the value that cannot be satisfied: the
    /// subnet that is too small, the `port_range` (or, without one, the
    /// mapping) that has no room left. What IPAM would do on a fresh host:
    /// addresses by count (fixed ones are distinct and usable by now, so
    /// every member gets one exactly when they fit), ports by running the
    /// same first-fit allocator.
    fn check_allocations(&mut self, f: &ConfigFile, spec: &Spec) {
        let mut members: HashMap<&str, (u128, &str)> = HashMap::new();
        for c in &spec.containers {
            for e in &c.endpoints {
                let m = members
                    .entry(e.network.as_str())
                    .or_insert((0, c.name.as_str()));
                m.0 += 1;
                m.1 = c.name.as_str();
            }
        }
        let container_span = |name: &str| {
            f.containers
                .0
                .iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(k, _)| sp(k))
                .unwrap_or(0..0)
        };
        for net in spec.networks.values() {
            let Some(&(count, last)) = members.get(net.name.as_str()) else {
                continue;
            };
            // Host addresses minus the gateway (v4 also minus broadcast).
            let room4 = (1u128 << (32 - u32::from(net.subnet.prefix()))) - 3;
            let room6 = net
                .subnet6
                .map(|s| (1u128 << (128 - u32::from(s.prefix()).max(1))).saturating_sub(2));
            let cfg = f.networks.get(&net.name).map(|n| n.get_ref());
            for (key, room, subnet, value) in [
                (
                    "subnet",
                    Some(room4),
                    net.subnet.to_string(),
                    cfg.and_then(|n| n.subnet.as_ref()),
                ),
                (
                    "subnet6",
                    room6,
                    net.subnet6.map(|s| s.to_string()).unwrap_or_default(),
                    cfg.and_then(|n| n.subnet6.as_ref()),
                ),
            ] {
                let Some(room) = room else { continue };
                if count > room {
                    self.err(
                        value.map(sp).unwrap_or_else(|| container_span(last)),
                        format!(
                            "{key} {subnet} of network `{}` is too small for its {count} containers: it has {room} addresses for them",
                            net.name
                        ),
                    );
                }
            }
        }
        let (busy, wanted) = auto_port_inputs(spec);
        if let Err(e) = ports::allocate_auto(spec.port_range, busy, &wanted, &BTreeMap::new()) {
            let (container, raw) = e.key.split_once('/').unwrap_or((e.key.as_str(), ""));
            let span = match &f.settings.port_range {
                Some(r) => sp(r),
                None => f
                    .containers
                    .get(container)
                    .and_then(|c| c.get_ref().ports.iter().find(|p| p.get_ref() == raw))
                    .map(sp)
                    .unwrap_or_else(|| container_span(container)),
            };
            let what = if e.len == 1 {
                "free port".to_string()
            } else {
                format!("{} free consecutive ports", e.len)
            };
            let (first, last) = spec.port_range;
            self.err(
                span,
                format!(
                    "port_range {first}-{last} is too small for the auto-published ports: it has no {what} left for `{raw}` of container `{container}`"
                ),
            );
        }
    }

    fn network(
        &mut self,
        key: &Spanned<String>,
        net: &Spanned<NetworkConfig>,
    ) -> Option<NetworkSpec> {
        let name = key.get_ref().clone();
        let n = net.get_ref();
        // Only a subnet that cannot be used keeps the network out of the
        // checks that follow; any other bad value of it (its gateway, its
        // MTU, its name) is reported and the network still takes part,
        // so that it cannot hide an error elsewhere (an overlapping
        // subnet, an address outside it).
        let mut subnet_ok = true;
        if !valid_name(&name) {
            self.err(
                sp(key),
                format!(
                    "invalid network name `{name}`: names match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"
                ),
            );
        }
        let is_default = name == DEFAULT_NETWORK;
        let bridge = match &n.bridge {
            Some(b) => {
                if b.get_ref().starts_with(TEMP_LINK_PREFIX) {
                    self.err(
                        sp(b),
                        format!(
                            "invalid bridge name `{}`: names starting with `{}` are netloom's temporary interface names",
                            b.get_ref(),
                            TEMP_LINK_PREFIX
                        ),
                    );
                } else if !valid_ifname(b.get_ref()) {
                    self.err(
                        sp(b),
                        format!(
                            "invalid bridge name `{}`: at most 15 bytes, no `/`, `:` or spaces",
                            b.get_ref()
                        ),
                    );
                }
                b.get_ref().clone()
            }
            None => default_bridge_name(&name),
        };
        let subnet = match &n.subnet {
            Some(s) => match s.get_ref().parse::<Ipv4Network>() {
                Ok(net) if net.network() != net.ip() => {
                    self.err(
                        sp(s),
                        format!(
                            "subnet {} has host bits set; did you mean {}/{}?",
                            s.get_ref(),
                            net.network(),
                            net.prefix()
                        ),
                    );
                    subnet_ok = false;
                    net
                }
                Ok(net) if unusable_v4(net).is_some() => {
                    let why = unusable_v4(net).unwrap_or_default();
                    self.err(sp(s), format!("subnet {} {why}", s.get_ref()));
                    subnet_ok = false;
                    net
                }
                Ok(net) if net.prefix() > 30 => {
                    self.err(
                        sp(s),
                        format!(
                            "subnet {} is too small: a network needs at least a /30",
                            s.get_ref()
                        ),
                    );
                    subnet_ok = false;
                    net
                }
                Ok(net) => net,
                Err(_) => {
                    self.err(
                        sp(s),
                        format!(
                            "`{}` is not an IPv4 subnet in CIDR notation (e.g. 192.168.0.0/16)",
                            s.get_ref()
                        ),
                    );
                    return None;
                }
            },
            None if is_default => implicit_default_network().subnet,
            None => {
                self.err(
                    sp(net),
                    format!("network `{name}` needs a subnet, e.g. subnet = \"192.168.0.0/16\""),
                );
                return None;
            }
        };
        let first_host = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let gateway = match &n.gateway {
            Some(g) => match g.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) => {
                    if !subnet.contains(ip) {
                        self.err(sp(g), format!("gateway {ip} is not inside subnet {subnet}"));
                    } else if ip == subnet.network() || ip == subnet.broadcast() {
                        self.err(
                            sp(g),
                            format!("gateway {ip} is the network or broadcast address of {subnet}"),
                        );
                    }
                    ip
                }
                Err(_) => {
                    self.err(sp(g), format!("`{}` is not an IPv4 address", g.get_ref()));
                    first_host
                }
            },
            None => first_host,
        };
        let mtu = match &n.mtu {
            Some(m) => {
                let v = *m.get_ref();
                if !(68..=65535).contains(&v) {
                    self.err(sp(m), format!("mtu {v} is out of range 68-65535"));
                }
                v.clamp(68, 65535) as u32
            }
            None => 1500,
        };
        let (subnet6, gateway6) = match &n.subnet6 {
            Some(s) => {
                match s.get_ref().parse::<Ipv6Network>() {
                    Ok(net) if net.prefix() > 126 || net.network() != net.ip() => {
                        self.err(sp(s), format!("subnet6 {} must be a network address with a prefix of at most /126", s.get_ref()));
                        (None, None)
                    }
                    Ok(net) if unusable_v6(net).is_some() => {
                        let why = unusable_v6(net).unwrap_or_default();
                        self.err(sp(s), format!("subnet6 {} {why}", s.get_ref()));
                        (None, None)
                    }
                    Ok(net) => (
                        Some(net),
                        Some(Ipv6Addr::from(u128::from(net.network()) + 1)),
                    ),
                    Err(_) => {
                        self.err(
                            sp(s),
                            format!("`{}` is not an IPv6 subnet in CIDR notation", s.get_ref()),
                        );
                        (None, None)
                    }
                }
            }
            None => (None, None),
        };
        let internal = n.internal.unwrap_or(false);
        subnet_ok.then(|| NetworkSpec {
            name,
            bridge,
            subnet,
            gateway,
            dns: n.dns.unwrap_or(!is_default),
            masquerade: n.masquerade.unwrap_or(true) && !internal,
            internal,
            icc: n.icc.unwrap_or(true),
            mtu,
            subnet6,
            gateway6,
        })
    }

    /// Checks across networks: unique bridges, no overlapping subnets.
    fn check_networks(&mut self, f: &ConfigFile, nets: &BTreeMap<String, NetworkSpec>) {
        // Positions looked up once: a lookup per pair made thousands of
        // networks cubic.
        let spans: HashMap<&str, Range<usize>> = f
            .networks
            .0
            .iter()
            .map(|(k, v)| (k.get_ref().as_str(), sp(v)))
            .collect();
        let span_of = |name: &str| -> Range<usize> { spans.get(name).cloned().unwrap_or(0..0) };
        let list: Vec<&NetworkSpec> = nets.values().collect();
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let clash = a.bridge == b.bridge
                    || a.subnet.overlaps(b.subnet)
                    || matches!((a.subnet6, b.subnet6), (Some(x), Some(y)) if x.overlaps(y));
                if !clash {
                    continue;
                }
                let (first, second) = order_by_span(a, b, &span_of);
                if a.bridge == b.bridge {
                    // Both positions: either value may be the one to change
                    // (a derived `br-` name is at the network's header).
                    let bridge_span = |name: &str| {
                        f.networks
                            .get(name)
                            .and_then(|n| n.get_ref().bridge.as_ref().map(sp))
                            .unwrap_or_else(|| span_of(name))
                    };
                    self.err(
                        bridge_span(&second.name),
                        format!(
                            "bridge `{}` of network `{}` is already used by network `{}`",
                            a.bridge, second.name, first.name
                        ),
                    );
                    self.err(
                        bridge_span(&first.name),
                        format!(
                            "bridge `{}` of network `{}` is also the bridge of network `{}`",
                            a.bridge, first.name, second.name
                        ),
                    );
                }
                if a.subnet.overlaps(b.subnet) {
                    let s = f
                        .networks
                        .get(&second.name)
                        .and_then(|n| n.get_ref().subnet.as_ref().map(sp))
                        .unwrap_or_else(|| span_of(&second.name));
                    self.err(
                        s,
                        format!(
                            "subnet {} of network `{}` overlaps subnet {} of network `{}`",
                            second.subnet, second.name, first.subnet, first.name
                        ),
                    );
                }
                if let (Some(x), Some(y)) = (a.subnet6, b.subnet6) {
                    if x.overlaps(y) {
                        self.err(
                            f.networks
                                .get(&second.name)
                                .and_then(|n| n.get_ref().subnet6.as_ref().map(sp))
                                .unwrap_or_else(|| span_of(&second.name)),
                            format!(
                                "subnet6 of network `{}` overlaps that of network `{}`",
                                second.name, first.name
                            ),
                        );
                    }
                }
            }
        }
    }

    fn containers(
        &mut self,
        f: &ConfigFile,
        nets: &BTreeMap<String, NetworkSpec>,
    ) -> Vec<ContainerSpec> {
        let declared: Vec<&str> = f.containers.iter().map(|(k, _)| k).collect();
        // Membership tests go through the set: a file may declare 100k.
        let declared_set: HashSet<&str> = declared.iter().copied().collect();
        let mut out = Vec::new();
        let mut netns_names: HashMap<String, String> = HashMap::new();
        // Normalized namespace path -> (container, span of its netns value).
        let mut ns_paths: HashMap<String, (String, Range<usize>)> = HashMap::new();
        // The entries of `ns_paths` that came from a `netns` name.
        let mut ns_named: HashSet<String> = HashSet::new();
        // (network, ip) -> container, for duplicate fixed addresses.
        let mut fixed: HashMap<(String, IpAddr), String> = HashMap::new();
        // Published ports clash only on one host (cluster mode: per host).
        let mut claims: HashMap<Option<String>, PortClaims> = HashMap::new();

        for (key, c) in f.containers.0.iter() {
            let name = key.get_ref().clone();
            let cfg = c.get_ref();
            if !valid_name(&name) {
                self.err(sp(key), format!("invalid container name `{name}`: names match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"));
            }
            let mode = match &cfg.network_mode {
                None => Mode::Bridge,
                Some(m) => match m.get_ref().as_str() {
                    "bridge" | "default" => Mode::Bridge,
                    "none" => Mode::None,
                    "host" => Mode::Host,
                    other => match other.strip_prefix("container:") {
                        Some(t) if declared_set.contains(t) && t != name => {
                            Mode::Container(t.to_string())
                        }
                        Some(t) if t == name => {
                            self.err(sp(m), "a container cannot share its own namespace");
                            Mode::None
                        }
                        Some(t) => {
                            let hint = suggest(t, declared.iter().copied())
                                .map(|s| format!("; did you mean `container:{s}`?"))
                                .unwrap_or_default();
                            self.err(
                                sp(m),
                                format!("network_mode refers to undeclared container `{t}`{hint}"),
                            );
                            Mode::None
                        }
                        None => {
                            self.err(sp(m), format!("unknown network_mode `{other}` (expected bridge, none, host or container:<name>)"));
                            Mode::None
                        }
                    },
                },
            };
            let shares = matches!(mode, Mode::Host | Mode::Container(_));
            let mode_word = match &mode {
                Mode::Host => "host",
                Mode::Container(_) => "container:",
                Mode::None => "none",
                Mode::Bridge => "bridge",
            };
            if mode != Mode::Bridge {
                if let Some(n) = &cfg.networks {
                    self.err(
                        sp(n),
                        format!("network_mode `{mode_word}` takes no networks"),
                    );
                }
                if let Some(p) = cfg.ports.first() {
                    self.err(
                        sp(p),
                        format!("network_mode `{mode_word}` cannot publish ports"),
                    );
                }
            }
            if shares {
                if let Some(n) = cfg.netns.as_ref().or(cfg.netns_path.as_ref()) {
                    self.err(sp(n), format!("network_mode `{mode_word}` uses another namespace; netns and netns_path do not apply"));
                }
                if let Some(l) = cfg.links.first() {
                    if mode == Mode::Host {
                        self.err(
                            sp(l),
                            "network_mode `host` has no links: it has the host's names",
                        );
                    }
                }
            }
            let netns = if shares {
                None
            } else {
                match (&cfg.netns, &cfg.netns_path) {
                    (Some(a), Some(_)) => {
                        self.err(sp(a), "netns and netns_path are mutually exclusive");
                        None
                    }
                    (Some(n), None) => {
                        if !valid_name(n.get_ref()) {
                            self.err(sp(n), format!("invalid netns name `{}`", n.get_ref()));
                        }
                        Some(NetnsSpec::Named(n.get_ref().clone()))
                    }
                    (None, Some(p)) => {
                        if !p.get_ref().starts_with('/') {
                            self.err(sp(p), "netns_path must be an absolute path");
                        }
                        Some(NetnsSpec::Path(PathBuf::from(p.get_ref())))
                    }
                    (None, None) => Some(NetnsSpec::Named(name.clone())),
                }
            };
            if let Some(NetnsSpec::Named(n)) = &netns {
                if let Some(other) = netns_names.insert(n.clone(), name.clone()) {
                    let s = cfg.netns.as_ref().map(sp).unwrap_or_else(|| sp(key));
                    self.err(
                        s,
                        format!("netns `{n}` is already used by container `{other}`"),
                    );
                }
            }
            // Two containers in one namespace by path (or a path to another
            // container's named namespace) would fight over its eth0: the
            // same namespace given twice. Textual here; the plan compares
            // the namespaces themselves (device and inode).
            if let Some(ns) = &netns {
                let (norm, span) = match ns {
                    NetnsSpec::Named(n) => (
                        format!("/run/netns/{n}"),
                        cfg.netns.as_ref().map(sp).unwrap_or_else(|| sp(key)),
                    ),
                    NetnsSpec::Path(p) => (
                        normalize_ns_path(&p.to_string_lossy()),
                        cfg.netns_path.as_ref().map(sp).unwrap_or_else(|| sp(key)),
                    ),
                };
                match ns_paths.get(&norm) {
                    // Two equal `netns` names: reported just above.
                    Some(_)
                        if matches!(ns, NetnsSpec::Named(_)) && named_first(&ns_named, &norm) => {}
                    Some((other, other_span)) => {
                        let (other, other_span) = (other.clone(), other_span.clone());
                        self.err(
                            span,
                            format!(
                                "{norm} is already the network namespace of container `{other}`"
                            ),
                        );
                        self.err(
                            other_span,
                            format!("{norm} is also given as the network namespace of container `{name}`"),
                        );
                    }
                    None => {
                        if matches!(ns, NetnsSpec::Named(_)) {
                            ns_named.insert(norm.clone());
                        }
                        ns_paths.insert(norm, (name.clone(), span));
                    }
                }
            }
            let hostname = match &cfg.hostname {
                Some(h) if !valid_hostname(h.get_ref()) => {
                    self.err(sp(h), format!("invalid hostname `{}`", h.get_ref()));
                    name.clone()
                }
                Some(h) => h.get_ref().clone(),
                None => name.clone(),
            };

            // Endpoints.
            let mut endpoints = Vec::new();
            if mode == Mode::Bridge {
                let list: Vec<(Option<&Spanned<String>>, config::EndpointConfig, String)> =
                    match &cfg.networks {
                        None => vec![(None, Default::default(), DEFAULT_NETWORK.to_string())],
                        Some(n) => {
                            if n.get_ref().0.is_empty() {
                                self.err(sp(n), "networks is empty; use network_mode = \"none\" for a namespace with only `lo`");
                            }
                            n.get_ref()
                                .0
                                .iter()
                                .map(|(k, v)| (Some(k), v.clone(), k.get_ref().clone()))
                                .collect()
                        }
                    };
                let mut seen = BTreeSet::new();
                for (kspan, ep, netname) in list {
                    let span = kspan.map(sp).unwrap_or_else(|| sp(key));
                    if !seen.insert(netname.clone()) {
                        self.err(span.clone(), format!("network `{netname}` is listed twice"));
                        continue;
                    }
                    let Some(net) = nets.get(&netname) else {
                        if f.networks.get(&netname).is_none() {
                            let hint = suggest(&netname, nets.keys().map(String::as_str))
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.err(span, format!("network `{netname}` is not declared{hint}"));
                        }
                        continue;
                    };
                    let ip = ep.ip.as_ref().and_then(|s| match s.get_ref().parse::<Ipv4Addr>() {
                        Err(_) => {
                            self.err(sp(s), format!("`{}` is not an IPv4 address", s.get_ref()));
                            None
                        }
                        Ok(ip) if !net.subnet.contains(ip) => {
                            self.err(sp(s), format!("address {ip} is not inside subnet {} of network `{netname}`", net.subnet));
                            None
                        }
                        Ok(ip) if ip == net.gateway => {
                            self.err(sp(s), format!("address {ip} is the gateway of network `{netname}`"));
                            None
                        }
                        Ok(ip) if ip == net.subnet.network() || ip == net.subnet.broadcast() => {
                            self.err(sp(s), format!("address {ip} is the network or broadcast address of {}", net.subnet));
                            None
                        }
                        Ok(ip) => {
                            if let Some(other) = fixed.insert((netname.clone(), IpAddr::V4(ip)), name.clone()) {
                                self.err(sp(s), format!("address {ip} on network `{netname}` is already given to container `{other}`"));
                            }
                            Some(ip)
                        }
                    });
                    let ip6 = ep.ip6.as_ref().and_then(|s| match (s.get_ref().parse::<Ipv6Addr>(), net.subnet6) {
                        (Err(_), _) => {
                            self.err(sp(s), format!("`{}` is not an IPv6 address", s.get_ref()));
                            None
                        }
                        (Ok(_), None) => {
                            self.err(sp(s), format!("network `{netname}` has no subnet6"));
                            None
                        }
                        (Ok(ip), Some(sub)) if !sub.contains(ip) || Some(ip) == net.gateway6 || ip == sub.network() => {
                            self.err(sp(s), format!("address {ip} is not a usable host address of {sub}"));
                            None
                        }
                        (Ok(ip), Some(_)) => {
                            if let Some(other) = fixed.insert((netname.clone(), IpAddr::V6(ip)), name.clone()) {
                                self.err(sp(s), format!("address {ip} on network `{netname}` is already given to container `{other}`"));
                            }
                            Some(ip)
                        }
                    });
                    let mac = ep.mac.as_ref().and_then(|s| match parse_mac(s.get_ref()) {
                        Some(m) if m[0] & 1 == 1 => {
                            self.err(sp(s), format!("MAC {} is a multicast address", s.get_ref()));
                            None
                        }
                        Some(m) => Some(m),
                        None => {
                            self.err(
                                sp(s),
                                format!(
                                    "`{}` is not a MAC address (aa:bb:cc:dd:ee:ff)",
                                    s.get_ref()
                                ),
                            );
                            None
                        }
                    });
                    let mut aliases = Vec::new();
                    for a in &ep.aliases {
                        if valid_hostname(a.get_ref()) {
                            aliases.push(a.get_ref().clone());
                        } else {
                            self.err(sp(a), format!("invalid alias `{}`", a.get_ref()));
                        }
                    }
                    endpoints.push(EndpointSpec {
                        network: netname,
                        ip,
                        ip6,
                        aliases,
                        mac,
                    });
                }
            }

            // Ports.
            let mut port_specs = Vec::new();
            for p in &cfg.ports {
                match ports::parse(p.get_ref()) {
                    Err(e) => self.err(
                        sp(p),
                        format!("invalid port mapping `{}`: {e}", p.get_ref()),
                    ),
                    Ok(ps) => {
                        if let Some(ep) = endpoints.first() {
                            if nets.get(&ep.network).is_some_and(|n| n.internal) {
                                self.err(
                                    sp(p),
                                    format!(
                                        "network `{}` is internal: it publishes no ports",
                                        ep.network
                                    ),
                                );
                            }
                            if ps.host_ip.is_some_and(|ip| ip.is_ipv6())
                                && nets.get(&ep.network).is_some_and(|n| n.subnet6.is_none())
                            {
                                self.err(
                                    sp(p),
                                    format!(
                                        "an IPv6 host address needs an IPv6 container address: network `{}` has no subnet6",
                                        ep.network
                                    ),
                                );
                            }
                        }
                        if let Some(h) = ps.host {
                            let on = cfg.host.as_ref().map(|h| h.get_ref().clone());
                            if let Some((ip, r, other)) = claims
                                .entry(on)
                                .or_default()
                                .claim(ps.host_ip, ps.proto, h, &name)
                            {
                                let at = ip.map(host_ip_prefix).unwrap_or_default();
                                self.err(sp(p), format!("host port {h}/{} is already published by container `{other}` ({at}{r})", ps.proto));
                            }
                        }
                        if let Some(net) = endpoints.first().and_then(|ep| nets.get(&ep.network)) {
                            let len = port_comment_len(&name, &ps, net);
                            if len > firewall::COMMENT_MAX {
                                let room =
                                    (firewall::COMMENT_MAX + name.len() * 2).saturating_sub(len);
                                self.err(
                                    sp(key),
                                    format!(
                                        "container name `{name}` is too long to publish `{}`: the firewall keeps the mapping in an nft comment of at most {} bytes, and this one would take {len}; use a name of at most {} characters",
                                        p.get_ref(),
                                        firewall::COMMENT_MAX,
                                        room / 2
                                    ),
                                );
                            }
                        }
                        port_specs.push((p.get_ref().clone(), ps));
                    }
                }
            }

            // Links.
            let mut links = Vec::new();
            for l in &cfg.links {
                let (target, alias) = match l.get_ref().split_once(':') {
                    Some((t, a)) => (t.to_string(), Some(a.to_string())),
                    None => (l.get_ref().clone(), None),
                };
                if !declared_set.contains(target.as_str()) {
                    let hint = suggest(&target, declared.iter().copied())
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    self.err(
                        sp(l),
                        format!("link to undeclared container `{target}`{hint}"),
                    );
                    continue;
                }
                if target == name {
                    self.err(sp(l), "a container cannot link to itself");
                    continue;
                }
                if let Some(a) = &alias {
                    if !valid_hostname(a) {
                        self.err(sp(l), format!("invalid link alias `{a}`"));
                        continue;
                    }
                }
                links.push((target, alias));
            }
            let dns = crate::core::container_dns::check(cfg, &valid_hostname, &mut |span, msg| {
                self.err(span, msg)
            });
            out.push(ContainerSpec {
                name,
                hostname,
                mode,
                netns,
                endpoints,
                ports: port_specs,
                links,
                dns,
            });
        }
        self.check_container_graph(f, &out);
        out
    }

    /// `container:` chains must end at a container with a namespace of its
    /// own; links need a shared network.
    fn check_container_graph(&mut self, f: &ConfigFile, list: &[ContainerSpec]) {
        let by_name: HashMap<&str, &ContainerSpec> =
            list.iter().map(|c| (c.name.as_str(), c)).collect();
        // Each chain of `container:` modes is walked once: a name's verdict
        // (ends at a namespace, or runs into a cycle) is remembered, so a
        // long chain costs its length, not its length squared.
        let mut verdict: HashMap<&str, bool> = HashMap::new();
        for c in list {
            if let Mode::Container(_) = c.mode {
                let mut path: Vec<&str> = Vec::new();
                let mut on_path = HashSet::new();
                let mut cur = c;
                let cyclic = loop {
                    if let Some(v) = verdict.get(cur.name.as_str()) {
                        break *v;
                    }
                    let Mode::Container(t) = &cur.mode else {
                        break false;
                    };
                    if !on_path.insert(cur.name.as_str()) {
                        break true;
                    }
                    path.push(cur.name.as_str());
                    match by_name.get(t.as_str()) {
                        Some(n) => cur = n,
                        None => break false,
                    }
                };
                for n in path {
                    verdict.insert(n, cyclic);
                }
                if cyclic {
                    let span = f
                        .containers
                        .get(&c.name)
                        .and_then(|x| x.get_ref().network_mode.as_ref().map(sp))
                        .unwrap_or(0..0);
                    self.err(
                        span,
                        format!(
                            "network_mode of `{}` forms a cycle of container: references",
                            c.name
                        ),
                    );
                }
            }
            for (target, _) in &c.links {
                let Some(t) = by_name.get(target.as_str()) else {
                    continue;
                };
                let t = resolve_shared(t, &by_name);
                let me = resolve_shared(c, &by_name);
                let shared = me
                    .endpoints
                    .iter()
                    .any(|e| t.endpoints.iter().any(|o| o.network == e.network));
                if !shared && !me.endpoints.is_empty() {
                    let cfg = f.containers.get(&c.name);
                    let span = cfg
                        .and_then(|x| {
                            x.get_ref()
                                .links
                                .iter()
                                .find(|l| l.get_ref().split(':').next() == Some(target))
                                .map(sp)
                        })
                        .unwrap_or(0..0);
                    self.err(
                        span,
                        format!(
                            "container `{}` links to `{target}` but they share no network",
                            c.name
                        ),
                    );
                }
            }
        }
    }
}

/// The container whose namespace `c` uses (follows `container:` modes).
pub fn resolve_shared<'a>(
    c: &'a ContainerSpec,
    by_name: &HashMap<&str, &'a ContainerSpec>,
) -> &'a ContainerSpec {
    let mut cur = c;
    for _ in 0..by_name.len() {
        match &cur.mode {
            Mode::Container(t) => match by_name.get(t.as_str()) {
                Some(n) => cur = n,
                None => break,
            },
            _ => break,
        }
    }
    cur
}

fn order_by_span<'a>(
    a: &'a NetworkSpec,
    b: &'a NetworkSpec,
    span_of: &dyn Fn(&str) -> Range<usize>,
) -> (&'a NetworkSpec, &'a NetworkSpec) {
    if span_of(&a.name).start <= span_of(&b.name).start {
        (a, b)
    } else {
        (b, a)
    }
}

/// The largest IPv4 subnet a network may have: a /8 already holds 16
/// million addresses; anything larger reaches into address space that is
/// certainly routed elsewhere (`0.0.0.0/0` would swallow every route).
pub const MIN_PREFIX_V4: u8 = 8;
/// The largest IPv6 subnet (`subnet6`) a network may have.
pub const MIN_PREFIX_V6: u8 = 32;

/// Why an IPv4 subnet can never be a bridge network, if it cannot: too
/// large, or overlapping address space with a fixed meaning (this-network,
/// loopback, link-local, multicast, reserved and broadcast).
pub fn unusable_v4(net: Ipv4Network) -> Option<String> {
    if net.prefix() < MIN_PREFIX_V4 {
        return Some(format!(
            "is too large: a network's subnet may be at most a /{MIN_PREFIX_V4}"
        ));
    }
    const SPECIAL: [([u8; 4], u8, &str); 5] = [
        ([0, 0, 0, 0], 8, "\"this network\" addresses (0.0.0.0/8)"),
        ([127, 0, 0, 0], 8, "loopback addresses (127.0.0.0/8)"),
        (
            [169, 254, 0, 0],
            16,
            "link-local addresses (169.254.0.0/16)",
        ),
        ([224, 0, 0, 0], 4, "multicast addresses (224.0.0.0/4)"),
        (
            [240, 0, 0, 0],
            4,
            "reserved and broadcast addresses (240.0.0.0/4)",
        ),
    ];
    SPECIAL.iter().find_map(|(ip, prefix, what)| {
        let special = Ipv4Network::new(Ipv4Addr::from(*ip), *prefix).ok()?;
        special
            .overlaps(net)
            .then(|| format!("overlaps {what}, which cannot be a bridge network"))
    })
}

/// Like [`unusable_v4`] for `subnet6`: too large, or overlapping the
/// unspecified and loopback addresses, IPv4-mapped, link-local or
/// multicast space.
pub fn unusable_v6(net: Ipv6Network) -> Option<String> {
    if net.prefix() < MIN_PREFIX_V6 {
        return Some(format!(
            "is too large: a network's subnet6 may be at most a /{MIN_PREFIX_V6}"
        ));
    }
    const SPECIAL: [(u128, u8, &str); 4] = [
        (0, 127, "the unspecified and loopback addresses (::/127)"),
        (
            0xffff_0000_0000,
            96,
            "IPv4-mapped addresses (::ffff:0:0/96)",
        ),
        (0xfe80 << 112, 10, "link-local addresses (fe80::/10)"),
        (0xff00 << 112, 8, "multicast addresses (ff00::/8)"),
    ];
    SPECIAL.iter().find_map(|(ip, prefix, what)| {
        let special = Ipv6Network::new(Ipv6Addr::from(*ip), *prefix).ok()?;
        special
            .overlaps(net)
            .then(|| format!("overlaps {what}, which cannot be a bridge network"))
    })
}

/// Claimed ranges of one (protocol, host address): start -> (end, owner).
type ClaimGroup = BTreeMap<u16, (u16, String)>;

/// Host ports claimed so far, for clashes between explicit mappings.
///
/// Accepted claims of one (protocol, host address) never overlap, so each
/// group is a map of disjoint ranges by start: a clash test is a lookup of
/// the neighbour, not a scan of every earlier mapping. A claim on every
/// address (no HOST_IP) clashes with each group of its protocol.
#[derive(Default)]
struct PortClaims {
    groups: HashMap<(Proto, Option<IpAddr>), ClaimGroup>,
    /// Host addresses with claims, per protocol.
    addrs: HashMap<Proto, BTreeSet<Option<IpAddr>>>,
}

impl PortClaims {
    /// Records the claim, or returns the one it clashes with.
    fn claim(
        &mut self,
        ip: Option<IpAddr>,
        proto: Proto,
        r: ports::PortRange,
        owner: &str,
    ) -> Option<(Option<IpAddr>, ports::PortRange, String)> {
        // 0.0.0.0 is every address, as in the firewall; [::] is every IPv6
        // address (see `host_ips_overlap`).
        let ip = ip.filter(|i| !(i.is_ipv4() && i.is_unspecified()));
        let addrs = self.addrs.entry(proto).or_default();
        let check: Vec<Option<IpAddr>> = addrs
            .iter()
            .copied()
            .filter(|a| host_ips_overlap(*a, ip))
            .collect();
        for a in check {
            let Some(g) = self.groups.get(&(proto, a)) else {
                continue;
            };
            if let Some((start, (end, who))) = g.range(..=r.end).next_back() {
                if *end >= r.start {
                    let other = ports::PortRange {
                        start: *start,
                        end: *end,
                    };
                    return Some((a, other, who.clone()));
                }
            }
        }
        addrs.insert(ip);
        self.groups
            .entry((proto, ip))
            .or_default()
            .insert(r.start, (r.end, owner.to_string()));
        None
    }
}

/// Length of the nft element comment that will carry this mapping (see
/// [`firewall::port_comment_text`]), with the widest host port where
/// netloom picks it.
fn port_comment_len(container: &str, p: &PortSpec, net: &NetworkSpec) -> usize {
    let count = p.container.len();
    let range = match p.host {
        Some(h) if count == 1 => h.start.to_string(),
        Some(h) => format!("{}-{}", h.start, u32::from(h.start) + u32::from(count) - 1),
        None if count == 1 => "65535".into(),
        None => "65535-65535".into(),
    };
    let ip = p.host_ip.map(host_ip_prefix).unwrap_or_default();
    let key = format!("{container}.{ip}{range}/{}", p.proto);
    firewall::port_comment_text(&key, container, &net.name, &net.bridge).len()
}

/// Every explicitly published host range, and the auto-published
/// mappings as (key, number of ports) in file order: the inputs of
/// [`ports::allocate_auto`].
pub fn auto_port_inputs(spec: &Spec) -> (ports::BusyPorts, Vec<(String, u16)>) {
    let mut busy = ports::BusyPorts::default();
    for c in &spec.containers {
        for (_, p) in &c.ports {
            if let Some(h) = p.host {
                busy.insert(u32::from(h.start), u32::from(h.end));
            }
        }
    }
    let wanted = spec
        .containers
        .iter()
        .flat_map(|c| {
            c.ports
                .iter()
                .filter(|(_, p)| p.host.is_none())
                .map(move |(raw, p)| (ports::port_key(&c.name, raw), p.container.len()))
        })
        .collect();
    (busy, wanted)
}

/// Whether the first container to claim `norm` did so with a `netns` name.
fn named_first(ns_named: &HashSet<String>, norm: &str) -> bool {
    ns_named.contains(norm)
}

/// A namespace path in one spelling: `/var/run` is `/run`, no repeated or
/// trailing slashes, no `.` components. Textual only (no symlinks are
/// followed: the core does no I/O).
pub fn normalize_ns_path(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let joined = format!("/{}", parts.join("/"));
    match joined.strip_prefix("/var/run/") {
        Some(rest) => format!("/run/{rest}"),
        None => joined,
    }
}

fn parse_upstream(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>().ok()
}

/// Docker's default network, used when containers need it and the file
/// does not declare it.
pub fn implicit_default_network() -> NetworkSpec {
    NetworkSpec {
        name: DEFAULT_NETWORK.into(),
        bridge: "docker0".into(),
        subnet: Ipv4Network::new(Ipv4Addr::new(172, 17, 0, 0), 16).expect("valid constant subnet"),
        gateway: Ipv4Addr::new(172, 17, 0, 1),
        dns: false,
        masquerade: true,
        internal: false,
        icc: true,
        mtu: 1500,
        subnet6: None,
        gateway6: None,
    }
}

/// Whether two published host addresses can receive the same packet:
/// `None` is every address of both families, `0.0.0.0`/`::` every address
/// of one.
fn host_ips_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
        }
        _ => true,
    }
}

/// A host address as written before `:PORT` in `-p` syntax.
pub fn host_ip_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:"),
        IpAddr::V6(ip) => format!("[{ip}]:"),
    }
}
