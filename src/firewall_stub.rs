use std::collections::BTreeMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proto { Tcp, Udp, Sctp }
impl std::fmt::Display for Proto { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str(match self { Proto::Tcp => "tcp", Proto::Udp => "udp", Proto::Sctp => "sctp" }) } }
impl std::str::FromStr for Proto { type Err = (); fn from_str(s: &str) -> Result<Self, ()> { match s { "tcp" => Ok(Proto::Tcp), "udp" => Ok(Proto::Udp), "sctp" => Ok(Proto::Sctp), _ => Err(()) } } }
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall { pub networks: BTreeMap<String, FwNetwork>, pub ports: BTreeMap<String, FwPort> }
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwNetwork { pub bridge: String, pub subnet: ipnetwork::Ipv4Network, pub masquerade: bool, pub internal: bool, pub icc: bool }
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwPort { pub container: String, pub network: String, pub bridge: String, pub host_ip: Option<std::net::Ipv4Addr>, pub host_port: u16, pub container_ip: std::net::Ipv4Addr, pub container_port: u16, pub count: u16, pub proto: Proto }
pub fn required_sysctls(_fw: &Firewall) -> Vec<(String, String)> { vec![] }
pub fn render(_fw: &Firewall) -> String { String::new() }
pub struct Observed { pub fw: Firewall, pub skeleton_ok: bool }
pub fn observe() -> anyhow::Result<Option<Observed>> { Ok(None) }
pub fn port_counters(_o: &Observed) -> BTreeMap<String, (u64, u64)> { BTreeMap::new() }
pub struct Transaction;
impl Transaction { pub fn is_empty(&self) -> bool { true } pub fn elements_added(&self) -> usize { 0 } pub fn elements_removed(&self) -> usize { 0 } }
pub fn plan_transaction(_d: &Firewall, _o: Option<&Observed>) -> Transaction { Transaction }
pub fn apply(_t: &Transaction) -> anyhow::Result<()> { Ok(()) }
pub fn delete_tables() -> anyhow::Result<()> { Ok(()) }
