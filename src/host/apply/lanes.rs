//! Creating many namespaces at once: a run of consecutive changes that
//! only create containers' namespaces (and set their `lo` up) runs as one
//! lane per container, two lanes at a time.
//!
//! Why: a cold apply of a thousand containers is a thousand namespaces,
//! and most of the kernel's work for one (its sysctl tables, proc and
//! sysfs entries, IPv6 set-up) runs outside its rtnetlink lock, so a
//! second thread keeps the second core busy. The endpoints that follow
//! run one after the other as before: with them in lanes too, crash tests
//! under load saw a recovery run hold a container back (cause not found
//! yet), so they stay out until that is understood.
//!
//! What stays as it was: each container's changes run in plan order,
//! each operation followed by its fault point; a failed change fails its
//! container and holds back the container's later changes, never another
//! container's; a signal stops the run between two operations. Containers
//! do not depend on each other (no two share a namespace: the guard
//! refuses that), and what they need (bridges) is made before the run.
//! Every object is marked before or as it is made, so a crash leaves each
//! container at some point of its own sequence, which the next run
//! finishes whatever the other containers' points are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, anyhow};

use super::{Executor, Interrupted, Outcome, Runner, run_ops};
use crate::core::plan::{Change, Failure, Op};
use crate::host::interrupt;
use crate::host::state::Owned;

/// Threads running lanes (the machines this runs on have a few cores;
/// much of the work is under the kernel's one rtnetlink lock).
const THREADS: usize = 2;

/// Whether `c` may run in a batch: a container's change that creates its
/// namespace or sets an interface up inside one, nothing else.
pub(super) fn batchable(c: &Change) -> bool {
    c.object.starts_with("container.")
        && !c.ops.is_empty()
        && c.ops.iter().all(|op| {
            matches!(
                op,
                Op::CreateNetns { .. } | Op::LinkUp { netns: Some(_), .. }
            )
        })
}

/// The batch that starts a list of changes.
pub(super) struct Batch<'a> {
    /// The changes to run, in plan order.
    pub changes: Vec<&'a Change>,
    /// How many changes of the list the batch covers.
    pub len: usize,
    /// Distinct objects among `changes`.
    pub objects: usize,
}

/// The longest run of batchable changes at the start of `changes` whose
/// needs are neither failed nor made inside the run.
pub(super) fn batch_at<'a>(changes: &'a [Change], failed: &BTreeSet<String>) -> Batch<'a> {
    let mut objects = BTreeSet::new();
    let mut len = 0;
    for c in changes {
        let ready = batchable(c)
            && !failed.contains(&c.object)
            && c.needs
                .iter()
                .all(|n| !failed.contains(n) && !objects.contains(n.as_str()));
        if !ready {
            break;
        }
        objects.insert(c.object.as_str());
        len += 1;
    }
    Batch {
        changes: changes[..len].iter().collect(),
        len,
        objects: objects.len(),
    }
}

/// Records what a batch did in `out` (in plan order) and its failed
/// objects in `failed`; returns the signal that stopped it, if one did.
pub(super) fn merge(
    batch: &[&Change],
    ran: Vec<Option<Result<()>>>,
    failed: &mut BTreeSet<String>,
    out: &mut Outcome,
) -> Option<i32> {
    let mut stop = None;
    let mut unstarted = false;
    for (c, r) in batch.iter().zip(ran) {
        match r {
            Some(Ok(())) => out.done.push(c.address.clone()),
            None => {
                // Not run although its object did not fail (its failure
                // comes first, in plan order): a signal stopped the batch.
                unstarted |= !failed.contains(&c.object);
                out.not_done.push(c.address.clone());
            }
            Some(Err(e)) => match e.downcast_ref::<Interrupted>() {
                Some(i) => {
                    stop = Some(i.0);
                    out.not_done.push(c.address.clone());
                }
                None => {
                    failed.insert(c.object.clone());
                    out.failed
                        .push((c.address.clone(), Failure::new(&c.object, format!("{e:#}"))));
                }
            },
        }
    }
    stop.or_else(|| {
        if unstarted {
            interrupt::requested()
        } else {
            None
        }
    })
}

/// The lanes of a batch: the positions of each object's changes, objects
/// in the order of their first change.
fn lanes(batch: &[&Change]) -> Vec<Vec<usize>> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_object: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in batch.iter().enumerate() {
        let l = by_object.entry(c.object.as_str()).or_default();
        if l.is_empty() {
            order.push(c.object.as_str());
        }
        l.push(i);
    }
    order
        .into_iter()
        .filter_map(|o| by_object.remove(o))
        .collect()
}

/// Runs the lanes of `batch` one after the other on `runner`.
pub(super) async fn one_by_one<R: Runner + ?Sized>(
    runner: &mut R,
    batch: &[&Change],
    owned: &mut Owned,
) -> Vec<Option<Result<()>>> {
    let mut ran: Vec<Option<Result<()>>> = batch.iter().map(|_| None).collect();
    for lane in lanes(batch) {
        if interrupt::requested().is_some() {
            break;
        }
        for i in lane {
            let r = run_ops(runner, batch[i], owned).await;
            let stop = r.is_err();
            ran[i] = Some(r);
            if stop {
                break;
            }
        }
    }
    ran
}

/// Runs the lanes of `batch` on [`THREADS`] threads, each with an
/// executor of its own (sockets, index cache) that starts from what
/// `exec` knows and whose sockets and indexes `exec` takes over after.
pub(super) fn at_once(
    exec: &mut Executor,
    batch: &[&Change],
    owned: &mut Owned,
) -> Vec<Option<Result<()>>> {
    let lanes = lanes(batch);
    let results: Vec<Mutex<Option<Result<()>>>> = batch.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let known = exec.index.clone();
    let finished: Vec<Result<(Executor, Owned)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS.min(lanes.len()))
            .map(|_| {
                s.spawn(|| -> Result<(Executor, Owned)> {
                    let mut ex = Executor::new()?;
                    ex.index = known.clone();
                    let mut own = Owned::default();
                    loop {
                        if interrupt::requested().is_some() {
                            break;
                        }
                        let Some(lane) = lanes.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        for &i in lane {
                            // Blocking sockets: the futures never wait.
                            let r =
                                futures::executor::block_on(run_ops(&mut ex, batch[i], &mut own));
                            let stop = r.is_err();
                            if let Ok(mut slot) = results[i].lock() {
                                *slot = Some(r);
                            }
                            if stop {
                                break;
                            }
                        }
                    }
                    Ok((ex, own))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(anyhow!("a thread running containers' changes panicked"))
                })
            })
            .collect()
    });
    let mut started = 0;
    let mut start_failure = None;
    for f in finished {
        match f {
            Ok((ex, own)) => {
                started += 1;
                exec.adopt(ex);
                owned.bridges.extend(own.bridges);
                owned.netns.extend(own.netns);
                owned.files.extend(own.files);
            }
            Err(e) => start_failure = Some(e),
        }
    }
    if let (0, Some(e)) = (started, start_failure) {
        // No thread could start (no socket): every change fails with the
        // reason rather than look skipped. One that started drains the
        // lanes of one that did not.
        return batch.iter().map(|_| Some(Err(anyhow!("{e:#}")))).collect();
    }
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or(None))
        .collect()
}
