//! Containers' `/etc/hosts` files, computed with no I/O.
//!
//! A file lists the container's own names, its `extra_hosts`, its links
//! and every other member of its user-defined networks, one line per
//! address. At 1,000 containers in networks of 100 that is 100,000 lines
//! per resolve, so the members' lines are built once per network
//! ([`HostsTables::new`]) and each file reuses them: in the common case
//! (one listed network, no links) a file is the network's pre-rendered
//! block minus the container's own lines. Everything else goes through the
//! general merge ([`HostsTables::file`]), which gives the same bytes for
//! the common case too; the tests compare both against the original
//! per-container algorithm.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::Range;

use crate::core::cluster::RemoteMember;
use crate::core::ipam::Allocations;
use crate::core::spec::{ContainerSpec, DEFAULT_NETWORK, EndpointSpec, NetworkSpec};

/// Everything below this line of a hosts file is the user's.
pub const USER_MARKER: &str = "# user entries below (kept by netloom)";

/// Above this many members, a user-defined network with DNS is no longer
/// listed in its members' hosts files: its names come from the embedded
/// DNS only. 256 members make hosts files of about 10 KiB each (2.5 MiB
/// for the network); the full listing grows with the square of the size.
pub const HOSTS_FILE_MAX_MEMBERS: usize = 256;

/// The lines every hosts file starts with.
const HEADER: &str = "# Written by netloom; edits above the user marker are replaced.\n\
     127.0.0.1\tlocalhost\n\
     ::1\tlocalhost ip6-localhost ip6-loopback\n\
     fe00::0\tip6-localnet\n\
     ff00::0\tip6-mcastprefix\n\
     ff02::1\tip6-allnodes\n\
     ff02::2\tip6-allrouters\n";

/// Members of each network in file order, as `resolve` collects them.
pub type Members<'a> = HashMap<&'a str, Vec<(&'a ContainerSpec, &'a EndpointSpec)>>;

/// Everything the hosts files of one resolve share: each user-defined
/// network's member lines, built once.
pub struct HostsTables<'a> {
    by_name: &'a HashMap<&'a str, &'a ContainerSpec>,
    alloc: &'a Allocations,
    /// By network, for the networks `resolve` keeps, the default network
    /// excepted (its members are not listed: Docker's `bridge` has no
    /// names but links).
    nets: HashMap<&'a str, NetHosts<'a>>,
}

/// What one network puts in its members' hosts files.
enum NetHosts<'a> {
    /// Too large for hosts files: one comment line pointing at the DNS.
    DnsOnly(String),
    /// Every member listed.
    Listed(Listed<'a>),
}

/// The members of one listed network, one entry per address.
struct Listed<'a> {
    /// Per member (local ones in file order, then remote ones): its
    /// names on the network, `NAME NAME.NETWORK ALIAS...`.
    names: Vec<Vec<String>>,
    /// One per address: the address, the index of its names, and the
    /// local container it belongs to (`None` for a remote member, which
    /// no local file leaves out).
    entries: Vec<(IpAddr, usize, Option<&'a str>)>,
    /// Set when no two entries share an address: then the merge of the
    /// general path has nothing to merge and a member's file is this
    /// block minus its own lines.
    block: Option<Block<'a>>,
}

/// A listed network's lines rendered once, sorted by address.
struct Block<'a> {
    text: String,
    /// Where each local member's own lines are in `text`, in order.
    own: HashMap<&'a str, Vec<Range<usize>>>,
}

