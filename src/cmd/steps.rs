//! The steps the commands share: load the file, resolve it, plan against
//! the live host, apply a plan and record what was done.
//!
//! `plan`, `apply`, `status`, `inspect` and the agent all go through these
//! functions, so they load, plan and record in exactly the same way.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::cmd::cli::{Cli, Format};
use crate::core::firewall;

use crate::core::model::{self, Desired, HostInfo, State};
use crate::core::plan::{self, Failure, Plan};
use crate::core::render::{self, Detail, Style};
use crate::core::spec::{self, Spec};
use crate::host::marks::Owner;
use crate::host::nft;
use crate::host::observe::{self, Observation};
use crate::host::state::{AgentStatus, Holder, Pending, Record, StateDir, unix_now};

/// How long a command waits for another run (e.g. the agent) to release
/// the state dir.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A command's exit status (the README's "Commands": 0 success or in
/// sync, 1 error, 2 changes planned or made with `--detailed-exitcode`, or
/// drift for `status`).
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
    Ok(load_bytes(cli, &cli.config)?.map(|(l, _)| l))
}

/// [`load`] of `path`, also returning the bytes that were read (for the
/// digest of a saved plan: the very bytes planned from).
pub fn load_bytes(cli: &Cli, path: &std::path::Path) -> Result<Option<(Loaded, Vec<u8>)>> {
    let path = path.to_path_buf();
    let bytes = read_config(&path).map_err(|e| config_read_error(&path, e))?;
    match spec::load_bytes(&path.display().to_string(), &bytes) {
        Ok(spec) => {
            let host = host_info(cli, &spec);
            Ok(Some((Loaded { path, spec, host }, bytes)))
        }
        Err(d) => {
            eprint!("{d}");
            eprintln!("{} error(s); nothing was changed.", d.lines.len());
            Ok(None)
        }
    }
}

/// A cluster file is not applied as one host: each host's agent applies
/// its share from etcd.
pub fn refuse_cluster(l: &Loaded) -> Result<()> {
    if l.spec.cluster.is_some() {
        return Err(anyhow!(
            "{} describes a cluster ([hosts]): `netloom push` stores it in etcd and `netloom watch --host NAME` applies each host's share",
            l.path.display()
        ));
    }
    Ok(())
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

/// The error for a configuration file that cannot be read. When the
/// file is missing, the likeliest cause is running from another directory
/// without `-c`: say how to name the file, and that `down` needs none (it
/// works from the state record).
pub fn config_read_error(path: &std::path::Path, e: std::io::Error) -> anyhow::Error {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        "; name the file with -c/--config PATH (or NETLOOM_CONFIG=PATH); `netloom down` works without it"
    } else {
        ""
    };
    anyhow!("cannot read {}: {e}{hint}", path.display())
}

/// The state dir: `--state-dir`/`NETLOOM_STATE_DIR`, else the file's
/// `settings.state_dir`, else /var/lib/netloom.
pub fn state_dir(cli: &Cli, spec: Option<&Spec>) -> PathBuf {
    state_dir_of(cli.state_dir.as_deref(), spec)
}

/// The state dir a command with the `--state-dir` flag `flag` takes for
/// `spec`: the flag's, else the file's, else the default. The agent
/// works it out the same way for a command that did not parse the file.
pub fn state_dir_of(flag: Option<&std::path::Path>, spec: Option<&Spec>) -> PathBuf {
    flag.map(std::path::Path::to_path_buf)
        .or_else(|| spec.and_then(|s| s.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(crate::core::config::DEFAULT_STATE_DIR))
}

/// What the resolver needs of this host.
pub fn host_info(cli: &Cli, spec: &Spec) -> HostInfo {
    let state_dir = state_dir(cli, Some(spec));
    HostInfo {
        upstream_dns: upstream_dns(),
        agent_dns: agent_serves_dns(&state_dir),
        state_dir,
    }
}

/// The upstream servers of the host's /etc/resolv.conf.
pub fn upstream_dns() -> Vec<std::net::SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| model::upstreams_from_resolv_conf(&t))
        .unwrap_or_default()
}

/// Whether an agent serves the DNS the resolv.conf files name: while one
/// runs, a command run meanwhile must render them the same way (the agent
/// sets this for itself).
pub fn agent_serves_dns(state_dir: &std::path::Path) -> bool {
    AgentStatus::read(state_dir).is_some_and(|a| a.alive())
}

