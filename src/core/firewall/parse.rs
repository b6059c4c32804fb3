//! Observing: netloom's tables as `nft -j list table` shows them, parsed
//! back into elements and a [`Firewall`].

use super::*;

/// netloom's tables as found in the kernel.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The firewall rebuilt from element comments.
    pub fw: Firewall,
    /// Chains, rules and set declarations exactly as netloom renders them.
    pub skeleton_ok: bool,
    /// Why the skeleton is not ok, for drift reports.
    pub problems: Vec<String>,
    /// Version of nft that produced the listing.
    pub nft_version: Option<String>,
    /// Elements that [`Self::fw`] does not explain (see [`Stray`]).
    pub strays: Vec<Stray>,
    pub(super) inet: Option<TableState>,
    pub(super) bridge: Option<TableState>,
    pub(super) elements: Elements,
    pub(super) counters: BTreeMap<(SetId, ElemKey), (u64, u64)>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct TableState {
    pub(super) skeleton_ok: bool,
}

impl Observed {
    /// Whether `table inet netloom` exists.
    pub fn inet_present(&self) -> bool {
        self.inet.is_some()
    }
    /// Whether `table bridge netloom` exists.
    pub fn bridge_present(&self) -> bool {
        self.bridge.is_some()
    }
    /// Number of set and map elements found.
    pub fn element_count(&self) -> usize {
        self.elements.len()
    }

    /// netloom's tables as a listing finds them once the transaction that
    /// [`plan_transaction`] plans from `before` to `desired` committed. An
    /// nft transaction is all or nothing, and whether it edits elements or
    /// rebuilds a table, it leaves every table `desired` needs with the
    /// rendered skeleton and exactly `desired`'s elements, and no other
    /// netloom table. Counters carry over for the elements an element-wise
    /// edit left alone; the others start at zero, as in the kernel.
    ///
    /// Why: the agent keeps what the transaction made instead of listing
    /// the tables again (~50 ms at 2,000 elements) for its next plan, when
    /// the ruleset generation shows that nothing else changed them.
    pub fn after(before: Option<&Observed>, desired: &Firewall) -> Observed {
        let elements = desired_elements(desired);
        let ok = Some(TableState { skeleton_ok: true });
        let mut o = Observed {
            skeleton_ok: true,
            nft_version: before.and_then(|b| b.nft_version.clone()),
            inet: ok.clone(),
            bridge: if needs_bridge_table(&elements) {
                ok
            } else {
                None
            },
            ..Observed::default()
        };
        for (k, d) in &elements {
            if !k.0.is_map() {
                continue;
            }
            let edited = |b: &Observed| match k.0.family() {
                Family::Inet => b.inet.as_ref().is_some_and(|t| t.skeleton_ok),
                Family::Bridge => b.bridge.as_ref().is_some_and(|t| t.skeleton_ok),
            };
            let kept = before
                .filter(|b| edited(b) && b.elements.get(k) == Some(d))
                .and_then(|b| b.counters.get(k).copied());
            o.counters.insert(k.clone(), kept.unwrap_or_default());
        }
        o.elements = elements;
        o.fw = firewall_from_elements(&o.elements);
        // Elements made from `desired` that rebuild it exactly are all
        // explained: no need to render them a second time to know.
        if o.fw != *desired {
            o.strays = strays_of(&o);
        }
        o
    }

    /// Canonical text of what is there (same format as [`render`]; when the
    /// skeleton differs, its chains are replaced by a comment per problem).
    /// Rendered when asked: nothing but a comparison needs it.
    pub fn text(&self) -> String {
        observed_text(self)
    }
}

/// An element of netloom's sets or maps that the firewall rebuilt from
/// the element comments does not contain: added by hand (`nft add element
/// inet netloom dnat_any { tcp . 2222 : 8.8.8.8 . 22 }`), or edited so that
/// its value or comment no longer matches. Such an element is drift: it is
/// shown and removed, or anyone who can write the map gets a silent port
/// forward under netloom's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stray {
    /// `inet` or `bridge`.
    pub family: String,
    /// Set or map name, e.g. `dnat_any`.
    pub set: String,
    /// The element key in nft syntax, e.g. `tcp . 2222`.
    pub key: String,
    /// The whole element in nft syntax (key, comment, value).
    pub text: String,
}

/// The elements of `o` that `fw` (rebuilt from their comments) does not
/// render identically.
fn strays_of(o: &Observed) -> Vec<Stray> {
    let want = desired_elements(&o.fw);
    o.elements
        .iter()
        .filter(|(k, d)| want.get(k) != Some(d))
        .map(|((set, key), d)| Stray {
            family: set.family().name().to_string(),
            set: set.name().to_string(),
            key: key.to_string(),
            text: elem_text(key, d),
        })
        .collect()
}