impl<'a> HostsTables<'a> {
    /// Builds each network's member entries once. `networks` are the
    /// networks `resolve` keeps, `members` their members in file order,
    /// `remote_of` a cluster network's members on other hosts.
    pub fn new(
        networks: &'a BTreeMap<String, NetworkSpec>,
        members: &Members<'a>,
        by_name: &'a HashMap<&'a str, &'a ContainerSpec>,
        alloc: &'a Allocations,
        remote_of: &dyn Fn(&str) -> &'a [RemoteMember],
    ) -> Self {
        let mut nets = HashMap::with_capacity(networks.len());
        for net in networks.values() {
            if net.name == DEFAULT_NETWORK {
                continue;
            }
            let list = members
                .get(net.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let remote = remote_of(&net.name);
            let size = list.len() + remote.len();
            let hosts = if net.dns && size > HOSTS_FILE_MAX_MEMBERS {
                NetHosts::DnsOnly(format!(
                    "# The {size} members of network `{}` are resolved by netloom's DNS on {} (netloom watch).\n",
                    net.name, net.gateway
                ))
            } else {
                NetHosts::Listed(Listed::new(net, list, remote, alloc))
            };
            nets.insert(net.name.as_str(), hosts);
        }
        HostsTables {
            by_name,
            alloc,
            nets,
        }
    }

    /// `/etc/hosts` of container `c`, as the seed's `cat /etc/hosts` shows
    /// it, with names that follow addresses (never stale); `extra` are its
    /// `extra_hosts` with `host-gateway` made an address.
    ///
    /// On a user-defined network of more than [`HOSTS_FILE_MAX_MEMBERS`]
    /// members with DNS, the other members are left to the embedded DNS
    /// (as Docker does for every user-defined network): listing them all
    /// in every member's file would make the files grow with the square of
    /// the network. A comment line in the file says so.
    pub fn file(&self, c: &ContainerSpec, extra: &[(String, IpAddr)]) -> String {
        self.render(c, extra, true).0
    }

    /// [`Self::file`], and whether it took the pre-rendered block; with
    /// `use_block` false always through the general merge (the tests
    /// compare the two).
    fn render(
        &self,
        c: &ContainerSpec,
        extra: &[(String, IpAddr)],
        use_block: bool,
    ) -> (String, bool) {
        let mut listed: Vec<&Listed> = Vec::new();
        let mut dns_only: Vec<&str> = Vec::new();
        for e in &c.endpoints {
            match self.nets.get(e.network.as_str()) {
                Some(NetHosts::Listed(l)) => listed.push(l),
                Some(NetHosts::DnsOnly(line)) => dns_only.push(line),
                None => {}
            }
        }
        // The one case that needs no merge: a single listed network whose
        // addresses are all distinct, and no link adding names.
        let block = match listed.as_slice() {
            [one] if c.links.is_empty() && use_block => one.block.as_ref(),
            _ => None,
        };
        // Room for the fixed parts and a line per own address and extra
        // host; the general merge grows it as it goes.
        let mut out = String::with_capacity(
            HEADER.len()
                + USER_MARKER.len()
                + 1
                + 64 * (2 * c.endpoints.len() + extra.len())
                + dns_only.iter().map(|l| l.len()).sum::<usize>()
                + block.map_or(0, |b| b.text.len()),
        );
        out.push_str(HEADER);
        // With a domain name the fully qualified name comes first, as
        // Docker writes it (`hostname -f` reads it from there).
        let mut own_names = String::new();
        if let Some(d) = &c.dns.domainname {
            let _ = write!(own_names, "{}.{d} ", c.hostname);
        }
        own_names.push_str(&c.hostname);
        if c.name != c.hostname {
            own_names.push(' ');
            own_names.push_str(&c.name);
        }
        for e in &c.endpoints {
            for ip in addrs_on(self.alloc, &c.name, &e.network) {
                let _ = writeln!(out, "{ip}\t{own_names}");
            }
        }
        // `extra_hosts` (`--add-host`), in file order before the other
        // containers: the first line naming a host wins, and an extra host
        // is a deliberate override.
        for (name, ip) in extra {
            let _ = writeln!(out, "{ip}\t{name}");
        }
        match block {
            Some(b) => {
                let mut from = 0;
                for r in b.own.get(c.name.as_str()).into_iter().flatten() {
                    out.push_str(&b.text[from..r.start]);
                    from = r.end;
                }
                out.push_str(&b.text[from..]);
            }
            None => self.merged(c, &listed, &mut out),
        }
        for line in dns_only {
            out.push_str(line);
        }
        out.push_str(USER_MARKER);
        out.push('\n');
        (out, block.is_some())
    }

    /// The general case: links and every listed network's other members,
    /// sorted by address and names, one line per address with the names
    /// of every entry for it (a linked container that is also on a shared
    /// network, or one address under several names, gets one line).
    fn merged(&self, c: &ContainerSpec, listed: &[&Listed], out: &mut String) {
        // Links: one way, to the target's address on a network both share.
        let mut links: Vec<(Vec<IpAddr>, Vec<String>)> = Vec::new();
        for (target, alias) in &c.links {
            let Some(t) = self.by_name.get(target.as_str()) else {
                continue;
            };
            let t = crate::core::spec::resolve_shared(t, self.by_name);
            let shared = c
                .endpoints
                .iter()
                .find(|e| t.endpoints.iter().any(|o| o.network == e.network));
            let Some(e) = shared else { continue };
            let mut names = vec![target.clone()];
            names.extend(alias.iter().cloned());
            links.push((addrs_on(self.alloc, &t.name, &e.network), names));
        }
        let mut lines: Vec<(IpAddr, &[String])> = Vec::new();
        for (ips, names) in &links {
            lines.extend(ips.iter().map(|ip| (*ip, names.as_slice())));
        }
        for l in listed {
            lines.extend(
                l.entries
                    .iter()
                    .filter(|(_, _, owner)| *owner != Some(c.name.as_str()))
                    .map(|(ip, i, _)| (*ip, l.names[*i].as_slice())),
            );
        }
        // Entries that compare equal are equal in content, so an unstable
        // sort gives the same text.
        lines.sort_unstable();
        let mut i = 0;
        while i < lines.len() {
            let (ip, first) = lines[i];
            // The first entry's names as they are, then each later
            // entry's names not seen yet.
            let mut have: Vec<&str> = first.iter().map(String::as_str).collect();
            i += 1;
            while let Some((_, names)) = lines.get(i).filter(|(next, _)| *next == ip) {
                for n in names.iter() {
                    if !have.contains(&n.as_str()) {
                        have.push(n);
                    }
                }
                i += 1;
            }
            let _ = write!(out, "{ip}\t");
            push_joined(out, have.iter().copied());
            out.push('\n');
        }
    }
}

impl<'a> Listed<'a> {
    fn new(
        net: &NetworkSpec,
        list: &[(&'a ContainerSpec, &'a EndpointSpec)],
        remote: &[RemoteMember],
        alloc: &Allocations,
    ) -> Self {
        let mut names = Vec::with_capacity(list.len() + remote.len());
        let mut entries = Vec::with_capacity((list.len() + remote.len()) * 2);
        for (other, oe) in list {
            let mut n = vec![other.name.clone(), format!("{}.{}", other.name, net.name)];
            n.extend(oe.aliases.iter().cloned());
            let ips = addrs_on(alloc, &other.name, &net.name);
            entries.extend(
                ips.into_iter()
                    .map(|ip| (ip, names.len(), Some(other.name.as_str()))),
            );
            names.push(n);
        }
        // Cluster networks: the members on other hosts too.
        for m in remote {
            let mut n = vec![m.name.clone(), format!("{}.{}", m.name, net.name)];
            n.extend(m.aliases.iter().cloned());
            let ips = std::iter::once(IpAddr::V4(m.ipv4)).chain(m.ipv6.map(IpAddr::V6));
            entries.extend(ips.map(|ip| (ip, names.len(), None)));
            names.push(n);
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| names[a.1].cmp(&names[b.1])));
        let distinct = entries.windows(2).all(|w| w[0].0 != w[1].0);
        let block = distinct.then(|| {
            let mut text = String::with_capacity(entries.len() * 32);
            let mut own: HashMap<&'a str, Vec<Range<usize>>> = HashMap::new();
            for (ip, i, owner) in &entries {
                let start = text.len();
                let _ = write!(text, "{ip}\t");
                push_joined(&mut text, names[*i].iter().map(String::as_str));
                text.push('\n');
                if let Some(o) = owner {
                    own.entry(*o).or_default().push(start..text.len());
                }
            }
            Block { text, own }
        });
        Listed {
            names,
            entries,
            block,
        }
    }
}

