//! The agent's file parsed as soon as a writer is done with it, on a
//! thread of its own.
//!
//! Why: an `apply` through the agent edits the file and asks at once, and
//! the agent must parse the file before it can plan (about 5 ms at 1,000
//! containers). Parsing when the watcher sees the writer close the file
//! overlaps that with the command's start. It used to start only when the
//! file's change was the first news of the agent's next batch; when the
//! agent was still finishing the previous apply (echoes of its own
//! changes queue first), it parsed the file twice, once too late to use.
//! Whatever this reads, half-written or not, is used only by a reload that
//! read the same bytes.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::core::diag::Diagnostics;
use crate::core::spec::Spec;

/// What parsing the file gives: the configuration, or what is wrong.
pub type ParsedFile = std::result::Result<Spec, Diagnostics>;

/// Parses the bytes of the file named (for messages) by the first
/// argument.
type Parser = dyn Fn(&str, &[u8]) -> ParsedFile + Send + Sync;

/// The parses of the file as it changes; cloned into the file watcher.
#[derive(Clone)]
pub struct EarlyParse {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    parse: Box<Parser>,
    slot: Mutex<Slot>,
    /// Signalled after each parse.
    parsed: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The last parse: the hash of the bytes read, and what they gave.
    last: Option<(u64, ParsedFile)>,
    /// A parse is under way.
    running: bool,
    /// The file changed again while it ran: parse once more after it.
    again: bool,
}

impl EarlyParse {
    pub fn new(path: PathBuf) -> EarlyParse {
        EarlyParse::with_parser(path, crate::core::spec::load_bytes)
    }

    fn with_parser(
        path: PathBuf,
        parse: impl Fn(&str, &[u8]) -> ParsedFile + Send + Sync + 'static,
    ) -> EarlyParse {
        EarlyParse {
            shared: Arc::new(Shared {
                path,
                parse: Box::new(parse),
                slot: Mutex::default(),
                parsed: Condvar::new(),
            }),
        }
    }

    /// The file changed and its writer is done: parse it now, beside
    /// whatever the agent is doing. One parse at a time; a change during
    /// one is parsed after it (once, however many came).
    pub fn changed(&self) {
        let mut slot = self.shared.lock();
        if slot.running {
            slot.again = true;
            return;
        }
        slot.running = true;
        drop(slot);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("netloom-parse".into())
            .spawn(move || shared.run());
        if spawned.is_err() {
            // No thread: the reload parses the file itself, as it does
            // for bytes parsed by nobody. A reload may wait already.
            self.shared.lock().running = false;
            self.shared.parsed.notify_all();
        }
    }

    /// The parse of the bytes whose hash is `hash`, waiting for a parse
    /// under way (it may be of those bytes); None when none is. It blocks
    /// the calling thread, as the reload's own parse would: for the rest
    /// of the parse under way, and for the one after it when the file
    /// changed again meanwhile.
    pub fn take(&self, hash: u64) -> Option<ParsedFile> {
        let mut slot = self.shared.lock();
        loop {
            if slot.last.as_ref().is_some_and(|(h, _)| *h == hash) {
                return slot.last.take().map(|(_, parsed)| parsed);
            }
            if !slot.running {
                return None;
            }
            slot = self
                .shared
                .parsed
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Drops a parse of the bytes whose hash is `hash` (already in force:
    /// nobody will take it), without waiting.
    pub fn forget(&self, hash: u64) {
        let mut slot = self.shared.lock();
        if slot.last.as_ref().is_some_and(|(h, _)| *h == hash) {
            slot.last = None;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Nothing panics while holding it (the parser runs unlocked);
        // were it poisoned, the slot would still be whole.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let shown = self.path.display().to_string();
        loop {
            // An unreadable file (removed, being replaced) is no parse: a
            // reload reports it. A parser that panics is no parse either
            // (the reload parses again, where the panic is reported as
            // before), and must not leave a waiting reload waiting.
            let parsed = crate::cmd::steps::read_config(&self.path)
                .ok()
                .and_then(|text| {
                    let parse = || (self.parse)(&shown, &text);
                    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse));
                    Some((crate::core::hash::fnv64(&text), parsed.ok()?))
                });
            let mut slot = self.lock();
            if parsed.is_some() {
                slot.last = parsed;
            }
            let again = std::mem::take(&mut slot.again);
            slot.running = again;
            drop(slot);
            self.parsed.notify_all();
            if !again {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An `EarlyParse` of a file in a new directory whose parser counts
    /// its calls and takes `slow` each.
    fn counted(slow: Duration) -> (tempfile::TempDir, PathBuf, EarlyParse, Arc<AtomicUsize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netloom.toml");
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let early = EarlyParse::with_parser(path.clone(), move |shown, text| {
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(slow);
            crate::core::spec::load_bytes(shown, text)
        });
        (dir, path, early, calls)
    }

    fn hash(text: &str) -> u64 {
        crate::core::hash::fnv64(text.as_bytes())
    }

    #[test]
    fn a_reload_takes_the_parse_under_way_of_its_bytes_instead_of_parsing_again() {
        let (_dir, path, early, calls) = counted(Duration::from_millis(200));
        let text = "[networks.web]\nsubnet = \"10.1.0.0/24\"\n";
        std::fs::write(&path, text).unwrap();
        early.changed();
        // Asked while the parse runs: it waits for it.
        let spec = early.take(hash(text)).expect("parsed").expect("valid");
        assert!(spec.networks.contains_key("web"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Taken: a second reload of the same bytes parses them itself.
        assert!(early.take(hash(text)).is_none());
    }

    #[test]
    fn changes_during_a_parse_are_parsed_once_after_it_and_other_bytes_are_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netloom.toml");
        // The first parse says it has read the file, then waits for `go`.
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let early = EarlyParse::with_parser(path.clone(), move |shown, text| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                started_tx.send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
            crate::core::spec::load_bytes(shown, text)
        });
        std::fs::write(&path, "# first\n").unwrap();
        early.changed();
        started.recv().unwrap();
        let last = "[networks.db]\nsubnet = \"10.2.0.0/24\"\n";
        std::fs::write(&path, last).unwrap();
        early.changed();
        early.changed();
        go.send(()).unwrap();
        let spec = early.take(hash(last)).expect("parsed").expect("valid");
        assert!(spec.networks.contains_key("db"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Bytes nobody parsed: not waited for once nothing runs.
        assert!(early.take(hash("# other\n")).is_none());
    }

    #[test]
    fn a_parser_that_panics_leaves_no_reload_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netloom.toml");
        std::fs::write(&path, "# any\n").unwrap();
        let early = EarlyParse::with_parser(path, |_, _| -> ParsedFile {
            std::thread::sleep(std::time::Duration::from_millis(50));
            panic!("a parser bug")
        });
        early.changed();
        // Asked on another thread: a reload left waiting fails the test
        // instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(early.take(hash("# any\n")).is_none()));
        let answer = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(answer, Ok(true), "the reload still waits");
    }

    #[test]
    fn a_parse_of_bytes_already_in_force_is_forgotten() {
        let (_dir, path, early, _calls) = counted(Duration::ZERO);
        let text = "# nothing\n";
        std::fs::write(&path, text).unwrap();
        early.changed();
        // Wait for the parse through a take of other bytes.
        assert!(early.take(hash("# other\n")).is_none());
        early.forget(hash(text));
        assert!(early.take(hash(text)).is_none());
    }
}
