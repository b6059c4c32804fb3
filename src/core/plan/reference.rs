//! The plain versions of [`drift`], [`hold_back`] and the file
//! comparisons, as they were before they were made cheap on large hosts,
//! and properties that the fast versions answer exactly as they do on
//! hosts changed in every way a plan cares about.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::core::firewall::Stray;
use crate::core::model::{FirewallState, USER_MARKER};

/// `drift` rendering every object's view and comparing the strings.
fn drift_reference(applied: &State, observed: &State) -> Vec<Drift> {
    let mut out = Vec::new();
    fn cmp(out: &mut Vec<Drift>, addr: String, a: Option<String>, o: Option<String>) {
        match (a, o) {
            (Some(_), None) => out.push(Drift {
                address: addr,
                what: "deleted outside netloom".into(),
            }),
            (Some(a), Some(o)) if a != o => out.push(Drift {
                address: addr,
                what: format!("changed outside netloom: {o} (was {a})"),
            }),
            _ => {}
        }
    }
    for (k, v) in &applied.sysctls {
        cmp(
            &mut out,
            format!("sysctl.{k}"),
            Some(v.clone()),
            observed.sysctls.get(k).cloned(),
        );
    }
    for (k, b) in &applied.bridges {
        cmp(
            &mut out,
            format!("network.{k}"),
            Some(drift::bridge_drift_view(b)),
            observed.bridges.get(k).map(drift::bridge_drift_view),
        );
    }
    for (k, v) in &applied.vxlans {
        cmp(
            &mut out,
            format!("vxlan.{k}"),
            Some(vxlan::vxlan_drift_view(v)),
            observed.vxlans.get(k).map(vxlan::vxlan_drift_view),
        );
    }
    for (k, n) in applied.namespaces.iter() {
        cmp(
            &mut out,
            format!("container.{k}"),
            Some(n.netns.to_string()),
            observed.namespaces.get(k).map(|x| x.netns.to_string()),
        );
    }
    for (k, e) in applied.endpoints.iter() {
        cmp(
            &mut out,
            format!("container.{k}"),
            Some(drift::endpoint_drift_view(e)),
            observed.endpoints.get(k).map(drift::endpoint_drift_view),
        );
    }
    if let Some(a) = &applied.firewall {
        match &observed.firewall {
            None => out.push(Drift {
                address: "nft.table.netloom".into(),
                what: "deleted outside netloom".into(),
            }),
            Some(o) if !o.skeleton_ok => out.push(Drift {
                address: "nft.table.netloom".into(),
                what: if o.problems.is_empty() {
                    "chains or rules changed outside netloom".into()
                } else {
                    format!(
                        "chains or rules changed outside netloom: {}",
                        o.problems.join("; ")
                    )
                },
            }),
            Some(o) => {
                let had_bridge = crate::core::firewall::bridge_table_needed(&a.fw);
                match (had_bridge, o.bridge_table) {
                    (true, false) => out.push(Drift {
                        address: BRIDGE_TABLE_ADDR.into(),
                        what: "deleted outside netloom".into(),
                    }),
                    (false, true) => out.push(Drift {
                        address: BRIDGE_TABLE_ADDR.into(),
                        what: "added outside netloom".into(),
                    }),
                    _ => {}
                }
                let applied_keys = crate::core::firewall::element_keys(&a.fw);
                for s in &o.strays {
                    let how = if applied_keys.contains(&(s.set.clone(), s.key.clone())) {
                        "changed"
                    } else {
                        "added"
                    };
                    out.push(Drift {
                        address: element_addr(s),
                        what: format!("{how} outside netloom: {}", s.text),
                    });
                }
            }
        }
        if let Some(o) = &observed.firewall {
            for (k, p) in a.fw.ports.iter() {
                cmp(
                    &mut out,
                    format!("port.{k}"),
                    Some(port_summary(p)),
                    o.fw.ports.get(k).map(port_summary),
                );
            }
        }
    }
    for (k, v) in applied.files.iter() {
        match observed.files.get(k) {
            None => out.push(Drift {
                address: format!("file.{k}"),
                what: "deleted outside netloom".into(),
            }),
            Some(o) if !file_matches_reference(v, o) => out.push(Drift {
                address: format!("file.{k}"),
                what: "edited outside netloom".into(),
            }),
            Some(_) => {}
        }
    }
    out
}

