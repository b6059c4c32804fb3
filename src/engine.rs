//! The commands: load the file, resolve, observe, plan, apply, verify.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::cli::{Cli, Command, Format};
use crate::firewall;
use crate::model::{self, Desired, HostInfo, State};
use crate::observe::{self, Observation};
use crate::plan::{self, Plan};
use crate::render::{self, Style};
use crate::spec::{self, Spec};
use crate::state::{Record, StateDir};

/// How long a command waits for another run (e.g. the agent) to release
/// the state dir.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A command's result: its exit status.
pub type Exit = i32;

/// The loaded file.
pub struct Loaded {
    pub path: PathBuf,
    pub spec: Spec,
    pub host: HostInfo,
}

/// Runs one command; errors are printed by the caller and exit 1.
pub async fn run(cli: Cli) -> Result<Exit> {
    match &cli.command {
        Command::Schema => {
            print!("{}", crate::config::schema_json());
            Ok(0)
        }
        Command::Validate => validate(&cli),
        Command::Plan {
            offline: true,
            detailed_exitcode,
            format,
        } => {
            let Some(l) = load(&cli)? else { return Ok(1) };
            let desired = resolve(&l, &Record::default())?;
            let plan = plan::diff(&desired.state, &State::default(), None);
            print_plan(&plan, *format);
            Ok(plan_exit(&plan, *detailed_exitcode))
        }
        Command::Plan {
            offline: false,
            detailed_exitcode,
            format,
        } => apply_cmd(&cli, true, *detailed_exitcode, *format).await,
        Command::Apply {
            dry_run,
            detailed_exitcode,
            format,
        } => apply_cmd(&cli, *dry_run, *detailed_exitcode, *format).await,
        Command::Status { format } => crate::status::status(&cli, *format).await,
        Command::Inspect { network, format } => {
            crate::status::inspect(&cli, network, *format).await
        }
        Command::Down => down(&cli).await,
        Command::Watch { resync } => crate::agent::watch(&cli, Duration::from_secs(*resync)).await,
    }
}

fn validate(cli: &Cli) -> Result<Exit> {
    let Some(l) = load(cli)? else { return Ok(1) };
    println!(
        "{}: valid ({} network(s), {} container(s))",
        l.path.display(),
        l.spec.networks.len(),
        l.spec.containers.len()
    );
    Ok(0)
}

/// Reads and validates the file; `None` after printing its errors.
pub fn load(cli: &Cli) -> Result<Option<Loaded>> {
    let path = cli.config.clone();
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let shown = path.display().to_string();
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = crate::diag::line_col(
                &String::from_utf8_lossy(e.as_bytes()),
                e.utf8_error().valid_up_to(),
            );
            eprintln!("{shown}:{line}:{col}: the file is not valid UTF-8");
            return Ok(None);
        }
    };
    match spec::load(&shown, &text) {
        Ok(spec) => {
            let host = host_info(cli, &spec);
            Ok(Some(Loaded { path, spec, host }))
        }
        Err(d) => {
            eprint!("{d}");
            eprintln!("{} error(s); nothing was changed.", d.lines.len());
            Ok(None)
        }
    }
}

/// The state dir: `--state-dir`/`NETLOOM_STATE_DIR`, else the file's
/// `settings.state_dir`, else /var/lib/netloom.
pub fn state_dir(cli: &Cli, spec: Option<&Spec>) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| spec.and_then(|s| s.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_STATE_DIR))
}

fn host_info(cli: &Cli, spec: &Spec) -> HostInfo {
    let upstream_dns = std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| model::upstreams_from_resolv_conf(&t))
        .unwrap_or_default();
    HostInfo {
        upstream_dns,
        state_dir: state_dir(cli, Some(spec)),
    }
}

pub fn resolve(l: &Loaded, record: &Record) -> Result<Desired> {
    model::resolve(&l.spec, &record.allocations, &l.host).map_err(|e| anyhow!("{e}"))
}

fn print_plan(plan: &Plan, format: Format) {
    match format {
        Format::Json => print!("{}", render::json(plan)),
        Format::Text => print!(
            "{}",
            render::text(
                plan,
                Style {
                    color: std::io::stdout().is_terminal()
                }
            )
        ),
    }
}

fn plan_exit(plan: &Plan, detailed: bool) -> Exit {
    if detailed && !plan.is_empty() { 2 } else { 0 }
}

pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(anyhow!(
            "{what} reads and changes the kernel's network state and needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); `netloom plan --offline` plans without it"
        ));
    }
    Ok(())
}

/// Everything a plan against the live host needs.
pub struct Planned {
    pub desired: Desired,
    pub observation: Observation,
    pub plan: Plan,
}

/// Resolves, observes, checks for clashes, and plans.
pub async fn plan_live(l: &Loaded, record: &Record) -> Result<Planned> {
    let desired = resolve(l, record)?;
    let observation = observe::observe(&desired.state, record).await?;
    let mut problems = observation.foreign_conflicts(&desired.state, record);
    problems.extend(crate::portprobe::conflicts(
        &desired.state,
        &observation.state,
    ));
    if !problems.is_empty() {
        return Err(anyhow!("{}\nnothing was changed.", problems.join("\n")));
    }
    let plan = plan::diff(&desired.state, &observation.state, record.applied.as_ref());
    Ok(Planned {
        desired,
        observation,
        plan,
    })
}

