//! SIGINT and SIGTERM during `apply` and `down`: the first asks the run to
//! stop after the kernel operation in progress (the executor checks
//! [`requested`] between operations, records what it did and reports what
//! it did not); a second one exits at once. Either way the next `apply`
//! converges, because every object is marked and recorded before it is
//! created.

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if SIGNAL.swap(sig, Ordering::SeqCst) != 0 {
        // The second signal: leave now. Only async-signal-safe calls here.
        let msg = b"netloom: second signal, exiting at once; run `netloom apply` to converge or `netloom down` to remove what was made\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
    }
}

/// Installs the handlers for SIGINT and SIGTERM (for the one-shot commands;
/// the agent handles its signals itself).
pub fn install() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls
        // async-signal-safe functions.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| anyhow::anyhow!("install the {sig} handler: {e}"))?;
    }
    Ok(())
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The signal's name, for messages.
pub fn name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}
