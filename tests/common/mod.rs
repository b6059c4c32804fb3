//! A throwaway host for kernel tests.
//!
//! Each [`Host`] is a process (`sleep`) started by `unshare` in its own
//! network namespace and a private mount namespace, with fresh tmpfs on
//! `/run/netns` and `/etc/netns`, its own `/etc/resolv.conf` (pointing into
//! the sandbox, so no DNS query ever leaves it) and its own state dir.
//! Commands run inside it through `nsenter`. Dropping the `Host` kills the
//! process; the namespaces, and everything netloom made in them, go with
//! it, also when a test fails. The machine's own network namespace is never
//! touched.
//!
//! [`Host::with_outside`] adds an "outside" namespace joined to the host by
//! a veth pair (host side `uplink0` 10.99.0.1/24, outside 10.99.0.2/24) to
//! play a remote client.
#![allow(dead_code)]

pub mod leaks;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NETLOOM: &str = env!("CARGO_BIN_EXE_netloom");
pub const UPLINK_IP: &str = "10.99.0.1";
pub const OUTSIDE_IP: &str = "10.99.0.2";
/// [`Host::with_outside6`]: the host's and the outside's IPv6 uplink addresses.
pub const UPLINK6: &str = "fd99::1";
pub const OUTSIDE6: &str = "fd99::2";

