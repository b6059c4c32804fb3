//! `down`: remove everything netloom made, and only that.
//!
//! What is netloom's is read from the state record *and* from the marks on
//! the objects themselves (interface aliases, the namespace marks under
//! /run/netloom, the header of its files, the comment of its nft table), so
//! `down` works after an interrupted apply and without a readable record.
//! In the state dir it removes only its own files: the directory (maybe a
//! mount point), the lock file and anything else stay.

use std::io::IsTerminal;

use anyhow::{Context, Result, anyhow};

use crate::cmd::cli::Cli;
use crate::cmd::steps::{
    Exit, open_state, refuse_if_agent, refuse_if_other_owner, require_root, state_dir,
};
use crate::core::model::State;
use crate::core::render::{self, Style};
use crate::core::spec;
use crate::host::marks::{self, Owner};
use crate::host::{nft, observe};

pub async fn down(cli: &Cli) -> Result<Exit> {
    require_root("down")?;
    // The file may be gone or broken: `down` needs only the state dir.
    let spec = std::fs::read_to_string(&cli.config)
        .ok()
        .and_then(|t| spec::load(&cli.config.display().to_string(), &t).ok());
    let dir = state_dir(cli, spec.as_ref());
    refuse_if_agent(&dir, None)?;
    refuse_if_other_owner(&dir)?;
    crate::host::interrupt::install()?;
    let sd = open_state(&dir)?;
    let mut record = match sd.load() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netloom: {e:#}\nnetloom: removing what carries netloom's marks instead.");
            sd.from_marks()
        }
    };
    sd.adopt_marked_files(&mut record);
    let observation = observe::observe(&State::default(), &record).await?;
    let plan = crate::host::apply::teardown_plan(&observation.state);
    print!(
        "{}",
        render::text(
            &plan,
            Style {
                color: std::io::stdout().is_terminal(),
                // What goes, one line each; file contents only with --verbose.
                detail: crate::cmd::steps::detail(cli, render::Detail::Brief),
            }
        )
    );
    // The table goes as a whole below: no element-wise transaction. The
    // veths of deleted namespaces go with them (see below for stragglers).
    let fast = crate::core::plan::without_veths_of_deleted_namespaces(&plan, &observation.state);
    delete_namespaces_together(&fast);
    let outcome = crate::host::apply::execute(&fast, &|_| None, &mut record.owned).await;
    if !outcome.failed.is_empty() || outcome.interrupted.is_some() {
        // The record may have been unreadable: keep what is left readable.
        let saved = sd.save(&record);
        let failed: Vec<String> = outcome
            .failed
            .iter()
            .map(|(addr, f)| format!("{addr}: {}", f.error))
            .collect();
        let what = match outcome.interrupted {
            Some(sig) => format!("down interrupted by {}", crate::host::interrupt::name(sig)),
            None => format!("down failed: {}", failed.join("; ")),
        };
        let mut msg = format!("{what}; run `netloom down` again to remove the rest");
        if let Err(e) = saved {
            msg.push_str(&format!(" (the record could not be written: {e:#})"));
        }
        return Err(anyhow!(msg));
    }
    remove_stray_veths().await?;
    if observation.firewall.is_some() {
        nft::delete_tables().context("delete netloom's nft table")?;
    }
    for family in &observation.foreign_tables {
        eprintln!(
            "netloom: left nft table `{family} {}` alone: netloom did not create it.",
            crate::core::firewall::TABLE
        );
    }
    for name in marks::marked_netns() {
        let p = crate::core::model::named_path(&name);
        // The empty file of a creation cut short before its mount.
        if p.exists() && !observe::is_netns(&p) && marks::netns_marked(&name) {
            crate::host::netns::delete_named(&name)?;
        }
        // Marks whose namespace is gone (removed by hand, never created).
        if !p.exists() {
            marks::netns_unmark(&name)?;
        }
    }
    sd.remove_own(false)?;
    Owner::release(&dir)?;
    eprintln!("netloom removed everything it owned.");
    Ok(Exit::Ok)
}

/// Waits until the kernel has destroyed the veths of the deleted
/// namespaces (it does so asynchronously, in one batch), and deletes
/// netloom's veths still there after a while: their namespace outlived
/// its file because a process is still in it.
async fn remove_stray_veths() -> Result<()> {
    let host = crate::host::netlink::open_host()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let strays: Vec<_> = host
            .links()
            .await?
            .into_iter()
            .filter(|l| {
                l.alias
                    .as_deref()
                    .and_then(crate::core::model::parse_alias)
                    .is_some_and(|m| matches!(m, crate::core::model::AliasMark::Endpoint { .. }))
            })
            .collect();
        if strays.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            for l in strays {
                if let Err(e) = host.delete_link(l.index).await {
                    if !crate::host::netlink::is_errno(&e, libc::ENODEV) {
                        return Err(e).with_context(|| format!("delete {}", l.name));
                    }
                }
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Deletes the named namespaces `plan` deletes, several at a time: each
/// unmount waits for an RCU grace period, and concurrent unmounts share
/// theirs (one at a time, 1,000 namespaces took seconds). Errors are left
/// to the plan's own deletion, which runs next and finds the namespaces
/// that went already gone (it still removes their marks and records it).
fn delete_namespaces_together(plan: &crate::core::plan::Plan) {
    let names: Vec<&str> = plan.deleted_namespaces().collect();
    const THREADS: usize = 16;
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS.min(names.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    if crate::core::model::named_path(name).exists() {
                        let _ = crate::host::netns::delete_named(name);
                    }
                }
            });
        }
    });
}
