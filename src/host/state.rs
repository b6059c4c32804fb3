//! The state dir: IPAM allocations, what netloom owns, the last applied
//! state (to tell drift from change), and the agent's last runs.
//!
//! One run at a time holds an exclusive `flock` on `STATE_DIR/lock` for its
//! whole duration; every record is written atomically (temp file, fsync,
//! rename, fsync of the directory) so a crash leaves the old or the new
//! record, never half of one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

use crate::core::ipam::Allocations;
use crate::core::model::State;
use crate::core::record::CompactParts;

const RECORD: &str = "state.json";
/// Version 2: compact JSON, the applied state without what is derivable
/// from the rest (see [`crate::core::record`]), what is owned without
/// what the applied state already names. Version 1 (pretty JSON, every
/// field) is still read.
const RECORD_VERSION: u32 = 2;

/// What netloom created and may therefore change or delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Bridge interface names.
    #[serde(default)]
    pub bridges: BTreeSet<String>,
    /// Named namespaces netloom created in /run/netns.
    #[serde(default)]
    pub netns: BTreeSet<String>,
    /// Namespaces attached by path (never deleted, but observed).
    #[serde(default)]
    pub netns_paths: BTreeSet<PathBuf>,
    /// Files written.
    #[serde(default)]
    pub files: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    #[serde(default)]
    pub allocations: Allocations,
    #[serde(default)]
    pub owned: Owned,
    /// The desired state of the last apply that converged. Private: it
    /// changes only through [`Record::set_applied`], which forgets its
    /// compact text.
    #[serde(default)]
    applied: Option<State>,
    /// The apply in progress, recorded before its first change; still
    /// here on the next run when that apply was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    #[serde(skip)]
    compacted: Compacted,
}

impl Record {
    /// The desired state of the last apply that converged.
    pub fn applied(&self) -> Option<&State> {
        self.applied.as_ref()
    }

    /// Records `st` as the applied state. The parts of the compact text
    /// that grow with the host carry over when `st` has the namespaces,
    /// endpoints, bridges and files of the applied state it replaces (a
    /// port more or less changes only the firewall).
    pub fn set_applied(&mut self, st: Option<State>) {
        let carried = match (&self.applied, &st, self.compacted.get()) {
            (Some(old), Some(new), Some(c))
                if old.namespaces == new.namespaces
                    && old.endpoints == new.endpoints
                    && old.bridges == new.bridges
                    && old.files == new.files =>
            {
                c.parts.clone().map(|parts| (c.alloc.clone(), parts))
            }
            _ => None,
        };
        self.applied = st;
        self.compacted = Compacted {
            carried,
            ..Compacted::default()
        };
    }
}

/// The compact JSON text of a record's applied state as the record file
/// holds it, with the allocations it was compacted against: read with
/// the record, or made by its first save. Compacting a large applied
/// state is most of a save, and an apply's write-ahead save writes the
/// applied state it read (the agent keeps its record between applies), so
/// only a new applied state (or allocations that move its containers) is
/// compacted again, and then with the parts it shares with the state
/// before ([`crate::core::record::CompactParts`]).
#[derive(Default)]
struct Compacted {
    whole: std::sync::Mutex<Option<Arc<CompactText>>>,
    /// The parts of the applied state before, with the allocations they
    /// were made against: the applied state has the same namespaces,
    /// endpoints, bridges and files.
    carried: Option<(Allocations, Arc<CompactParts>)>,
}

/// See [`Compacted`].
struct CompactText {
    alloc: Allocations,
    /// Shared with the record file's text as it is serialized: a save
    /// copies no part of it.
    text: Arc<RawValue>,
    /// None for a text read from the record file.
    parts: Option<Arc<CompactParts>>,
}

impl Compacted {
    fn of(alloc: Allocations, text: Arc<RawValue>) -> Compacted {
        Compacted {
            whole: std::sync::Mutex::new(Some(Arc::new(CompactText {
                alloc,
                text,
                parts: None,
            }))),
            carried: None,
        }
    }

    fn get(&self) -> Option<Arc<CompactText>> {
        self.whole.lock().ok().and_then(|m| m.clone())
    }

