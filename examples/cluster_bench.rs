//! Cluster convergence: a 3-host cluster with 300 containers on one
//! cluster network; each round pushes a file with one more container and
//! measures the time from the start of `push` until every host's agent
//! reports, in etcd, that it applied that revision and converged
//! (`netloom status --cluster` exits 0). Median of 5 rounds.
//!
//! Everything runs in throwaway sandboxes (`unshare --net --mount`, tmpfs
//! on /run and /etc/netns): a lab with the underlay bridge and a real etcd,
//! and three hosts joined to it by veths, each with its agent. Nothing
//! touches the machine's own namespace; the sandboxes die with the program.
//! Needs root, `etcd`, `etcdctl`, `unshare`, `nsenter`.
//!
//! `cargo build --release --bin netloom && cargo run --release --example cluster_bench [-- CONTAINERS ROUNDS]`
//! (the netloom binary is `target/release/netloom`, or `NETLOOM_BIN`).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const ETCD_IP: &str = "10.98.0.1";
const HOSTS: usize = 3;
/// Longest wait for a convergence before the round counts as failed.
const DEADLINE: Duration = Duration::from_secs(600);

/// A network + mount namespace held by a `sleep`, with its own /run/netns
/// and /etc/netns; commands enter it with nsenter.
struct Sandbox {
    holder: Child,
    pid: u32,
    state: PathBuf,
    children: Vec<Child>,
}