/// Whether kernel tests can run here; in CI (`CI=true`) a missing
/// privilege or tool is a failure, elsewhere the test is skipped with a
/// `SKIPPED: <test>: <why>` line on the real stderr (not captured by the
/// test harness), which `.ci/run`'s closing summary counts.
pub fn kernel_tests_possible(tools: &[&str]) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let root = unsafe { libc_geteuid() } == 0;
    let missing: Vec<&&str> = tools.iter().filter(|t| !have(t)).collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = if !root {
        "not root".to_string()
    } else {
        format!("missing tools: {missing:?}")
    };
    if ci {
        panic!("kernel test cannot run in CI: {why}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("kernel test")
        .to_string();
    // Straight to the process's stderr: `eprintln!` would be captured and
    // shown only for failing tests, and a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
    false
}

/// Whether the update variable `var` (`UPDATE_GOLDEN`, `UPDATE_SCHEMA`)
/// asks to rewrite expected files: only the value `1` does; unset means
/// compare; any other value is a mistake and fails the test.
pub fn update_requested(var: &str) -> bool {
    match std::env::var(var) {
        Ok(v) if v == "1" => true,
        Ok(v) => panic!("{var}={v:?}: set it to 1 to rewrite the expected files, or unset it"),
        Err(std::env::VarError::NotPresent) => false,
        Err(e) => panic!("{var}: {e}"),
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Host {
    sandbox: Child,
    pid: u32,
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
}

/// Result of a command, with helpers for assertions.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Host {
    pub fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        // /etc/netns must exist as a mount point; an empty directory is all
        // that this leaves on the machine (iproute2 creates it as well).
        std::fs::create_dir_all("/etc/netns").expect("mkdir /etc/netns");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {OUTSIDE_IP}\noptions timeout:1 attempts:1\n"),
        )
        .unwrap();
        let state = dir.path().join("state");
        let script = format!(
            "set -e; mount --bind {resolv} /etc/resolv.conf; \
             mount -t tmpfs netloom-test /run; mkdir -p /run/netns; \
             mount -t tmpfs netloom-test /etc/netns; \
             ip link set lo up; mkdir -p {state}; echo ready; exec sleep 100000",
            resolv = resolv.display(),
            state = state.display()
        );
        let mut sandbox = dies_with_test(Command::new("unshare"))
            .args([
                "--net",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unshare");
        let pid = sandbox.id();
        // Wait for "ready" so that mounts exist before the first command.
        let mut out = sandbox.stdout.take().expect("stdout");
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut buf).expect("sandbox did not start");
        assert_eq!(&buf, b"ready\n");
        Host {
            sandbox,
            pid,
            dir,
            children: Vec::new(),
        }
    }

    /// A host with an "outside" namespace on uplink0 (10.99.0.0/24).
    pub fn with_outside() -> Host {
        let h = Host::new();
        h.sh(&format!(
            "ip netns add outside && \
             ip link add uplink0 type veth peer name eth0 netns outside && \
             ip addr add {UPLINK_IP}/24 dev uplink0 && ip link set uplink0 up && \
             ip -n outside addr add {OUTSIDE_IP}/24 dev eth0 && \
             ip -n outside link set eth0 up && ip -n outside link set lo up && \
             ip -n outside route add default via {UPLINK_IP}"
        ))
        .ok();
        h
    }

    /// A host with an "outside" namespace that has IPv6 only on its uplink
    /// (host `uplink0` fd99::1/64, outside fd99::2/64, no IPv4 address at
    /// all), to prove that IPv6 clients are served without any help from
    /// IPv4.
    pub fn with_outside6() -> Host {
        let h = Host::new();
        h.sh(&format!(
            "ip netns add outside && \
             ip link add uplink0 type veth peer name eth0 netns outside && \
             ip addr add {UPLINK6}/64 dev uplink0 nodad && ip link set uplink0 up && \
             ip -n outside addr add {OUTSIDE6}/64 dev eth0 nodad && \
             ip -n outside link set eth0 up && ip -n outside link set lo up && \
             ip -n outside -6 route add default via {UPLINK6}"
        ))
        .ok();
        h
    }

    /// The sandbox's process: `/proc/PID/ns/net` is the host's namespace
    /// (to join it to another sandbox, e.g. an underlay).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn enter(&self) -> Command {
        let mut c = dies_with_test(Command::new("nsenter"));
        c.args(["-t", &self.pid.to_string(), "-n", "-m", "--"]);
        c.env("NETLOOM_STATE_DIR", self.state_dir());
        c.env_remove("NETLOOM_CONFIG");
        c
    }

    /// Runs a shell script inside the host.
    pub fn sh(&self, script: &str) -> Run {
        let out = self
            .enter()
            .args(["sh", "-c", script])
            .output()
            .expect("nsenter");
        Run::from(out)
    }

    /// Runs netloom inside the host with `config` as the file.
    pub fn netloom(&self, config: &Path, args: &[&str]) -> Run {
        let out = self
            .enter()
            .arg(NETLOOM)
            .arg("-c")
            .arg(config)
            .args(args)
            .output()
            .expect("run netloom");
        Run::from(out)
    }

    /// Starts netloom inside the host without waiting for it; the child's
    /// pid is netloom's own (nsenter execs it), so signals sent to it reach
    /// netloom. Only stderr is kept (piped): a plan on stdout can exceed a
    /// pipe's buffer and would block netloom until someone reads it.
    pub fn netloom_child(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut c = self.enter();
        c.arg(NETLOOM).arg("-c").arg(config).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netloom")
    }

    /// Runs netloom inside the host with extra environment variables.
    pub fn netloom_env(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let child = self.netloom_child(config, args, env);
        Run::from(child.wait_with_output().expect("wait for netloom"))
    }

    /// Writes a config file into the test dir and returns its path.
    pub fn config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        p
    }

    /// `ip netns list`, checked to have succeeded (an empty list from a
    /// failed command would pass any "no namespace left" check).
    pub fn netns_list(&self) -> String {
        self.sh("ip netns list").ok().stdout.clone()
    }

    /// Starts a long-running command inside the host (killed on drop).
    pub fn spawn(&mut self, script: &str) -> u32 {
        let child = self
            .enter()
            .args(["sh", "-c", &format!("exec {script}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let id = child.id();
        self.children.push(child);
        id
    }

    /// Starts a long-running command and keeps its output in a file.
    pub fn spawn_logged(&mut self, script: &str, log: &Path) -> u32 {
        let f = std::fs::File::create(log).unwrap();
        let child = self
            .enter()
            .args(["sh", "-c", &format!("exec {script}")])
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("spawn");
        let id = child.id();
        self.children.push(child);
        id
    }

    /// Starts the agent (`watch --resync 3600`, info log) on `cfg`; its pid
    /// and the file its log goes to.
    pub fn start_agent(&mut self, cfg: &Path) -> (u32, PathBuf) {
        let log = self.dir.path().join("agent.log");
        let pid = self.spawn_logged(
            &format!(
                "env RUST_LOG=info {NETLOOM} watch --resync 3600 -c {}",
                cfg.display()
            ),
            &log,
        );
        (pid, log)
    }

    /// Polls `script` until it succeeds or `timeout` passes.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.sh(script).code == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// `c`, killed by the kernel when the test thread that starts it ends.
/// Drop cleans up after a test that returns or panics; this covers a test
/// process that is killed (a timeout, a cancelled run), which used to leave
/// the sandbox's holder and its namespaces running on the machine.
fn dies_with_test(mut c: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.sandbox.kill();
        let _ = self.sandbox.wait();
    }
}

/// A shell test that holds once process `pid` has exited: its /proc entry
/// is gone, or it is a zombie with no thread left. A zombie leader whose
/// other threads are still exiting (SIGKILL under load) still holds its
/// files and locks, so "zombie" alone is not "exited".
pub fn exited(pid: u32) -> String {
    format!(
        "! test -e /proc/{pid}/stat || {{ [ \"$(cut -d' ' -f3 /proc/{pid}/stat)\" = Z ] && [ $(ls /proc/{pid}/task 2>/dev/null | wc -l) -le 1 ]; }}"
    )
}
