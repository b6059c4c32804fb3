//! What the agent expects of the host between reconciles, so that a kernel
//! or filesystem event can be judged on its own: drift (reconcile now) or
//! the kernel's housekeeping and netloom's own echo (ignore). Built from
//! the desired state after every reconcile; judging an event reads nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::model::{NsRef, State};
use crate::host::events::KernelEvent;

/// Attributes of one link that netloom sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LinkWant {
    /// None: netloom does not choose it (a host veth's MAC).
    mac: Option<String>,
    mtu: u32,
    /// A bridge port: must stay enslaved.
    enslaved: bool,
    /// A bridge port: its hairpin mode (a bridge's notice about the port
    /// says it).
    hairpin: Option<bool>,
}

/// What one container namespace holds: a few links and addresses, kept
/// in lists (a thousand namespaces' hash tables cost more than their
/// contents, and a lookup in a list of one or two is no slower).
#[derive(Clone, Debug, Default)]
struct NsWant {
    links: Vec<(String, LinkWant)>,
    /// `address/prefix` of every interface in it.
    addrs: Vec<String>,
}

impl NsWant {
    fn link(&self, name: &str) -> Option<&LinkWant> {
        self.links.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// netloom's host interfaces by name.
    host_links: HashMap<String, LinkWant>,
    /// Their ifindex, as last observed, for events that carry only that.
    host_index: HashMap<u32, String>,
    /// Addresses of the bridges, by bridge name.
    bridge_addrs: HashMap<String, HashSet<String>>,
    /// By container; containers that share a namespace share its entry.
    ns: HashMap<String, Arc<NsWant>>,
    /// Named namespaces netloom keeps in /run/netns.
    pub netns_names: HashSet<String>,
    /// Files netloom writes.
    pub files: HashSet<PathBuf>,
    /// Sysctls and their values.
    pub sysctls: Vec<(String, String)>,
}

impl Expect {
    /// Expectations for `desired`; `links` maps the host's link names to
    /// their index as observed in the same reconcile.
    pub fn new<'a>(desired: &State, links: impl Iterator<Item = (&'a str, u32)>) -> Expect {
        let mut e = Expect::default();
        for b in desired.bridges.values() {
            e.host_links.insert(
                b.name.clone(),
                LinkWant {
                    mac: Some(b.mac.clone()),
                    mtu: b.mtu,
                    enslaved: false,
                    hairpin: None,
                },
            );
            e.bridge_addrs
                .insert(b.name.clone(), b.addrs.iter().cloned().collect());
        }
        for ep in desired.endpoints.values() {
            e.host_links.insert(
                ep.host_veth.clone(),
                LinkWant {
                    mac: None,
                    mtu: ep.mtu,
                    enslaved: true,
                    hairpin: Some(ep.hairpin),
                },
            );
        }
        for (name, index) in links {
            if e.host_links.contains_key(name) {
                e.host_index.insert(index, name.to_string());
            }
        }
        // Containers sharing a namespace (network_mode container:) see one
        // another's interfaces.
        let mut by_ns: HashMap<&NsRef, NsWant> = HashMap::new();
        for ep in desired.endpoints.values() {
            let w = by_ns.entry(&ep.netns).or_default();
            let want = LinkWant {
                mac: Some(ep.mac.clone()),
                mtu: ep.mtu,
                enslaved: false,
                hairpin: None,
            };
            // One entry per name, the last one winning (as a map would).
            match w.links.iter_mut().find(|(n, _)| *n == ep.ifname) {
                Some((_, l)) => *l = want,
                None => w.links.push((ep.ifname.clone(), want)),
            }
            w.addrs.extend(ep.addrs.iter().cloned());
        }
        let by_ns: HashMap<&NsRef, Arc<NsWant>> =
            by_ns.into_iter().map(|(k, w)| (k, Arc::new(w))).collect();
        e.ns.reserve(desired.namespaces.len());
        for (c, n) in desired.namespaces.iter() {
            let want = by_ns.get(&n.netns).cloned().unwrap_or_default();
            e.ns.insert(c.clone(), want);
            if let NsRef::Named(name) = &n.netns {
                e.netns_names.insert(name.clone());
            }
        }
        e.files = desired.files.keys().map(PathBuf::from).collect();
        e.sysctls = desired
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        e
    }

    /// Whether a host-namespace event is drift of netloom's interfaces.
    /// Link events also teach it the index of a link this reconcile
    /// (re)created, for later address events that carry only the index.
    pub fn host_drift(&mut self, ev: &KernelEvent) -> Option<String> {
        if let KernelEvent::Link {
            index,
            name: Some(name),
            removed: false,
            ..
        } = ev
            && self.host_links.contains_key(name)
        {
            self.host_index.insert(*index, name.clone());
        }
        match ev {
            KernelEvent::Link {
                index,
                name,
                removed,
                up,
                master,
                mac,
                mtu,
                bridge_port,
            } => {
                let name = name
                    .clone()
                    .or_else(|| self.host_index.get(index).cloned())?;
                let want = self.host_links.get(&name)?;
                if *removed {
                    return Some(format!("{name} removed"));
                }
                let hairpin = bridge_port.and_then(|p| p.hairpin);
                match (want.hairpin, hairpin) {
                    (Some(w), Some(h)) if w != h => {
                        Some(format!("{name} hairpin {}", if h { "on" } else { "off" }))
                    }
                    _ => link_drift(&name, want, *up, *master, mac, *mtu),
                }
            }
            KernelEvent::Address {
                index,
                removed,
                link_local: false,
                addr,
                ..
            } => {
                let name = self.host_index.get(index)?;
                let addr = addr.as_deref().unwrap_or("address");
                if *removed {
                    return Some(format!("{addr} removed from {name}"));
                }
                // A bridge holds exactly its gateway addresses; veths none.
                let extra = match self.bridge_addrs.get(name) {
                    Some(want) => !want.contains(addr),
                    None => true,
                };
                extra.then(|| format!("{addr} added to {name}"))
            }
            _ => None,
        }
    }

    /// Whether an event inside container `c`'s namespace is drift: there
    /// everything netloom made is its own, and nothing else belongs there.
    pub fn ns_drift(&self, c: &str, ev: &KernelEvent) -> Option<String> {
        let want = self.ns.get(c);
        match ev {
            KernelEvent::Link {
                name,
                removed: true,
                ..
            } => Some(format!("{} removed", name.as_deref().unwrap_or("link"))),
            KernelEvent::Link {
                name,
                up,
                mac,
                mtu,
                master,
                ..
            } => {
                let name = name.as_deref().unwrap_or("link");
                match want.and_then(|w| w.link(name)) {
                    Some(l) => link_drift(name, l, *up, *master, mac, *mtu),
                    None => (!*up && name == "lo").then(|| "lo down".to_string()),
                }
            }
            KernelEvent::Address {
                link_local: false,
                removed,
                addr,
                label,
                ..
            } => {
                let a = addr.as_deref().unwrap_or("address");
                if *removed {
                    Some(match label {
                        Some(dev) => format!("{a} removed from {dev}"),
                        None => format!("{a} removed"),
                    })
                } else {
                    let known = want.is_some_and(|w| w.addrs.iter().any(|x| x == a));
                    (!known).then(|| format!("{a} added"))
                }
            }
            KernelEvent::Route { removed: true } => Some("route removed".into()),
            // Anything may have changed: look.
            KernelEvent::Lost => Some("kernel events lost".into()),
            _ => None,
        }
    }

    /// Whether a filesystem event on `path` concerns netloom: one of its
    /// files, or one of its namespaces in /run/netns.
    pub fn fs_drift(&self, path: &Path) -> Option<String> {
        if self.files.contains(path) {
            return Some(format!("{} changed", path.display()));
        }
        let in_run_netns = path.parent() == Some(Path::new(crate::core::model::NETNS_RUN_DIR));
        let name = path.file_name()?.to_str()?;
        (in_run_netns && self.netns_names.contains(name))
            .then(|| format!("namespace {name} changed"))
    }
}

