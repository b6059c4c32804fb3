//! The TOML file: serde types for every key of the README's "The file".
//!
//! Values that a semantic check may complain about are kept as
//! [`toml::Spanned`] so that every error points at `FILE:LINE:COL` of the
//! offending value. Validation lives in [`crate::core::spec`]; this module only
//! describes the shape of the file (and, through schemars, its JSON Schema).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "netloom configuration")]
pub struct ConfigFile {
    /// Host-wide settings; all optional.
    #[serde(default)]
    pub settings: Settings,
    /// Bridge networks by name. `bridge` is Docker's default network and is
    /// implicit (docker0, 172.17.0.0/16) when a container uses it.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, NetworkConfig>")]
    pub networks: Ordered<NetworkConfig>,
    /// Containers (network namespaces) by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ContainerConfig>")]
    pub containers: Ordered<ContainerConfig>,
    /// Cluster mode: where the desired state is stored.
    #[schemars(with = "Option<ClusterConfig>")]
    pub cluster: Option<Spanned<ClusterConfig>>,
    /// Cluster mode: the hosts by name, each with its underlay address.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, HostConfig>")]
    pub hosts: Ordered<HostConfig>,
}

/// `[cluster]`: the etcd cluster that holds the desired state.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints, e.g. `["http://10.0.0.1:2379"]` (or `NETLOOM_ETCD`;
    /// `--etcd` overrides).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub etcd: Vec<Spanned<String>>,
    /// Key prefix under which netloom keeps its keys (default `/netloom`).
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Spanned<String>>,
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// Client certificate (PEM) presented to etcd.
    #[schemars(with = "Option<String>")]
    pub cert_file: Option<Spanned<String>>,
    /// Key (PEM) of the client certificate.
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
}

/// `[hosts.NAME]`: one machine of the cluster.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Underlay IPv4 address of the host: the local end of its VXLAN tunnels.
    #[schemars(with = "String")]
    pub address: Option<Spanned<String>>,
}

/// `[settings]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory for IPAM and ownership records (default `/var/lib/netloom`,
    /// or `NETLOOM_STATE_DIR`).
    #[schemars(with = "Option<String>")]
    pub state_dir: Option<Spanned<String>>,
    /// Host ports for auto-published ports, `FIRST-LAST` (default `49153-65535`).
    #[schemars(with = "Option<String>")]
    pub port_range: Option<Spanned<String>>,
    /// Upstream DNS servers for names the embedded DNS does not know
    /// (default: the nameservers of the host's /etc/resolv.conf).
    #[schemars(with = "Option<Vec<String>>")]
    pub upstream_dns: Option<Vec<Spanned<String>>>,
}

/// `[networks.NAME]`: a Linux bridge with a subnet and a gateway.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Linux bridge name, at most 15 bytes (default: `docker0` for `bridge`,
    /// else `br-` + a stable hash of the network name).
    #[schemars(with = "Option<String>")]
    pub bridge: Option<Spanned<String>>,
    /// IPv4 subnet in CIDR notation, e.g. `192.168.0.0/16`.
    #[schemars(with = "Option<String>")]
    pub subnet: Option<Spanned<String>>,
    /// Gateway address held by the bridge (default: first host address).
    #[schemars(with = "Option<String>")]
    pub gateway: Option<Spanned<String>>,
    /// Serve the embedded DNS on the gateway (default false for `bridge`,
    /// true for user-defined networks).
    pub dns: Option<bool>,
    /// Masquerade traffic leaving the host (default true).
    pub masquerade: Option<bool>,
    /// No route out, no NAT, no published ports (default false).
    pub internal: Option<bool>,
    /// Inter-container communication within the network (default true).
    pub icc: Option<bool>,
    /// MTU of the bridge and the veths (default 1500).
    #[schemars(with = "Option<u32>")]
    pub mtu: Option<Spanned<i64>>,
    /// Optional IPv6 subnet (dual stack), e.g. `fd00:1::/64`.
    #[schemars(with = "Option<String>")]
    pub subnet6: Option<Spanned<String>>,
    /// `local` (default): a bridge on one host; `cluster`: one L2 segment
    /// across the hosts of the cluster over VXLAN.
    #[schemars(with = "Option<String>")]
    pub scope: Option<Spanned<String>>,
    /// VXLAN network identifier of a cluster network, 1-16777215
    /// (default: allocated by `netloom push` once and kept).
    #[schemars(with = "Option<u32>")]
    pub vni: Option<Spanned<i64>>,
}