/// Packets and bytes per port key (client-to-container direction), summed
/// over the elements of a port range.
pub fn port_counters(observed: &Observed) -> BTreeMap<String, (u64, u64)> {
    port_counters_of(
        observed
            .counters
            .iter()
            .filter_map(|(k, &c)| observed.elements.get(k).map(|d| (d.comment.as_str(), c))),
    )
}

/// [`port_counters`] from the counted maps' elements as (comment,
/// (packets, bytes)), read without listing the tables (see
/// [`counted_maps`]). Elements whose comment is not a port's are left out.
pub fn port_counters_of<'a>(
    elements: impl IntoIterator<Item = (&'a str, (u64, u64))>,
) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (comment, (p, b)) in elements {
        let Some((key, ..)) = parse_port_comment(comment) else {
            continue;
        };
        let e = out.entry(key.to_string()).or_default();
        e.0 += p;
        e.1 += b;
    }
    out
}

/// The (family, table, name) of every map whose elements carry counters:
/// the published ports' maps, all in netloom's inet table.
pub fn counted_maps() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    ALL_SETS
        .into_iter()
        .filter(|s| s.is_map())
        .map(|s| (s.family().name(), TABLE, s.name()))
}

/// `obj` without `fields`; copies only what is kept (a set's thousands of
/// elements are not cloned just to be thrown away).
pub(super) fn strip(obj: &Value, fields: &[&str]) -> Value {
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !fields.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => obj.clone(),
    }
}

pub(super) fn as_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

pub(super) fn port_num(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn proto_val(v: &Value) -> Option<Proto> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => match n.as_u64()? {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn ipv4_val(v: &Value) -> Option<Ipv4Addr> {
    v.as_str()?.parse().ok()
}

pub(super) fn ipv6_val(v: &Value) -> Option<Ipv6Addr> {
    v.as_str()?.parse().ok()
}

pub(super) fn ip_val(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

pub(super) fn concat_parts(v: &Value) -> Option<&Vec<Value>> {
    v.get("concat")?.as_array()
}

pub(super) fn parse_key(set: SetId, v: &Value) -> Option<ElemKey> {
    match set {
        SetId::Bridges | SetId::InternalBridges => Some(ElemKey::Ifname(v.as_str()?.to_string())),
        SetId::IntraBridge => match concat_parts(v)?.as_slice() {
            [a, b] => Some(ElemKey::IfnamePair(
                a.as_str()?.to_string(),
                b.as_str()?.to_string(),
            )),
            _ => None,
        },
        SetId::Subnets | SetId::MasqSubnets | SetId::IsolatedSubnets => {
            if let Some(p) = v.get("prefix") {
                let addr = ipv4_val(p.get("addr")?)?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                Ipv4Network::new(addr, len).ok().map(ElemKey::Prefix)
            } else if let Some(ip) = ipv4_val(v) {
                // A /32 is listed as a bare address.
                Ipv4Network::new(ip, 32).ok().map(ElemKey::Prefix)
            } else {
                None
            }
        }
        SetId::Subnets6 | SetId::MasqSubnets6 | SetId::IsolatedSubnets6 => {
            if let Some(p) = v.get("prefix") {
                let addr = ipv6_val(p.get("addr")?)?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                Ipv6Network::new(addr, len).ok().map(ElemKey::Prefix6)
            } else if let Some(ip) = ipv6_val(v) {
                // A /128 is listed as a bare address.
                Ipv6Network::new(ip, 128).ok().map(ElemKey::Prefix6)
            } else {
                None
            }
        }
        SetId::Dnat6HostIp => match concat_parts(v)?.as_slice() {
            [ip, proto, port] => Some(ElemKey::HostPort6(
                ipv6_val(ip)?,
                proto_val(proto)?,
                port_num(port)?,
            )),
            _ => None,
        },
        SetId::DnatAny | SetId::Dnat6Any => match concat_parts(v)?.as_slice() {
            [proto, port] => Some(ElemKey::Port(proto_val(proto)?, port_num(port)?)),
            _ => None,
        },
        SetId::DnatHostIp => match concat_parts(v)?.as_slice() {
            [ip, proto, port] => Some(ElemKey::HostPort(
                ipv4_val(ip)?,
                proto_val(proto)?,
                port_num(port)?,
            )),
            _ => None,
        },
        SetId::VxlanGatewayMacs => match concat_parts(v)?.as_slice() {
            [dev, mac] => Some(ElemKey::IfnameMac(
                dev.as_str()?.to_string(),
                mac_bytes(mac.as_str()?)?,
            )),
            _ => None,
        },
        SetId::VxlanGatewayIps => match concat_parts(v)?.as_slice() {
            [dev, ip] => Some(ElemKey::IfnameAddr(
                dev.as_str()?.to_string(),
                ipv4_val(ip)?,
            )),
            _ => None,
        },
    }
}

/// A map value: the DNAT target, of the family `set` holds.
pub(super) fn parse_target(set: SetId, v: &Value) -> Option<(IpAddr, u16)> {
    let (ip, port) = match concat_parts(v)?.as_slice() {
        [ip, port] => (ip_val(ip)?, port_num(port)?),
        _ => return None,
    };
    let family_ok = match set {
        SetId::DnatAny | SetId::DnatHostIp => ip.is_ipv4(),
        SetId::Dnat6Any | SetId::Dnat6HostIp => ip.is_ipv6(),
        _ => false,
    };
    family_ok.then_some((ip, port))
}

pub(super) struct RawElem<'a> {
    pub(super) key: &'a Value,
    pub(super) comment: String,
    pub(super) counter: Option<(u64, u64)>,
    pub(super) data: Option<&'a Value>,
}

/// One entry of a set's `elem` list: `KEY`, `{"elem": {"val": KEY, ...}}`,
/// or for maps `[KEY_OR_ELEM, DATA]`.
pub(super) fn raw_elem(v: &Value) -> RawElem<'_> {
    let (k, data) = match v.as_array().map(Vec::as_slice) {
        Some([k, d]) => (k, Some(d)),
        _ => (v, None),
    };
    match k.get("elem") {
        Some(e) => RawElem {
            key: e.get("val").unwrap_or(&Value::Null),
            comment: as_str(e, "comment").unwrap_or_default().to_string(),
            counter: e
                .get("counter")
                .and_then(|c| Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))),
            data,
        },
        None => RawElem {
            key: k,
            comment: String::new(),
            counter: None,
            data,
        },
    }
}

