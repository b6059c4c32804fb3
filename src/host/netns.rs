//! Network-namespace plumbing: named namespaces the way iproute2 manages them
//! (`ip netns add/del/list`), and running code inside a namespace.
//!
//! A named namespace is an empty file under [`NETNS_RUN_DIR`] onto which a
//! namespace's nsfs inode is bind-mounted; the mount keeps the namespace alive
//! without any process in it, and `ip netns exec NAME` / `ip -n NAME` find it
//! there. We create namespaces exactly like iproute2 so both tools interoperate.
//!
//! Namespace membership is per *thread* on Linux. Every operation that needs to
//! be "inside" a namespace therefore runs on a fresh, short-lived std thread
//! that unshares/setns'es and then exits; the caller's thread (often a tokio
//! worker shared by unrelated tasks) never changes namespace. New threads
//! inherit the namespaces of the thread that spawns them, not of the process'
//! main thread, which is what makes the sandboxed tests below work.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;

pub use crate::core::model::{NETNS_RUN_DIR, named_path};

/// The network namespace of the *calling thread*. Unlike `/proc/self/ns/net`
/// (which names the thread-group leader's namespace) this is correct on a
/// thread that has setns'ed.
pub const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// Reject names that would escape [`NETNS_RUN_DIR`] or that iproute2 refuses.
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        bail!("invalid network namespace name {name:?}");
    }
    Ok(())
}

/// Create the named network namespace `name`, exactly like `ip netns add NAME`.
///
/// Does not configure anything inside the new namespace (not even `lo`).
/// Fails with `EEXIST` in the chain if the name is taken. On failure nothing
/// is left behind except the (harmless, shared) `/run/netns` mount point.
pub fn create_named(name: &str) -> Result<()> {
    create_named_with(name, || Ok(()))
}

/// [`create_named`], then `inside` run in the new namespace by the thread
/// that made it, its result returned: what a caller needs from inside
/// (a netlink socket, an interface index) without a second thread
/// joining the namespace. If `inside` fails the namespace is removed.
pub fn create_named_with<T: Send + 'static>(
    name: &str,
    inside: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    validate_name(name)?;
    ensure_run_dir()?;

    let path = named_path(name);
    // O_EXCL: refuse to reuse an existing name (iproute2 does the same), so
    // we never stack a second namespace mount over a live one.
    let file = nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(anyhow::Error::new)
    .with_context(|| format!("create netns {name}: create {}", path.display()))?;
    drop(file);
    // A crash here leaves an empty file: the crash tests stop here too.
    crate::host::fault::point();

    let target = path.clone();
    let result = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<T> {
            // Only this short-lived thread moves into the new namespace; the
            // bind mount below is what keeps the namespace alive after the
            // thread exits.
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(
                Some(own.as_str()),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mount {own} onto {}", target.display()))?;
            inside()
        })
        .context("spawn netns thread")
        .and_then(join_thread);

    result.map_err(|err| {
        // Best effort: the mount may or may not exist depending on where we
        // failed; the file always does.
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&path);
        err.context(format!("create netns {name}"))
    })
}

/// Make sure `/run/netns` exists and is a shared mount point, like iproute2.
///
/// The directory is made a mount point of its own (bind-mounted onto itself)
/// so it can be marked shared: namespace mounts created later then propagate
/// into mount namespaces that were cloned from this one (e.g. containers
/// started afterwards), and `umount` in one is seen by all.
fn ensure_run_dir() -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_RUN_DIR)
        .with_context(|| format!("create {NETNS_RUN_DIR}"))?;

    let mut bound = false;
    loop {
        match mount(
            Some(""),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Make it one, then retry once.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .with_context(|| format!("bind-mount {NETNS_RUN_DIR} onto itself"))?;
                bound = true;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("make {NETNS_RUN_DIR} a shared mount"));
            }
        }
    }
}

/// Delete the named namespace `name`, like `ip netns del NAME`: lazily unmount
/// and remove the file. The namespace itself disappears once nothing else
/// (processes, open fds, other mounts) references it. `ENOENT` in the chain if
/// there is no such name.
pub fn delete_named(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = named_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: the file exists but nothing is mounted on it (e.g. left by
        // an interrupted create); still remove it.
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("delete netns {name}: umount {}", path.display()));
        }
    }
    fs::remove_file(&path)
        .with_context(|| format!("delete netns {name}: remove {}", path.display()))
}

