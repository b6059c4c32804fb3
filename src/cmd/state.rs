//! `state rebuild`: reconstruct the state record from the kernel; `state
//! show`: print it readably.
//!
//! What netloom owns is found from the marks on its objects (interface
//! aliases, namespace marks, file headers, the nft table's comment), the
//! allocations from what those objects hold: each endpoint's addresses and,
//! with the file at hand, the host ports auto-published ports were given.
//! The record of the last apply (`applied`) cannot be rebuilt: the next
//! `apply` plans against the host as it is and records it again.

use anyhow::Result;

use crate::cmd::cli::Cli;
use crate::cmd::steps::{Exit, open_state, require_root, state_dir};
use crate::core::ipam::{Allocations, port_key};
use crate::core::model::State;
use crate::core::spec::{self, Spec};
use crate::host::observe;

/// `netloom state rebuild`.
pub async fn rebuild(cli: &Cli) -> Result<Exit> {
    require_root("state rebuild")?;
    let spec = std::fs::read_to_string(&cli.config)
        .ok()
        .and_then(|t| spec::load(&cli.config.display().to_string(), &t).ok());
    let dir = state_dir(cli, spec.as_ref());
    let sd = open_state(&dir)?;
    let mut record = sd.from_marks();
    let observation = observe::observe(&State::default(), &record).await?;
    let st = &observation.state;
    record.owned.bridges = st.bridges.values().map(|b| b.name.clone()).collect();
    record.allocations = allocations_from(st, spec.as_ref());
    let path = sd.record_path();
    if path.exists() {
        // Keep the damaged one for a post-mortem: never overwritten later.
        let aside = dir.join(format!(
            "state.json.damaged-{}",
            crate::host::state::unix_now()
        ));
        if std::fs::rename(&path, &aside).is_ok() {
            eprintln!("netloom: moved the old record to {}", aside.display());
        }
    }
    sd.save(&record)?;
    let a = &record.allocations;
    eprintln!(
        "netloom: rebuilt {} from the kernel: {} bridge(s), {} namespace(s), {} file(s), {} address(es), {} auto-published port(s){}. Run `netloom plan` to see what differs from the file.",
        path.display(),
        record.owned.bridges.len(),
        record.owned.netns.len(),
        record.owned.files.len(),
        a.ipv4.values().map(|m| m.len()).sum::<usize>()
            + a.ipv6.values().map(|m| m.len()).sum::<usize>(),
        a.ports.len(),
        if spec.is_none() {
            " (no readable file: auto-published ports not recovered)"
        } else {
            ""
        }
    );
    Ok(Exit::Ok)
}

/// `netloom state show`: the record, every field, pretty-printed. Reads
/// the file without the lock (a snapshot; it is only ever replaced
/// whole) and without adopting marks, so it needs no root.
pub fn show(cli: &Cli) -> Result<Exit> {
    let spec = std::fs::read_to_string(&cli.config)
        .ok()
        .and_then(|t| spec::load(&cli.config.display().to_string(), &t).ok());
    let dir = state_dir(cli, spec.as_ref());
    let record = crate::host::state::read_record(&dir)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(Exit::Ok)
}

/// Allocations as the kernel holds them: the address of each endpoint, and
/// the host port of each auto-published port of the file.
fn allocations_from(st: &State, spec: Option<&Spec>) -> Allocations {
    let mut a = Allocations::default();
    for e in st.endpoints.values() {
        for addr in &e.addrs {
            let ip = addr.split('/').next().unwrap_or_default();
            if let Ok(v4) = ip.parse() {
                a.ipv4
                    .entry(e.network.clone())
                    .or_default()
                    .insert(e.container.clone(), v4);
            } else if let Ok(v6) = ip.parse() {
                a.ipv6
                    .entry(e.network.clone())
                    .or_default()
                    .insert(e.container.clone(), v6);
            }
        }
    }
    if let (Some(spec), Some(fw)) = (spec, &st.firewall) {
        for c in &spec.containers {
            for (raw, p) in c.ports.iter().filter(|(_, p)| p.host.is_none()) {
                let found = fw.fw.ports.values().find(|fp| {
                    fp.container == c.name
                        && fp.container_port == p.container.start
                        && fp.proto == p.proto
                        && fp.host_ip == p.host_ip
                });
                if let Some(fp) = found {
                    a.ports.insert(port_key(&c.name, raw), fp.host_port);
                }
            }
        }
    }
    a
}
