//! Confirmed applies: `apply --confirm-timeout SECONDS` and `confirm`
//! (nmstate's checkpoint, for changes made over the connection they may
//! cut).
//!
//! Before applying, a checkpoint of what netloom owned (its last applied
//! state and allocations) is written to the state dir with a deadline. The
//! applying process then releases the state-dir lock and waits; `netloom
//! confirm`, from another shell, marks the checkpoint confirmed. At the
//! deadline the host is planned back to the checkpoint's state and that
//! plan applied, and the file content is marked rejected. Whoever comes
//! first after the deadline rolls back — the waiting apply, the next
//! `apply`, `confirm` or the agent — so a crash of the waiting process
//! does not keep an unconfirmed change.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::cmd::cli::Cli;
use crate::cmd::steps::{self, Exit, Planned, open_state};
use crate::core::checkpoint::{Checkpoint, Phase, Rejected};
use crate::core::hash::sha256_hex;
use crate::core::model::{self, Desired, State};
use crate::core::plan;
use crate::host::checkpoint as store;
use crate::host::state::{Record, StateDir, unix_now};

/// The SHA-256 of a config file's bytes, as checkpoints and rejected
/// records name contents.
pub fn content_sha(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// The file as checkpoints name it: its absolute path.
pub fn file_key(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Writes the checkpoint of a confirmed apply that is about to start.
pub fn begin(
    dir: &Path,
    record: &Record,
    path: &Path,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Checkpoint> {
    let now = unix_now();
    let cp = Checkpoint {
        phase: Phase::Pending,
        created: now,
        deadline: now + timeout.as_secs(),
        pid: std::process::id(),
        config_path: file_key(path),
        config_sha256: content_sha(bytes),
        previous: record.applied().map(with_texts),
        previous_allocations: record.allocations.clone(),
    };
    // Applying with --confirm-timeout is the way to try a rejected content
    // again.
    if store::read_rejected(dir)?.is_some_and(|r| r.matches(&cp.config_path, &cp.config_sha256)) {
        store::remove_rejected(dir)?;
    }
    store::write_checkpoint(dir, &cp)?;
    Ok(cp)
}

/// `applied` with the text of each file that still holds what netloom
/// last wrote. The record keeps only digests of files, but a rollback has
/// to write them back; the checkpoint is taken before this apply changes
/// anything, so the files on disk are still the previous apply's. A file
/// that drifted meanwhile keeps its digest and is left as it is by the
/// rollback (the plan writes no file whose text it does not know).
fn with_texts(applied: &State) -> State {
    let mut st = applied.clone();
    for (path, content) in st.files_mut().iter_mut() {
        if !model::is_digest(content) {
            continue;
        }
        if let Ok(on_disk) = std::fs::read_to_string(path)
            && model::file_matches(content, &on_disk)
        {
            *content = model::netloom_part(&on_disk).into();
        }
    }
    st
}

/// Plans the host back to the checkpoint's state, applies that, and marks
/// the file content rejected. Called with the state-dir lock held.
pub async fn rollback(sd: &StateDir, record: &mut Record, cp: &Checkpoint) -> Result<()> {
    let target = cp.previous.clone().unwrap_or_default();
    let observation = crate::host::observe::observe(&target, record).await?;
    let plan = plan::diff(&target, &observation.state, record.applied());
    let p = Planned {
        desired: Desired {
            state: target,
            allocations: cp.previous_allocations.clone(),
            networks: Default::default(),
            zones: Vec::new(),
            dns_clients: Vec::new(),
            external_files: Default::default(),
        },
        held_target: None,
        observation,
        plan,
        held: Vec::new(),
        warnings: Vec::new(),
        interrupted: None,
    };
    if !p.plan.is_empty() {
        let applied = steps::apply_planned(sd, record, &p).await?;
        for (addr, f) in &applied.failed {
            eprintln!("Error: rollback: {}: {addr} failed: {}", f.object, f.error);
        }
    }
    let dir = sd.path();
    store::write_rejected(
        dir,
        &Rejected {
            config_path: cp.config_path.clone(),
            config_sha256: cp.config_sha256.clone(),
            at: unix_now(),
            reason: format!(
                "not confirmed within {}s of the apply",
                cp.deadline.saturating_sub(cp.created)
            ),
        },
    )?;
    let mut done = cp.clone();
    done.phase = Phase::RolledBack;
    store::write_checkpoint(dir, &done)?;
    Ok(())
}

/// Rolls back an unconfirmed change whose time ran out (the waiting
/// process crashed or was killed); returns whether it did.
pub async fn recover_expired(sd: &StateDir, record: &mut Record) -> Result<bool> {
    let Some(cp) = expired_checkpoint(sd)? else {
        return Ok(false);
    };
    roll_back_expired(sd, record, &cp).await?;
    Ok(true)
}

/// The checkpoint of a change whose time to be confirmed ran out, if any.
pub fn expired_checkpoint(sd: &StateDir) -> Result<Option<Checkpoint>> {
    Ok(store::read_checkpoint(sd.path())?.filter(|cp| cp.expired(unix_now())))
}

/// Rolls back the change `cp` (an [`expired_checkpoint`]) was taken for.
pub async fn roll_back_expired(sd: &StateDir, record: &mut Record, cp: &Checkpoint) -> Result<()> {
    eprintln!(
        "netloom: the change applied from {} was not confirmed in time; rolling back to the state before it first.",
        cp.config_path
    );
    rollback(sd, record, cp).await
}

/// Why `path` with content `bytes` must not be applied now, if so: a
/// change awaits confirmation, or this content was rolled back.
/// `confirming`: a confirmed apply, which may try a rejected content again.
pub fn refusal(dir: &Path, path: &Path, bytes: &[u8], confirming: bool) -> Result<Option<String>> {
    if let Some(cp) = store::read_checkpoint(dir)?
        && cp.awaiting(unix_now())
    {
        return Ok(Some(format!(
            "a change applied from {} awaits confirmation for {} more second(s): run `netloom confirm` to keep it, or wait for the rollback",
            cp.config_path,
            cp.deadline.saturating_sub(unix_now())
        )));
    }
    if confirming {
        return Ok(None);
    }
    if let Some(r) = store::read_rejected(dir)?
        && r.matches(&file_key(path), &content_sha(bytes))
    {
        return Ok(Some(format!(
            "this content of {} was rolled back ({}); it is not applied again until the file changes, or apply it with --confirm-timeout",
            r.config_path, r.reason
        )));
    }
    Ok(None)
}

/// After a confirmed apply: waits, without the state-dir lock, for
/// `netloom confirm` or the deadline; rolls back at the deadline.
pub async fn wait(dir: &Path, cp: &Checkpoint, applied: Exit) -> Result<Exit> {
    eprintln!(
        "Waiting {}s for `netloom confirm` (from another shell); without it the change is rolled back.",
        cp.deadline.saturating_sub(unix_now())
    );
    loop {
        match store::read_checkpoint(dir)? {
            Some(c) if c.created == cp.created && c.pid == cp.pid => match c.phase {
                Phase::Confirmed => {
                    store::remove_checkpoint(dir)?;
                    eprintln!("Confirmed: the change is kept.");
                    return Ok(applied);
                }
                Phase::RolledBack => {
                    eprintln!(
                        "Not confirmed in time: the change was rolled back (by another netloom run)."
                    );
                    return Ok(Exit::Error);
                }
                Phase::Pending if c.expired(unix_now()) => break,
                Phase::Pending => {}
            },
            // Removed, or replaced by another confirmed apply: nothing of
            // ours to wait for; the change stays.
            _ => {
                eprintln!("The checkpoint is gone; the change is kept.");
                return Ok(applied);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sd = open_state(dir)?;
    let mut record = sd.load()?;
    match store::read_checkpoint(dir)? {
        Some(c) if c.created == cp.created && c.phase == Phase::Pending => {
            rollback(&sd, &mut record, &c).await?;
            eprintln!(
                "Not confirmed within {}s: rolled back to the state before this apply; this content of {} is marked rejected.",
                c.deadline.saturating_sub(c.created),
                c.config_path
            );
            Ok(Exit::Error)
        }
        Some(c) if c.created == cp.created && c.phase == Phase::Confirmed => {
            store::remove_checkpoint(dir)?;
            eprintln!("Confirmed: the change is kept.");
            Ok(applied)
        }
        _ => {
            eprintln!("Not confirmed in time: the change was rolled back.");
            Ok(Exit::Error)
        }
    }
}

/// `netloom confirm`: keeps the change a confirmed apply waits for.
pub async fn confirm(cli: &Cli) -> Result<Exit> {
    steps::require_root("confirm")?;
    let spec = steps::load(cli)?.map(|l| l.spec);
    let dir = steps::state_dir(cli, spec.as_ref());
    let sd = open_state(&dir)?;
    let mut record = sd.load()?;
    let Some(mut cp) = store::read_checkpoint(&dir)? else {
        eprintln!("Nothing awaits confirmation.");
        return Ok(Exit::Error);
    };
    match cp.phase {
        Phase::Pending if cp.expired(unix_now()) => {
            recover_expired(&sd, &mut record).await?;
            eprintln!("Too late: the change was not confirmed in time and has been rolled back.");
            Ok(Exit::Error)
        }
        Phase::Pending => {
            cp.phase = Phase::Confirmed;
            store::write_checkpoint(&dir, &cp)?;
            println!(
                "Confirmed: the change applied from {} is kept.",
                cp.config_path
            );
            Ok(Exit::Ok)
        }
        Phase::Confirmed => {
            println!("Already confirmed.");
            Ok(Exit::Ok)
        }
        Phase::RolledBack => {
            eprintln!("Too late: the change was rolled back.");
            Ok(Exit::Error)
        }
    }
}
