//! `validate`, `plan` and `apply`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::cli::{Cli, Format};
use crate::cmd::confirm;
use crate::cmd::steps::{
    self, Applied, Exit, Loaded, Out, Planned, apply_planned, detail, held_text, load, load_bytes,
    open_state, plan_exit, plan_live, plan_text, print_plan_as, record_converged, refuse_if_agent,
    require_root, resolve, warnings_to,
};
use crate::core::model::State;
use crate::core::plan;
use crate::core::render::{self, ApplyResult, Detail};
use crate::core::saved_plan::{self, SavedPlan};
use crate::host::state::{Record, StateDir, unix_now};

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
    // The process exits next: freeing a file of 100,000 containers piece
    // by piece would cost a fifth of the command.
    std::mem::forget(l);
    Ok(Exit::Ok)
}

/// `plan --offline [--base OLD]`: the plan against an empty host, or
/// from the file OLD to this one, without reading the kernel or the state
/// dir (no privileges needed). Nothing of the machine it runs on enters
/// the plan: resolv.conf lists only the file's `upstream_dns`, and the
/// agent is assumed to serve the embedded DNS, as on a host that runs it.
pub fn plan_offline(
    cli: &Cli,
    base: Option<&Path>,
    detailed: bool,
    format: Format,
) -> Result<Exit> {
    let Some(mut l) = load(cli)? else {
        return Ok(Exit::Error);
    };
    crate::cmd::steps::refuse_cluster(&l)?;
    l.host = offline_host(l.host.state_dir.clone());
    let (before, record) = match base {
        None => (State::default(), Record::default()),
        Some(path) => {
            let shown = path.display().to_string();
            let bytes = crate::cmd::steps::read_config(path)
                .with_context(|| format!("cannot read the base file {shown}"))?;
            let spec = match crate::core::spec::load_bytes(&shown, &bytes) {
                Ok(s) => s,
                Err(d) => {
                    eprint!("{d}");
                    eprintln!("the base file {shown} is invalid: no plan.");
                    return Ok(Exit::Error);
                }
            };
            let old = crate::core::model::resolve(&spec, &Default::default(), &l.host)
                .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
            // The new file keeps the base's addresses, as a host that
            // applied the base would.
            let mut record = Record::default();
            record.allocations = old.allocations;
            (old.state, record)
        }
    };
    let desired = resolve(&l, &record)?;
    let plan = plan::diff(&desired.state, &before, None);
    print_plan_as(&plan, format, detail(cli, Detail::Normal));
    Ok(plan_exit(&plan, detailed))
}

/// The host an offline plan assumes: no upstream servers but the file's,
/// an agent serving DNS.
fn offline_host(state_dir: std::path::PathBuf) -> crate::core::model::HostInfo {
    crate::core::model::HostInfo {
        upstream_dns: Vec::new(),
        state_dir,
        agent_dns: true,
    }
}

/// How `plan`/`apply` run.
pub struct How<'a> {
    /// Print the plan, change nothing (`plan`, `apply --dry-run`).
    pub dry_run: bool,
    /// `--detailed-exitcode`.
    pub detailed: bool,
    pub format: Format,
    /// `plan --out PLAN`: also save the plan there.
    pub out: Option<&'a Path>,
    /// `apply --confirm-timeout`: keep a checkpoint and wait for `confirm`.
    pub confirm_timeout: Option<std::time::Duration>,
}

