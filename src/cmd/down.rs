//! `down`: remove everything netloom made.

use std::io::IsTerminal;

use anyhow::{Context, Result, anyhow};

use crate::cmd::cli::Cli;
use crate::cmd::steps::{Exit, LOCK_WAIT, require_root, state_dir};
use crate::core::model::State;
use crate::core::render::{self, Style};
use crate::core::spec;
use crate::host::state::StateDir;
use crate::host::{nft, observe};

pub async fn down(cli: &Cli) -> Result<Exit> {
    require_root("down")?;
    // The file may be gone or broken: `down` needs only the state dir.
    let spec = std::fs::read_to_string(&cli.config)
        .ok()
        .and_then(|t| spec::load(&cli.config.display().to_string(), &t).ok());
    let dir = state_dir(cli, spec.as_ref());
    let sd = StateDir::open(&dir, LOCK_WAIT)?;
    let mut record = sd.load()?;
    let observation = observe::observe(&State::default(), &record).await?;
    let plan = crate::host::apply::teardown_plan(&observation.state);
    print!(
        "{}",
        render::text(
            &plan,
            Style {
                color: std::io::stdout().is_terminal()
            }
        )
    );
    // The table goes as a whole below: no element-wise transaction.
    let outcome = crate::host::apply::execute(&plan, &|_| None, &mut record.owned).await;
    if !outcome.failed.is_empty() {
        sd.save(&record)?;
        let failed: Vec<String> = outcome
            .failed
            .iter()
            .map(|(addr, f)| format!("{addr}: {}", f.error))
            .collect();
        return Err(anyhow!(
            "down failed: {}; run `netloom down` again",
            failed.join("; ")
        ));
    }
    if observation.firewall.is_some() {
        nft::delete_tables().context("delete netloom's nft table")?;
    }
    sd.remove_all()?;
    eprintln!("netloom removed everything it owned.");
    Ok(Exit::Ok)
}
