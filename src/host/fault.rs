//! Fault injection for the crash tests, compiled only with the cargo
//! feature `fault-injection`: with `NETLOOM_FAULT_AFTER=K` the process
//! kills itself with SIGKILL right after its K-th write to the kernel or
//! to a file it owns, as a crash or `kill -9` at that instant would.
//! Without the feature, [`point`] is an empty inline function.

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
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    #[inline(always)]
    pub fn point() {}

    pub fn count() -> Option<u64> {
        None
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