/// The pure part of `host::nft::observe`: parse `nft -j list table` output (one
/// document, or the `nftables` arrays of both tables concatenated).
pub fn parse_observed(json_text: &str) -> Result<Observed> {
    let doc: Value = serde_json::from_str(json_text).context("nft printed invalid JSON")?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("nft JSON has no \"nftables\" array"))?;
    Ok(parse_items(items))
}

/// Builds the observed state from the items of `nft -j list table` output.
pub fn parse_items(items: &[Value]) -> Observed {
    let mut o = Observed::default();
    let mut problems: BTreeMap<Family, Vec<String>> = BTreeMap::new();
    let mut seen_sets = BTreeSet::new();
    let mut seen_chains = BTreeSet::new();
    let mut found_rules: BTreeMap<(Family, String), Vec<Value>> = BTreeMap::new();
    let family_of = |v: &Value| match as_str(v, "family") {
        Some("inet") => Some(Family::Inet),
        Some("bridge") => Some(Family::Bridge),
        _ => None,
    };

    for item in items {
        let Some((kind, body)) = item.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        if kind == "metainfo" {
            o.nft_version = as_str(body, "version").map(str::to_string);
            continue;
        }
        let table = as_str(body, "table").or(if kind == "table" {
            as_str(body, "name")
        } else {
            None
        });
        let Some(family) = family_of(body).filter(|_| table == Some(TABLE)) else {
            // Not ours: observe() lists only our tables, so this is a caller's
            // document with extra content; ignore it rather than judge it.
            continue;
        };
        let probs = problems.entry(family).or_default();
        match kind.as_str() {
            "table" => match family {
                Family::Inet => o.inet = Some(TableState::default()),
                Family::Bridge => o.bridge = Some(TableState::default()),
            },
            "set" | "map" => {
                let name = as_str(body, "name").unwrap_or_default();
                let Some(set) = SetId::from_name(family.name(), name) else {
                    probs.push(format!("unexpected {kind} {name}"));
                    continue;
                };
                seen_sets.insert(set);
                if strip(body, &["handle", "elem"]) != set.expected_json() {
                    probs.push(format!("{kind} {name}: declaration differs"));
                }
                for e in body
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let raw = raw_elem(e);
                    let key = parse_key(set, raw.key);
                    let target = raw.data.and_then(|d| parse_target(set, d));
                    match key {
                        Some(key) if set.is_map() == target.is_some() => {
                            if let Some(c) = raw.counter {
                                o.counters.insert((set, key.clone()), c);
                            }
                            o.elements.insert(
                                (set, key),
                                ElemData {
                                    target,
                                    comment: raw.comment,
                                },
                            );
                        }
                        // An element we cannot express could never be
                        // deleted by an element diff: rebuild instead.
                        _ => probs.push(format!("{kind} {name}: unrecognised element {e}")),
                    }
                }
            }
            "chain" => {
                let name = as_str(body, "name").unwrap_or_default();
                match CHAINS.iter().find(|c| c.family == family && c.name == name) {
                    Some(c) => {
                        seen_chains.insert((family, name.to_string()));
                        if strip(body, &["handle"]) != c.expected_json() {
                            probs.push(format!("chain {name}: type, hook or priority differs"));
                        }
                    }
                    None => probs.push(format!("unexpected chain {name}")),
                }
            }
            "rule" => {
                let chain = as_str(body, "chain").unwrap_or_default().to_string();
                found_rules
                    .entry((family, chain))
                    .or_default()
                    .push(strip(body, &["handle"]));
            }
            other => probs.push(format!("unexpected {other} object")),
        }
    }

    let rules = rules();
    for (family, state) in [(Family::Inet, &mut o.inet), (Family::Bridge, &mut o.bridge)] {
        let Some(state) = state else { continue };
        let probs = problems.entry(family).or_default();
        for set in ALL_SETS.into_iter().filter(|s| s.family() == family) {
            if !seen_sets.contains(&set) {
                probs.push(format!("set {} missing", set.name()));
            }
        }
        for c in CHAINS.iter().filter(|c| c.family == family) {
            if !seen_chains.contains(&(family, c.name.to_string())) {
                probs.push(format!("chain {} missing", c.name));
                continue;
            }
            let want: Vec<Value> = rules
                .iter()
                .filter(|r| r.family == family && r.chain == c.name)
                .map(RuleDef::expected_json)
                .collect();
            let have = found_rules
                .remove(&(family, c.name.to_string()))
                .unwrap_or_default();
            if have != want {
                probs.push(format!(
                    "chain {}: rules differ ({} found, {} expected)",
                    c.name,
                    have.len(),
                    want.len()
                ));
            }
        }
        state.skeleton_ok = probs.is_empty();
    }
    for ((family, chain), _) in found_rules {
        if CHAINS.iter().any(|c| c.family == family && c.name == chain) {
            continue;
        }
        problems
            .entry(family)
            .or_default()
            .push(format!("rules in unexpected chain {chain}"));
    }
    if let Some(st) = &mut o.inet {
        st.skeleton_ok &= problems.get(&Family::Inet).is_none_or(Vec::is_empty);
    }
    if let Some(st) = &mut o.bridge {
        st.skeleton_ok &= problems.get(&Family::Bridge).is_none_or(Vec::is_empty);
    }

    o.skeleton_ok = o.inet.as_ref().is_some_and(|s| s.skeleton_ok)
        && o.bridge.as_ref().is_none_or(|s| s.skeleton_ok);
    if o.inet.is_none() {
        problems
            .entry(Family::Inet)
            .or_default()
            .push("table missing".to_string());
    }
    o.problems = problems
        .into_iter()
        .flat_map(|(f, ps)| {
            ps.into_iter()
                .map(move |p| format!("table {} {TABLE}: {p}", f.name()))
        })
        .collect();
    o.fw = firewall_from_elements(&o.elements);
    o.strays = strays_of(&o);
    o
}

