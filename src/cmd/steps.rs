//! The steps the commands share: load the file, resolve it, plan against
//! the live host, apply a plan and record what was done.
//!
//! `plan`, `apply`, `status`, `inspect` and the agent all go through these
//! functions, so they load, plan and record in exactly the same way.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::cmd::cli::{Cli, Format};
use crate::core::firewall;
use crate::core::model::{self, Desired, HostInfo};
use crate::core::plan::{self, Plan};
use crate::core::render::{self, Style};
use crate::core::spec::{self, Spec};
use crate::host::nft;
use crate::host::observe::{self, Observation};
use crate::host::state::{AgentStatus, Record, StateDir};

/// How long a command waits for another run (e.g. the agent) to release
/// the state dir.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A command's exit status (SPEC: 0 success or in sync, 1 error, 2 changes
/// planned or made with `--detailed-exitcode`, or drift for `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success; no changes (with `--detailed-exitcode`); in sync.
    Ok = 0,
    /// An invalid file, a failure, an unknown name.
    Error = 1,
    /// Changes planned or made (`--detailed-exitcode`), drift (`status`).
    Changes = 2,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// The loaded file.
pub struct Loaded {
    pub path: PathBuf,
    pub spec: Spec,
    pub host: HostInfo,
}

/// Reads and validates the file; `None` after printing its errors.
pub fn load(cli: &Cli) -> Result<Option<Loaded>> {
    let path = cli.config.clone();
    let bytes = read_config(&path).with_context(|| format!("cannot read {}", path.display()))?;
    match spec::load_bytes(&path.display().to_string(), &bytes) {
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

/// Reads the file, but never more than one byte past the size limit: a
/// huge file (or `/dev/zero`) is refused by the loader without being read
/// into memory whole.
pub fn read_config(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(spec::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The state dir: `--state-dir`/`NETLOOM_STATE_DIR`, else the file's
/// `settings.state_dir`, else /var/lib/netloom.
pub fn state_dir(cli: &Cli, spec: Option<&Spec>) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| spec.and_then(|s| s.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(crate::core::config::DEFAULT_STATE_DIR))
}

fn host_info(cli: &Cli, spec: &Spec) -> HostInfo {
    let upstream_dns = std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| model::upstreams_from_resolv_conf(&t))
        .unwrap_or_default();
    let state_dir = state_dir(cli, Some(spec));
    // While an agent runs it serves the DNS its resolv.conf files name, and
    // a command run meanwhile must render them the same way; the agent
    // sets this for itself.
    let agent_dns = AgentStatus::read(&state_dir).is_some_and(|a| a.alive());
    HostInfo {
        upstream_dns,
        state_dir,
        agent_dns,
    }
}

/// Resolves the loaded file against the recorded allocations.
pub fn resolve(l: &Loaded, record: &Record) -> Result<Desired> {
    Ok(model::resolve(&l.spec, &record.allocations, &l.host)?)
}

/// Prints a plan on stdout, in colour only on a terminal.
pub fn print_plan(plan: &Plan, format: Format) {
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

/// The exit status of a plan: [`Exit::Changes`] only when asked for.
pub fn plan_exit(plan: &Plan, detailed: bool) -> Exit {
    if detailed && !plan.is_empty() {
        Exit::Changes
    } else {
        Exit::Ok
    }
}

/// Fails with a message that says what needs root and what does not.
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
    problems.extend(crate::host::portprobe::conflicts(
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
    let outcome = crate::host::apply::execute(&p.plan, tx.as_ref(), &mut record.owned).await;
    let mut nft_tx = outcome.nft_transactions;
    let mut result = Ok(());
    if outcome.failed.is_none() && want_fw.is_none() && p.observation.firewall.is_some() {
        result = nft::delete_tables().context("delete netloom's nft table");
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
