//! The agent's memory: it lives for months and reads thousands of
//! namespaces per reconcile, on a few threads. glibc gives each thread
//! that allocates its own arena and keeps freed memory in it, so a
//! long-lived process holds the peak of every thread's work. Two arenas
//! and a trim after each reconcile keep its resident size near what it
//! really holds.

/// Caps malloc's arenas (call once, early, before threads allocate).
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed memory to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