fn netloom_part_reference(text: &str) -> &str {
    match text.find(USER_MARKER) {
        Some(i) => {
            let end = i + USER_MARKER.len();
            if text[end..].starts_with('\n') {
                &text[..end + 1]
            } else {
                &text[..end]
            }
        }
        None => text,
    }
}

fn with_user_block_reference(desired: &str, on_disk: Option<&str>) -> String {
    match on_disk.and_then(|d| d.split_once(USER_MARKER)) {
        Some((_, tail)) if desired.ends_with(&format!("{USER_MARKER}\n")) => {
            let tail = tail.strip_prefix('\n').unwrap_or(tail);
            format!("{desired}{tail}")
        }
        _ => desired.to_string(),
    }
}

fn file_matches_reference(written: &str, on_disk: &str) -> bool {
    if model::is_digest(written) {
        // A long-lived reading keeps the digest of a text it read.
        written == on_disk || model::file_digest(netloom_part_reference(on_disk)) == written
    } else {
        with_user_block_reference(written, Some(on_disk)) == on_disk
    }
}

/// `hold_back` one held container at a time, every file's owner looked up
/// for each, and every hosts file's lines read.
fn hold_back_reference(desired: &State, observed: &State, held: &BTreeSet<String>) -> State {
    let networks: BTreeSet<&str> = held
        .iter()
        .filter_map(|h| h.strip_prefix("network."))
        .collect();
    let mut containers: BTreeSet<String> = held
        .iter()
        .filter_map(|h| h.strip_prefix("container."))
        .map(str::to_string)
        .collect();
    for e in desired
        .endpoints
        .values()
        .chain(observed.endpoints.values())
    {
        if networks.contains(e.network.as_str()) {
            containers.insert(e.container.clone());
        }
    }
    let splice = |want: &mut BTreeMap<String, _>, have: &BTreeMap<String, _>, key: &str| match have
        .get(key)
    {
        Some(v) => {
            want.insert(key.to_string(), Clone::clone(v));
        }
        None => {
            want.remove(key);
        }
    };
    let mut st = desired.clone();
    for net in &networks {
        match observed.bridges.get(*net) {
            Some(v) => {
                st.bridges.insert(net.to_string(), v.clone());
            }
            None => {
                st.bridges.remove(*net);
            }
        }
        if let Some(fw) = st.firewall.as_mut() {
            let empty = BTreeMap::new();
            let have = observed
                .firewall
                .as_ref()
                .map(|f| &f.fw.networks)
                .unwrap_or(&empty);
            splice(&mut fw.fw.networks, have, net);
        }
    }
    for c in &containers {
        match observed.namespaces.get(c) {
            Some(v) => {
                st.namespaces_mut().insert(c.clone(), v.clone());
            }
            None => {
                st.namespaces_mut().remove(c);
            }
        }
        st.endpoints_mut().retain(|_, e| &e.container != c);
        for (k, e) in observed.endpoints.iter() {
            if &e.container == c {
                st.endpoints_mut().insert(k.clone(), e.clone());
            }
        }
        if let Some(fw) = st.firewall.as_mut() {
            fw.fw.ports_mut().retain(|_, p| &p.container != c);
            for (k, p) in observed.firewall.iter().flat_map(|f| f.fw.ports.iter()) {
                if &p.container == c {
                    fw.fw.ports_mut().insert(k.clone(), p.clone());
                }
            }
        }
        let owned = |path: &String| {
            file_owner(path, desired).as_ref() == Some(c)
                || file_owner(path, observed).as_ref() == Some(c)
        };
        st.files_mut().retain(|p, _| !owned(p));
        for (p, text) in observed.files.iter() {
            if owned(p) {
                st.files_mut()
                    .insert(p.clone(), netloom_part_reference(text).into());
            }
        }
    }
    if !containers.is_empty() {
        let owned_by_held = |p: &str| {
            file_owner(p, desired).is_some_and(|o| containers.contains(&o))
                || file_owner(p, observed).is_some_and(|o| containers.contains(&o))
        };
        for (path, text) in st.files_mut().iter_mut() {
            if path.ends_with("/hosts") && !owned_by_held(path) {
                let have = observed.files.get(path).map(|t| netloom_part_reference(t));
                *text = hold::hold_lines(text, have, &containers).into();
            }
        }
    }
    st
}

