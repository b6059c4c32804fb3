//! netloom's nft tables on the live host: read with `nft -j list table`,
//! written with one `nft -f -` transaction, or, when the transaction is
//! only a few published ports, with one netlink batch of netloom's own
//! (`edits`). What the tables hold, how they are rendered and parsed,
//! and how a transaction is planned is the core's
//! [`crate::core::firewall`]; this module only talks to the kernel.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::core::firewall::{self, Observed, TABLE, Transaction};

pub mod counters;
mod edits;
pub mod generation;
#[cfg(test)]
mod kernel_tests;
pub mod monitor;
mod nfnl;

fn nft_list_table(family: &str) -> Result<Option<String>> {
    let args = ["list", "table", family, TABLE];
    match nftables::helper::get_current_ruleset_raw(nftables::helper::DEFAULT_NFT, args) {
        Ok(out) => Ok(Some(out)),
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. }) => {
            bail!(
                "nft -j list table {family} {TABLE} failed: {}",
                stderr.trim()
            )
        }
        Err(e) => Err(e).with_context(|| format!("nft -j list table {family} {TABLE}")),
    }
}

/// Read netloom's tables from the kernel; None when neither exists.
/// Lists only netloom's own tables, never the whole ruleset.
pub fn observe() -> Result<Option<Observed>> {
    let mut items = Vec::new();
    for family in ["inet", "bridge"] {
        if let Some(out) = nft_list_table(family)? {
            let doc: Value = serde_json::from_str(&out)
                .with_context(|| format!("nft -j list table {family} {TABLE}: invalid JSON"))?;
            match doc {
                Value::Object(mut m) => match m.remove("nftables") {
                    Some(Value::Array(a)) => items.extend(a),
                    _ => bail!("nft -j list table {family} {TABLE}: no \"nftables\" array"),
                },
                _ => bail!("nft -j list table {family} {TABLE}: not a JSON object"),
            }
        }
    }
    if items.is_empty() {
        crate::host::stats::nft_listing(0);
        return Ok(None);
    }
    let o = firewall::parse_items(&items);
    crate::host::stats::nft_listing(o.element_count());
    Ok(Some(o))
}

fn run_nft_script(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        // Its own process group: a Ctrl-C at the terminal reaches netloom,
        // which lets the transaction finish, and not nft in the middle.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (is the nftables package installed?)")?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft: no stdin pipe"))?;
    // Write from a thread: a large script must not deadlock against nft
    // filling its stderr pipe while we are still writing.
    let input = script.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("waiting for nft")?;
    let written = writer
        .join()
        .map_err(|_| anyhow!("nft stdin writer panicked"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "nft rejected the transaction ({}), nothing was changed:\n{}",
            out.status,
            stderr.trim()
        );
    }
    written.context("writing the transaction to nft")?;
    Ok(())
}

/// Apply a transaction: one `nft -f -` call, all or nothing.
pub fn apply(tx: &Transaction) -> Result<()> {
    if tx.is_empty() {
        return Ok(());
    }
    crate::host::stats::nft_transaction(tx.elements_added() + tx.elements_removed());
    match tx.port_edits() {
        Some(edits) => edits::write(edits),
        None => run_nft_script(tx.script()),
    }
}

/// Which of the tables named `netloom` found in the kernel carry
/// netloom's comment: ("inet", marked), ("bridge", marked). A text
/// listing, because nft's JSON omits table comments; only asked when the
/// state record cannot tell.
pub fn tables_marked() -> Result<Vec<(&'static str, bool)>> {
    let mut out = Vec::new();
    for family in ["inet", "bridge"] {
        let o = Command::new("nft")
            .args(["list", "table", family, TABLE])
            .stdin(Stdio::null())
            .output()
            .context("cannot run nft (is the nftables package installed?)")?;
        if !o.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let mark = format!("comment \"{}\"", firewall::TABLE_MARK);
        // The table's own comment comes before its first set or chain.
        let head: Vec<&str> = text
            .lines()
            .skip(1)
            .take_while(|l| !l.contains('{'))
            .collect();
        out.push((family, head.iter().any(|l| l.trim() == mark)));
    }
    Ok(out)
}

/// Deletes netloom's tables if present (for `netloom down`), atomically.
/// Other tables are not touched.
pub fn delete_tables() -> Result<()> {
    let Some(o) = observe()? else {
        return Ok(());
    };
    run_nft_script(&firewall::delete_script(&o)).context("deleting netloom's nft tables")
}