/// Resolves the loaded file against the recorded allocations.
pub fn resolve(l: &Loaded, record: &Record) -> Result<Desired> {
    let t0 = std::time::Instant::now();
    let desired = model::resolve(&l.spec, &record.allocations, &l.host)?;
    tracing::debug!("resolved in {:?}", t0.elapsed());
    Ok(desired)
}

/// Prints a plan on stdout, in colour only on a terminal.
pub fn print_plan(plan: &Plan, format: Format) {
    print_plan_as(plan, format, Detail::Normal);
}

/// Prints a plan on stdout at `detail` (text only).
pub fn print_plan_as(plan: &Plan, format: Format, detail: Detail) {
    print!(
        "{}",
        plan_text(plan, format, detail, std::io::stdout().is_terminal())
    );
}

/// A plan as [`print_plan_as`] prints it; `color` only for text.
pub fn plan_text(plan: &Plan, format: Format, detail: Detail, color: bool) -> String {
    match format {
        Format::Json => render::json(plan),
        Format::Markdown => render::markdown(plan, detail),
        Format::Text => render::text(plan, Style { color, detail }),
    }
}

/// What a command prints, gathered instead of printed: the agent answers
/// `plan` and `status` with it, and the command prints it as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Prints it (stdout first, as the commands do).
    pub fn print(&self) {
        use std::io::Write;
        print!("{}", self.stdout);
        let _ = std::io::stdout().flush();
        eprint!("{}", self.stderr);
    }
}

/// `--verbose` shows everything; otherwise `default`.
pub fn detail(cli: &Cli, default: Detail) -> Detail {
    if cli.verbose { Detail::Full } else { default }
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
        // `plan` (apply --dry-run) only reads; saying it changes the
        // kernel would make a careful user refuse to run it as root.
        let does = if what == "plan" {
            "reads"
        } else {
            "reads and changes"
        };
        return Err(anyhow!(
            "{what} {} the kernel's network state and needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); `netloom plan --offline` plans without it",
            does
        ));
    }
    Ok(())
}

/// Takes the state dir's lock; while another run holds it, says at once
/// who (pid, command, since when) and keeps saying that it waits.
pub fn open_state(dir: &std::path::Path) -> Result<StateDir> {
    StateDir::open_with(dir, LOCK_WAIT, &mut |holder: Option<&Holder>, waited| {
        let who = match holder {
            Some(h) => format!(
                "pid {} (`{}`), holding it for {}s",
                h.pid,
                h.command,
                unix_now().saturating_sub(h.since)
            ),
            None => "another netloom run".to_string(),
        };
        eprintln!(
            "netloom: waiting for {}: held by {who}; waited {}s of at most {}s",
            dir.join("lock").display(),
            waited.as_secs(),
            LOCK_WAIT.as_secs()
        );
    })
}

/// Refuses a change that a running agent would undo: `apply` of another
/// file than the agent's (`other_file`), or `down` (always).
pub fn refuse_if_agent(dir: &std::path::Path, config: Option<&std::path::Path>) -> Result<()> {
    let Some(agent) = AgentStatus::read(dir) else {
        return Ok(());
    };
    if agent.pid == std::process::id() || !agent.alive() {
        return Ok(());
    }
    let file = agent
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(unknown file)".into());
    match config {
        Some(c) => {
            let ours = std::fs::canonicalize(c).ok();
            if ours.is_some() && ours == agent.config {
                return Ok(());
            }
            Err(anyhow!(
                "an agent (`netloom watch`, pid {}, started {}) keeps this host converged to {file} and would undo this apply of {}; edit {file} instead (the agent applies it), or stop the agent first; nothing was changed",
                agent.pid,
                agent.started,
                c.display()
            ))
        }
        None => Err(anyhow!(
            "an agent (`netloom watch`, pid {}, started {}, file {file}) keeps this host converged and would re-create everything; stop the agent first (e.g. `systemctl stop netloom` or `kill {}`), then run `netloom down`; nothing was changed",
            agent.pid,
            agent.started,
            agent.pid
        )),
    }
}