/// Three networks (one dual-stack, one with `icc = false`), containers
/// with ports, links, aliases, a shared namespace and an attached one.
fn sample() -> State {
    let text = r#"
[networks.a]
subnet = "10.1.0.0/24"
[networks.b]
subnet = "10.2.0.0/24"
subnet6 = "fd00:2::/64"
[networks.c]
subnet = "10.3.0.0/24"
icc = false
[containers.web]
networks = ["a", "b"]
ports = ["8080:80", "127.0.0.1:8443:443", "9000-9001:9000-9001/udp"]
[containers.db]
networks = { b = { aliases = ["database"] } }
ports = ["5432"]
[containers.api]
networks = ["a", "b", "c"]
links = ["db:pg"]
extra_hosts = ["legacy:192.0.2.7"]
[containers.side]
network_mode = "container:api"
[containers.ext]
networks = ["c"]
netns_path = "/proc/4242/ns/net"
ports = ["7000:70"]
[containers.lone]
"#;
    let spec = crate::core::spec::load("t.toml", text).expect("valid sample");
    let host = model::HostInfo {
        upstream_dns: vec!["192.0.2.53:53".parse().expect("address")],
        state_dir: "/var/lib/netloom".into(),
        agent_dns: true,
    };
    model::resolve(&spec, &Default::default(), &host)
        .expect("resolves")
        .state
}

/// One change made to a state outside netloom: `kind` picks what, `at`
/// which object (modulo their count), `v` a variant.
type Edit = (u8, usize, u8);

fn nth<K: Clone, V>(m: &BTreeMap<K, V>, at: usize) -> Option<K> {
    let n = m.len();
    (n > 0).then(|| m.keys().nth(at % n).cloned()).flatten()
}