/// A container's `extra_hosts` with `host-gateway` made an address (the
/// gateway of its first network; left out when it has none).
pub fn extra_hosts(
    c: &ContainerSpec,
    networks: &BTreeMap<String, NetworkSpec>,
) -> Vec<(String, IpAddr)> {
    use crate::core::container_dns::ExtraAddr;
    let gateway = c
        .endpoints
        .first()
        .and_then(|e| networks.get(&e.network))
        .map(|n| IpAddr::V4(n.gateway));
    c.dns
        .extra_hosts
        .iter()
        .filter_map(|h| match h.addr {
            ExtraAddr::Ip(ip) => Some((h.name.clone(), ip)),
            ExtraAddr::HostGateway => gateway.map(|g| (h.name.clone(), g)),
        })
        .collect()
}

/// Every address of container `c` on network `net`, IPv4 first.
fn addrs_on(alloc: &Allocations, c: &str, net: &str) -> Vec<IpAddr> {
    let v4 = alloc.ipv4.get(net).and_then(|m| m.get(c)).copied();
    let v6 = alloc.ipv6.get(net).and_then(|m| m.get(c)).copied();
    v4.map(IpAddr::V4)
        .into_iter()
        .chain(v6.map(IpAddr::V6))
        .collect()
}

/// Appends `names` separated by single spaces.
fn push_joined<'s>(out: &mut String, names: impl Iterator<Item = &'s str>) {
    for (k, n) in names.enumerate() {
        if k > 0 {
            out.push(' ');
        }
        out.push_str(n);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::core::ipam;

    /// The hosts file as `model` computed it before the shared tables:
    /// one names list and line per member and address, for each container.
    fn reference<'a>(
        c: &ContainerSpec,
        by_name: &HashMap<&str, &ContainerSpec>,
        networks: &BTreeMap<String, NetworkSpec>,
        members: &HashMap<&str, Vec<(&ContainerSpec, &EndpointSpec)>>,
        addrs_on: &dyn Fn(&str, &str) -> Vec<IpAddr>,
        remote_of: &dyn for<'n> Fn(&'n str) -> &'a [RemoteMember],
        extra: &[(String, IpAddr)],
    ) -> String {
        let mut out = String::from(
            "# Written by netloom; edits above the user marker are replaced.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\n\
             ff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n",
        );
        // With a domain name the fully qualified name comes first, as
        // Docker writes it (`hostname -f` reads it from there).
        let mut own_names = Vec::new();
        if let Some(d) = &c.dns.domainname {
            own_names.push(format!("{}.{d}", c.hostname));
        }
        own_names.push(c.hostname.clone());
        if c.name != c.hostname {
            own_names.push(c.name.clone());
        }
        for e in &c.endpoints {
            for ip in addrs_on(&c.name, &e.network) {
                out.push_str(&format!("{ip}\t{}\n", own_names.join(" ")));
            }
        }
        // `extra_hosts` (`--add-host`), in file order before the other
        // containers: the first line naming a host wins, and an extra host is
        // a deliberate override.
        for (name, ip) in extra {
            out.push_str(&format!("{ip}\t{name}\n"));
        }
        // Links: one way, to the target's address on a network both share.
        let mut lines: Vec<(IpAddr, Vec<String>)> = Vec::new();
        for (target, alias) in &c.links {
            let Some(t) = by_name.get(target.as_str()) else {
                continue;
            };
            let t = crate::core::spec::resolve_shared(t, by_name);
            let shared = c
                .endpoints
                .iter()
                .find(|e| t.endpoints.iter().any(|o| o.network == e.network));
            let Some(e) = shared else { continue };
            let ips = addrs_on(&t.name, &e.network);
            let mut names = vec![target.clone()];
            names.extend(alias.iter().cloned());
            lines.extend(ips.iter().map(|ip| (*ip, names.clone())));
        }
        // User-defined networks: every other member, both ways.
        let mut dns_only: Vec<String> = Vec::new();
        for e in &c.endpoints {
            if e.network == DEFAULT_NETWORK {
                continue;
            }
            let Some(net) = networks.get(&e.network) else {
                continue;
            };
            let list = members
                .get(net.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let size = list.len() + remote_of(&net.name).len();
            if net.dns && size > HOSTS_FILE_MAX_MEMBERS {
                dns_only.push(format!(
                    "# The {size} members of network `{}` are resolved by netloom's DNS on {} (netloom watch).\n",
                    net.name,
                    net.gateway
                ));
                continue;
            }
            for (other, oe) in list {
                if other.name == c.name {
                    continue;
                }
                let ips = addrs_on(&other.name, &net.name);
                let mut names = vec![other.name.clone(), format!("{}.{}", other.name, net.name)];
                for a in &oe.aliases {
                    names.push(a.clone());
                }
                lines.extend(ips.iter().map(|ip| (*ip, names.clone())));
            }
            // Cluster networks: the members on other hosts too.
            for m in remote_of(&net.name) {
                let mut names = vec![m.name.clone(), format!("{}.{}", m.name, net.name)];
                names.extend(m.aliases.iter().cloned());
                let ips = std::iter::once(IpAddr::V4(m.ipv4)).chain(m.ipv6.map(IpAddr::V6));
                lines.extend(ips.map(|ip| (ip, names.clone())));
            }
        }
        // One line per address: a linked container that is also on a shared
        // network (or several aliases of one address) gets its names merged,
        // not a second line for the same address.
        lines.sort();
        let mut merged: Vec<(IpAddr, Vec<String>)> = Vec::with_capacity(lines.len());
        for (ip, names) in lines {
            match merged.last_mut() {
                Some((last, have)) if *last == ip => {
                    for n in names {
                        if !have.contains(&n) {
                            have.push(n);
                        }
                    }
                }
                _ => merged.push((ip, names)),
            }
        }
        for (ip, names) in merged {
            out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
        for line in dns_only {
            out.push_str(&line);
        }
        out.push_str(USER_MARKER);
        out.push('\n');
        out
    }

    /// Resolves `text`'s names the way `resolve` does and checks every
    /// container's file, through the block and through the general
    /// merge, against [`reference`]. Returns how many files took the
    /// block.
    fn check(text: &str, remote: &BTreeMap<String, Vec<RemoteMember>>) -> usize {
        let spec =
            crate::core::spec::load("t.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let alloc = ipam::allocate(&spec, &Allocations::default()).expect("allocates");
        let used: HashSet<&str> = spec
            .containers
            .iter()
            .flat_map(|c| c.endpoints.iter().map(|e| e.network.as_str()))
            .collect();
        let networks: BTreeMap<String, NetworkSpec> = spec
            .networks
            .iter()
            .filter(|(n, _)| *n != DEFAULT_NETWORK || used.contains(n.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let by_name: HashMap<&str, &ContainerSpec> = spec
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let mut members: Members = HashMap::new();
        for c in &spec.containers {
            for e in &c.endpoints {
                members.entry(e.network.as_str()).or_default().push((c, e));
            }
        }
        let remote_of = |n: &str| remote.get(n).map(Vec::as_slice).unwrap_or(&[]);
        let tables = HostsTables::new(&networks, &members, &by_name, &alloc, &remote_of);
        let addrs = |c: &str, net: &str| addrs_on(&alloc, c, net);
        let mut through_block = 0;
        for c in &spec.containers {
            let extra = extra_hosts(c, &networks);
            let want = reference(c, &by_name, &networks, &members, &addrs, &remote_of, &extra);
            let (general, block) = tables.render(c, &extra, false);
            assert!(!block);
            assert_eq!(general, want, "general merge, {}\n{text}", c.name);
            let (file, block) = tables.render(c, &extra, true);
            assert_eq!(file, want, "block: {block}, {}\n{text}", c.name);
            through_block += usize::from(block);
        }
        through_block
    }

    /// `n` containers spread over `nets` networks of the DNS-enabled
    /// kind, as in the scale benchmarks.
    fn spread(n: usize, nets: usize, dns: bool) -> String {
        let mut t = String::new();
        for k in 0..nets {
            t += &format!("[networks.n{k}]\nsubnet = \"10.{k}.0.0/16\"\ndns = {dns}\n");
        }
        for i in 0..n {
            t += &format!("[containers.c{i}]\nnetworks = [\"n{}\"]\n", i % nets);
        }
        t
    }

    fn remote(name: &str, ipv4: &str, ipv6: Option<&str>, aliases: &[&str]) -> RemoteMember {
        RemoteMember {
            name: name.into(),
            host: "other".into(),
            underlay: "192.0.2.9".parse().expect("address"),
            ipv4: ipv4.parse().expect("address"),
            ipv6: ipv6.map(|a| a.parse().expect("address")),
            mac: [2, 0, 0, 0, 0, 9],
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn one_network_per_container_takes_the_block() {
        assert_eq!(check(&spread(300, 3, true), &BTreeMap::new()), 300);
    }

    #[test]
    fn the_dns_cut_off_is_the_same_both_ways() {
        // n0: 257 members, past the cut-off; n1: small. c0 is on both.
        let mut t = spread(257, 1, true);
        t += "[networks.small]\nsubnet = \"10.9.0.0/24\"\nsubnet6 = \"fd00:9::/64\"\n";
        t = t.replacen(
            "[containers.c0]\nnetworks = [\"n0\"]",
            "[containers.c0]\nnetworks = [\"n0\", \"small\"]",
            1,
        );
        t += "[containers.s1]\nnetworks = [\"small\", \"n0\"]\n[containers.s2]\nnetworks = [\"small\"]\n";
        assert!(check(&t, &BTreeMap::new()) > 0);
        // Past the cut-off only by counting members on other hosts; and
        // a network without DNS is listed whatever its size.
        let mut t = spread(250, 1, true);
        t += "[networks.nodns]\nsubnet = \"10.8.0.0/16\"\ndns = false\n";
        for i in 0..300 {
            t += &format!("[containers.d{i}]\nnetworks = [\"nodns\"]\n");
        }
        let far: Vec<RemoteMember> = (0..7)
            .map(|i| remote(&format!("r{i}"), &format!("10.0.9.{i}"), None, &[]))
            .collect();
        let mut remote_members = BTreeMap::from([("n0".to_string(), far)]);
        assert_eq!(
            check(&t, &remote_members),
            300,
            "the DNS-less network is listed"
        );
        remote_members.insert("n0".into(), Vec::new());
        assert_eq!(check(&t, &remote_members), 550);
    }

    #[test]
    fn remote_members_with_a_local_address_are_merged() {
        let t = "[networks.n]\nsubnet = \"10.1.0.0/24\"\nsubnet6 = \"fd00:1::/64\"\n\
                 [containers.a]\nnetworks = [\"n\"]\n[containers.b]\nnetworks = [\"n\"]\n";
        // b has 10.1.0.3: a remote member claiming it too makes one line.
        let clash = BTreeMap::from([(
            "n".to_string(),
            vec![
                remote("b", "10.1.0.3", Some("fd00:1::9"), &["bee"]),
                remote("far", "10.1.0.40", None, &["far"]),
            ],
        )]);
        assert_eq!(check(t, &clash), 0, "addresses shared: no block");
        let apart = BTreeMap::from([(
            "n".to_string(),
            vec![remote("far", "10.1.0.40", Some("fd00:1::40"), &["far"])],
        )]);
        assert_eq!(check(t, &apart), 2);
    }

    /// One generated network: dual stack, DNS, members on other hosts
    /// (name, last address byte, IPv6, alias; picked from small pools so
    /// that names and addresses collide with local ones).
    #[derive(Clone, Debug)]
    struct GenNet {
        ipv6: bool,
        dns: bool,
        remote: Vec<(usize, u8, bool, Option<usize>)>,
    }

    /// One generated container.
    #[derive(Clone, Debug)]
    struct GenContainer {
        /// Indices into the networks, the last index being `bridge`.
        nets: Vec<usize>,
        /// Alias pool index per network, when it has one.
        aliases: Vec<Option<usize>>,
        /// Shares the namespace of an earlier container instead.
        shares: Option<usize>,
        /// (target, alias pool index): kept only where valid.
        links: Vec<(usize, Option<usize>)>,
        hostname: Option<usize>,
        domain: bool,
        extra: Vec<(usize, u8)>,
    }

    const POOL: [&str; 6] = ["web", "db", "c0", "c1", "api", "x.y"];

    fn gen_net() -> impl Strategy<Value = GenNet> {
        let remote = (
            0..POOL.len(),
            2u8..8,
            any::<bool>(),
            proptest::option::of(0..POOL.len()),
        );
        (
            any::<bool>(),
            prop::bool::weighted(0.8),
            prop::collection::vec(remote, 0..3),
        )
            .prop_map(|(ipv6, dns, remote)| GenNet { ipv6, dns, remote })
    }

    fn gen_container() -> impl Strategy<Value = GenContainer> {
        (
            prop::collection::vec(0usize..4, 1..3),
            prop::collection::vec(proptest::option::of(0..POOL.len()), 3),
            prop::option::weighted(0.15, 0usize..8),
            prop::collection::vec((0usize..8, proptest::option::of(0..POOL.len())), 0..3),
            proptest::option::of(0..POOL.len()),
            any::<bool>(),
            prop::collection::vec((0..POOL.len(), 2u8..8), 0..2),
        )
            .prop_map(|(nets, aliases, shares, links, hostname, domain, extra)| {
                GenContainer {
                    nets,
                    aliases,
                    shares,
                    links,
                    hostname,
                    domain,
                    extra,
                }
            })
    }

    /// The TOML of a generated host: only what validation accepts (links
    /// to containers that share a network, `container:` modes pointing
    /// back, distinct networks per container).
    fn render(
        nets: &[GenNet],
        cs: &[GenContainer],
    ) -> (String, BTreeMap<String, Vec<RemoteMember>>) {
        let name_of = |k: usize| {
            if k >= nets.len() {
                DEFAULT_NETWORK.to_string()
            } else {
                format!("n{k}")
            }
        };
        let mut t = String::new();
        let mut far = BTreeMap::new();
        for (k, n) in nets.iter().enumerate() {
            t += &format!(
                "[networks.n{k}]\nsubnet = \"10.{k}.0.0/24\"\ndns = {}\n",
                n.dns
            );
            if n.ipv6 {
                t += &format!("subnet6 = \"fd00:{k}::/64\"\n");
            }
            let members = n
                .remote
                .iter()
                .map(|(name, last, v6, alias)| {
                    let addr6 = format!("fd00:{k}::{last}");
                    remote(
                        POOL[*name],
                        &format!("10.{k}.0.{last}"),
                        v6.then_some(addr6.as_str()),
                        &alias.map(|a| POOL[a]).into_iter().collect::<Vec<_>>(),
                    )
                })
                .collect();
            far.insert(format!("n{k}"), members);
        }
        // The networks each container's namespace is on, after `container:`.
        let mut on: Vec<Vec<usize>> = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            t += &format!("[containers.c{i}]\n");
            if let Some(j) = c.shares.filter(|j| *j < i) {
                t += &format!("network_mode = \"container:c{j}\"\n");
                let shared = on[j].clone();
                on.push(shared);
                continue;
            }
            let mut mine: Vec<usize> = Vec::new();
            for k in &c.nets {
                let k = (*k).min(nets.len());
                if !mine.contains(&k) {
                    mine.push(k);
                }
            }
            let eps: Vec<String> = mine
                .iter()
                .zip(&c.aliases)
                .map(|(k, a)| match a {
                    Some(a) => format!("{} = {{ aliases = [\"{}\"] }}", name_of(*k), POOL[*a]),
                    None => format!("{} = {{}}", name_of(*k)),
                })
                .collect();
            t += &format!("networks = {{ {} }}\n", eps.join(", "));
            let links: Vec<String> = c
                .links
                .iter()
                .filter(|(j, _)| *j < i && on[*j].iter().any(|k| mine.contains(k)))
                .map(|(j, a)| match a {
                    Some(a) => format!("\"c{j}:{}\"", POOL[*a]),
                    None => format!("\"c{j}\""),
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !links.is_empty() {
                t += &format!("links = [{}]\n", links.join(", "));
            }
            if let Some(h) = c.hostname {
                t += &format!("hostname = \"{}\"\n", POOL[h]);
            }
            if c.domain {
                t += "domainname = \"corp.example\"\n";
            }
            if !c.extra.is_empty() {
                let e: Vec<String> = c
                    .extra
                    .iter()
                    .map(|(n, last)| format!("\"{}:10.0.0.{last}\"", POOL[*n]))
                    .collect();
                t += &format!("extra_hosts = [{}]\n", e.join(", "));
            }
            on.push(mine);
        }
        (t, far)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Through the block or the general merge, every generated
        /// container's file is the one the original algorithm wrote.
        #[test]
        fn files_match_the_original_algorithm(
            nets in prop::collection::vec(gen_net(), 1..4),
            cs in prop::collection::vec(gen_container(), 1..9),
        ) {
            let (text, remote) = render(&nets, &cs);
            check(&text, &remote);
        }
    }
}