/// `plan` and `apply [--dry-run]` against the live host.
pub async fn apply_cmd(cli: &Cli, how: How<'_>) -> Result<Exit> {
    let command = if how.dry_run { "plan" } else { "apply" };
    // A running agent of this file answers `plan`, and applies it for
    // `apply` from its view of the host (it would apply the edit itself a
    // moment later anyway), unless NETLOOM_AGENT_APPLIES=0.
    let agent_may = how.out.is_none()
        && (how.dry_run
            || (crate::cmd::agent_client::agent_applies() && how.confirm_timeout.is_none()));
    let ask = crate::cmd::agent_client::Ask {
        command,
        format: how.format,
        detailed: how.detailed,
        verbose: cli.verbose,
    };
    if agent_may && let Some(exit) = crate::cmd::agent_client::ask(cli, &ask) {
        return Ok(exit);
    }
    let Some((l, bytes)) = load_bytes(cli, &cli.config)? else {
        return Ok(Exit::Error);
    };
    crate::cmd::steps::refuse_cluster(&l)?;
    require_root(command)?;
    if !how.dry_run {
        refuse_if_agent(&l.host.state_dir, Some(&l.path))?;
        crate::host::interrupt::install()?;
    }
    let sd = open_state(&l.host.state_dir)?;
    let mut record = sd.load()?;
    let mut checkpoint = None;
    if !how.dry_run {
        // An unconfirmed change whose time ran out goes first.
        confirm::recover_expired(&sd, &mut record).await?;
        let confirming = how.confirm_timeout.is_some();
        if let Some(why) = confirm::refusal(&l.host.state_dir, &l.path, &bytes, confirming)? {
            eprintln!("Error: {why}; nothing was changed.");
            return Ok(Exit::Error);
        }
        if let Some(t) = how.confirm_timeout {
            checkpoint = Some(confirm::begin(
                &l.host.state_dir,
                &record,
                &l.path,
                &bytes,
                t,
            )?);
        }
    }
    // `plan` says so in its output (plan_out), which an agent may give.
    if let (Some(p), false) = (&record.pending, how.dry_run) {
        eprintln!(
            "netloom: the apply started {}s ago did not finish (interrupted); this run continues it.",
            unix_now().saturating_sub(p.started)
        );
    }
    let p = plan_live(&l, &record).await?;
    if how.dry_run {
        let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
        plan_out(&p, how.format, how.detailed, cli.verbose, color)
            .0
            .print();
    } else {
        show_plan(cli, &p, how.format);
    }
    if let Some(out) = how.out {
        let doc = saved_now(&l, &bytes, &record, &p)?;
        write_file(out, &saved_plan::to_text(&doc))?;
        eprintln!(
            "Saved the plan to {0}; `netloom apply {0}` applies exactly this plan, or nothing if the file or the host changes meanwhile.",
            out.display()
        );
    }
    let exit = finish(&sd, &mut record, &p, how.dry_run, how.detailed, how.format).await?;
    match checkpoint {
        Some(cp) => {
            // `confirm` and the rollback take the lock; the wait must not
            // hold it.
            drop(sd);
            confirm::wait(&l.host.state_dir, &cp, exit).await
        }
        None => Ok(exit),
    }
}

/// What `plan` prints for `p` (warnings, the plan, the held-back
/// objects), and its exit status. The command and the agent answering
/// for it both print this, so that their answers cannot differ.
pub fn plan_out(
    p: &Planned,
    format: Format,
    detailed: bool,
    verbose: bool,
    color: bool,
) -> (Out, Exit) {
    let mut out = Out::default();
    if let Some(i) = &p.interrupted {
        let _ = writeln!(
            out.stderr,
            "netloom: {}; {}.",
            steps::interrupted_note(i),
            steps::INTERRUPTED_HINT
        );
    }
    warnings_to(&mut out, &p.warnings, format);
    let d = if verbose {
        Detail::Full
    } else {
        Detail::Normal
    };
    out.stdout.push_str(&plan_text(&p.plan, format, d, color));
    out.stderr.push_str(&held_text(&p.held));
    let exit = if p.held.is_empty() {
        plan_exit(&p.plan, detailed)
    } else {
        Exit::Error
    };
    (out, exit)
}

/// The saved-plan document of `p`, made from the bytes `l` was loaded from.
fn saved_now(l: &Loaded, bytes: &[u8], record: &Record, p: &Planned) -> Result<SavedPlan> {
    let path = std::path::absolute(&l.path)
        .with_context(|| format!("absolute path of {}", l.path.display()))?;
    let state_json = serde_json::to_string(record).context("serialize the state record")?;
    let identity = crate::host::identity::host_identity();
    let inputs = saved_plan::Inputs {
        config_path: &path.display().to_string(),
        config_bytes: bytes,
        host_identity: &identity,
        state_json: &state_json,
        observed: &p.observation.state,
    };
    Ok(saved_plan::build(&inputs, &p.plan))
}