    /// The compact text of `st` against `alloc`: remembered (made against
    /// allocations that derive it the same way, see
    /// [`crate::core::record::same_derivation`]), or made now (with the
    /// parts carried over, likewise) and remembered.
    fn text(&self, st: &State, alloc: &Allocations) -> Result<Arc<RawValue>> {
        use crate::core::record::same_derivation;
        // Kept against the allocations it was made with: a later save
        // compares with those.
        if let Some(c) = self.get().filter(|c| same_derivation(st, &c.alloc, alloc)) {
            return Ok(c.text.clone());
        }
        let parts = match &self.carried {
            Some((a, parts)) if same_derivation(st, a, alloc) => parts.clone(),
            _ => Arc::new(
                crate::core::record::compact_parts(st, alloc)
                    .context("serialize the applied state")?,
            ),
        };
        let text: Arc<RawValue> = crate::core::record::compact_text_with(st, &parts)
            .and_then(RawValue::from_string)
            .context("serialize the applied state")?
            .into();
        if let Ok(mut m) = self.whole.lock() {
            *m = Some(Arc::new(CompactText {
                alloc: alloc.clone(),
                text: text.clone(),
                parts: Some(parts),
            }));
        }
        Ok(text)
    }
}

/// A copy of a record has the same applied state, so the same text.
impl Clone for Compacted {
    fn clone(&self) -> Compacted {
        Compacted {
            whole: std::sync::Mutex::new(self.get()),
            carried: self.carried.clone(),
        }
    }
}

/// Derived from the record's other fields: never a difference.
impl PartialEq for Compacted {
    fn eq(&self, _: &Compacted) -> bool {
        true
    }
}

impl Eq for Compacted {}

impl std::fmt::Debug for Compacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.get() {
            Some(_) => "Compacted(known)",
            None => "Compacted(none)",
        })
    }
}

/// An apply in progress: written (fsync'd) before its first change, so that
/// an interruption is known to the next run, together with the allocations
/// the changes use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Unix time the apply started.
    pub started: u64,
    /// Addresses of the changes it was about to make.
    pub changes: Vec<String>,
}

/// The files of a state dir that netloom writes (and `down` removes).
/// Everything else in the directory is left alone; the lock file lives as
/// long as the directory, so that no waiter is ever left holding the lock
/// of a deleted file while another run locks a new one.
pub const OWN_FILES: &[&str] = &[RECORD, PREV_RECORD, AGENT_FILE];
const PREV_RECORD: &str = "state.json.prev";
const LOCK: &str = "lock";

/// Who holds the lock: written into the lock file by the holder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    /// Unix time the lock was taken.
    pub since: u64,
}