async fn apply_cmd(cli: &Cli, dry_run: bool, detailed: bool, format: Format) -> Result<Exit> {
    let Some(l) = load(cli)? else { return Ok(1) };
    require_root(if dry_run { "plan" } else { "apply" })?;
    let sd = StateDir::open(&l.host.state_dir, LOCK_WAIT)?;
    let mut record = sd.load()?;
    let p = plan_live(&l, &record).await?;
    print_plan(&p.plan, format);
    if dry_run || p.plan.is_empty() {
        if !dry_run {
            let c = p.observation.counters;
            eprintln!(
                "Nothing to apply ({} netlink dumps, {} netlink writes, 0 nft transactions).",
                c.dumps, c.writes
            );
        }
        if !dry_run {
            record_converged(&sd, &mut record, &p)?;
        }
        return Ok(plan_exit(&p.plan, detailed));
    }
    let report = apply_planned(&sd, &mut record, &p).await?;
    eprintln!("{report}");
    Ok(if detailed { 2 } else { 0 })
}

/// The host already matches (e.g. after a state-dir restore): remember
/// it, so that later drift is measured from here.
pub fn record_converged(sd: &StateDir, record: &mut Record, p: &Planned) -> Result<()> {
    if record.applied.as_ref() != Some(&p.desired.state) {
        record.allocations = p.desired.allocations.clone();
        record.applied = Some(p.desired.state.clone());
        sd.save(record)?;
    }
    Ok(())
}

/// Applies a plan made by [`plan_live`], records ownership, verifies.
/// Returns the report line; an error says what was and was not done.
pub async fn apply_planned(sd: &StateDir, record: &mut Record, p: &Planned) -> Result<String> {
    let want_fw = p.desired.state.firewall.as_ref().map(|f| &f.fw);
    let tx = want_fw.map(|fw| firewall::plan_transaction(fw, p.observation.firewall.as_ref()));
    record.allocations = p.desired.allocations.clone();
    let outcome = crate::apply::execute(&p.plan, tx.as_ref(), &mut record.owned).await;
    let mut nft_tx = outcome.nft_transactions;
    let mut result = Ok(());
    if outcome.failed.is_none() && want_fw.is_none() && p.observation.firewall.is_some() {
        result = firewall::delete_tables().context("delete netloom's nft table");
        nft_tx += 1;
    }
    record.owned.netns_paths = observe::attached_paths(&p.desired.state);
    sd.save(record)?;
    if let Some((addr, err)) = &outcome.failed {
        let mut msg = format!("apply failed at {addr}: {err}\n");
        if !outcome.done.is_empty() {
            msg.push_str(&format!("done: {}\n", outcome.done.join(", ")));
        }
        msg.push_str(&format!(
            "not done: {}\n",
            std::iter::once(addr.clone())
                .chain(outcome.not_done.iter().cloned())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        msg.push_str("Fix the cause and run `netloom apply` again: it continues from here.");
        return Err(anyhow!(msg));
    }
    result?;
    // Verify: read back; the plan must now be empty.
    let again = observe::observe(&p.desired.state, record).await?;
    let rest = plan::diff(&p.desired.state, &again.state, None);
    if !rest.is_empty() {
        return Err(anyhow!(
            "apply did not converge; still different after applying:\n{}",
            render::text(&rest, Style::default())
        ));
    }
    record.applied = Some(p.desired.state.clone());
    sd.save(record)?;
    let s = p.plan.summary();
    Ok(format!(
        "Apply complete! {} added, {} changed, {} destroyed ({} netlink writes, {} nft transaction(s) with {} element(s); {} netlink lookups while applying).",
        s.add,
        s.change,
        s.destroy,
        outcome.counters.writes,
        nft_tx,
        outcome.nft_elements,
        outcome.counters.dumps
    ))
}

async fn down(cli: &Cli) -> Result<Exit> {
    require_root("down")?;
    // The file may be gone or broken: `down` needs only the state dir.
    let spec = std::fs::read_to_string(&cli.config)
        .ok()
        .and_then(|t| spec::load(&cli.config.display().to_string(), &t).ok());
    let dir = state_dir(cli, spec.as_ref());
    let sd = StateDir::open(&dir, LOCK_WAIT)?;
    let mut record = sd.load()?;
    let observation = observe::observe(&State::default(), &record).await?;
    let plan = crate::apply::teardown_plan(&observation.state);
    print!(
        "{}",
        render::text(
            &plan,
            Style {
                color: std::io::stdout().is_terminal()
            }
        )
    );
    let outcome = crate::apply::execute(&plan, None, &mut record.owned).await;
    if let Some((addr, err)) = outcome.failed {
        sd.save(&record)?;
        return Err(anyhow!(
            "down failed at {addr}: {err}; run `netloom down` again"
        ));
    }
    if observation.firewall.is_some() {
        firewall::delete_tables().context("delete netloom's nft table")?;
    }
    sd.remove_all()?;
    eprintln!("netloom removed everything it owned.");
    Ok(0)
}