fn edit(st: &mut State, (kind, at, v): Edit) {
    let text = |v: u8| match v % 4 {
        0 => "x".to_string(),
        1 => format!("{USER_MARKER}\n10.9.9.9\tmine\n"),
        2 => "\r\n".to_string(),
        _ => format!("10.1.0.{v}\tweb\n"),
    };
    match kind % 25 {
        0 => {
            if let Some(k) = nth(&st.bridges, at) {
                st.bridges.remove(&k);
            }
        }
        1 => {
            if let Some(k) = nth(&st.bridges, at)
                && let Some(b) = st.bridges.get_mut(&k)
            {
                match v % 4 {
                    0 => b.mtu += 1,
                    1 => b.up = !b.up,
                    2 => b.mac = "02:00:00:00:00:09".into(),
                    _ => {
                        b.addrs.insert("10.99.0.1/24".into());
                    }
                }
            }
        }
        2 => {
            if let Some(k) = nth(&st.namespaces, at) {
                st.namespaces_mut().remove(&k);
            }
        }
        3 => {
            if let Some(k) = nth(&st.namespaces, at)
                && let Some(n) = st.namespaces_mut().get_mut(&k)
            {
                match v % 3 {
                    0 => n.lo_up = !n.lo_up,
                    1 => n.netns = NsRef::Path("/proc/1234/ns/net".into()),
                    _ => n.netns = NsRef::Named(format!("other{v}")),
                }
            }
        }
        4 => {
            if let Some(k) = nth(&st.endpoints, at) {
                st.endpoints_mut().remove(&k);
            }
        }
        5 | 6 => {
            if let Some(k) = nth(&st.endpoints, at)
                && let Some(e) = st.endpoints_mut().get_mut(&k)
            {
                match v % 10 {
                    0 => e.mtu -= 1,
                    1 => e.up = !e.up,
                    2 => e.hairpin = !e.hairpin,
                    3 => e.bridge = None,
                    4 => e.gateway = None,
                    5 => e.mac = "02:00:00:00:00:0a".into(),
                    6 => {
                        e.addrs.insert("10.1.0.250/24".into());
                    }
                    7 => e.host_veth = "vethforeign".into(),
                    8 => e.ifname = "eth7".into(),
                    _ => e.container = "stranger".into(),
                }
            }
        }
        7 => {
            if let Some(fw) = st.firewall.as_mut()
                && let Some(k) = nth(&fw.fw.ports, at)
            {
                fw.fw.ports_mut().remove(&k);
            }
        }
        8 => {
            if let Some(fw) = st.firewall.as_mut()
                && let Some(k) = nth(&fw.fw.ports, at)
                && let Some(p) = fw.fw.ports_mut().get_mut(&k)
            {
                match v % 3 {
                    0 => p.host_port += 1,
                    1 => p.container_ip = None,
                    _ => p.container = "stranger".into(),
                }
            }
        }
        9 => {
            if let Some(k) = nth(&st.files, at) {
                st.files_mut().remove(&k);
            }
        }
        10..=12 => {
            if let Some(k) = nth(&st.files, at)
                && let Some(f) = st.files_mut().get_mut(&k)
            {
                let mut s = f.to_string();
                if v % 2 == 0 {
                    s.push_str(&text(v / 2));
                } else {
                    s.insert_str(s.len() / 2, &text(v / 2));
                }
                *f = s.into();
            }
        }
        13 => st.firewall = None,
        14 => {
            if let Some(fw) = st.firewall.as_mut() {
                fw.skeleton_ok = false;
                if v % 2 == 0 {
                    fw.problems.push("chain forward_filter flushed".into());
                }
            }
        }
        15 => {
            if let Some(fw) = st.firewall.as_mut() {
                let key = if v % 2 == 0 {
                    "tcp . 8080"
                } else {
                    "tcp . 2222"
                };
                fw.strays.push(Stray {
                    family: "inet".into(),
                    set: "dnat_any".into(),
                    key: key.into(),
                    text: format!("{key} : 10.1.0.9 . 22"),
                });
            }
        }
        16 => {
            if let Some(fw) = st.firewall.as_mut() {
                fw.bridge_table = !fw.bridge_table;
            }
        }
        17 => {
            if let Some(k) = nth(&st.sysctls, at) {
                if v % 2 == 0 {
                    st.sysctls.remove(&k);
                } else {
                    st.sysctls.insert(k, "0".into());
                }
            }
        }
        18 => {
            st.namespaces_mut().insert(
                format!("extra{at}"),
                Namespace {
                    netns: NsRef::Named(format!("extra{at}")),
                    lo_up: true,
                },
            );
            st.files_mut().insert(
                format!("/etc/netns/extra{at}/hosts"),
                format!("# h\n10.1.0.77\textra{at}\n{USER_MARKER}\n").into(),
            );
        }
        19 => {
            if let Some(k) = nth(&st.endpoints, at)
                && let Some(mut e) = st.endpoints.get(&k).cloned()
            {
                e.ifname = format!("eth{}", 5 + v % 3);
                st.endpoints_mut()
                    .insert(format!("{}.{}", e.container, e.ifname), e);
            }
        }
        20 => {
            if let Some(fw) = st.firewall.as_mut()
                && let Some(k) = nth(&fw.fw.networks, at)
                && let Some(n) = fw.fw.networks.get_mut(&k)
            {
                n.masquerade = !n.masquerade;
            }
        }
        21 => {
            // A hosts file whose line names another container moved.
            if let Some(k) = nth(&st.files, at)
                && let Some(f) = st.files_mut().get_mut(&k)
            {
                *f = f
                    .replace("\tdb", "\tdb-old")
                    .replace("\tapi", "\tapi ")
                    .into();
            }
        }
        22 => {
            if let Some(k) = nth(&st.files, at) {
                let digest = model::file_digest(&st.files[&k]);
                let spelled = match v % 3 {
                    0 => digest.to_uppercase().replacen(
                        "NETLOOM-DIGEST:FNV64:",
                        "netloom-digest:fnv64:",
                        1,
                    ),
                    1 => digest.replacen(':', ":0", 3),
                    _ => digest,
                };
                st.files_mut().insert(k, spelled.into());
            }
        }
        23 => {
            // Edited in place, the length kept: only the hash tells.
            if let Some(k) = nth(&st.files, at)
                && let Some(f) = st.files_mut().get_mut(&k)
                && let Some(i) = f.find(|c: char| c.is_ascii_digit())
            {
                let d = if &f[i..=i] == "7" { "8" } else { "7" };
                let mut s = f.to_string();
                s.replace_range(i..=i, d);
                *f = s.into();
            }
        }
        _ => {
            *st = model::for_record(st);
        }
    }
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6)
}

