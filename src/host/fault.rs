//! Fault injection for the crash tests, compiled only with the cargo
//! feature `fault-injection`: with `NETLOOM_FAULT_AFTER=K` the process
//! kills itself with SIGKILL right after its K-th write to the kernel or
//! to a file it owns, as a crash or `kill -9` at that instant would.
//! With `NETLOOM_FAULT_SKIP=TEXT` every operation whose text (as the
//! plan shows it) contains TEXT is skipped yet reported done, as a change
//! the kernel acknowledged but that did not take: what the verification
//! after an apply must catch.
//! Without the feature, [`point`] is an empty inline function and
//! [`skipped`] is always false.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNT: AtomicU64 = AtomicU64::new(0);
    static AFTER: OnceLock<Option<u64>> = OnceLock::new();

    pub fn point() {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        let after = AFTER.get_or_init(|| {
            std::env::var("NETLOOM_FAULT_AFTER")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if *after == Some(n) {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
        }
    }

    pub fn count() -> Option<u64> {
        Some(COUNT.load(Ordering::SeqCst))
    }

    static SKIP: OnceLock<Option<String>> = OnceLock::new();

    pub fn skipped(op: &dyn std::fmt::Display) -> bool {
        let skip = SKIP.get_or_init(|| std::env::var("NETLOOM_FAULT_SKIP").ok());
        skip.as_deref()
            .is_some_and(|s| !s.is_empty() && op.to_string().contains(s))
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    #[inline(always)]
    pub fn point() {}

    pub fn count() -> Option<u64> {
        None
    }

    #[inline(always)]
    pub fn skipped(_op: &dyn std::fmt::Display) -> bool {
        false
    }
}

/// A point after a write: where a crash test may kill the process.
pub fn point() {
    imp::point()
}

/// Points passed so far (`None` without the feature): lets a test learn
/// how many points a run has.
pub fn count() -> Option<u64> {
    imp::count()
}

/// Whether operation `op` is to be skipped yet reported done (see the
/// module docs); never without the feature.
pub fn skipped(op: &dyn std::fmt::Display) -> bool {
    imp::skipped(op)
}
