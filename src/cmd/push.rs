//! `netloom push`: validate a cluster file, allocate what is cluster-wide
//! and write the desired state to etcd in one guarded transaction; and
//! `netloom status --cluster`.

use std::io::IsTerminal;

use anyhow::{Result, anyhow};

use crate::cmd::cli::Cli;
use crate::cmd::cluster_agent::endpoints;
use crate::cmd::steps::{Exit, load};
use crate::core::model::{self, HostInfo, State};
use crate::core::plan;
use crate::core::render::{self, Style};
use crate::core::share::{self, ClusterAllocations};
use crate::core::spec::{self, Spec};
use crate::core::store::{self, DesiredDoc};
use crate::host::etcd::{Store, Written};

/// Attempts before a push gives up on concurrent writers.
const ATTEMPTS: usize = 5;
/// The underlay MTU assumed when planning a host's share from here (the
/// agent uses its host's real one; both sides of the diff use the same).
const PLANNING_MTU: u32 = 1500;

pub async fn push(cli: &Cli, dry_run: bool) -> Result<Exit> {
    let Some(l) = load(cli)? else {
        return Ok(Exit::Error);
    };
    let Some(cl) = l.spec.cluster.clone() else {
        return Err(anyhow!(
            "{} describes no cluster ([cluster], [hosts]): use `netloom apply` on a single host",
            l.path.display()
        ));
    };
    let file = String::from_utf8(crate::cmd::steps::read_config(&l.path)?)
        .map_err(|_| anyhow!("{} is not UTF-8", l.path.display()))?;
    let store = Store::connect(&endpoints(cli, Some(&cl)), &cl.prefix, &cl.tls).await?;
    for attempt in 1..=ATTEMPTS {
        let read = store.read().await?;
        let prev = read
            .doc
            .as_ref()
            .map(|d| d.allocations.clone())
            .unwrap_or_default();
        let alloc = share::allocate(&l.spec, &prev).map_err(|e| anyhow!("{e}"))?;
        let old_spec = read.doc.as_ref().and_then(|d| {
            spec::load(&d.source, &d.file)
                .ok()
                .filter(|s| s.cluster.is_some())
        });
        let changed = print_per_host(old_spec.as_ref(), &prev, &l.spec, &alloc);
        if dry_run {
            return Ok(Exit::Ok);
        }
        if !changed && read.doc.as_ref().is_some_and(|d| d.file == file) {
            eprintln!(
                "The desired state in etcd is already this file (revision {}).",
                read.revision
            );
            return Ok(Exit::Ok);
        }
        let doc = DesiredDoc {
            format: store::FORMAT,
            source: l.path.display().to_string(),
            file: file.clone(),
            allocations: alloc,
            pushed_at: crate::cmd::watch::now_rfc3339(),
        };
        match store.write_if(&doc, read.revision).await? {
            Written::Committed(rev) => {
                eprintln!(
                    "Pushed revision {rev} to {} (the agents apply it now).",
                    store::desired_key(store.prefix())
                );
                return Ok(Exit::Ok);
            }
            Written::Conflict => {
                eprintln!(
                    "Another push changed the desired state since revision {} was read; reading it again (attempt {attempt} of {ATTEMPTS}).",
                    read.revision
                );
            }
        }
    }
    Err(anyhow!(
        "the desired state kept changing under this push ({ATTEMPTS} attempts); nothing was written"
    ))
}

/// The resolved share of `host` (an empty state when it has none).
fn host_state(spec: Option<&Spec>, alloc: &ClusterAllocations, host: &str) -> State {
    let Some(spec) = spec else {
        return State::default();
    };
    let Ok(s) = share::share(spec, host, alloc, PLANNING_MTU) else {
        return State::default();
    };
    // Host-specific inputs (upstream servers, the state dir) are the
    // agent's; the same defaults on both sides keep them out of the diff.
    model::resolve(&s, &Default::default(), &HostInfo::default())
        .map(|d| d.state)
        .unwrap_or_default()
}

/// Prints, per host, what its share changes; returns whether any changes.
fn print_per_host(
    old: Option<&Spec>,
    old_alloc: &ClusterAllocations,
    new: &Spec,
    alloc: &ClusterAllocations,
) -> bool {
    let mut hosts: Vec<String> = new
        .cluster
        .iter()
        .flat_map(|c| c.hosts.keys().cloned())
        .collect();
    for h in old
        .iter()
        .flat_map(|s| s.cluster.iter())
        .flat_map(|c| c.hosts.keys())
    {
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    let style = Style {
        color: std::io::stdout().is_terminal(),
        ..Default::default()
    };
    let mut any = false;
    for h in hosts {
        let before = host_state(old, old_alloc, &h);
        let after = host_state(Some(new), alloc, &h);
        let p = plan::diff(&after, &before, None);
        println!("Host {h}:");
        let text = render::text(&p, style);
        for line in text.lines() {
            println!("  {line}");
        }
        any |= !p.is_empty();
    }
    any
}

/// `netloom status --cluster`: one line per host.
pub async fn status_cluster(cli: &Cli) -> Result<Exit> {
    let file_spec = crate::cmd::steps::read_config(&cli.config)
        .ok()
        .and_then(|b| spec::load_bytes(&cli.config.display().to_string(), &b).ok());
    let cl = file_spec.as_ref().and_then(|s| s.cluster.clone());
    let prefix = cl
        .as_ref()
        .map(|c| c.prefix.clone())
        .unwrap_or_else(|| crate::core::cluster::DEFAULT_PREFIX.to_string());
    let tls = cl.as_ref().map(|c| c.tls.clone()).unwrap_or_default();
    let reached = async {
        let store = Store::connect(&endpoints(cli, cl.as_ref()), &prefix, &tls).await?;
        let read = store.read().await?;
        anyhow::Ok((store, read))
    }
    .await;
    let (store, read) = match reached {
        Ok(r) => r,
        Err(e) => {
            // Nothing can be known about the hosts without etcd: say so per
            // host of the file at hand, and that etcd is why.
            let why = format!("{e:#}");
            println!("etcd\tunreachable\t{}", why.lines().next().unwrap_or(""));
            for h in cl.iter().flat_map(|c| c.hosts.keys()) {
                println!("{h}\tunreachable\tetcd cannot be reached");
            }
            return Ok(Exit::Changes);
        }
    };
    let Some(doc) = read.doc else {
        println!("nothing pushed yet under {prefix}");
        return Ok(Exit::Error);
    };
    let pushed = spec::load(&doc.source, &doc.file)
        .map_err(|d| anyhow!("the desired state in etcd no longer validates:\n{d}"))?;
    let statuses = store.statuses().await?;
    let mut all_converged = true;
    println!("revision {} pushed {}", read.revision, doc.pushed_at);
    for h in pushed.cluster.iter().flat_map(|c| c.hosts.keys()) {
        let s = statuses.iter().find(|s| &s.host == h);
        let line = store::status_line(h, s, read.revision);
        all_converged &= line.contains("\tconverged\t");
        println!("{line}");
    }
    Ok(if all_converged {
        Exit::Ok
    } else {
        Exit::Changes
    })
}