fn link_drift(
    name: &str,
    want: &LinkWant,
    up: bool,
    master: Option<u32>,
    mac: &Option<String>,
    mtu: Option<u32>,
) -> Option<String> {
    if !up {
        return Some(format!("{name} down"));
    }
    if want.enslaved && master.is_none() {
        return Some(format!("{name} left its bridge"));
    }
    if let (Some(w), Some(m)) = (&want.mac, mac)
        && w != m
    {
        return Some(format!("{name} mac {m}"));
    }
    match mtu {
        Some(m) if m != want.mtu => Some(format!("{name} mtu {m}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Bridge, Endpoint, Namespace};

    fn desired() -> State {
        let mut st = State::default();
        st.bridges.insert(
            "green".into(),
            Bridge {
                name: "br-green".into(),
                addrs: ["10.60.0.1/24".to_string()].into(),
                mtu: 1500,
                mac: "02:42:0a:3c:00:01".into(),
                up: true,
            },
        );
        let ns = NsRef::Named("c1".into());
        st.namespaces_mut().insert(
            "c1".into(),
            Namespace {
                netns: ns.clone(),
                lo_up: true,
            },
        );
        st.endpoints_mut().insert(
            "c1.eth0".into(),
            Endpoint {
                container: "c1".into(),
                network: "green".into(),
                netns: ns,
                ifname: "eth0".into(),
                host_veth: "veth1234567".into(),
                bridge: Some("br-green".into()),
                addrs: ["10.60.0.2/24".to_string()].into(),
                mac: "02:42:0a:3c:00:02".into(),
                mtu: 1500,
                gateway: None,
                gateway6: None,
                up: true,
                hairpin: true,
            },
        );
        st.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        st.files_mut()
            .insert("/etc/netns/c1/hosts".into(), "".into());
        st
    }

    fn link(name: &str, mac: &str, mtu: u32, master: Option<u32>) -> KernelEvent {
        KernelEvent::Link {
            index: 7,
            name: Some(name.into()),
            removed: false,
            up: true,
            master,
            mac: Some(mac.into()),
            mtu: Some(mtu),
            bridge_port: None,
        }
    }

    #[test]
    fn housekeeping_is_not_drift_attribute_changes_are() {
        let mut e = Expect::new(&desired(), [("br-green", 3)].into_iter());
        assert_eq!(
            e.host_drift(&link("br-green", "02:42:0a:3c:00:01", 1500, None)),
            None
        );
        assert!(
            e.host_drift(&link("br-green", "02:42:0a:3c:00:01", 1400, None))
                .is_some()
        );
        assert!(
            e.host_drift(&link("br-green", "02:42:0a:3c:00:99", 1500, None))
                .is_some()
        );
        assert!(
            e.host_drift(&link("veth1234567", "aa:aa:aa:aa:aa:aa", 1500, None))
                .is_some()
        );
        assert_eq!(
            e.host_drift(&link("veth1234567", "aa:aa:aa:aa:aa:aa", 1500, Some(3))),
            None
        );
        assert_eq!(
            e.host_drift(&link("eth9", "aa:aa:aa:aa:aa:aa", 1400, None)),
            None
        );
        // The bridge's notice about the port says its hairpin mode.
        let notice = |hairpin| {
            let mut ev = link("veth1234567", "aa:aa:aa:aa:aa:aa", 1500, Some(3));
            if let KernelEvent::Link { bridge_port, .. } = &mut ev {
                *bridge_port = Some(crate::host::events::PortNotice { hairpin });
            }
            ev
        };
        assert_eq!(e.host_drift(&notice(Some(true))), None);
        assert_eq!(e.host_drift(&notice(None)), None);
        assert_eq!(
            e.host_drift(&notice(Some(false))).as_deref(),
            Some("veth1234567 hairpin off")
        );
        assert_eq!(
            e.ns_drift("c1", &link("eth0", "02:42:0a:3c:00:02", 1500, None)),
            None
        );
        assert!(
            e.ns_drift("c1", &link("eth0", "02:42:0a:3c:00:99", 1500, None))
                .is_some()
        );
        let addr = |a: &str, removed| KernelEvent::Address {
            index: 7,
            removed,
            link_local: false,
            addr: Some(a.into()),
            label: None,
        };
        assert_eq!(e.ns_drift("c1", &addr("10.60.0.2/24", false)), None);
        assert!(e.ns_drift("c1", &addr("10.60.0.3/24", false)).is_some());
        assert!(e.ns_drift("c1", &addr("10.60.0.2/24", true)).is_some());
    }

    #[test]
    fn files_and_namespaces() {
        let e = Expect::new(&desired(), std::iter::empty());
        assert!(e.fs_drift(Path::new("/etc/netns/c1/hosts")).is_some());
        assert!(e.fs_drift(Path::new("/etc/netns/c1/other")).is_none());
        assert!(e.fs_drift(Path::new("/run/netns/c1")).is_some());
        assert!(e.fs_drift(Path::new("/run/netns/foreign")).is_none());
        assert_eq!(
            e.sysctls,
            vec![("net.ipv4.ip_forward".to_string(), "1".to_string())]
        );
    }
}