/// `c`, killed by the kernel when the thread that starts it ends: a
/// benchmark killed half-way leaves no sandbox holder (and its namespaces)
/// behind.
fn dies_with_bench(mut c: Command) -> Command {
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

impl Sandbox {
    fn new(state: PathBuf) -> Result<Sandbox> {
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all("/etc/netns")?;
        let mut holder = dies_with_bench(Command::new("unshare"))
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .args([
                "sh",
                "-c",
                "set -e; mount -t tmpfs bench /run; mkdir -p /run/netns; \
                 mount -t tmpfs bench /etc/netns; ip link set lo up; echo ready; exec sleep 100000",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("run unshare")?;
        let mut buf = [0u8; 6];
        holder
            .stdout
            .take()
            .context("sandbox stdout")?
            .read_exact(&mut buf)
            .context("sandbox did not start")?;
        let pid = holder.id();
        Ok(Sandbox {
            holder,
            pid,
            state,
            children: Vec::new(),
        })
    }

    fn command(&self, script: &str) -> Command {
        let mut c = dies_with_bench(Command::new("nsenter"));
        c.args(["-t", &self.pid.to_string(), "-n", "-m", "--", "sh", "-c"])
            .arg(script)
            .env("NETLOOM_STATE_DIR", &self.state);
        c
    }

    /// Runs `script`; its exit status and stdout.
    fn sh(&self, script: &str) -> Result<(bool, String)> {
        let out = self.command(script).output().context("nsenter")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    fn must(&self, script: &str) -> Result<String> {
        match self.sh(script)? {
            (true, out) => Ok(out),
            (false, _) => bail!("failed: {script}"),
        }
    }

    /// Starts `script` in the background with its output in `log`.
    fn spawn(&mut self, script: &str, log: &Path) -> Result<()> {
        let f = std::fs::File::create(log)?;
        let child = self
            .command(&format!("exec {script}"))
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("spawn")?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `n` containers spread over the hosts on the cluster network `app`, and
/// `extra` more (one per round).
fn file(n: usize, extra: usize) -> String {
    let mut t = format!(
        "[cluster]\netcd = [\"http://{ETCD_IP}:2379\"]\n[settings]\nupstream_dns = [\"{ETCD_IP}\"]\n"
    );
    for h in 0..HOSTS {
        let _ = writeln!(t, "[hosts.node{}]\naddress = \"10.98.0.{}\"", h + 1, 11 + h);
    }
    t.push_str("[networks.app]\nsubnet = \"10.200.0.0/16\"\nscope = \"cluster\"\n");
    for i in 0..n {
        let _ = writeln!(
            t,
            "[containers.c{i}]\nhost = \"node{}\"\nnetworks = [\"app\"]",
            i % HOSTS + 1
        );
    }
    for i in 0..extra {
        let _ = writeln!(
            t,
            "[containers.extra{i}]\nhost = \"node{}\"\nnetworks = [\"app\"]",
            i % HOSTS + 1
        );
    }
    t
}

/// Polls `status --cluster` until every host converged on the pushed
/// revision (exit 0); the time it took, from `since`.
fn converged(lab: &Sandbox, bin: &Path, cfg: &Path, since: Instant) -> Result<Duration> {
    let cmd = format!("{} -c {} status --cluster", bin.display(), cfg.display());
    while since.elapsed() < DEADLINE {
        if lab.sh(&cmd)?.0 {
            return Ok(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("not converged within {DEADLINE:?}:\n{}", lab.sh(&cmd)?.1)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments: CONTAINERS ROUNDS"))
        .collect::<Result<_>>()?;
    let n = args.first().copied().unwrap_or(300);
    let rounds = args.get(1).copied().unwrap_or(5).max(1);
    let bin = std::env::var_os("NETLOOM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/netloom"),
        PathBuf::from,
    );
    if !bin.exists() {
        bail!(
            "{} missing: cargo build --release --bin netloom",
            bin.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    let mut lab = Sandbox::new(dir.join("lab"))?;
    lab.must(&format!(
        "ip link add under0 type bridge && ip addr add {ETCD_IP}/24 dev under0 && ip link set under0 up"
    ))?;
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let h = Sandbox::new(dir.join(format!("node{}", i + 1)))?;
        lab.must(&format!(
            "ip link add u{i} type veth peer name ul0 netns /proc/{}/ns/net && \
             ip link set u{i} master under0 && ip link set u{i} up",
            h.pid
        ))?;
        h.must(&format!(
            "ip addr add 10.98.0.{}/24 dev ul0 && ip link set ul0 up",
            11 + i
        ))?;
        hosts.push(h);
    }
    let url = format!("http://{ETCD_IP}:2379");
    lab.spawn(
        &format!(
            "etcd --name lab --data-dir {d}/etcd --listen-client-urls {url} --advertise-client-urls {url} \
             --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
             --initial-cluster lab=http://127.0.0.1:2380",
            d = dir.display()
        ),
        &dir.join("etcd.log"),
    )?;
    let t = Instant::now();
    while !lab
        .sh(&format!(
            "ETCDCTL_API=3 etcdctl --endpoints={url} endpoint health"
        ))?
        .0
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("etcd did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, h) in hosts.iter_mut().enumerate() {
        let log = dir.join(format!("agent{}.log", i + 1));
        h.spawn(
            &format!(
                "{} -c /nonexistent watch --host node{} --etcd {url}",
                bin.display(),
                i + 1
            ),
            &log,
        )?;
    }

    let cfg = dir.join("cluster.toml");
    let push = |extra: usize| -> Result<(Instant, Duration)> {
        std::fs::write(&cfg, file(n, extra))?;
        let t0 = Instant::now();
        lab.must(&format!(
            "{} -c {} push > /dev/null",
            bin.display(),
            cfg.display()
        ))?;
        Ok((t0, t0.elapsed()))
    };
    let (t0, _) = push(0)?;
    let first = converged(&lab, &bin, &cfg, t0)?;
    println!(
        "{HOSTS} hosts, {n} containers on one cluster network: first push converged in {:.2} s",
        first.as_secs_f64()
    );

    let (mut all, mut pushes) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        let (t0, pushed) = push(r)?;
        let took = converged(&lab, &bin, &cfg, t0)?;
        println!(
            "round {r}: +1 container (extra{} on node{}): push {:.0} ms, all hosts converged {:.0} ms",
            r - 1,
            (r - 1) % HOSTS + 1,
            pushed.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3
        );
        all.push(took);
        pushes.push(pushed);
    }
    println!(
        "median of {rounds}: push {:.0} ms, push to all hosts converged {:.0} ms (polled every ~10 ms + one status run)",
        median(&mut pushes).as_secs_f64() * 1e3,
        median(&mut all).as_secs_f64() * 1e3
    );
    // Where the time goes: each agent's own account of its last reconcile.
    for i in 0..HOSTS {
        let log = std::fs::read_to_string(dir.join(format!("agent{}.log", i + 1)))?;
        if let Some(l) = log.lines().rev().find(|l| l.contains("reconciled in")) {
            let at = l.find("reconciled in").unwrap_or(0);
            println!("node{} last reconcile: {}", i + 1, &l[at..]);
        }
    }
    drop(hosts);
    drop(lab);
    Ok(())
}