/// Names under `/run/netns`, sorted. Empty if the directory does not exist.
pub fn list_named() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {NETNS_RUN_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("read {NETNS_RUN_DIR}"))?;
        // Names we could not have created (non-UTF-8) are not ours to report.
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Open a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`, ...) for use
/// with `setns` or `IFLA_NET_NS_FD`. The fd is close-on-exec.
pub fn open(path: &Path) -> Result<OwnedFd> {
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    Ok(file.into())
}

/// Run `f` on a new thread that has joined the network namespace at `ns`, and
/// return its result. The calling thread's namespaces are never touched.
///
/// Blocks the caller until `f` returns; from async code call it via
/// `tokio::task::spawn_blocking`. A panic in `f` is propagated to the caller.
pub fn run_in<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    // Open in the caller so the path is resolved in the caller's view of the
    // filesystem, and so a bad path fails before we spawn anything.
    let fd = open(ns)?;
    let ns_name = ns.display().to_string();
    std::thread::Builder::new()
        .name("netns-run".into())
        .spawn(move || -> Result<T> {
            setns(&fd, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns_name}"))?;
            drop(fd);
            f()
        })
        .context("spawn netns thread")
        .and_then(join_thread)
}

/// Runs `f` inside each namespace of `paths`, in order, on the calling
/// thread, which must be a disposable helper thread (it stays in the last
/// namespace). `setns` is cheap; a thread per namespace is not.
pub fn run_in_each<T>(
    paths: Vec<PathBuf>,
    mut f: impl FnMut() -> Result<T>,
) -> Result<Vec<Result<T>>> {
    Ok(paths
        .into_iter()
        .map(|p| {
            let fd = open(&p)?;
            setns(&fd, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {}", p.display()))?;
            f()
        })
        .collect())
}

/// Join a helper thread, re-raising its panic in the caller.
fn join_thread<T>(handle: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether the two namespace files refer to the same namespace (same nsfs
/// inode).
pub fn same_ns(a: &Path, b: &Path) -> Result<bool> {
    let ma = fs::metadata(a).with_context(|| format!("stat {}", a.display()))?;
    let mb = fs::metadata(b).with_context(|| format!("stat {}", b.display()))?;
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

/// Test support: run a body inside a throwaway network + mount namespace.
#[cfg(test)]
pub(crate) mod sandbox {
    use super::*;

    /// Runs `ip ARGS` (a subprocess of the calling thread, so inside the
    /// sandbox when called from there) and returns its stdout.
    pub(crate) fn ip(args: &[&str]) -> Result<String> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .context("run ip")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run `body` on a fresh thread that first unshares its network and mount
    /// namespaces, so nothing it does can touch the machine's own networking
    /// or `/run/netns`.
    ///
    /// * `unshare(CLONE_NEWNS)` is allowed in a multi-threaded process: the
    ///   kernel implicitly adds `CLONE_FS`, giving this thread a private copy
    ///   of the fs context (cwd/root) instead of the one shared with the rest
    ///   of the test binary. (Only *setns* into a mount namespace needs an
    ///   unshared fs.) We pass `CLONE_FS` explicitly to make that visible.
    /// * `/` is made recursively private first so the tmpfs below does not
    ///   propagate back to the host mount namespace.
    /// * A tmpfs goes on `/run` rather than `/run/netns` because the host may
    ///   not have `/run/netns` at all and we must not create it there. This
    ///   also leaves `/run/netns` un-mounted, so `create_named` exercises its
    ///   "bind-mount onto itself + make shared" path.
    /// * Threads and subprocesses spawned from this thread inherit both
    ///   namespaces (namespaces are per-thread and copied from the spawning
    ///   thread), so `run_in`, `create_named`, `Command::new("ip")` all stay
    ///   inside.
    ///
    /// When the thread exits, the mount namespace and with it every netns
    /// bind mount go away, destroying all namespaces and links created inside.
    pub(crate) fn run<T: Send + 'static>(body: impl FnOnce() -> Result<T> + Send + 'static) -> T {
        let handle = std::thread::Builder::new()
            .name("netns-sandbox".into())
            .spawn(move || -> Result<T> {
                unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
                    .context("unshare sandbox")?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .context("make / private")?;
                mount(
                    Some("tmpfs"),
                    "/run",
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=755"),
                )
                .context("mount tmpfs on /run")?;
                body()
            })
            .expect("spawn sandbox thread");
        match handle.join() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("sandboxed test failed: {e:#}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The host's /run/netns entries must be untouched by any sandboxed test.
    pub(crate) fn host_netns_snapshot() -> Vec<String> {
        list_named().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;
    use std::path::PathBuf;

    use super::sandbox::ip;

    #[test]
    fn named_path_and_validation() {
        assert_eq!(named_path("c1"), PathBuf::from("/run/netns/c1"));
        for bad in ["", ".", "..", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name("ctr-1.a_b").is_ok());
    }

    #[test]
    fn create_list_exec_delete() {
        let host_before = sandbox::host_netns_snapshot();
        let host_ns = fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
        sandbox::run(|| {
            assert_eq!(list_named()?, Vec::<String>::new());
            create_named("nl-b")?;
            create_named("nl-a")?;
            assert_eq!(list_named()?, vec!["nl-a".to_string(), "nl-b".to_string()]);

            // /run/netns became a shared mount point, like with iproute2.
            let info = fs::read_to_string("/proc/thread-self/mountinfo")?;
            let line = info
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(NETNS_RUN_DIR))
                .ok_or_else(|| anyhow!("{NETNS_RUN_DIR} is not a mount point"))?;
            assert!(line.contains("shared:"), "not shared: {line}");

            // Duplicate names are refused with EEXIST and leave the original.
            let err = create_named("nl-a").expect_err("duplicate accepted");
            assert!(
                err.chain()
                    .any(|e| e.downcast_ref::<Errno>() == Some(&Errno::EEXIST)),
                "{err:#}"
            );

            // Distinct, fresh namespaces, different from the sandbox's own.
            let a = named_path("nl-a");
            let b = named_path("nl-b");
            assert!(same_ns(&a, &a)?);
            assert!(!same_ns(&a, &b)?);
            assert!(!same_ns(&a, Path::new(THREAD_SELF_NET))?);

            // run_in sees the namespace; the calling thread stays where it was.
            let own_before = fs::metadata(THREAD_SELF_NET)?.ino();
            let inside = run_in(&a, || Ok(fs::metadata(THREAD_SELF_NET)?.ino()))?;
            assert_eq!(inside, fs::metadata(&a)?.ino());
            assert_eq!(fs::metadata(THREAD_SELF_NET)?.ino(), own_before);

            // iproute2 interoperates: both `ip netns exec` and `ip -n`, and
            // subprocesses spawned from this thread stay in the sandbox.
            assert!(ip(&["netns", "list"])?.contains("nl-a"));
            let links = ip(&["netns", "exec", "nl-a", "ip", "-o", "link"])?;
            assert_eq!(links.lines().count(), 1, "{links}");
            assert!(links.contains(": lo:"), "{links}");
            assert!(ip(&["-n", "nl-b", "-o", "link"])?.contains(": lo:"));

            // A namespace created by iproute2 is visible to us.
            ip(&["netns", "add", "nl-ip"])?;
            assert!(list_named()?.contains(&"nl-ip".to_string()));
            delete_named("nl-ip")?;

            delete_named("nl-a")?;
            delete_named("nl-b")?;
            assert_eq!(list_named()?, Vec::<String>::new());
            let err = delete_named("nl-a").expect_err("double delete accepted");
            assert!(
                err.chain()
                    .any(|e| e.downcast_ref::<Errno>() == Some(&Errno::ENOENT)),
                "{err:#}"
            );
            assert!(!ip(&["netns", "list"])?.contains("nl-"));
            Ok(())
        });
        assert_eq!(sandbox::host_netns_snapshot(), host_before);
        assert_eq!(
            fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok(),
            host_ns
        );
    }

    #[test]
    fn run_in_propagates_errors() {
        let err = run_in(Path::new("/nonexistent/ns"), || Ok(())).expect_err("bad path");
        assert!(format!("{err:#}").contains("/nonexistent/ns"));
        // Not a namespace file: setns fails with EINVAL.
        let err = run_in(Path::new("/proc/self/stat"), || Ok(())).expect_err("not a ns");
        assert!(
            err.chain()
                .any(|e| e.downcast_ref::<Errno>() == Some(&Errno::EINVAL)),
            "{err:#}"
        );
    }
}
