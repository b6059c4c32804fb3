//! Cluster mode (the README's "Cluster mode"): the file's `[cluster]`,
//! `[hosts]`, `scope`, `vni` and `host` keys, their checks, the
//! cluster-wide allocations that `netloom push` keeps in etcd, and the
//! share of one host.
//!
//! Everything here is pure. The share of a host
//! ([`share`](crate::core::share::share)) is an ordinary
//! [`Spec`](crate::core::spec::Spec) (its containers and the networks they
//! use, with the addresses of cluster networks fixed by the cluster
//! allocation) plus a [`Share`] describing the rest of the cluster (VXLAN
//! peers and remote members), so that the single-host engine resolves,
//! plans and applies it unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::core::config::ConfigFile;
use crate::core::diag::{Diag, suggest};

/// Key prefix in etcd when `[cluster] prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/netloom";
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds to a frame (outer IP 20, UDP 8, VXLAN 8,
/// inner Ethernet 14): a cluster network's default MTU is the underlay's
/// minus this.
pub const VXLAN_OVERHEAD: u32 = 50;
/// First VNI `push` hands out when the file names none.
pub const FIRST_AUTO_VNI: u32 = 4096;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// The cluster part of a validated file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// etcd endpoints from the file (the command line or `NETLOOM_ETCD`
    /// override them).
    pub etcd: Vec<String>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// TLS files for etcd.
    pub tls: TlsFiles,
    /// Host name -> underlay address.
    pub hosts: BTreeMap<String, Ipv4Addr>,
    /// The networks with `scope = "cluster"`.
    pub networks: BTreeMap<String, ClusterNet>,
    /// Container -> host.
    pub placement: BTreeMap<String, String>,
    /// Set only in the spec of one host's share.
    pub share: Option<Share>,
}

/// Client certificates for etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// CA bundle that signs the etcd servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// This client's certificate.
    pub cert_file: Option<PathBuf>,
    /// This client's private key.
    pub key_file: Option<PathBuf>,
}

/// A network with `scope = "cluster"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNet {
    /// Fixed VNI from the file; else allocated by `push`.
    pub vni: Option<u32>,
    /// Whether the file sets `mtu` (else: the underlay's MTU minus
    /// [`VXLAN_OVERHEAD`]).
    pub mtu_set: bool,
}

/// The rest of the cluster as one host needs to see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// This host's name.
    pub host: String,
    /// Its underlay address.
    pub address: Ipv4Addr,
    /// By cluster network that has a member here.
    pub vxlans: BTreeMap<String, VxlanShare>,
}

/// One cluster network on one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanShare {
    /// The network's VNI, from the file or the cluster allocation.
    pub vni: u32,
    /// Underlay addresses of the other hosts with members of the network.
    pub peers: BTreeSet<Ipv4Addr>,
    /// Members of the network that run on other hosts.
    pub remote: Vec<RemoteMember>,
}

/// A member of a cluster network that runs on another host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMember {
    /// The container's name.
    pub name: String,
    /// The host it is placed on.
    pub host: String,
    /// Underlay address of its host.
    pub underlay: Ipv4Addr,
    /// Its address on the network, from the cluster allocation.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    pub ipv6: Option<Ipv6Addr>,
    /// Its MAC on the network: the file's, else derived from `ipv4` as
    /// Docker does.
    pub mac: [u8; 6],
    /// Its DNS aliases on the network.
    pub aliases: Vec<String>,
}

/// Host names follow the rule of network and container names
/// (`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`); repeated here because the
/// validator imports this module, not the other way round.
fn valid_host_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn sp<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

/// What the cluster checks need of a validated container.
pub(crate) struct Placed<'a> {
    pub name: &'a str,
    /// Its networks, without the default network (each host's own, like
    /// docker0).
    pub networks: Vec<&'a str>,
    /// `network_mode = "container:NAME"`.
    pub shares: Option<&'a str>,
    /// Link targets.
    pub links: Vec<&'a str>,
}

