//! Failure isolation: which object a change belongs to, and holding back
//! the changes of objects that cannot be changed now.
//!
//! A failure confined to one container (its namespace vanished,
//! its host port is taken, its name clashes with a foreign object) leaves
//! that container and what depends on it as they are, and every
//! independent change goes ahead. A held-back object is spliced into the
//! desired state as it is observed, so that the plan, the firewall
//! transaction and the verification all agree on "leave it as it is".

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::*;
use crate::core::model::netloom_part;

/// An object that could not be changed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Failure {
    /// `container.NAME`, `network.NAME`, or another plan address.
    pub object: String,
    /// One line, naming what to do where possible.
    pub error: String,
}

impl Failure {
    /// A failure of `object`; a multi-line `error` is joined into one line
    /// with `; `.
    pub fn new(object: impl Into<String>, error: impl Into<String>) -> Failure {
        // Log and report lines are one line each.
        let error: String = error.into();
        Failure {
            object: object.into(),
            error: error
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// The plan address of the firewall table every nft change needs.
pub const NFT_TABLE: &str = "nft.table.netloom";

/// The object a change belongs to (`container.NAME`, `network.NAME`, or
/// the change's own address), and the objects it needs besides.
pub(super) fn object_of(c: &Change, d: &State, o: &State) -> (String, Vec<String>) {
    let a = c.address.as_str();
    if let Some(net) = a.strip_prefix("nft.network.") {
        return (format!("network.{net}"), vec![NFT_TABLE.to_string()]);
    }
    if let Some(net) = a.strip_prefix("nft.vxlan.") {
        return (format!("vxlan.{net}"), vec![NFT_TABLE.to_string()]);
    }
    if let Some(key) = a.strip_prefix("container.") {
        if let Some(e) = d.endpoints.get(key).or_else(|| o.endpoints.get(key)) {
            return (
                format!("container.{}", e.container),
                vec![format!("network.{}", e.network)],
            );
        }
        return (a.to_string(), Vec::new());
    }
    if let Some(key) = a.strip_prefix("port.") {
        let port = [d, o]
            .iter()
            .find_map(|s| s.firewall.as_ref().and_then(|f| f.fw.ports.get(key)));
        if let Some(p) = port {
            return (
                format!("container.{}", p.container),
                vec![format!("network.{}", p.network), NFT_TABLE.to_string()],
            );
        }
        return (a.to_string(), vec![NFT_TABLE.to_string()]);
    }
    if let Some(path) = a.strip_prefix("file.") {
        if let Some(owner) = file_owner(path, d).or_else(|| file_owner(path, o)) {
            return (format!("container.{owner}"), Vec::new());
        }
    }
    (a.to_string(), Vec::new())
}

/// The container whose file `path` is: `/etc/netns/NETNS/...` of the
/// container with that named namespace, or `STATE_DIR/files/NAME/...` of a
/// `netns_path` container.
pub fn file_owner(path: &str, st: &State) -> Option<String> {
    let dir = Path::new(path).parent()?;
    let leaf = dir.file_name()?.to_str()?;
    let parent = dir.parent()?;
    if parent == Path::new(model::ETC_NETNS) {
        // Usually the container is named like its namespace: one lookup,
        // not a scan (a plan asks this for every file of every container).
        if st
            .namespaces
            .get(leaf)
            .is_some_and(|n| matches!(&n.netns, NsRef::Named(x) if x == leaf))
        {
            return Some(leaf.to_string());
        }
        return st
            .namespaces
            .iter()
            .find(|(_, n)| n.netns == NsRef::Named(leaf.to_string()))
            .map(|(c, _)| c.clone());
    }
    if parent.file_name().and_then(|f| f.to_str()) == Some("files") {
        return Some(leaf.to_string());
    }
    None
}

/// `desired`, with every object in `held` (`container.NAME` or
/// `network.NAME` addresses) and everything depending on it as `observed`
/// holds it: a held network holds back its members; a held container
/// holds back its namespace, endpoints, published ports, files and its
/// lines in other containers' hosts files. When `held` names no network
/// and no container (as it nearly always does), `desired` itself: not a
/// copy of the whole host for every plan, apply and verification.
pub fn hold_back<'a>(
    desired: &'a State,
    observed: &State,
    held: &BTreeSet<String>,
) -> Cow<'a, State> {
    let networks: BTreeSet<&str> = held
        .iter()
        .filter_map(|h| h.strip_prefix("network."))
        .collect();
    let mut containers: BTreeSet<String> = held
        .iter()
        .filter_map(|h| h.strip_prefix("container."))
        .map(str::to_string)
        .collect();
    if networks.is_empty() && containers.is_empty() {
        return Cow::Borrowed(desired);
    }
    if !networks.is_empty() {
        for e in desired
            .endpoints
            .values()
            .chain(observed.endpoints.values())
        {
            if networks.contains(e.network.as_str()) {
                containers.insert(e.container.clone());
            }
        }
    }
    let mut st = desired.clone();
    for net in &networks {
        splice(&mut st.bridges, &observed.bridges, net);
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
    if containers.is_empty() {
        return Cow::Owned(st);
    }
    // Each held container's objects as observed. Done for all of them at
    // once: what one container's objects are never depends on another's.
    for c in &containers {
        splice(st.namespaces_mut(), &observed.namespaces, c);
    }
    st.endpoints_mut()
        .retain(|_, e| !containers.contains(&e.container));
    for (k, e) in observed.endpoints.iter() {
        if containers.contains(&e.container) {
            st.endpoints_mut().insert(k.clone(), e.clone());
        }
    }
    if let Some(fw) = st.firewall.as_mut() {
        fw.fw
            .ports_mut()
            .retain(|_, p| !containers.contains(&p.container));
        for (k, p) in observed.firewall.iter().flat_map(|f| f.fw.ports.iter()) {
            if containers.contains(&p.container) {
                fw.fw.ports_mut().insert(k.clone(), p.clone());
            }
        }
    }
    // A file belongs to a held container when it does by the desired or by
    // the observed state; each path's owner is looked up once.
    let owned_by_held = |p: &str| {
        [desired, observed]
            .iter()
            .any(|s| file_owner(p, s).is_some_and(|o| containers.contains(&o)))
    };
    let held_files: BTreeSet<&str> = desired
        .files
        .keys()
        .chain(observed.files.keys())
        .map(String::as_str)
        .filter(|p| owned_by_held(p))
        .collect();
    st.files_mut()
        .retain(|p, _| !held_files.contains(p.as_str()));
    for (p, text) in observed.files.iter() {
        if held_files.contains(p.as_str()) {
            st.files_mut().insert(p.clone(), netloom_part(text).into());
        }
    }
    for (path, text) in st.files_mut().iter_mut() {
        if path.ends_with("/hosts") && !held_files.contains(path.as_str()) {
            let have = observed.files.get(path).map(|t| netloom_part(t));
            if may_name(text, have, &containers) {
                *text = hold_lines(text, have, &containers).into();
            }
        }
    }
    Cow::Owned(st)
}

/// Whether [`hold_lines`] may change `desired`: false only when it
/// certainly returns it as it is (no line of either text can name a held
/// container, and no carriage return, which `lines()` would drop). A
/// search for each name, when there are few, is much cheaper than reading
/// every line of every hosts file of a large host.
fn may_name(desired: &str, observed: Option<&str>, held: &BTreeSet<String>) -> bool {
    const FEW: usize = 16;
    if held.len() > FEW || desired.contains('\r') {
        return true;
    }
    let texts = [Some(desired), observed];
    held.iter()
        .any(|name| texts.iter().flatten().any(|t| t.contains(name.as_str())))
}

/// Sets `want[key]` to `have[key]`, or removes it when `have` lacks it.
fn splice<V: Clone>(want: &mut BTreeMap<String, V>, have: &BTreeMap<String, V>, key: &str) {
    match have.get(key) {
        Some(v) => {
            want.insert(key.to_string(), v.clone());
        }
        None => {
            want.remove(key);
        }
    }
}

/// Whether a hosts line names one of `held` first (`IP NAME ...`).
fn names_held(line: &str, held: &BTreeSet<String>) -> bool {
    let mut w = line.split_whitespace();
    w.next().is_some_and(|ip| ip.parse::<IpAddr>().is_ok())
        && w.next().is_some_and(|n| held.contains(n))
}

/// A hosts file `desired` with the lines of `held` containers as they are
/// in `observed`: dropped when absent there, kept where they were. When the
/// other lines are unchanged the result equals `observed`, so the file is
/// not rewritten for a held container.
pub(super) fn hold_lines(desired: &str, observed: Option<&str>, held: &BTreeSet<String>) -> String {
    let mut out: Vec<&str> = desired.lines().filter(|l| !names_held(l, held)).collect();
    let mut prev: Option<&str> = None;
    for l in observed.unwrap_or("").lines() {
        if names_held(l, held) {
            let at = prev
                .and_then(|p| out.iter().rposition(|x| *x == p))
                .map(|i| i + 1)
                // No anchor: just above the user marker (the last line).
                .unwrap_or(out.len().saturating_sub(1));
            out.insert(at, l);
        }
        prev = Some(l);
    }
    let mut s = out.join("\n");
    if desired.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn held_lines_keep_their_observed_place() {
        let obs = "# h\n10.0.0.2\tapi\n10.0.0.3\tdb db.net\n10.0.0.4\tweb\n# marker\n";
        // db's address changed, newbie is new and held too.
        let want =
            "# h\n10.0.0.2\tapi\n10.0.0.4\tweb\n10.0.0.5\tnewbie\n10.0.0.9\tdb db.net\n# marker\n";
        let got = hold_lines(want, Some(obs), &held(&["db", "newbie"]));
        assert_eq!(got, obs);
        // An independent change next to a held one still happens.
        let want2 =
            "# h\n10.0.0.2\tapi\n10.0.0.4\tweb\n10.0.0.6\tother\n10.0.0.9\tdb db.net\n# marker\n";
        let got = hold_lines(want2, Some(obs), &held(&["db"]));
        assert_eq!(
            got,
            "# h\n10.0.0.2\tapi\n10.0.0.3\tdb db.net\n10.0.0.4\tweb\n10.0.0.6\tother\n# marker\n"
        );
        // A new file gets no line of a held container.
        let got = hold_lines(want, None, &held(&["newbie"]));
        assert!(!got.contains("newbie") && got.contains("10.0.0.9\tdb"));
    }

    fn tutorial() -> State {
        let text = include_str!("../../../examples/docker-tutorial.toml");
        let spec = crate::core::spec::load("t.toml", text).unwrap();
        let host = model::HostInfo {
            upstream_dns: Vec::new(),
            state_dir: "/var/lib/netloom".into(),
            agent_dns: true,
        };
        model::resolve(&spec, &Default::default(), &host)
            .unwrap()
            .state
    }

    #[test]
    fn a_held_new_container_leaves_no_trace_in_the_plan() {
        let want = tutorial();
        // The host has everything but tomcat5, which cannot be made now.
        let mut have =
            hold_back(&want, &State::default(), &held(&["container.tomcat5"])).into_owned();
        have.files_mut().clear();
        for (p, t) in want.files.iter() {
            if !p.contains("tomcat5") {
                let t: String = t
                    .lines()
                    .filter(|l| !l.contains("tomcat5"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                have.files_mut().insert(p.clone(), t.into());
            }
        }
        let target = hold_back(&want, &have, &held(&["container.tomcat5"]));
        let plan = diff(&target, &have, None);
        assert!(plan.is_empty(), "{:#?}", plan.changes);
        // Without holding back, tomcat5 and its hosts lines are planned.
        let plan = diff(&want, &have, None);
        let addrs: Vec<&str> = plan.changes.iter().map(|c| c.address.as_str()).collect();
        assert!(addrs.contains(&"container.tomcat5.eth0"), "{addrs:?}");
        assert!(
            addrs.contains(&"file./etc/netns/tomcat4/hosts"),
            "{addrs:?}"
        );
    }

    #[test]
    fn a_held_network_holds_back_its_members_only() {
        let want = tutorial();
        let target = hold_back(&want, &State::default(), &held(&["network.bridge"]));
        assert!(!target.bridges.contains_key("bridge"));
        assert!(target.bridges.contains_key("mynetwork"));
        assert!(!target.namespaces.contains_key("web"));
        assert!(target.namespaces.contains_key("tomcat4"));
        let fw = &target.firewall.as_ref().unwrap().fw;
        assert!(fw.ports.is_empty() && !fw.networks.contains_key("bridge"));
        assert!(!target.files.keys().any(|p| p.contains("/web/")));
    }

    #[test]
    fn every_change_names_its_object() {
        let plan = diff(&tutorial(), &State::default(), None);
        let by: BTreeMap<&str, (&str, &Vec<String>)> = plan
            .changes
            .iter()
            .map(|c| (c.address.as_str(), (c.object.as_str(), &c.needs)))
            .collect();
        assert_eq!(by["container.web.eth0"].0, "container.web");
        assert_eq!(
            by["container.web.eth0"].1,
            &vec!["network.bridge".to_string()]
        );
        assert_eq!(by["port.web.8080/tcp"].0, "container.web");
        assert!(by["port.web.8080/tcp"].1.contains(&NFT_TABLE.to_string()));
        assert_eq!(by["file./etc/netns/web/hosts"].0, "container.web");
        assert_eq!(by["nft.network.bridge"].0, "network.bridge");
        assert_eq!(by["network.mynetwork"].0, "network.mynetwork");
    }

    #[test]
    fn netloom_part_stops_at_the_user_marker() {
        let t = format!("a\n{}\nmine\n", model::USER_MARKER);
        assert_eq!(netloom_part(&t), format!("a\n{}\n", model::USER_MARKER));
    }
}
