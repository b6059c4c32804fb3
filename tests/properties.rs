//! Properties of the `-p` parser and of IPAM on generated input: the
//! parser reads back what was written and never panics; no address or host
//! port is ever handed out twice; what was given stays given when the file
//! is reordered or containers are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use netloom::core::firewall::Proto;
use netloom::core::ipam::{self, Allocations};
use netloom::core::ports::{self, PortRange};
use netloom::core::spec::{self, Spec};
use proptest::prelude::*;

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Sctp)]
}

/// A range starting at 1..=65535 of 1..=`max_len` ports that fits.
fn range(max_len: u16) -> impl Strategy<Value = PortRange> {
    (1u16..=65535, 1u16..=max_len).prop_map(|(start, len)| {
        let end = start.saturating_add(len - 1);
        PortRange { start, end }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every well-formed mapping parses back to its parts.
    #[test]
    fn port_mappings_read_back(
        ip in proptest::option::of(any::<[u8; 4]>()),
        host in proptest::option::of(range(64)),
        container in range(64),
        proto in proto(),
        explicit_proto in any::<bool>(),
    ) {
        // A host range has the container range's length.
        let host = host.map(|h| PortRange {
            start: h.start.min(65535 - (container.end - container.start)),
            end: h.start.min(65535 - (container.end - container.start)) + (container.end - container.start),
        });
        let ip = ip.map(Ipv4Addr::from);
        let mut s = String::new();
        match (ip, host) {
            (Some(ip), Some(h)) => { let _ = write!(s, "{ip}:{h}:"); }
            (Some(ip), None) => { let _ = write!(s, "{ip}::"); }
            (None, Some(h)) => { let _ = write!(s, "{h}:"); }
            (None, None) => {}
        }
        let _ = write!(s, "{container}");
        if explicit_proto || proto != Proto::Tcp {
            let _ = write!(s, "/{proto}");
        }
        let p = ports::parse(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(p.host_ip, ip.filter(|i| !i.is_unspecified()).map(std::net::IpAddr::V4), "{}", s);
        prop_assert_eq!(p.host, host, "{}", s);
        prop_assert_eq!(p.container, container, "{}", s);
        prop_assert_eq!(p.proto, proto, "{}", s);
    }

    /// Any text: an error or a mapping that makes sense, never a panic.
    #[test]
    fn port_parser_total(s in "[0-9a-z.:/\\[\\]-]{0,40}") {
        if let Ok(p) = ports::parse(&s) {
            prop_assert!(p.container.start >= 1 && p.container.start <= p.container.end);
            if let Some(h) = p.host {
                prop_assert!(h.start >= 1 && h.start <= h.end);
                prop_assert_eq!(h.len(), p.container.len());
            }
        }
    }
}

/// One generated container: an optional fixed address offset in the /24
/// and its port mappings (`None` host: auto-published).
#[derive(Clone, Debug)]
struct Gen {
    fixed: Option<u8>,
    ports: Vec<(Option<u16>, u16)>,
}

fn containers() -> impl Strategy<Value = Vec<Gen>> {
    let port = (proptest::option::of(0u16..40), 1u16..4);
    let one = (
        proptest::option::weighted(0.3, 2u8..=254),
        proptest::collection::vec(port, 0..3),
    )
        .prop_map(|(fixed, ports)| Gen { fixed, ports });
    proptest::collection::vec(one, 1..40).prop_map(|mut v| {
        // Fixed addresses and fixed host ports must be distinct to be valid.
        let mut seen_ip = BTreeSet::new();
        let mut next_port = 0u16;
        for g in &mut v {
            if g.fixed.is_some_and(|f| !seen_ip.insert(f)) {
                g.fixed = None;
            }
            for (h, len) in &mut g.ports {
                if h.is_some() {
                    // Disjoint fixed ranges inside the port range.
                    *h = Some(30000 + next_port);
                    next_port += *len + 1;
                }
            }
        }
        v
    })
}

/// The file for `list` in the order of `order` (indexes into `list`).
fn file(list: &[Gen], order: &[usize]) -> String {
    let mut t = String::from(
        "[settings]\nport_range = \"30000-30300\"\n[networks.n]\nsubnet = \"10.60.0.0/24\"\n",
    );
    for &i in order {
        let g = &list[i];
        let _ = writeln!(t, "[containers.c{i}]");
        match g.fixed {
            Some(f) => {
                let _ = writeln!(t, "networks = {{ n = {{ ip = \"10.60.0.{f}\" }} }}");
            }
            None => t.push_str("networks = [\"n\"]\n"),
        }
        let maps: Vec<String> = g
            .ports
            .iter()
            .enumerate()
            .map(|(k, (h, len))| {
                let c = 1000 * (k as u16 + 1);
                let cr = if *len == 1 {
                    c.to_string()
                } else {
                    format!("{c}-{}", c + len - 1)
                };
                match h {
                    Some(h) if *len == 1 => format!("\"{h}:{cr}\""),
                    Some(h) => format!("\"{h}-{}:{cr}\"", h + len - 1),
                    None => format!("\"{cr}\""),
                }
            })
            .collect();
        if !maps.is_empty() {
            let _ = writeln!(t, "ports = [{}]", maps.join(", "));
        }
    }
    t
}

fn load(text: &str) -> Spec {
    spec::load("gen.toml", text).unwrap_or_else(|d| panic!("generated file invalid:\n{d}\n{text}"))
}

/// Host ports `a` holds, as inclusive ranges by key (fixed ones included).
fn host_ranges(s: &Spec, a: &Allocations) -> Vec<(String, u16, u16)> {
    let mut out = Vec::new();
    for c in &s.containers {
        for (raw, p) in &c.ports {
            let len = p.container.len();
            let start = match p.host {
                Some(h) => h.start,
                None => a.ports[&ipam::port_key(&c.name, raw)],
            };
            out.push((format!("{}/{raw}", c.name), start, start + len - 1));
        }
    }
    out
}

fn check_unique(s: &Spec, a: &Allocations) -> Result<(), TestCaseError> {
    let v4 = &a.ipv4["n"];
    let addrs: BTreeSet<&Ipv4Addr> = v4.values().collect();
    prop_assert_eq!(
        addrs.len(),
        v4.len(),
        "an address handed out twice: {:?}",
        v4
    );
    for ip in v4.values() {
        let last = ip.octets()[3];
        prop_assert!(
            ip.octets()[..3] == [10, 60, 0] && (2..=254).contains(&last),
            "{ip} not usable"
        );
    }
    for c in &s.containers {
        if let Some(f) = c.endpoints[0].ip {
            prop_assert_eq!(v4[&c.name], f, "fixed address not honoured");
        }
    }
    let mut ranges = host_ranges(s, a);
    ranges.sort_by_key(|r| r.1);
    for w in ranges.windows(2) {
        prop_assert!(
            w[0].2 < w[1].1,
            "host ports overlap: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    for (k, start, end) in &ranges {
        prop_assert!(
            *start >= 30000 && *end <= 30300,
            "{k}: {start}-{end} outside port_range"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Nothing twice, fixed values honoured, everything inside its range.
    #[test]
    fn ipam_hands_out_nothing_twice(list in containers()) {
        let order: Vec<usize> = (0..list.len()).collect();
        let s = load(&file(&list, &order));
        let a = ipam::allocate(&s, &Allocations::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_unique(&s, &a)?;
    }

    /// Reordering the file changes nothing; removing containers changes
    /// nothing for the others (and frees what the removed ones held).
    #[test]
    fn ipam_stable_under_reordering_and_removal(
        list in containers(),
        perm in any::<proptest::sample::Index>(),
        keep in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let order: Vec<usize> = (0..list.len()).collect();
        let s = load(&file(&list, &order));
        let a = ipam::allocate(&s, &Allocations::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;

        // A rotation and a reversal of the file.
        let mut shuffled = order.clone();
        shuffled.rotate_left(perm.index(order.len()));
        shuffled.reverse();
        let s2 = load(&file(&list, &shuffled));
        let b = ipam::allocate(&s2, &a).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&b, &a, "reordering moved an allocation");

        let kept: Vec<usize> = order.iter().copied().filter(|i| keep[*i]).collect();
        prop_assume!(!kept.is_empty());
        let s3 = load(&file(&list, &kept));
        let c = ipam::allocate(&s3, &a).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_unique(&s3, &c)?;
        for (name, ip) in &c.ipv4["n"] {
            prop_assert_eq!(Some(ip), a.ipv4["n"].get(name), "{} moved", name);
        }
        for (key, port) in &c.ports {
            prop_assert_eq!(Some(port), a.ports.get(key), "{} moved", key);
        }
        let gone: BTreeMap<&String, &u16> = a.ports.iter().filter(|(k, _)| !c.ports.contains_key(*k)).collect();
        for key in gone.keys() {
            let container = key.split('/').next().unwrap_or_default();
            prop_assert!(!c.ipv4["n"].contains_key(container), "{} kept a port it no longer declares", key);
        }
    }
}
