//! Sysctls, read and written through `/proc/sys`, in the calling thread's
//! network namespace or inside another one (`net.*` keys are per-namespace).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::host::netns;

/// `/proc/sys` path of a sysctl key, using sysctl(8)'s convention: dots
/// separate components and a `/` inside a key stands for a literal dot
/// (`net.ipv4.conf.eth0/100.forwarding` is interface `eth0.100`).
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    if key.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("invalid sysctl key {key:?}");
    }
    Ok(Path::new("/proc/sys").join(rel))
}

/// Read a sysctl (e.g. `net.ipv4.ip_forward`), without the trailing newline.
/// With `ns`, it is read inside that network namespace (`net.*` keys are
/// per-namespace); with `None`, in the calling thread's namespace.
pub fn read_sysctl(ns: Option<&Path>, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let key_name = key.to_string();
    let read = move || {
        let value =
            std::fs::read_to_string(&path).with_context(|| format!("read sysctl {key_name}"))?;
        Ok(value.trim_end_matches('\n').to_string())
    };
    match ns {
        None => read(),
        Some(ns) => netns::run_in(ns, read),
    }
}

/// Write a sysctl, inside network namespace `ns` if given (see
/// [`read_sysctl`]).
pub fn write_sysctl(ns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    let what = format!("write sysctl {key}={value}");
    let value = value.to_string();
    let write = move || std::fs::write(&path, value.as_bytes()).context(what);
    match ns {
        None => write(),
        Some(ns) => netns::run_in(ns, write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() -> Result<()> {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward")?,
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.forwarding")?,
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "net..ipv4", ".net", "net.ipv4.", "net/../x"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?} accepted");
        }
        Ok(())
    }
}