/// Checks the cluster keys of the file against the validated networks
/// (`networks`: their names) and containers; `None` when the file has no
/// cluster keys at all.
pub(crate) fn check(
    f: &ConfigFile,
    networks: &BTreeSet<&str>,
    containers: &[Placed],
    diags: &mut Vec<Diag>,
) -> Option<ClusterSpec> {
    let mut err = |span: Range<usize>, msg: String| diags.push(Diag::new(span, msg));
    let any_scope = f.networks.iter().any(|(_, n)| n.get_ref().scope.is_some());
    let any_host = f.containers.iter().any(|(_, c)| c.get_ref().host.is_some());
    if f.cluster.is_none() && f.hosts.0.is_empty() && !any_scope && !any_host {
        return None;
    }
    let mut out = ClusterSpec {
        prefix: DEFAULT_PREFIX.into(),
        ..Default::default()
    };

    if let Some(c) = &f.cluster {
        let c = c.get_ref();
        for e in &c.etcd {
            let u = e.get_ref();
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains('/') => out.etcd.push(u.clone()),
                _ => err(
                    sp(e),
                    format!("etcd endpoint `{u}` must be http://HOST:PORT or https://HOST:PORT"),
                ),
            }
        }
        if let Some(p) = &c.prefix {
            let v = p.get_ref().trim_end_matches('/');
            if !p.get_ref().starts_with('/') || v.is_empty() || v.contains("//") {
                err(
                    sp(p),
                    format!(
                        "prefix `{}` must start with `/` and name a key path, e.g. \"/netloom\"",
                        p.get_ref()
                    ),
                );
            } else {
                out.prefix = v.to_string();
            }
        }
        let file = |s: &Option<Spanned<String>>, err: &mut dyn FnMut(Range<usize>, String)| {
            s.as_ref().and_then(|s| {
                if s.get_ref().starts_with('/') {
                    Some(PathBuf::from(s.get_ref()))
                } else {
                    err(sp(s), format!("`{}` must be an absolute path", s.get_ref()));
                    None
                }
            })
        };
        out.tls.ca_file = file(&c.ca_file, &mut err);
        out.tls.cert_file = file(&c.cert_file, &mut err);
        out.tls.key_file = file(&c.key_file, &mut err);
        if c.cert_file.is_some() != c.key_file.is_some() {
            let s = c.cert_file.as_ref().or(c.key_file.as_ref()).map(sp);
            err(
                s.unwrap_or(0..0),
                "cert_file and key_file go together".into(),
            );
        }
    }

    // Hosts.
    let mut by_addr: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (key, h) in f.hosts.0.iter() {
        let name = key.get_ref();
        if !valid_host_name(name) {
            err(
                sp(key),
                format!(
                    "invalid host name `{name}`: names match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}"
                ),
            );
        }
        match &h.get_ref().address {
            None => err(
                sp(h),
                format!("host `{name}` needs its underlay address, e.g. address = \"10.0.0.11\""),
            ),
            Some(a) => match a.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => err(
                    sp(a),
                    format!("address {ip} of host `{name}` is not a unicast address"),
                ),
                Ok(ip) => {
                    if let Some(other) = by_addr.insert(ip, name.clone()) {
                        err(
                            sp(a),
                            format!("address {ip} of host `{name}` is already host `{other}`'s"),
                        );
                    }
                    out.hosts.insert(name.clone(), ip);
                }
                Err(_) => err(sp(a), format!("`{}` is not an IPv4 address", a.get_ref())),
            },
        }
    }

    // Networks: scope and VNI.
    let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
    for (name, n) in f.networks.iter() {
        let n = n.get_ref();
        let cluster = match &n.scope {
            None => false,
            Some(s) => match s.get_ref().as_str() {
                "local" => false,
                "cluster" => {
                    if f.hosts.0.is_empty() {
                        err(
                            sp(s),
                            format!(
                                "network `{name}` has scope \"cluster\" but the file declares no [hosts.NAME]"
                            ),
                        );
                    }
                    if name == "bridge" {
                        err(
                            sp(s),
                            "the default network `bridge` is local to each host; use a user-defined network for the cluster".into(),
                        );
                    }
                    true
                }
                other => {
                    err(
                        sp(s),
                        format!("unknown scope `{other}` (expected \"local\" or \"cluster\")"),
                    );
                    false
                }
            },
        };
        let vni = n.vni.as_ref().and_then(|v| {
            let x = *v.get_ref();
            if !cluster {
                err(
                    sp(v),
                    format!("vni applies to cluster networks only; add scope = \"cluster\" to network `{name}`"),
                );
                return None;
            }
            if !(1..=i64::from(MAX_VNI)).contains(&x) {
                err(sp(v), format!("vni {x} is out of range 1-{MAX_VNI}"));
                return None;
            }
            let x = x as u32;
            if let Some(other) = vnis.insert(x, name.to_string()) {
                err(
                    sp(v),
                    format!("vni {x} of network `{name}` is already network `{other}`'s"),
                );
            }
            Some(x)
        });
        if cluster && networks.contains(name) {
            out.networks.insert(
                name.to_string(),
                ClusterNet {
                    vni,
                    mtu_set: n.mtu.is_some(),
                },
            );
        }
    }

    // Containers: placement.
    let has_hosts = !f.hosts.0.is_empty();
    for (key, c) in f.containers.0.iter() {
        let name = key.get_ref();
        match &c.get_ref().host {
            None if has_hosts => err(
                sp(key),
                format!("container `{name}` needs host = \"NAME\": the file declares [hosts]"),
            ),
            None => {}
            Some(h) => {
                if out.hosts.contains_key(h.get_ref()) {
                    out.placement.insert(name.clone(), h.get_ref().clone());
                } else if f.hosts.get(h.get_ref()).is_none() {
                    let hint = suggest(h.get_ref(), f.hosts.iter().map(|(k, _)| k))
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    err(sp(h), format!("unknown host `{}`{hint}", h.get_ref()));
                }
            }
        }
    }

    // A local network lives on one host; the default network is every
    // host's own (like docker0), so it is exempt.
    let span_of_host = |c: &str| -> Range<usize> {
        f.containers
            .get(c)
            .and_then(|x| x.get_ref().host.as_ref().map(sp))
            .unwrap_or(0..0)
    };
    let mut local_home: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let by_name: BTreeMap<&str, &Placed> = containers.iter().map(|c| (c.name, c)).collect();
    for c in containers {
        let Some(host) = out.placement.get(c.name) else {
            continue;
        };
        for &net in &c.networks {
            if out.networks.contains_key(net) {
                continue;
            }
            match local_home.get(net) {
                Some((h, other)) if *h != host.as_str() => err(
                    span_of_host(c.name),
                    format!(
                        "network `{net}` is local (scope \"local\") and already used on host `{h}` by container `{other}`; make it scope = \"cluster\" or keep its containers on one host"
                    ),
                ),
                Some(_) => {}
                None => {
                    local_home.insert(net, (host, c.name));
                }
            }
        }
        // Sharing a namespace or linking needs the same host (links write
        // hosts entries, which cross hosts only through cluster networks).
        if let Some(t) = c.shares {
            if out.placement.get(t).is_some_and(|th| th != host) {
                err(
                    span_of_host(c.name),
                    format!(
                        "container `{}` shares the namespace of `{t}`, which runs on another host",
                        c.name
                    ),
                );
            }
        }
        for &t in &c.links {
            let Some(th) = out.placement.get(t) else {
                continue;
            };
            let shared_cluster = by_name.get(t).is_some_and(|tc| {
                tc.networks
                    .iter()
                    .any(|o| out.networks.contains_key(*o) && c.networks.contains(o))
            });
            if th != host && !shared_cluster {
                err(
                    span_of_host(c.name),
                    format!(
                        "container `{}` links to `{t}` on host `{th}`, with no cluster network in common",
                        c.name
                    ),
                );
            }
        }
    }
    Some(out)
}

/// The VXLAN device of a cluster network: `vx-` + 12 hex digits, stable
/// per network (like the bridge's `br-` name).
pub fn vxlan_name(network: &str) -> String {
    format!(
        "vx-{:012x}",
        crate::core::hash::fnv64(format!("vxlan\0{network}").as_bytes()) >> 16
    )
}