/// Writes `text` to `path` whole or not at all (temp file, rename).
fn write_file(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// `apply PLAN`: re-observe, and apply the saved plan only if it is still
/// exactly what would be planned now; otherwise say what moved and change
/// nothing.
pub async fn apply_saved(cli: &Cli, file: &Path, detailed: bool, format: Format) -> Result<Exit> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the saved plan {}", file.display()))?;
    let saved = match saved_plan::parse(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {}: {e}", file.display());
            return Ok(Exit::Error);
        }
    };
    let cfg = Path::new(&saved.config.path);
    let Some((l, bytes)) = load_bytes(cli, cfg)? else {
        eprintln!(
            "stale plan: the file {} changed since the plan was made (it is not valid now); nothing was changed.",
            cfg.display()
        );
        return Ok(Exit::Error);
    };
    require_root("apply")?;
    refuse_if_agent(&l.host.state_dir, Some(&l.path))?;
    crate::host::interrupt::install()?;
    let sd = open_state(&l.host.state_dir)?;
    let mut record = sd.load()?;
    confirm::recover_expired(&sd, &mut record).await?;
    if let Some(why) = confirm::refusal(&l.host.state_dir, &l.path, &bytes, false)? {
        eprintln!("Error: {why}; nothing was changed.");
        return Ok(Exit::Error);
    }
    let p = plan_live(&l, &record).await?;
    let now = saved_now(&l, &bytes, &record, &p)?;
    if saved_plan::other_host(&saved, &now) {
        eprintln!(
            "Error: the plan {} was made on another host; make the plan on this host. Nothing was changed.",
            file.display()
        );
        return Ok(Exit::Error);
    }
    let reasons = saved_plan::stale_reasons(&saved, &now);
    if !reasons.is_empty() {
        for r in &reasons {
            eprintln!("stale plan: {r}");
        }
        eprintln!(
            "Nothing was changed. Make a new plan (`netloom plan --out {}`) and review it.",
            file.display()
        );
        return Ok(Exit::Error);
    }
    show_plan(cli, &p, format);
    finish(&sd, &mut record, &p, false, detailed, format).await
}

/// Prints what `apply` shows before applying ([`apply_head`]).
fn show_plan(cli: &Cli, p: &Planned, format: Format) {
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    apply_head(p, format, cli.verbose, color).print();
}

/// What `apply` prints before applying: the warnings, one line per change
/// (with `--format json` nothing: the plan and its result are one
/// document at the end, [`apply_tail`]) and the held-back objects. The
/// command and an agent applying for it both print this.
pub fn apply_head(p: &Planned, format: Format, verbose: bool, color: bool) -> Out {
    let mut out = Out::default();
    warnings_to(&mut out, &p.warnings, format);
    if format != Format::Json {
        let d = if verbose { Detail::Full } else { Detail::Brief };
        out.stdout.push_str(&plan_text(&p.plan, format, d, color));
    }
    out.stderr.push_str(&held_text(&p.held));
    out
}

/// What `apply` prints after applying `p` (`applied`: None when there was
/// nothing to apply), and its exit status.
pub fn apply_tail(
    p: &Planned,
    applied: Option<&Applied>,
    format: Format,
    detailed: bool,
) -> (Out, Exit) {
    let mut out = Out::default();
    let json = format == Format::Json;
    let held = !p.held.is_empty();
    let Some(applied) = applied else {
        let c = p.observation.counters;
        let _ = writeln!(
            out.stderr,
            "Nothing to apply ({} netlink dumps, {} netlink writes, 0 nft transactions).",
            c.dumps, c.writes
        );
        if json {
            let r = ApplyResult {
                held: &p.held,
                ..Default::default()
            };
            out.stdout.push_str(&render::apply_json(&p.plan, &r));
        }
        let exit = if held {
            Exit::Error
        } else {
            plan_exit(&p.plan, detailed)
        };
        return (out, exit);
    };
    for (addr, f) in &applied.failed {
        let _ = writeln!(
            out.stderr,
            "Error: {}: {addr} failed: {}",
            f.object, f.error
        );
    }
    let _ = writeln!(out.stderr, "{}", applied.report(&p.plan, &p.held));
    if json {
        let r = ApplyResult {
            applied: &applied.done,
            failed: &applied.failed,
            held: &p.held,
            waiting: &applied.not_done,
        };
        out.stdout.push_str(&render::apply_json(&p.plan, &r));
    }
    let exit = if held || !applied.failed.is_empty() {
        Exit::Error
    } else if detailed {
        Exit::Changes
    } else {
        Exit::Ok
    };
    (out, exit)
}

/// Applies `p` (unless `dry_run`) and reports, with `apply`'s exit status
/// (`plan` printed its plan already).
async fn finish(
    sd: &StateDir,
    record: &mut Record,
    p: &Planned,
    dry_run: bool,
    detailed: bool,
    format: Format,
) -> Result<Exit> {
    if dry_run {
        return Ok(if p.held.is_empty() {
            plan_exit(&p.plan, detailed)
        } else {
            Exit::Error
        });
    }
    let applied = if p.plan.is_empty() {
        record_converged(sd, record, p)?;
        None
    } else {
        let applied = apply_planned(sd, record, p).await;
        if let Some(n) = crate::host::fault::count() {
            eprintln!("fault points passed: {n}");
        }
        Some(applied?)
    };
    let (out, exit) = apply_tail(p, applied.as_ref(), format, detailed);
    out.print();
    Ok(exit)
}