/// A held object: a container, a network, or something else.
fn held_set() -> impl Strategy<Value = BTreeSet<String>> {
    let one = (0u8..4, any::<usize>()).prop_map(|(k, i)| {
        let containers = ["web", "db", "api", "side", "ext", "lone", "extra3"];
        let networks = ["a", "b", "c", "bridge", "gone"];
        match k {
            0 | 1 => format!("container.{}", containers[i % containers.len()]),
            2 => format!("network.{}", networks[i % networks.len()]),
            _ => NFT_TABLE.to_string(),
        }
    });
    prop::collection::btree_set(one, 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn drift_reports_what_the_plain_version_reports(
        applied_edits in edits(),
        observed_edits in edits(),
    ) {
        let base = sample();
        let mut applied = base.clone();
        for e in applied_edits {
            edit(&mut applied, e);
        }
        let mut observed = base;
        for e in observed_edits {
            edit(&mut observed, e);
        }
        prop_assert_eq!(drift(&applied, &observed), drift_reference(&applied, &observed));
    }

    #[test]
    fn hold_back_holds_what_the_plain_version_holds(
        observed_edits in edits(),
        desired_edits in edits(),
        held in held_set(),
    ) {
        let mut desired = sample();
        let mut observed = desired.clone();
        for e in observed_edits {
            edit(&mut observed, e);
        }
        for e in desired_edits {
            edit(&mut desired, e);
        }
        prop_assert_eq!(
            hold_back(&desired, &observed, &held).into_owned(),
            hold_back_reference(&desired, &observed, &held)
        );
    }

    #[test]
    fn the_firewall_alone_is_diffed_as_the_whole_diff_does(
        desired_edits in edits(),
        firewall_edits in edits(),
    ) {
        // Firewalls as edits leave them, the rest of the host as desired.
        let firewall_of = |edits: Vec<Edit>| {
            let mut st = sample();
            for e in edits {
                edit(&mut st, e);
            }
            st.firewall
        };
        let mut desired = sample();
        desired.firewall = firewall_of(desired_edits);
        let mut observed = sample();
        observed.firewall = firewall_of(firewall_edits);
        let key = |c: &Change| (c.address.clone(), c.object.clone(), c.needs.clone());
        let mut whole: Vec<_> = diff(&desired, &observed, None).changes.iter().map(key).collect();
        let mut alone: Vec<_> = diff_firewall_only(&desired, observed.firewall.as_ref())
            .iter()
            .map(key)
            .collect();
        whole.sort();
        alone.sort();
        prop_assert_eq!(whole, alone);
    }

    #[test]
    fn file_comparisons_answer_as_the_plain_versions(
        written_edits in edits(),
        disk_edits in edits(),
        digest in any::<bool>(),
    ) {
        let base = sample();
        let mut written = base.clone();
        for e in written_edits {
            edit(&mut written, e);
        }
        let mut disk = base;
        for e in disk_edits {
            edit(&mut disk, e);
        }
        if digest {
            written = model::for_record(&written);
        }
        let pairs: Vec<(&str, &model::FileText)> = written
            .files
            .iter()
            .filter_map(|(p, w)| Some((&**w, disk.files.get(p)?)))
            .collect();
        let one_by_one: Vec<bool> = pairs
            .iter()
            .map(|(w, d)| file_matches_reference(w, d))
            .collect();
        prop_assert_eq!(model::files_match(&pairs), one_by_one);
        for (path, w) in written.files.iter() {
            let Some(d) = disk.files.get(path) else { continue };
            prop_assert_eq!(model::file_matches(w, d), file_matches_reference(w, d));
            prop_assert_eq!(model::netloom_part(d), netloom_part_reference(d));
            let joined = with_user_block_reference(w, Some(d));
            prop_assert_eq!(&model::with_user_block(w, Some(d)), &joined);
            prop_assert_eq!(model::with_user_block_is(w, d, d), *joined == **d);
        }
    }
}

#[test]
fn digests_in_another_spelling_match_nothing() {
    let text = "# Written by netloom.\nnameserver 10.1.0.1\n";
    let digest = model::file_digest(text);
    assert!(model::file_matches(&digest, text));
    let (head, len) = digest.rsplit_once(':').expect("digest has a length");
    for other in [
        format!("{head}:0{len}"),
        format!("{head}:+{len}"),
        format!("{head}:{len} "),
        digest.replace(|c: char| ('a'..='f').contains(&c), "A"),
        format!("{}:{len}", &head[..head.len() - 1]),
    ] {
        assert!(!model::file_matches(&other, text), "{other}");
        assert!(!file_matches_reference(&other, text), "{other}");
    }
    assert!(!model::file_matches(&digest, &format!("{text}x")));
}

#[test]
fn the_sample_has_every_kind_of_object() {
    let st = sample();
    let fw: &FirewallState = st.firewall.as_ref().expect("firewall");
    assert!(st.bridges.len() >= 3 && fw.fw.ports.len() >= 4);
    assert!(st.files.keys().any(|p| p.starts_with("/var/lib/netloom/")));
    assert!(
        st.namespaces
            .values()
            .any(|n| matches!(n.netns, NsRef::Path(_)))
    );
    assert!(st.endpoints.values().any(|e| e.gateway6.is_some()));
    assert!(!st.sysctls.is_empty());
}