/// One owner per host: refuses when another state dir owns this host's
/// networking (recorded in /run/netloom/owner).
pub fn refuse_if_other_owner(dir: &std::path::Path) -> Result<()> {
    if let Some(o) = Owner::other_than(dir) {
        return Err(anyhow!(
            "this host's networking is owned by the netloom instance with state dir {} (recorded in {}); only one netloom instance may own a host: use `--state-dir {}`, or remove that instance's objects first with `netloom --state-dir {} down`; nothing was changed",
            o.state_dir.display(),
            Owner::path().display(),
            o.state_dir.display(),
            o.state_dir.display()
        ));
    }
    Ok(())
}

/// Everything a plan against the live host needs.
pub struct Planned {
    pub desired: Desired,
    /// The desired state with the held-back objects as they are, when
    /// something is held back; `None` when it is the desired state itself
    /// (as it nearly always is): not a second copy of the whole host for
    /// every plan. Read it through [`Planned::target`].
    pub held_target: Option<State>,
    pub observation: Observation,
    pub plan: Plan,
    /// Objects held back before planning (a foreign name clash, a taken
    /// host port, a vanished namespace): left as they are, with why.
    pub held: Vec<Failure>,
    /// Findings that do not stop the plan (a subnet overlapping a host
    /// route, a `host_ip` the host does not have).
    pub warnings: Vec<String>,
    /// The write-ahead part of an apply that did not finish, from the
    /// record: `status` and `plan` name it.
    pub interrupted: Option<Pending>,
}

impl Planned {
    /// The desired state with the held-back objects as they are: what
    /// this run makes true.
    pub fn target(&self) -> &State {
        self.held_target.as_ref().unwrap_or(&self.desired.state)
    }
}

/// Resolves, observes, holds back the objects that cannot be changed
/// (clashes, taken ports, vanished namespaces), and plans the rest.
pub async fn plan_live(l: &Loaded, record: &Record) -> Result<Planned> {
    plan_live_with(l, record, None, None).await
}

