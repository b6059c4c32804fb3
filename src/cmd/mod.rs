//! The commands: the only code that prints.
//!
//! [`run`] dispatches a parsed command line to one module per command;
//! [`steps`] holds what they share (loading, planning, applying).

pub mod agent_client;
pub mod cli;
pub mod cluster_agent;
pub mod confirm;
pub mod down;
pub mod plan_apply;
pub mod push;
pub mod state;
pub mod status;
pub mod steps;
pub mod watch;

use std::time::Duration;

use anyhow::Result;

use crate::cmd::cli::{Cli, Command, StateAction};
pub use crate::cmd::steps::Exit;

/// Runs one command; errors are printed by the caller and exit 1. With
/// `NETLOOM_STATS=1` the command's kernel requests are counted on stderr
/// (for benchmarks).
pub async fn run(cli: Cli) -> Result<Exit> {
    let r = dispatch(cli).await;
    if std::env::var_os("NETLOOM_STATS").is_some() {
        let s = crate::host::stats::get();
        eprintln!(
            "netloom-stats: netlink_requests={} nft_listings={} nft_elements_read={} nft_transactions={} nft_elements_written={}",
            s.netlink_requests,
            s.nft_listings,
            s.nft_elements_read,
            s.nft_transactions,
            s.nft_elements_written
        );
    }
    r
}

async fn dispatch(cli: Cli) -> Result<Exit> {
    match &cli.command {
        Command::Schema => {
            print!("{}", crate::core::config::schema_json());
            Ok(Exit::Ok)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics when its writer
            // fails (e.g. `| head` closing the pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "netloom", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(Exit::Ok)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            std::io::Write::write_all(&mut std::io::stdout(), &page)?;
            Ok(Exit::Ok)
        }
        Command::Validate => plan_apply::validate(&cli),
        Command::OciSpec { name } => oci_spec(&cli, name),
        Command::Plan {
            offline: true,
            base,
            detailed_exitcode,
            format,
            ..
        } => plan_apply::plan_offline(&cli, base.as_deref(), *detailed_exitcode, *format),
        Command::Plan {
            offline: false,
            detailed_exitcode,
            format,
            out,
            ..
        } => {
            let how = plan_apply::How {
                dry_run: true,
                detailed: *detailed_exitcode,
                format: *format,
                out: out.as_deref(),
                confirm_timeout: None,
            };
            plan_apply::apply_cmd(&cli, how).await
        }
        Command::Apply {
            plan: Some(saved),
            detailed_exitcode,
            format,
            ..
        } => plan_apply::apply_saved(&cli, saved, *detailed_exitcode, *format).await,
        Command::Apply {
            plan: None,
            dry_run,
            detailed_exitcode,
            format,
            confirm_timeout,
        } => {
            let how = plan_apply::How {
                dry_run: *dry_run,
                detailed: *detailed_exitcode,
                format: *format,
                out: None,
                confirm_timeout: confirm_timeout.map(Duration::from_secs),
            };
            plan_apply::apply_cmd(&cli, how).await
        }
        Command::Status {
            cluster: true,
            format: _,
        } => push::status_cluster(&cli).await,
        Command::Status {
            format,
            cluster: false,
        } => status::status(&cli, *format).await,
        Command::Push { dry_run } => push::push(&cli, *dry_run).await,
        Command::Inspect { network, format } => status::inspect(&cli, network, *format).await,
        Command::Confirm => confirm::confirm(&cli).await,
        Command::Down => down::down(&cli).await,
        Command::State {
            action: StateAction::Rebuild,
        } => state::rebuild(&cli).await,
        Command::State {
            action: StateAction::Show,
        } => state::show(&cli),
        Command::Watch { resync, host } => {
            watch::watch(&cli, Duration::from_secs(*resync), host.as_deref()).await
        }
    }
}

/// `netloom oci-spec NAME`: the fragment, pretty-printed JSON on stdout.
fn oci_spec(cli: &Cli, name: &str) -> Result<Exit> {
    let Some(l) = steps::load(cli)? else {
        return Ok(Exit::Error);
    };
    let fragment =
        crate::core::oci::fragment(&l.spec, &l.host, name).map_err(|e| anyhow::anyhow!(e))?;
    println!("{}", serde_json::to_string_pretty(&fragment)?);
    Ok(Exit::Ok)
}
