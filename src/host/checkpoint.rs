//! The confirmed-apply records in the state dir: `checkpoint.json` (see
//! [`crate::core::checkpoint::Checkpoint`]) and `rejected.json`. They live
//! beside `state.json`, not in it, so that `netloom confirm` and the
//! waiting apply can read them without the state-dir lock; every write is
//! atomic (temp file, fsync, rename).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::core::checkpoint::{Checkpoint, Rejected};
use crate::host::state::write_atomic;

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

fn rejected_path(dir: &Path) -> PathBuf {
    dir.join("rejected.json")
}

fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(p) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .with_context(|| format!("{} is damaged; remove it to go on", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", p.display())),
    }
}

pub fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>> {
    read(&checkpoint_path(dir))
}

pub fn write_checkpoint(dir: &Path, c: &Checkpoint) -> Result<()> {
    let text = serde_json::to_vec_pretty(c).context("serialize the checkpoint")?;
    write_atomic(&checkpoint_path(dir), &text)
}

pub fn remove_checkpoint(dir: &Path) -> Result<()> {
    remove(&checkpoint_path(dir))
}

pub fn read_rejected(dir: &Path) -> Result<Option<Rejected>> {
    read(&rejected_path(dir))
}

pub fn write_rejected(dir: &Path, r: &Rejected) -> Result<()> {
    let text = serde_json::to_vec_pretty(r).context("serialize the rejected record")?;
    write_atomic(&rejected_path(dir), &text)
}

pub fn remove_rejected(dir: &Path) -> Result<()> {
    remove(&rejected_path(dir))
}