/// [`plan_live`], taking from `reuse` what it vouches for instead of
/// reading it again (the agent's view, kept current by kernel events),
/// and `resolved`, the file already resolved against `record`'s
/// allocations and this host, instead of resolving it again.
pub async fn plan_live_with(
    l: &Loaded,
    record: &Record,
    reuse: Option<&observe::Reuse<'_>>,
    resolved: Option<Desired>,
) -> Result<Planned> {
    refuse_if_other_owner(&l.host.state_dir)?;
    let t0 = std::time::Instant::now();
    // The agent's view (`reuse`) vouches for the namespaces already;
    // without one, what does not depend on the file (nft's tables, the
    // namespaces the record names) is read on helper threads while the
    // file resolves.
    let (desired, early) = match (reuse, resolved) {
        (_, Some(d)) => (Ok(d), None),
        (Some(_), None) => (resolve(l, record), None),
        (None, None) => std::thread::scope(|s| {
            let early = s.spawn(|| observe::read_early(record));
            let desired = resolve(l, record);
            match early.join() {
                Ok(e) => (desired, Some(e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }),
    };
    let desired = desired?;
    tracing::debug!("resolved and read early after {:?}", t0.elapsed());
    let observation = observe::observe_with(&desired.state, record, reuse, early).await?;
    tracing::debug!("observed after {:?}", t0.elapsed());
    // Never the host's own namespace, never one namespace for two
    // containers, never an address the host has: refused, nothing changed.
    let refused = crate::host::guard::refusals(
        &desired.state,
        &observation.host,
        reuse.and_then(|r| r.ns_ids),
    );
    if !refused.is_empty() {
        return Err(anyhow!("{}\nnothing was changed.", refused.join("\n")));
    }
    // The host's routes, for subnets that overlap one: IPv6 routes only
    // when a network has an IPv6 subnet (they are thousands on a host of
    // a thousand containers, three per interface, and overlap no IPv4
    // subnet).
    let host_nl =
        crate::host::netlink::open_host().context("open netlink socket in the host namespace")?;
    let dual_stack = desired
        .state
        .bridges
        .values()
        .any(|b| model::has_ipv6(&b.addrs));
    let routes = if dual_stack {
        host_nl.routes().await
    } else {
        host_nl.routes_v4().await
    }
    .context("dump host routes")?;
    let warnings = crate::host::guard::warnings(&desired.state, &observation.host, &routes);
    let mut held = observation.foreign_conflicts(&desired.state, record);
    held.extend(crate::host::portprobe::conflicts(
        &desired.state,
        &observation.state,
    ));
    let objects: BTreeSet<String> = held.iter().map(|f| f.object.clone()).collect();
    let mut held_target = match plan::hold_back(&desired.state, &observation.state, &objects) {
        Cow::Owned(target) => Some(target),
        Cow::Borrowed(_) => None,
    };
    if objects.contains(plan::NFT_TABLE) {
        // A foreign table named like netloom's: no firewall change at all,
        // so that no transaction ever touches it.
        held_target
            .get_or_insert_with(|| desired.state.clone())
            .firewall = observation.state.firewall.clone();
    }
    let target = held_target.as_ref().unwrap_or(&desired.state);
    let plan = plan::diff(target, &observation.state, record.applied());
    tracing::debug!("planned after {:?}", t0.elapsed());
    Ok(Planned {
        desired,
        held_target,
        observation,
        plan,
        held,
        warnings,
        interrupted: record.pending.clone(),
    })
}

/// The namespaces and files a plan's operations change, for verifying only
/// those. Deleting a host veth removes its peer too, so a change addressed
/// to an endpoint or container marks its namespace (desired and observed).
/// `firewall` is what the caller knows of the firewall without reading it.
fn touched(p: &Planned, firewall: Option<Option<model::FirewallState>>) -> observe::Reuse<'_> {
    use crate::core::model::NsRef;
    use crate::core::plan::Op;
    let mut stale = BTreeSet::new();
    let mut stale_files = BTreeSet::new();
    let mut host = observe::HostTouch::default();
    let mut sysctls = false;
    let states = [p.target(), &p.observation.state];
    for c in &p.plan.changes {
        if let Some(rest) = c.address.strip_prefix("container.") {
            for st in states {
                if let Some(e) = st.endpoints.get(rest) {
                    stale.insert(e.netns.clone());
                }
                if let Some(n) = st.namespaces.get(rest) {
                    stale.insert(n.netns.clone());
                }
            }
        }
        for op in &c.ops {
            if let Op::Sysctl { .. } = op {
                sysctls = true;
            }
            // The host links the operation can change (a veth created
            // into a namespace has its host end here).
            host.add(op, &p.observation);
            match op {
                Op::DeleteLink { netns, .. }
                | Op::LinkUp { netns, .. }
                | Op::SetMtu { netns, .. }
                | Op::SetMac { netns, .. }
                | Op::AddAddr { netns, .. }
                | Op::DelAddr { netns, .. } => stale.extend(netns.iter().cloned()),
                Op::CreateVeth { netns, .. }
                | Op::SetIpv6 { netns, .. }
                | Op::AddDefaultRoute { netns, .. }
                | Op::DelDefaultRoute { netns, .. } => {
                    stale.insert(netns.clone());
                }
                Op::CreateNetns { name } | Op::DeleteNetns { name } => {
                    stale.insert(NsRef::Named(name.clone()));
                }
                Op::WriteFile { path, .. } | Op::RemoveFile { path } => {
                    stale_files.insert(path.clone());
                }
                _ => {}
            }
        }
    }
    observe::Reuse {
        earlier: &p.observation,
        stale,
        stale_files,
        host: host.all,
        host_links: host.links,
        host_indexes: BTreeSet::new(),
        host_addrs: host.addrs,
        sysctls,
        firewall: firewall.map(Cow::Owned),
        ns_ids: None,
    }
}

/// Prints the warnings loudly: above the plan on stdout for people, on
/// stderr with `--format json` (stdout stays one JSON document).
pub fn print_warnings(warnings: &[String], format: Format) {
    let mut out = Out::default();
    warnings_to(&mut out, warnings, format);
    out.print();
}

/// [`print_warnings`] into `out`.
pub fn warnings_to(out: &mut Out, warnings: &[String], format: Format) {
    use std::fmt::Write as _;
    for w in warnings {
        match format {
            Format::Text => {
                let _ = writeln!(out.stdout, "Warning: {w}");
            }
            Format::Json | Format::Markdown => {
                let _ = writeln!(out.stderr, "Warning: {w}");
            }
        }
    }
    if !warnings.is_empty() && format == Format::Text {
        out.stdout.push('\n');
    }
}

/// Prints the held-back objects on stderr, one line each.
pub fn print_held(held: &[Failure]) {
    eprint!("{}", held_text(held));
}

/// [`print_held`]'s lines.
pub fn held_text(held: &[Failure]) -> String {
    held.iter()
        .map(|f| {
            format!(
                "Error: {}: {} (left as it is; what depends on it waits)\n",
                f.object, f.error
            )
        })
        .collect()
}

/// The host already matches (e.g. after a state-dir restore): remember
/// it, so that later drift is measured from here.
pub fn record_converged(sd: &StateDir, record: &mut Record, p: &Planned) -> Result<()> {
    if record_outdated(record, p) {
        record.allocations = p.desired.allocations.clone();
        record.set_applied(Some(model::for_record(p.target())));
        record.pending = None;
        // Files found at their paths with netloom's header (e.g. after
        // `state rebuild`) are netloom's again; a held-back foreign file
        // (no header) is not.
        let marked = p
            .target()
            .files
            .keys()
            .filter(|k| {
                p.observation
                    .state
                    .files
                    .get(*k)
                    .is_some_and(|t| model::written_by_netloom(t))
            })
            .cloned();
        record.owned.files.extend(marked.collect::<Vec<_>>());
        sd.save(record)?;
    }
    Ok(())
}

/// Whether [`record_converged`] has anything to record: the applied
/// state is not `p`'s target, or an apply is pending.
pub fn record_outdated(record: &Record, p: &Planned) -> bool {
    // The record keeps files by digest: compare in that form.
    !record
        .applied()
        .is_some_and(|a| model::same_as_recorded(a, p.target()))
        || record.pending.is_some()
}

/// What [`apply_planned`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Addresses of the changes made.
    pub done: Vec<String>,
    /// Changes that failed (address), each failing its object.
    pub failed: Vec<(String, Failure)>,
    /// Changes that wait for a failed object.
    pub not_done: Vec<String>,
    pub netlink_writes: u64,
    pub netlink_lookups: u64,
    pub nft_transactions: u32,
    pub nft_elements: usize,
    /// The firewall this apply's transactions made, and the ruleset
    /// generation at which only they had moved the ruleset since the
    /// plan's listing (None: no transaction, or that was not shown).
    pub nft_made: Option<(Option<model::FirewallState>, u32)>,
}

impl Applied {
    /// The objects that failed while applying, without repeats.
    pub fn failed_objects(&self) -> Vec<&Failure> {
        let mut seen = BTreeSet::new();
        self.failed
            .iter()
            .map(|(_, f)| f)
            .filter(|f| seen.insert(f.object.clone()))
            .collect()
    }

    /// The counts of the changes made.
    pub fn made(&self, plan: &Plan) -> plan::Summary {
        let done: BTreeSet<&str> = self.done.iter().map(String::as_str).collect();
        let mut s = plan::Summary::default();
        for c in plan
            .changes
            .iter()
            .filter(|c| done.contains(c.address.as_str()))
        {
            match c.action {
                plan::Action::Create => s.add += 1,
                plan::Action::Update => s.change += 1,
                plan::Action::Delete => s.destroy += 1,
                plan::Action::Replace => {
                    s.add += 1;
                    s.destroy += 1;
                }
            }
        }
        s
    }

    /// The report line: counts of what was made, and what failed (while
    /// applying, or `held` back before).
    pub fn report(&self, plan: &Plan, held: &[Failure]) -> String {
        let s = self.made(plan);
        let head = if self.failed.is_empty() && held.is_empty() {
            "Apply complete!"
        } else {
            "Apply incomplete:"
        };
        let mut line = format!(
            "{head} {} added, {} changed, {} destroyed ({} netlink writes, {} nft transaction(s) with {} element(s); {} netlink lookups while applying).",
            s.add,
            s.change,
            s.destroy,
            self.netlink_writes,
            self.nft_transactions,
            self.nft_elements,
            self.netlink_lookups
        );
        if !self.failed.is_empty() || !held.is_empty() {
            let mut objs: Vec<&str> = held.iter().map(|f| f.object.as_str()).collect();
            for f in self.failed_objects() {
                if !objs.contains(&f.object.as_str()) {
                    objs.push(f.object.as_str());
                }
            }
            line.push_str(&format!(" Failed: {}.", objs.join(", ")));
            if !self.not_done.is_empty() {
                line.push_str(&format!(" Waiting for them: {}.", self.not_done.join(", ")));
            }
            line.push_str(" Fix the cause and run `netloom apply` again: it continues from here.");
        }
        line
    }
}

/// Applies a plan made by [`plan_live`], records ownership, verifies what
/// did not fail. A failed object is in [`Applied::failed`]; an error is
/// returned only when the run itself could not go on (state dir, reading
/// the host back).
pub async fn apply_planned(sd: &StateDir, record: &mut Record, p: &Planned) -> Result<Applied> {
    let t0 = std::time::Instant::now();
    let want_fw = p.target().firewall.as_ref().map(|f| &f.fw);
    // The firewall the apply's transaction makes, if it runs one.
    let realised: std::cell::RefCell<Option<Option<model::FirewallState>>> = Default::default();
    let fw_tx = |failed: &BTreeSet<String>| {
        let t = plan::hold_back(p.target(), &p.observation.state, failed);
        let tx = t
            .firewall
            .as_ref()
            .map(|f| firewall::plan_transaction(&f.fw, p.observation.firewall.as_deref()));
        if tx.as_ref().is_some_and(|t| !t.is_empty()) {
            *realised.borrow_mut() = Some(t.firewall.clone());
        }
        tx
    };
    // Write-ahead: the owner, the allocations and the changes about to be
    // made are on disk before the first of them (the objects themselves
    // carry marks as they are created), so that an interruption at any
    // instant leaves a host the next run recognises and finishes.
    record.allocations = p.desired.allocations.clone();
    record.pending = Some(Pending {
        started: unix_now(),
        changes: p.plan.changes.iter().map(|c| c.address.clone()).collect(),
    });
    Owner::claim(sd.path()).context("record this state dir as the host's netloom owner")?;
    sd.save(record).map_err(|e| {
        anyhow!("{e:#}\nnothing was changed: the intent could not be recorded (is the state dir's disk full?)")
    })?;
    tracing::debug!("apply: intent recorded after {:?}", t0.elapsed());
    crate::host::fault::point();
    let outcome = crate::host::apply::execute(&p.plan, &fw_tx, &mut record.owned).await;
    tracing::debug!("apply: changes made after {:?}", t0.elapsed());
    let interrupted = outcome.interrupted;
    let mut applied = Applied {
        done: outcome.done,
        failed: outcome.failed,
        not_done: outcome.not_done,
        netlink_writes: outcome.counters.writes,
        netlink_lookups: outcome.counters.dumps,
        nft_transactions: outcome.nft_transactions,
        nft_elements: outcome.nft_elements,
        nft_made: None,
    };
    if applied.failed.is_empty()
        && interrupted.is_none()
        && want_fw.is_none()
        && p.observation.firewall.is_some()
    {
        applied.nft_transactions += 1;
        *realised.borrow_mut() = Some(None);
        if let Err(e) = nft::delete_tables() {
            applied.failed.push((
                plan::NFT_TABLE.into(),
                Failure::new(
                    plan::NFT_TABLE,
                    format!("delete netloom's nft table: {e:#}"),
                ),
            ));
        }
    }
    record.owned.netns_paths = observe::attached_paths(p.target());
    if let Some(sig) = interrupted {
        let saved = sd.save(record);
        let mut msg = format!(
            "apply interrupted by {}: finished the operation in progress, then stopped\n",
            crate::host::interrupt::name(sig)
        );
        if !applied.done.is_empty() {
            msg.push_str(&format!("done: {}\n", applied.done.join(", ")));
        }
        msg.push_str(&format!("not done: {}\n", applied.not_done.join(", ")));
        if let Err(e) = &saved {
            msg.push_str(&format!("{}\n", unrecorded(e)));
        }
        msg.push_str("Run `netloom apply` again to finish (it continues from here), or `netloom down` to remove what was made.");
        return Err(anyhow!(msg));
    }
    // The record is written next after verifying. A crash before then
    // finds the write-ahead record and the objects' marks, as after any
    // operation of the apply (each is followed by a fault point the crash
    // test kills at); a write here would only cost time. A verification
    // that fails or cannot read the host writes what was made first.
    let stop = |record: &Record, e: anyhow::Error| match sd.save(record) {
        Ok(()) => e,
        Err(s) => anyhow!("{e:#}\n{}", unrecorded(&s)),
    };
    // What this run made true: the target with the failed objects as they
    // were.
    let failed: BTreeSet<String> = applied
        .failed
        .iter()
        .map(|(_, f)| f.object.clone())
        .collect();
    let made = &*plan::hold_back(p.target(), &p.observation.state, &failed);
    // Verify: read back; what did not fail must now match.
    // Only what the apply touched is read again; the rest is as the plan's
    // observation saw it.
    let known = known_firewall(p, &applied, realised.into_inner());
    let known_at = known.as_ref().map(|(_, generation)| *generation);
    let mut reuse = touched(p, known.map(|(fw, _)| fw));
    let (rest, fw_after) = if reuse.firewall_only() {
        // Only the firewall changed (a port more or less), and it is known
        // as the transaction made it: the rest of the host is the plan's
        // reading, which matched the target but for the plan's changes,
        // so only the firewall is compared. Building the observation and
        // diffing every object again costs what the host holds.
        let fw = reuse.firewall.take().and_then(Cow::into_owned);
        (plan::diff_firewall_only(made, fw.as_ref()), fw)
    } else {
        match observe::observe_with(p.target(), record, Some(&reuse), None).await {
            Ok(again) => (
                plan::diff(made, &again.state, None).changes,
                again.state.firewall,
            ),
            Err(e) => return Err(stop(record, e)),
        }
    };
    tracing::debug!("apply: verified after {:?}", t0.elapsed());
    let rest: Vec<&plan::Change> = rest
        .iter()
        .filter(|c| !failed.contains(&c.object) && !c.needs.iter().any(|n| failed.contains(n)))
        .collect();
    if !rest.is_empty() {
        let addrs: Vec<&str> = rest.iter().map(|c| c.address.as_str()).collect();
        // The failures of this run are part of why: say them too.
        let why: Vec<String> = applied
            .failed
            .iter()
            .map(|(a, f)| format!("\n  {a} failed: {}", f.error))
            .collect();
        return Err(stop(
            record,
            anyhow!(
                "apply did not converge; still different after applying: {}{}",
                addrs.join(", "),
                why.concat()
            ),
        ));
    }
    // As the record file keeps it (files by digest): the same record as
    // a later load reads, and no second copy of every file's text.
    record.set_applied(Some(model::for_record(made)));
    record.pending = None;
    sd.save(record).map_err(|e| anyhow!("{}", unrecorded(&e)))?;
    tracing::debug!("apply: recorded after {:?}", t0.elapsed());
    if applied.nft_transactions > 0 {
        applied.nft_made = known_at.map(|generation| (fw_after, generation));
    }
    Ok(applied)
}

/// The firewall after the apply, known without listing it: nft
/// transactions are all or nothing, and the ruleset generation, which
/// every committed transaction moves by one, shows whether anything but
/// this apply's own transactions changed the ruleset since the plan read
/// it. `None` (list it again) when that cannot be shown; with the
/// generation it was shown at.
fn known_firewall(
    p: &Planned,
    applied: &Applied,
    realised: Option<Option<model::FirewallState>>,
) -> Option<(Option<model::FirewallState>, u32)> {
    let nft_failed = applied
        .failed
        .iter()
        .any(|(_, f)| f.object == plan::NFT_TABLE);
    let read_at = p.observation.nft_generation?;
    if nft_failed {
        return None;
    }
    let now = nft::generation::generation().ok()?;
    if now != read_at.wrapping_add(applied.nft_transactions) {
        return None;
    }
    let fw = realised.unwrap_or_else(|| p.observation.state.firewall.clone());
    Some((fw, now))
}

/// The changes were made but their record could not be written.
fn unrecorded(e: &anyhow::Error) -> String {
    format!(
        "the changes were made but their record could not be written ({e:#}); they carry netloom's marks, so the next `netloom apply` (once the state dir can be written) adopts them, and `netloom down` removes them"
    )
}

/// What `status` and `plan` say about an apply that did not finish (the
/// record still holds the write-ahead part it wrote before its first
/// change): when it started and what it was about to make.
pub fn interrupted_note(p: &Pending) -> String {
    const SHOWN: usize = 8;
    let ago = unix_now().saturating_sub(p.started);
    let mut what = p
        .changes
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if p.changes.len() > SHOWN {
        what.push_str(&format!(", and {} more", p.changes.len() - SHOWN));
    }
    if what.is_empty() {
        what = "nothing".into();
    }
    format!(
        "the apply started {ago}s ago was interrupted (killed, stopped by a signal, or its record could not be written) before it finished; it was about to make {} change(s): {what}",
        p.changes.len()
    )
}

/// What to run after an interrupted apply.
pub const INTERRUPTED_HINT: &str = "run `netloom apply` to finish it (it adopts what was made and continues), or `netloom down` to remove what it made";
