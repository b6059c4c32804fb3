//! `validate`, `plan` and `apply`.

use anyhow::Result;

use crate::cmd::cli::{Cli, Format};
use crate::cmd::steps::{
    Exit, apply_planned, load, open_state, plan_exit, plan_live, print_held, print_plan,
    record_converged, refuse_if_agent, require_root, resolve,
};
use crate::core::model::State;
use crate::core::plan;
use crate::host::state::{Record, unix_now};

pub fn validate(cli: &Cli) -> Result<Exit> {
    let Some(l) = load(cli)? else {
        return Ok(Exit::Error);
    };
    println!(
        "{}: valid ({} network(s), {} container(s))",
        l.path.display(),
        l.spec.networks.len(),
        l.spec.containers.len()
    );
    Ok(Exit::Ok)
}

/// `plan --offline`: the plan against an empty host, without reading the
/// kernel or the state dir (no privileges needed).
pub fn plan_offline(cli: &Cli, detailed: bool, format: Format) -> Result<Exit> {
    let Some(l) = load(cli)? else {
        return Ok(Exit::Error);
    };
    let desired = resolve(&l, &Record::default())?;
    let plan = plan::diff(&desired.state, &State::default(), None);
    print_plan(&plan, format);
    Ok(plan_exit(&plan, detailed))
}

/// `plan` and `apply [--dry-run]` against the live host.
pub async fn apply_cmd(cli: &Cli, dry_run: bool, detailed: bool, format: Format) -> Result<Exit> {
    let Some(l) = load(cli)? else {
        return Ok(Exit::Error);
    };
    require_root(if dry_run { "plan" } else { "apply" })?;
    if !dry_run {
        refuse_if_agent(&l.host.state_dir, Some(&l.path))?;
        crate::host::interrupt::install()?;
    }
    let sd = open_state(&l.host.state_dir)?;
    let mut record = sd.load()?;
    if let (Some(p), false) = (&record.pending, dry_run) {
        eprintln!(
            "netloom: the apply started {}s ago did not finish (interrupted); this run continues it.",
            unix_now().saturating_sub(p.started)
        );
    }
    let p = plan_live(&l, &record).await?;
    print_plan(&p.plan, format);
    print_held(&p.held);
    let held = if p.held.is_empty() {
        None
    } else {
        Some(Exit::Error)
    };
    if dry_run || p.plan.is_empty() {
        if !dry_run {
            let c = p.observation.counters;
            eprintln!(
                "Nothing to apply ({} netlink dumps, {} netlink writes, 0 nft transactions).",
                c.dumps, c.writes
            );
            record_converged(&sd, &mut record, &p)?;
        }
        return Ok(held.unwrap_or_else(|| plan_exit(&p.plan, detailed)));
    }
    let applied = apply_planned(&sd, &mut record, &p).await;
    if let Some(n) = crate::host::fault::count() {
        eprintln!("fault points passed: {n}");
    }
    let applied = applied?;
    for (addr, f) in &applied.failed {
        eprintln!("Error: {}: {addr} failed: {}", f.object, f.error);
    }
    eprintln!("{}", applied.report(&p.plan, &p.held));
    if held.is_some() || !applied.failed.is_empty() {
        return Ok(Exit::Error);
    }
    Ok(if detailed { Exit::Changes } else { Exit::Ok })
}
