//! Cluster mode on this host: the last desired state kept on disk (so an
//! agent restarted while etcd is away still serves) and the underlay.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::core::store::DesiredDoc;
use crate::host::netlink;
use crate::host::state::write_atomic;

/// The desired state an agent last saw, with its revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub revision: i64,
    pub doc: DesiredDoc,
}

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster-desired.json")
}

/// Keeps `c` in the state dir (atomically: a crash leaves the old or the
/// new copy, never half of one).
pub fn save_cache(state_dir: &Path, c: &Cached) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let text = serde_json::to_string(c).context("serialize the desired state")?;
    write_atomic(&cache_path(state_dir), text.as_bytes())
}

/// The kept desired state, if any.
pub fn load_cache(state_dir: &Path) -> Result<Option<Cached>> {
    let p = cache_path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parse {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// MTU of the interface holding the underlay address `addr`.
pub async fn underlay_mtu(addr: Ipv4Addr) -> Result<u32> {
    let nl = netlink::open_host()?;
    let addrs = nl.addresses().await?;
    let index = addrs
        .iter()
        .find(|a| a.ip == IpAddr::V4(addr))
        .map(|a| a.index)
        .ok_or_else(|| {
            anyhow!("the underlay address {addr} of this host is on no interface; check [hosts] and --host")
        })?;
    let links = nl.links().await?;
    links
        .iter()
        .find(|l| l.index == index)
        .map(|l| l.mtu)
        .ok_or_else(|| anyhow!("the interface of {addr} vanished"))
}