impl Holder {
    fn me() -> Holder {
        let command = fs::read("/proc/self/cmdline")
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        Holder {
            pid: std::process::id(),
            command,
            since: unix_now(),
        }
    }
    fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder::default();
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("pid ") {
                h.pid = v.trim().parse().ok()?;
            } else if let Some(v) = l.strip_prefix("command ") {
                h.command = v.to_string();
            } else if let Some(v) = l.strip_prefix("since ") {
                h.since = v.trim().parse().unwrap_or(0);
            }
        }
        (h.pid != 0).then_some(h)
    }
    fn text(&self) -> String {
        format!(
            "pid {}\ncommand {}\nsince {}\n",
            self.pid, self.command, self.since
        )
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An open, locked state dir.
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates the dir if needed and takes the lock, waiting up to `wait`
    /// for another run (e.g. the agent's reconcile) to finish.
    pub fn open(path: &Path, wait: Duration) -> Result<StateDir> {
        StateDir::open_with(path, wait, &mut |_, _| {})
    }

    /// Like [`StateDir::open`]; while waiting, calls `waiting` at once and
    /// then every few seconds with who holds the lock (if it said) and how
    /// long this run has waited, so that the caller can show it.
    pub fn open_with(
        path: &Path,
        wait: Duration,
        waiting: &mut dyn FnMut(Option<&Holder>, Duration),
    ) -> Result<StateDir> {
        fs::create_dir_all(path).with_context(|| format!("create state dir {}", path.display()))?;
        let lock_path = path.join(LOCK);
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("open {}", lock_path.display()))?;
        let start = Instant::now();
        let mut next_note = start;
        loop {
            // SAFETY: flock on a valid, owned descriptor has no memory effects.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("lock {}", lock_path.display()));
            }
            let holder = fs::read_to_string(&lock_path)
                .ok()
                .and_then(|t| Holder::parse(&t));
            if start.elapsed() >= wait {
                let who = holder
                    .map(|h| format!(" (pid {}, `{}`)", h.pid, h.command))
                    .unwrap_or_default();
                bail!(
                    "another netloom run{who} holds {} (waited {}s); try again when it is done",
                    lock_path.display(),
                    wait.as_secs()
                );
            }
            if Instant::now() >= next_note {
                waiting(holder.as_ref(), start.elapsed());
                next_note = Instant::now() + Duration::from_secs(10);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Say who holds it, for whoever waits next. The file itself is
        // never replaced or deleted: waiters hold descriptors to it.
        let me = Holder::me().text();
        let _ = lock.set_len(0);
        let _ = std::io::Seek::seek(&mut lock, std::io::SeekFrom::Start(0));
        let _ = lock.write_all(me.as_bytes());
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record file's path (for messages).
    pub fn record_path(&self) -> PathBuf {
        self.path.join(RECORD)
    }

    /// Reads the record; a missing one is empty. A damaged or newer one is
    /// an error that names the file and what to do about it.
    pub fn load(&self) -> Result<Record> {
        let p = self.path.join(RECORD);
        let prev = self.path.join(PREV_RECORD);
        let mut r = match fs::read(&p) {
            Ok(bytes) => parse_record(&bytes).map_err(|why| {
                let rollback = if prev.exists() {
                    format!(
                        ", or roll back to the previous record with `cp {} {}`",
                        prev.display(),
                        p.display()
                    )
                } else {
                    String::new()
                };
                anyhow!(
                    "{} {why}. To go on: run `netloom state rebuild` to reconstruct it from the marks netloom leaves on its objects{rollback}; `netloom down` works without it",
                    p.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record {
                version: RECORD_VERSION,
                ..Default::default()
            },
            Err(e) => return Err(e).with_context(|| format!("read {}", p.display())),
        };
        adopt_marked(&mut r);
        Ok(r)
    }

    /// A record rebuilt from the marks alone: the namespaces marked as
    /// netloom's and the files carrying its header (bridges, veths and the
    /// nft table are recognised by their own marks when observed). For
    /// `down` without a readable record, and `state rebuild`.
    pub fn from_marks(&self) -> Record {
        let mut r = Record {
            version: RECORD_VERSION,
            ..Default::default()
        };
        adopt_marked(&mut r);
        self.adopt_marked_files(&mut r);
        r
    }

    /// Adds the files carrying netloom's header to the record.
    pub fn adopt_marked_files(&self, r: &mut Record) {
        r.owned
            .files
            .extend(crate::host::marks::marked_files(&self.path));
    }

    /// Writes the record atomically; the one it replaces is kept as
    /// `state.json.prev`, so that a bad record can be rolled back.
    pub fn save(&self, r: &Record) -> Result<()> {
        // Compact and without derivable data: the record must stay small
        // on a large host (`netloom state show` prints it readably).
        let json = serde_json::to_vec(&DiskOut::of(r)?).context("serialize state record")?;
        let p = self.path.join(RECORD);
        let prev = self.path.join(PREV_RECORD);
        // A hard link: state.json itself is only ever replaced by rename,
        // so there is no instant without one.
        if p.exists() {
            let _ = fs::remove_file(&prev);
            let _ = fs::hard_link(&p, &prev);
        }
        write_atomic(&p, &json)
    }

    /// Removes the files netloom wrote in the state dir (for `down`):
    /// records, the agent's status, the files of attached namespaces and
    /// temporary files. The directory, the lock file and anything else in
    /// the directory stay.
    pub fn remove_own(&self, keep_agent: bool) -> Result<()> {
        for name in OWN_FILES {
            if *name == AGENT_FILE && keep_agent {
                continue;
            }
            remove_file_if_present(&self.path.join(name))?;
        }
        let files = self.path.join("files");
        if let Ok(dirs) = fs::read_dir(&files) {
            for d in dirs.filter_map(|e| e.ok()) {
                for f in ["hosts", "resolv.conf"] {
                    let p = d.path().join(f);
                    if crate::host::marks::file_marked(&p) {
                        remove_file_if_present(&p)?;
                    }
                }
                // Only if now empty: another program's files stay.
                let _ = fs::remove_dir(d.path());
            }
            let _ = fs::remove_dir(&files);
        }
        if let Ok(entries) = fs::read_dir(&self.path) {
            for e in entries.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().into_owned();
                // Temporary files, and damaged records set aside by
                // `state rebuild`.
                if (n.starts_with('.') && n.contains(".netloom-tmp."))
                    || n.starts_with("state.json.damaged-")
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

/// The record in `dir` as it is on disk (no lock, no marks adopted): for
/// showing it. A missing record is an error.
pub fn read_record(dir: &Path) -> Result<Record> {
    let p = dir.join(RECORD);
    let bytes = fs::read(&p).with_context(|| format!("read {}", p.display()))?;
    parse_record(&bytes).map_err(|why| anyhow!("{} {why}", p.display()))
}

/// Why a record cannot be used, or the record.
fn parse_record(bytes: &[u8]) -> std::result::Result<Record, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("is empty (truncated?)".into());
    }
    // The version first: it says how to read the rest.
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<serde_json::Value>,
    }
    let not_json = |e: serde_json::Error| format!("is damaged (not JSON: {e})");
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let version = match object {
        true => serde_json::from_slice::<Versioned>(bytes)
            .map_err(not_json)?
            .version
            .as_ref()
            .and_then(serde_json::Value::as_u64),
        // JSON but not an object has no version either.
        false => serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map(|_| None)
            .map_err(not_json)?,
    };
    match version {
        None => return Err("is not a netloom state record (no \"version\")".into()),
        Some(n) if n > u64::from(RECORD_VERSION) => {
            return Err(format!(
                "was written by a newer netloom (record version {n}; this netloom reads version {RECORD_VERSION}, use the newer one to keep it)"
            ));
        }
        Some(1) => {
            // Pretty JSON with every field; files as digests or contents.
            return serde_json::from_slice(bytes).map_err(|e| format!("is damaged ({e})"));
        }
        Some(_) => {}
    }
    let disk: Disk = serde_json::from_slice(bytes).map_err(|e| format!("is damaged ({e})"))?;
    disk.into_record().map_err(|e| format!("is damaged ({e})"))
}

/// The record as version 2 writes it ([`DiskOut`]), as a load reads it.
#[derive(Deserialize)]
struct Disk {
    /// Checked by [`parse_record`] before the rest is read; required here
    /// too, as every record written carries it.
    #[allow(dead_code)]
    version: u32,
    #[serde(default)]
    allocations: Allocations,
    #[serde(default)]
    owned: DiskOwned,
    /// [`crate::core::record::compact_text`] of the applied state:
    /// kept with the record read ([`Compacted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<Arc<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

/// [`Owned`] as the difference from what the applied state names: every
/// named namespace and file of the applied state is owned unless listed
/// in `not_netns` / `not_files`; `netns` and `files` are the owned ones
/// it does not name.
#[derive(Default, Deserialize)]
struct DiskOwned {
    #[serde(default)]
    bridges: BTreeSet<String>,
    #[serde(default)]
    netns: BTreeSet<String>,
    #[serde(default)]
    not_netns: BTreeSet<String>,
    #[serde(default)]
    netns_paths: BTreeSet<PathBuf>,
    #[serde(default)]
    files: BTreeSet<String>,
    #[serde(default)]
    not_files: BTreeSet<String>,
}

/// The named namespaces and the files of an applied state.
fn named_in(applied: Option<&State>) -> (BTreeSet<&str>, BTreeSet<&str>) {
    let Some(st) = applied else {
        return Default::default();
    };
    let netns = st
        .namespaces
        .values()
        .filter_map(|n| match &n.netns {
            crate::core::model::NsRef::Named(name) => Some(name.as_str()),
            crate::core::model::NsRef::Path(_) => None,
        })
        .collect();
    (netns, st.files.keys().map(String::as_str).collect())
}

/// [`Disk`] as a save writes it, borrowing from the record: the same
/// fields, names and order, so the same bytes, without copying the
/// allocations and thousands of owned names on every save (at 1,000
/// containers a save comes twice per apply).
#[derive(Serialize)]
struct DiskOut<'a> {
    version: u32,
    allocations: &'a Allocations,
    owned: DiskOwnedOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<Arc<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<&'a Pending>,
}

/// [`DiskOwned`] as a save writes it.
#[derive(Serialize)]
struct DiskOwnedOut<'a> {
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    bridges: &'a BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    netns: BTreeSet<&'a str>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    not_netns: BTreeSet<&'a str>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    netns_paths: &'a BTreeSet<PathBuf>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    files: BTreeSet<&'a str>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    not_files: BTreeSet<&'a str>,
}

impl<'a> DiskOut<'a> {
    fn of(r: &'a Record) -> Result<DiskOut<'a>> {
        let (netns, files) = named_in(r.applied.as_ref());
        let o = &r.owned;
        let owned_netns: BTreeSet<&str> = o.netns.iter().map(String::as_str).collect();
        let owned_files: BTreeSet<&str> = o.files.iter().map(String::as_str).collect();
        Ok(DiskOut {
            version: RECORD_VERSION,
            allocations: &r.allocations,
            owned: DiskOwnedOut {
                bridges: &o.bridges,
                netns: owned_netns.difference(&netns).copied().collect(),
                not_netns: netns.difference(&owned_netns).copied().collect(),
                netns_paths: &o.netns_paths,
                files: owned_files.difference(&files).copied().collect(),
                not_files: files.difference(&owned_files).copied().collect(),
            },
            applied: r
                .applied
                .as_ref()
                .map(|st| r.compacted.text(st, &r.allocations))
                .transpose()?,
            pending: r.pending.as_ref(),
        })
    }
}

impl Disk {
    fn into_record(self) -> std::result::Result<Record, String> {
        let applied = self
            .applied
            .as_ref()
            .map(|text| {
                let v = serde_json::from_str(text.get()).map_err(|e| e.to_string())?;
                crate::core::record::expand(v, &self.allocations)
            })
            .transpose()?;
        let compacted = match self.applied {
            Some(text) => Compacted::of(self.allocations.clone(), text),
            None => Compacted::default(),
        };
        let (netns, files) = named_in(applied.as_ref());
        let o = self.owned;
        let owned = Owned {
            bridges: o.bridges,
            netns: netns
                .into_iter()
                .filter(|n| !o.not_netns.contains(*n))
                .map(str::to_owned)
                .chain(o.netns)
                .collect(),
            netns_paths: o.netns_paths,
            files: files
                .into_iter()
                .filter(|f| !o.not_files.contains(*f))
                .map(str::to_owned)
                .chain(o.files)
                .collect(),
        };
        Ok(Record {
            version: RECORD_VERSION,
            allocations: self.allocations,
            owned,
            applied,
            pending: self.pending,
            compacted,
        })
    }
}

/// Takes into the record what carries netloom's mark but the record does
/// not name: namespaces created by a run that was interrupted before it
/// could record them.
fn adopt_marked(r: &mut Record) {
    for name in crate::host::marks::marked_netns() {
        if !r.owned.netns.contains(&name)
            && crate::core::model::named_path(&name).exists()
            && crate::host::marks::netns_marked(&name)
        {
            r.owned.netns.insert(name);
        }
    }
}

fn remove_file_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", p.display())),
    }
}

/// Writes `data` to `path` atomically: temp file in the same dir, fsync,
/// rename over, fsync the dir.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.netloom-tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut r = sd.load().unwrap();
        r.owned.bridges.insert("docker0".into());
        sd.save(&r).unwrap();
        assert_eq!(sd.load().unwrap().owned, r.owned);
        // A second opener times out while the first holds the lock.
        let err = StateDir::open(dir.path(), Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(err.to_string().contains("another netloom run"));
        drop(sd);
        assert!(StateDir::open(dir.path(), Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn a_waiter_is_told_who_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut told = Vec::new();
        let err = StateDir::open_with(dir.path(), Duration::from_millis(200), &mut |h, _| {
            told.push(h.cloned())
        })
        .err()
        .unwrap();
        let me = std::process::id();
        assert_eq!(told.len(), 1, "told at once, not again within 10s");
        assert_eq!(told[0].as_ref().map(|h| h.pid), Some(me));
        assert!(err.to_string().contains(&format!("pid {me}")), "{err}");
    }

    #[test]
    fn damaged_records_name_the_file_and_the_ways_out() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut r = sd.load().unwrap();
        r.owned.bridges.insert("docker0".into());
        sd.save(&r).unwrap();
        sd.save(&r).unwrap();
        let path = dir.path().join(RECORD);
        for (bytes, why) in [
            (&b""[..], "is empty"),
            (b"{\"version\": 1, \"own", "not JSON"),
            (b"{}", "no \"version\""),
            (b"[1,2]", "no \"version\""),
            (b"{\"version\": 7}", "newer netloom (record version 7"),
            (b"{\"version\": 1, \"owned\": 3}", "is damaged"),
        ] {
            fs::write(&path, bytes).unwrap();
            let e = sd.load().err().unwrap().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(why), "{why}: {e}");
            assert!(e.contains("netloom state rebuild"), "{e}");
            assert!(e.contains("state.json.prev"), "{e}");
        }
        // The previous record is the good one: rolling back works.
        fs::copy(dir.path().join(PREV_RECORD), &path).unwrap();
        assert_eq!(sd.load().unwrap().owned, r.owned);
    }

    /// The record `apply` of the tutorial file would keep.
    fn tutorial_record() -> Record {
        let text = include_str!("../../examples/docker-tutorial.toml");
        let spec = crate::core::spec::load("t.toml", text).unwrap();
        let d = crate::core::model::resolve(
            &spec,
            &Allocations::default(),
            &crate::core::model::HostInfo::default(),
        )
        .unwrap();
        let (netns, files) = named_in(Some(&d.state));
        Record {
            version: RECORD_VERSION,
            allocations: d.allocations,
            owned: Owned {
                bridges: d.state.bridges.values().map(|b| b.name.clone()).collect(),
                netns: netns.into_iter().map(str::to_owned).collect(),
                files: files.into_iter().map(str::to_owned).collect(),
                ..Default::default()
            },
            applied: Some(crate::core::model::for_record(&d.state)),
            pending: None,
            compacted: Compacted::default(),
        }
    }

    #[test]
    fn a_record_saved_again_keeps_its_text_until_its_applied_state_or_allocations_change() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let path = dir.path().join(RECORD);
        sd.save(&tutorial_record()).unwrap();
        let first = fs::read(&path).unwrap();
        let mut r = sd.load().unwrap();
        assert!(r.compacted.get().is_some(), "the text read is kept");
        sd.save(&r).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            first,
            "the same record, the same text"
        );
        // Other allocations: compacted against them, or the state read
        // back would differ.
        r.allocations = Allocations::default();
        sd.save(&r).unwrap();
        assert_ne!(fs::read(&path).unwrap(), first);
        let back = sd.load().unwrap();
        assert_eq!(back.allocations, r.allocations);
        assert_eq!(back.applied(), r.applied());
        // Another applied state: written, not the text kept.
        let mut other = r.applied().cloned().unwrap();
        other
            .sysctls
            .insert("net.ipv4.conf.all.forwarding".into(), "1".into());
        r.set_applied(Some(other.clone()));
        sd.save(&r).unwrap();
        assert_eq!(sd.load().unwrap().applied(), Some(&other));
    }

    /// The very bytes a save of `r` writes with nothing compacted before.
    fn compacted_from_nothing(r: &Record) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut whole = r.clone();
        whole.compacted = Compacted::default();
        sd.save(&whole).unwrap();
        fs::read(dir.path().join(RECORD)).unwrap()
    }

    #[test]
    fn addresses_for_other_containers_leave_the_text_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut r = tutorial_record();
        sd.save(&r).unwrap();
        let kept = r.compacted.get().unwrap().text.clone();
        // The write-ahead save of an apply that adds a container: its
        // addresses are recorded beside the applied state before it.
        let net = r.allocations.ipv4.keys().next().unwrap().clone();
        r.allocations
            .ipv4
            .get_mut(&net)
            .unwrap()
            .insert("newcomer".into(), "10.9.9.9".parse().unwrap());
        sd.save(&r).unwrap();
        assert!(Arc::ptr_eq(&kept, &r.compacted.get().unwrap().text));
        let same_as_fresh = |r: &Record| {
            let written = fs::read(dir.path().join(RECORD)).unwrap();
            assert_eq!(compacted_from_nothing(r), written);
            assert_eq!(sd.load().unwrap().applied(), r.applied());
        };
        same_as_fresh(&r);
        // A container of the applied state moved: compacted again.
        let member = r.applied().unwrap().endpoints.values().next().unwrap();
        let (net, who) = (member.network.clone(), member.container.clone());
        r.allocations
            .ipv4
            .get_mut(&net)
            .unwrap()
            .insert(who, "10.9.9.8".parse().unwrap());
        sd.save(&r).unwrap();
        assert!(!Arc::ptr_eq(&kept, &r.compacted.get().unwrap().text));
        same_as_fresh(&r);
    }

    #[test]
    fn a_new_applied_state_with_the_same_objects_is_written_with_the_parts_before() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut r = tutorial_record();
        sd.save(&r).unwrap();
        // A port more: the firewall, its sysctls and the allocated host
        // ports change, nothing else.
        let mut other = r.applied().cloned().unwrap();
        let fw = other.firewall.as_mut().unwrap();
        let (key, port) = fw
            .fw
            .ports
            .iter()
            .next()
            .map(|(k, p)| (k.clone(), p.clone()))
            .unwrap();
        fw.fw.ports_mut().insert(format!("{key}-more"), port);
        other
            .sysctls
            .insert("net.ipv4.conf.br-more.route_localnet".into(), "1".into());
        r.allocations.ports.insert("web/80".into(), 40000);
        r.set_applied(Some(other.clone()));
        assert!(r.compacted.carried.is_some());
        sd.save(&r).unwrap();
        let written = fs::read(dir.path().join(RECORD)).unwrap();
        assert_eq!(compacted_from_nothing(&r), written);
        assert_eq!(sd.load().unwrap().applied(), Some(&other));
        // Other addresses: the parts are made again.
        let mut moved = r.clone();
        for m in moved.allocations.ipv4.values_mut() {
            for ip in m.values_mut() {
                *ip = std::net::Ipv4Addr::from(u32::from(*ip) + 1);
            }
        }
        sd.save(&moved).unwrap();
        assert_eq!(sd.load().unwrap().applied(), moved.applied());
        // Another bridge (an endpoint's compact form leaves out what its
        // bridge gives): nothing carried over.
        // From `other` saved (its parts made), to `st`.
        let mut written_whole = |st: State| {
            r.set_applied(Some(other.clone()));
            sd.save(&r).unwrap();
            assert!(r.compacted.get().is_some_and(|c| c.parts.is_some()));
            r.set_applied(Some(st.clone()));
            assert!(r.compacted.carried.is_none());
            sd.save(&r).unwrap();
            assert_eq!(sd.load().unwrap().applied(), Some(&st));
        };
        let mut bridged = other.clone();
        bridged.bridges.values_mut().next().unwrap().mtu = 1400;
        written_whole(bridged);
        // Another endpoint: nothing carried over.
        let mut third = other.clone();
        third.endpoints_mut().values_mut().next().unwrap().mtu = 1400;
        written_whole(third);
    }

    #[test]
    fn records_of_version_1_load_and_are_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let want = tutorial_record();
        // Exactly as version 1 wrote it: pretty JSON of every field.
        let mut v1 = want.clone();
        v1.version = 1;
        let path = dir.path().join(RECORD);
        fs::write(&path, serde_json::to_vec_pretty(&v1).unwrap()).unwrap();
        // parse_record: `load` would also adopt this machine's marks.
        let loaded = parse_record(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(loaded, v1);
        sd.save(&loaded).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"version\":2,"), "{text}");
        assert!(!text.contains('\n'), "compact JSON");
        assert_eq!(parse_record(text.as_bytes()).unwrap(), want);
        // The version 1 record is the previous one, still readable.
        let prev = parse_record(&fs::read(dir.path().join(PREV_RECORD)).unwrap()).unwrap();
        assert_eq!(prev, v1);
    }

    #[test]
    fn a_version_1_record_with_file_contents_still_loads() {
        // Written before records kept digests: the file's whole content.
        let text = r##"{
  "version": 1,
  "allocations": { "ipv4": { "n": { "web": "10.5.0.2" } } },
  "owned": { "bridges": ["br-n"], "netns": ["web"], "files": ["/etc/netns/web/hosts"] },
  "applied": {
    "namespaces": { "web": { "netns": { "named": "web" }, "lo_up": true } },
    "files": { "/etc/netns/web/hosts": "# Written by netloom\n10.5.0.2\tweb\n" }
  }
}"##;
        let r = parse_record(text.as_bytes()).unwrap();
        assert_eq!(r.owned.netns, BTreeSet::from(["web".to_string()]));
        let applied = r.applied.as_ref().unwrap();
        assert!(crate::core::model::file_matches(
            &applied.files["/etc/netns/web/hosts"],
            "# Written by netloom\n10.5.0.2\tweb\n"
        ));
        // Rewritten as version 2 it keeps the digest of that content.
        let disk = serde_json::to_vec(&DiskOut::of(&r).unwrap()).unwrap();
        let again = parse_record(&disk).unwrap();
        assert_eq!(again.owned, r.owned);
        assert_eq!(again.applied, Some(crate::core::model::for_record(applied)));
    }

    #[test]
    fn owned_objects_the_applied_state_does_not_name_are_kept() {
        let mut r = tutorial_record();
        // A namespace and a file of an interrupted apply; a file the
        // applied state names but netloom does not own (held back,
        // foreign); an attached namespace; a pending apply.
        r.owned.netns.insert("half-made".into());
        r.owned.files.insert("/etc/netns/half-made/hosts".into());
        let foreign = "/etc/netns/web/hosts".to_string();
        assert!(r.owned.files.remove(&foreign));
        assert!(r.owned.netns.remove("web"));
        r.owned.netns_paths.insert("/proc/7/ns/net".into());
        r.pending = Some(Pending {
            started: 5,
            changes: vec!["container.web".into()],
        });
        let disk = serde_json::to_vec(&DiskOut::of(&r).unwrap()).unwrap();
        let text = String::from_utf8(disk.clone()).unwrap();
        for listed in [&foreign, "half-made", "\"not_netns\":[\"web\"]"] {
            assert!(text.contains(listed), "{listed}: {text}");
        }
        assert_eq!(parse_record(&disk).unwrap(), r);
    }

    #[test]
    fn remove_own_keeps_the_dir_the_lock_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        sd.save(&Record::default()).unwrap();
        sd.save(&Record::default()).unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        fs::create_dir_all(dir.path().join("files/web")).unwrap();
        fs::write(
            dir.path().join("files/web/hosts"),
            "# Written by netloom.\n",
        )
        .unwrap();
        fs::write(dir.path().join("files/web/other"), "mine").unwrap();
        sd.remove_own(false).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["files", "lock", "notes.txt"]);
        assert!(dir.path().join("files/web/other").exists());
        assert!(!dir.path().join("files/web/hosts").exists());
    }
}

