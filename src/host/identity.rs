//! What identifies this host for saved plans: a plan made on one host must
//! not be applied to another.
//!
//! `/etc/machine-id` tells machines apart, the hostname tells clones with a
//! copied machine-id apart, and the inode of the current network namespace
//! tells apart the network namespaces of one machine (netloom manages one
//! namespace's networking; a plan for a test sandbox or another container
//! host on the same kernel must not apply here). The inode lasts as long as
//! the namespace, so a plan made before a reboot is from "another host" —
//! rightly: everything it observed is gone.

use std::os::unix::fs::MetadataExt;

/// The identity text; its digest goes into saved plans.
pub fn host_identity() -> String {
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .unwrap_or_default();
    format!(
        "machine-id={}\nhostname={}\nnetns={netns}\n",
        machine_id.trim(),
        hostname.trim()
    )
}
