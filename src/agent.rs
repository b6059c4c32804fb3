//! `netloom watch`: the agent.

use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::cli::Cli;
use crate::engine::Exit;

pub async fn watch(_cli: &Cli, _resync: Duration) -> Result<Exit> {
    Err(anyhow!("`netloom watch` is not implemented yet"))
}