/// Where the agent keeps the outcome of its last runs, in the state dir.
pub const AGENT_FILE: &str = "agent.json";

/// One reconcile, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub time: String,
    pub trigger: String,
    pub added: usize,
    pub changed: usize,
    pub destroyed: usize,
    pub millis: u64,
    pub error: Option<String>,
    /// Objects that failed and were left as they are (the rest was applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<crate::core::plan::Failure>,
}

/// The agent's status file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub started: String,
    /// The file the agent applies (absolute), so that `apply` of another
    /// file and `down` can name it instead of being silently undone.
    #[serde(default)]
    pub config: Option<PathBuf>,
    pub summary: String,
    pub config_error: Option<String>,
    pub runs: Vec<Run>,
}

impl AgentStatus {
    /// Writes `STATE_DIR/agent.json` atomically.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(AGENT_FILE);
        let json = serde_json::to_vec_pretty(self).context("serialize the agent status")?;
        write_atomic(&path, &json).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The last status an agent wrote in this state dir, if any readable.
    pub fn read(state_dir: &Path) -> Option<AgentStatus> {
        let bytes = fs::read(state_dir.join(AGENT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the agent that wrote this status still runs (signal 0). An
    /// agent that exited but was not yet reaped by its parent (a zombie)
    /// serves nothing and does not count.
    pub fn alive(&self) -> bool {
        let signalled = i32::try_from(self.pid).is_ok_and(|p| {
            p > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
        });
        signalled && !is_zombie(self.pid)
    }
}

/// Whether /proc says `pid` has exited and waits to be reaped (state `Z`).
/// The state follows the command name, which is in parentheses and may
/// itself contain spaces or parentheses.
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}
