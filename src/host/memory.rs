//! The process's memory: the agent lives for months and reads thousands
//! of namespaces per reconcile, on a few threads. glibc's malloc keeps
//! each thread's freed memory in that thread's arena and fragments its
//! heap, so a long-lived process held the peak of every reconcile
//! (measured: about a third of the agent's heap at 1,000 containers).
//! jemalloc, with few arenas and every unused page handed back after
//! each reconcile ([`trim`]), keeps its resident size near what it
//! really holds. It is every netloom binary's allocator (the commands
//! too: one allocator for all code paths).

use std::ffi::{CStr, c_char};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (before `main`): two
/// arenas (the runtime has two workers, and an arena per core would
/// keep more memory apart), freed pages given back to the kernel within
/// a second rather than ten, and without the lazy `MADV_FREE` step,
/// whose pages stay resident until the kernel needs memory.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: Conf = Conf(c"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer as jemalloc reads it.
#[repr(transparent)]
struct Conf(*const c_char);

// SAFETY: the pointer is to a constant, never written.
unsafe impl Sync for Conf {}

/// Returns every unused page of every arena to the kernel now, rather
/// than when the decay would (jemalloc's `arena.<all>.purge`). The
/// calling thread's cache of freed objects goes back to its arena first
/// (`thread.tcache.flush`): after a reconcile it holds objects of the
/// reading just dropped, and a cached object keeps its page resident.
pub fn trim() {
    const FLUSH_CACHE: &CStr = c"thread.tcache.flush";
    const PURGE_ALL: &CStr = c"arena.4096.purge";
    for name in [FLUSH_CACHE, PURGE_ALL] {
        // SAFETY: both take and return no value; the names are valid C
        // strings; jemalloc is the global allocator, so initialised.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}
