//! The command line (the README's "Commands").

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Declarative container networking for Linux: Docker's bridge networking
/// (docker0, veth pairs, `-p`, `--link`, user-defined networks, embedded
/// DNS) as a plan/apply reconciler driven by one TOML file.
#[derive(Debug, Parser)]
#[command(
    name = "netloom",
    version,
    about,
    long_about = None,
    after_help = "While an agent (`netloom watch`) runs, `plan` and `status` ask it over /run/netloom/agent.sock \
        (NETLOOM_ASK_AGENT=0: read the kernel instead), and it applies `apply` of its own file (NETLOOM_AGENT_APPLIES=0: the command applies itself)."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "NETLOOM_CONFIG",
        default_value = "netloom.toml"
    )]
    pub config: PathBuf,

    /// Directory for IPAM and ownership records (overrides `settings.state_dir`).
    #[arg(long, global = true, env = "NETLOOM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Log records (stderr): text lines, or one JSON object per line for
    /// log collectors. `RUST_LOG=debug` adds the netlink and nft operations.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "NETLOOM_LOG_FORMAT",
        default_value_t
    )]
    pub log_format: LogFormat,

    /// Cluster mode: etcd endpoints, `URL[,URL...]` (overrides `[cluster] etcd`).
    #[arg(long, global = true, env = "NETLOOM_ETCD")]
    pub etcd: Option<String>,

    /// Show plans in full: every operation and the whole diff of each file.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    /// For plans: a pull-request comment (other commands print text).
    Markdown,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check the file; touches nothing.
    ///
    /// Exit status: 0 valid; 1 invalid, with each error as FILE:LINE:COL: message.
    Validate,
    /// Show what `apply` would change (same as `apply --dry-run`).
    Plan {
        /// Plan against an empty host without reading the kernel or the state
        /// dir (no privileges needed: for pull-request checks).
        #[arg(long)]
        offline: bool,
        /// With --offline: plan from this file (e.g. the base branch's) to
        /// the current one instead of from an empty host: the diff a
        /// pull-request check comments.
        #[arg(long, value_name = "OLD.toml", requires = "offline")]
        base: Option<PathBuf>,
        /// Exit 2 when there are changes, 0 when there are none.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Output format: text for people, json for programs, markdown for
        /// a pull-request comment.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Also save the plan to this file (versioned JSON with digests of
        /// the file, the host and the observed state), for `apply PLAN`.
        #[arg(long, value_name = "PLAN", conflicts_with = "offline")]
        out: Option<PathBuf>,
    },
    /// Make the host match the file, then read it back and verify.
    ///
    /// Exit status: 0 success, 1 error; with --detailed-exitcode 0 no
    /// changes, 2 changes planned or made.
    Apply {
        /// A plan saved by `plan --out`: apply exactly it, or refuse (exit
        /// 1, "stale plan") if the file or the host changed since.
        #[arg(value_name = "PLAN", conflicts_with = "dry_run")]
        plan: Option<PathBuf>,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep a checkpoint of the host as it was, apply, and wait this
        /// long for `netloom confirm` (from another shell); without it the
        /// host is put back and the file content marked rejected (exit 1).
        #[arg(long, value_name = "SECONDS", conflicts_with_all = ["dry_run", "plan"])]
        confirm_timeout: Option<u64>,
        /// Exit 2 when there are changes, 0 when there are none.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Output format: text for people, json for programs.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The agent: apply at start, on file changes, on kernel drift and every
    /// resync period; serve the embedded DNS. SIGHUP reloads; SIGTERM stops
    /// and leaves the network up.
    Watch {
        /// Full resync period in seconds (with jitter).
        #[arg(long, default_value_t = 60)]
        resync: u64,
        /// Cluster mode: reconcile the share of this host (a key of
        /// `[hosts]`) from the desired state in etcd instead of the file.
        #[arg(long)]
        host: Option<String>,
    },
    /// What netloom owns, live, with drift and per-port packet/byte counters.
    ///
    /// Exit status: 0 in sync; 2 drift, pending changes or an interrupted
    /// apply; 1 error.
    Status {
        /// Output format: text for people, json for programs.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Cluster mode: one line per host (converged, behind, error or
        /// unreachable), from the agents' status in etcd.
        #[arg(long)]
        cluster: bool,
    },
    /// Cluster mode: validate the file, allocate cluster addresses and VNIs,
    /// and write the desired state to etcd in one transaction.
    ///
    /// Exit status: 0 success; 1 error.
    Push {
        /// Print what would change on each host; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Like `docker network inspect`.
    ///
    /// Exit status: 0; 1 unknown network.
    Inspect {
        /// Network name.
        network: String,
        /// Output format: json (Docker's fields) or a short text summary.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Keep the change that `apply --confirm-timeout` waits for.
    ///
    /// Exit status: 0 confirmed; 1 nothing to confirm or too late (rolled
    /// back).
    Confirm,
    /// Remove everything netloom created: interfaces, the namespaces it
    /// created, its nft table, the files it wrote, its state.
    Down,
    /// Print the JSON Schema of the file.
    Schema,
    /// Print a shell completion script, e.g. `netloom completions bash >
    /// /etc/bash_completion.d/netloom`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `netloom man >
    /// /usr/local/share/man/man1/netloom.1`.
    Man,
    /// Print the fragment of an OCI bundle's config.json (runc, crun) that
    /// runs a container in container NAME's namespace: the network
    /// namespace path, read-only bind mounts of its hosts and resolv.conf
    /// (rewritten in place, so a running container sees every change) and
    /// its hostname.
    ///
    /// Merge it into `runc spec`'s config.json, replacing the `network`
    /// entry of linux.namespaces, e.g. with jq:
    ///
    ///   jq --argjson f "$(netloom oci-spec web)" '.hostname = $f.hostname
    ///   | .mounts += $f.mounts | .linux.namespaces = [(.linux.namespaces[]
    ///   | select(.type != "network")), $f.linux.namespaces[]]' config.json
    ///
    /// Exit status: 0; 1 unknown container or one without a namespace
    /// (network_mode = "host").
    OciSpec {
        /// Container name (a key of the file's containers table).
        name: String,
    },
    /// The state record in the state dir.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Reconstruct the state record (what netloom owns, the allocations)
    /// from the marks on netloom's objects in the kernel and its files,
    /// for a damaged, lost or newer-version record. The old record is kept
    /// beside it as state.json.damaged-TIME.
    Rebuild,
    /// Print the state record as readable JSON, with every field (the
    /// file itself is compact and leaves out what is derivable).
    Show,
}