pub(super) fn observed_text(o: &Observed) -> String {
    let mut out = String::new();
    for (family, state) in [(Family::Inet, &o.inet), (Family::Bridge, &o.bridge)] {
        let Some(state) = state else { continue };
        if !out.is_empty() {
            out.push('\n');
        }
        let els = elements_of(&o.elements, family);
        if state.skeleton_ok {
            out.push_str(&render_table(family, &els));
        } else {
            // Only the data can be shown faithfully; the skeleton is summed
            // up by its problems, so a diff against `render` shows the whole
            // skeleton as changed (which is what apply will do).
            let _ = writeln!(out, "table {} {TABLE} {{", family.name());
            let prefix = format!("table {} {TABLE}: ", family.name());
            for p in o.problems.iter().filter_map(|p| p.strip_prefix(&prefix)) {
                let _ = writeln!(out, "\t# skeleton differs: {p}");
            }
            for ((set, key), d) in &els {
                let _ = writeln!(out, "\t# element {} {}", set.name(), elem_text(key, d));
            }
            out.push_str("}\n");
        }
    }
    out
}

pub(super) fn firewall_from_elements(elements: &Elements) -> Firewall {
    let mut fw = Firewall::default();
    // Built here, then shared (see `Firewall::ports`).
    let mut ports = BTreeMap::new();
    let subnet_of: BTreeMap<&str, Ipv4Network> = elements
        .iter()
        .filter_map(|((set, key), d)| match (set, key) {
            (SetId::Subnets, ElemKey::Prefix(p)) => Some((d.comment.as_str(), *p)),
            _ => None,
        })
        .collect();
    let subnet6_of: BTreeMap<&str, Ipv6Network> = elements
        .iter()
        .filter_map(|((set, key), d)| match (set, key) {
            (SetId::Subnets6, ElemKey::Prefix6(p)) => Some((d.comment.as_str(), *p)),
            _ => None,
        })
        .collect();
    // Elements per port key and family: a port published on both families
    // has one element per port in each, and its range length is the number
    // in either.
    let mut counts: BTreeMap<(String, bool), u16> = BTreeMap::new();
    // Cluster mode: a network's VXLAN port needs both its elements (the
    // gateway's MAC and its address) to be explained.
    let vxlan_macs: BTreeMap<(&str, &str), &[u8; 6]> = elements
        .iter()
        .filter_map(|((set, key), d)| match (set, key) {
            (SetId::VxlanGatewayMacs, ElemKey::IfnameMac(dev, mac)) => {
                Some(((d.comment.as_str(), dev.as_str()), mac))
            }
            _ => None,
        })
        .collect();
    for ((set, key), d) in elements {
        match (set, key) {
            (SetId::VxlanGatewayIps, ElemKey::IfnameAddr(dev, ip)) => {
                let Some(mac) = vxlan_macs.get(&(d.comment.as_str(), dev.as_str())) else {
                    continue;
                };
                fw.vxlans.insert(
                    d.comment.clone(),
                    FwVxlan {
                        device: dev.clone(),
                        gateway: *ip,
                        gateway_mac: mac_text(mac),
                    },
                );
            }
            (SetId::Bridges, ElemKey::Ifname(bridge)) => {
                let mut words = d.comment.split_whitespace();
                let Some(name) = words.next() else { continue };
                let Some(subnet) = subnet_of.get(name) else {
                    continue;
                };
                let mut n = FwNetwork {
                    bridge: bridge.clone(),
                    subnet: *subnet,
                    subnet6: subnet6_of.get(name).copied(),
                    masquerade: true,
                    internal: false,
                    icc: true,
                };
                for w in words {
                    match w.split_once('=') {
                        Some(("masquerade", v)) => n.masquerade = v == "true",
                        Some(("internal", v)) => n.internal = v == "true",
                        Some(("icc", v)) => n.icc = v == "true",
                        _ => {}
                    }
                }
                fw.networks.insert(name.to_string(), n);
            }
            (SetId::DnatAny | SetId::DnatHostIp | SetId::Dnat6Any | SetId::Dnat6HostIp, key) => {
                let (Some((pkey, container, network, bridge)), Some((cip, cport))) =
                    (parse_port_comment(&d.comment), d.target)
                else {
                    continue;
                };
                let (host_ip, proto, hport) = match (set, key) {
                    (_, ElemKey::HostPort(ip, proto, port)) => {
                        (Some(IpAddr::V4(*ip)), *proto, *port)
                    }
                    (_, ElemKey::HostPort6(ip, proto, port)) => {
                        (Some(IpAddr::V6(*ip)), *proto, *port)
                    }
                    (SetId::DnatAny, ElemKey::Port(proto, port)) => (None, *proto, *port),
                    (_, ElemKey::Port(proto, port)) => {
                        (Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), *proto, *port)
                    }
                    _ => continue,
                };
                let p = ports.entry(pkey.to_string()).or_insert(FwPort {
                    container: container.to_string(),
                    network: network.to_string(),
                    bridge: bridge.to_string(),
                    host_ip,
                    host_port: hport,
                    container_ip: None,
                    container_ip6: None,
                    container_port: cport,
                    count: 0,
                    proto,
                });
                // Elements come in key order, so the first one of a range is
                // its lowest host and container port.
                let n = counts.entry((pkey.to_string(), cip.is_ipv6())).or_default();
                if *n == 0 {
                    match cip {
                        IpAddr::V4(ip) => p.container_ip = Some(ip),
                        IpAddr::V6(ip) => p.container_ip6 = Some(ip),
                    }
                }
                *n = n.saturating_add(1);
                p.count = p.count.max(*n);
            }
            _ => {}
        }
    }
    fw.ports = ports.into();
    fw
}