/// `[containers.NAME]`: a network namespace attached to networks.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Published ports in `docker run -p` syntax:
    /// `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|udp|sctp]`;
    /// an IPv6 HOST_IP in brackets (`[fd00::1]:8080:80`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub ports: Vec<Spanned<String>>,
    /// `bridge` (default), `none`, `host` or `container:<name>`.
    #[schemars(with = "Option<String>")]
    pub network_mode: Option<Spanned<String>>,
    /// Networks to join, as a list of names or a table of name -> options.
    /// Default `["bridge"]` in bridge mode.
    #[schemars(with = "Option<NetworksSchema>")]
    pub networks: Option<Spanned<Networks>>,
    /// `docker --link NAME[:ALIAS]`, one way.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub links: Vec<Spanned<String>>,
    /// Named namespace in /run/netns (default: the container's name);
    /// created if missing.
    #[schemars(with = "Option<String>")]
    pub netns: Option<Spanned<String>>,
    /// Attach an existing namespace instead (e.g. `/proc/PID/ns/net`);
    /// netloom never deletes it.
    #[schemars(with = "Option<String>")]
    pub netns_path: Option<Spanned<String>>,
    /// Host name written to the container's hosts file (default: its name).
    #[schemars(with = "Option<String>")]
    pub hostname: Option<Spanned<String>>,
    /// Cluster mode: the host (a key of `[hosts]`) the container runs on;
    /// required once the file has `[hosts]`.
    #[schemars(with = "Option<String>")]
    pub host: Option<Spanned<String>>,
    /// Domain name (`docker run --domainname`): the container's own line
    /// in its hosts file reads `IP HOSTNAME.DOMAINNAME HOSTNAME`.
    #[schemars(with = "Option<String>")]
    pub domainname: Option<Spanned<String>>,
    /// Extra hosts-file entries (`docker run --add-host`), each `NAME:IP`
    /// (or `NAME=IP`); IP `host-gateway` stands for the gateway of the
    /// container's first network. The embedded DNS answers them too, for
    /// this container only.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub extra_hosts: Vec<Spanned<String>>,
    /// DNS servers of this container (`docker run --dns`), IP addresses:
    /// they replace the upstream servers in its resolv.conf, and the
    /// embedded DNS forwards this container's queries for names it does
    /// not know to them.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub dns: Vec<Spanned<String>>,
    /// Search domains of its resolv.conf (`docker run --dns-search`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub dns_search: Vec<Spanned<String>>,
    /// Resolver options of its resolv.conf (`docker run --dns-opt`), e.g.
    /// `ndots:2`, `timeout:3`, `rotate`; they override netloom's defaults
    /// (`ndots:0 timeout:1 attempts:2`) of the same name.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub dns_options: Vec<Spanned<String>>,
}

/// Per-network options of a container's endpoint.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Fixed IPv4 address inside the network's subnet.
    #[schemars(with = "Option<String>")]
    pub ip: Option<Spanned<String>>,
    /// Fixed IPv6 address inside the network's `subnet6`.
    #[schemars(with = "Option<String>")]
    pub ip6: Option<Spanned<String>>,
    /// Extra DNS names of the container on this network.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub aliases: Vec<Spanned<String>>,
    /// MAC address (default `02:42:` + the four IPv4 bytes).
    #[schemars(with = "Option<String>")]
    pub mac: Option<Spanned<String>>,
}

/// `networks = [..]` or `networks = { name = { .. } }`, in file order.
#[derive(Debug, Default)]
pub struct Networks(pub Vec<(Spanned<String>, EndpointConfig)>);

/// Schema-only mirror of [`Networks`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // never built: only its schema is used
enum NetworksSchema {
    List(Vec<String>),
    Table(BTreeMap<String, EndpointConfig>),
}

impl<'de> Deserialize<'de> for Networks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Networks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of network names or a table of network -> { ip, ip6, aliases, mac }",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Networks, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    out.push((name, EndpointConfig::default()));
                }
                Ok(Networks(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Networks, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    out.push((name, map.next_value::<EndpointConfig>()?));
                }
                Ok(Networks(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A table whose keys keep their spans and their order in the file.
#[derive(Debug)]
pub struct Ordered<T>(pub Vec<(Spanned<String>, Spanned<T>)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<T> Ordered<T> {
    /// The value under key `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Spanned<T>> {
        self.0
            .iter()
            .find(|(k, _)| k.get_ref() == name)
            .map(|(_, v)| v)
    }
    /// Keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Spanned<T>)> {
        self.0.iter().map(|(k, v)| (k.get_ref().as_str(), v))
    }
    /// Keys with their spans, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &Spanned<String>> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut out: Vec<(Spanned<String>, Spanned<T>)> = Vec::new();
                // A set beside the list keeps the duplicate check linear
                // for files with many thousands of containers.
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<Spanned<String>>()? {
                    let v = map.next_value::<Spanned<T>>()?;
                    if !seen.insert(k.get_ref().clone()) {
                        return Err(de::Error::custom(format!(
                            "duplicate key `{}`",
                            k.get_ref()
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The JSON Schema of the file, as committed in `schemas/netloom.schema.json`.
pub fn schema_json() -> String {
    let mut s = serde_json::to_string_pretty(schema_value()).unwrap_or_default();
    s.push('\n');
    s
}

/// The JSON Schema of the file as a value, built once: the shape check of
/// every load walks it.
pub fn schema_value() -> &'static serde_json::Value {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = schemars::schema_for!(ConfigFile).to_value();
        // Patterns, closed sets and ranges beyond the types' shape.
        crate::core::schema_rules::refine(&mut schema);
        schema
    })
}

/// Where the state directory is when neither the file nor the environment say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netloom";
/// Docker's default range for `-P`.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (49153, 65535);
