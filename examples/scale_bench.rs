//! Whole-command benchmark at scale: N containers on K = 10 networks, P
//! published ports each, every command run as a user runs it (the release
//! binary, a fresh process each time).
//!
//! For each size it prints the median of `BENCH_RUNS` (default 5) runs of:
//! cold apply (each run in a fresh sandbox), no-op `plan`, an `apply` that
//! publishes one more port, an `apply` that adds one container (with two
//! ports), and `status` — each next to the counts the command reports with
//! `NETLOOM_STATS=1` (netlink requests sent, nft elements read and
//! written), which do not depend on machine noise. A missing count line is
//! an error, not a blank. No agent runs yet: each command reads the
//! kernel itself. Then it starts the agent (`netloom
//! watch`) and runs the no-op `plan` and `status` again, answered by the
//! agent over its socket, and the two `apply`s again, with the agent's file
//! edited in place (the agent applies only its own file) and applied by the
//! agent for the command (the default; the benchmark sets
//! `NETLOOM_AGENT_APPLIES=1` to say so) (the counts are the command's own: the agent's
//! reading is not in them; the run fails if the agent did not answer or
//! apply), and prints the agent's RSS and the CPU it used while idle for two
//! seconds (once its log was quiet for two seconds).
//!
//! Every run happens in a throwaway sandbox (`unshare --net --mount` with
//! tmpfs on /run and /etc/netns and a private state dir), so the machine's
//! own network is never touched. Needs root and a release build:
//!
//! ```text
//! cargo build --release && cargo run --release --example scale_bench
//! cargo run --release --example scale_bench -- 1000x2     # one size: N x P
//! NETLOOM_BIN=/path/to/other/netloom cargo run --release --example scale_bench
//! ```
//!
//! `NETLOOM_BIN` measures another build (e.g. the one before a change, in
//! the same run as this one).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

const NETWORKS: usize = 10;
const STEPS: [&str; 9] = [
    "cold apply",
    "no-op plan",
    "apply +1 port",
    "apply +1 container",
    "status",
    "no-op plan (agent)",
    "status (agent)",
    "apply +1 port (agent)",
    "apply +1 container (agent)",
];

fn config(n: usize, ports: usize, extra_port: bool, extra_container: bool) -> String {
    let mut t = String::new();
    for k in 0..NETWORKS {
        let _ = writeln!(t, "[networks.net{k}]\nsubnet = \"10.{}.0.0/16\"\n", 100 + k);
    }
    let ports_of = |i: usize| -> Vec<String> {
        (0..ports)
            .map(|j| format!("\"{}:{}\"", 10000 + i * ports + j, 80 + j))
            .collect()
    };
    for i in 0..n {
        let mut p = ports_of(i);
        if extra_port && i == 0 {
            p.push("\"9000:9000\"".into());
        }
        let _ = writeln!(
            t,
            "[containers.c{i}]\nnetworks = [\"net{}\"]\nports = [{}]\n",
            i % NETWORKS,
            p.join(", ")
        );
    }
    if extra_container {
        let _ = writeln!(
            t,
            "[containers.extra]\nnetworks = [\"net0\"]\nports = [\"9001:80\", \"9002:443\"]\n"
        );
    }
    t
}

/// Counts from the `netloom-stats:` line a command prints on stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    netlink: u64,
    nft_read: u64,
    nft_written: u64,
}

fn counts(stderr: &str) -> Result<Counts> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("netloom-stats:"))
        .ok_or_else(|| anyhow!("no netloom-stats line in:\n{stderr}"))?;
    let get = |key: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .ok_or_else(|| anyhow!("counter {key} missing in {line:?}"))
    };
    Ok(Counts {
        netlink: get("netlink_requests")?,
        nft_read: get("nft_elements_read")?,
        nft_written: get("nft_elements_written")?,
    })
}

/// `apply` of the agent's file applied by the agent.
const AGENT_APPLIES: &[(&str, &str)] = &[("NETLOOM_AGENT_APPLIES", "1")];

/// Runs netloom once; fails on an unexpected exit status.
fn netloom(
    bin: &Path,
    state: &Path,
    cfg: &Path,
    args: &[&str],
    ok: &[i32],
) -> Result<(Duration, Counts)> {
    netloom_with(bin, state, cfg, args, ok, &[])
}

/// [`netloom`] with more environment variables.
fn netloom_with(
    bin: &Path,
    state: &Path,
    cfg: &Path,
    args: &[&str],
    ok: &[i32],
    envs: &[(&str, &str)],
) -> Result<(Duration, Counts)> {
    let start = Instant::now();
    let out = Command::new(bin)
        .envs(envs.iter().copied())
        .env("NETLOOM_STATE_DIR", state)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .env("NETLOOM_STATS", "1")
        // Before the agent starts there is no socket: the command reads
        // the kernel; after, it asks the agent (the default).
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let took = start.elapsed();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !ok.contains(&code) {
        bail!(
            "netloom {args:?} exited {code}:\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok((took, counts(&stderr)?))
}

/// Inside the sandbox: one cold apply, then every other step once.
fn inner(bin: &Path, dir: &Path, n: usize, ports: usize) -> Result<()> {
    let sh = |s: &str| -> Result<()> {
        let st = Command::new("sh").args(["-c", s]).status()?;
        if !st.success() {
            bail!("{s}: {st}");
        }
        Ok(())
    };
    sh(
        "mount -t tmpfs b /run && mkdir -p /run/netns && mount -t tmpfs b /etc/netns && ip link set lo up",
    )?;
    let state = dir.join("state");
    let base = dir.join("base.toml");
    let port = dir.join("port.toml");
    let cont = dir.join("container.toml");
    std::fs::write(&base, config(n, ports, false, false))?;
    std::fs::write(&port, config(n, ports, true, false))?;
    std::fs::write(&cont, config(n, ports, false, true))?;
    let run = |cfg: &Path, args: &[&str], ok: &[i32]| netloom(bin, &state, cfg, args, ok);
    let mut results = Vec::new();
    results.push(run(&base, &["apply"], &[0])?);
    results.push(run(&base, &["plan", "--detailed-exitcode"], &[0])?);
    results.push(run(&port, &["apply"], &[0])?);
    run(&base, &["apply"], &[0])?;
    results.push(run(&cont, &["apply"], &[0])?);
    run(&base, &["apply"], &[0])?;
    results.push(run(&base, &["status"], &[0])?);
    let agent = Agent::start(bin, &state, &base, dir)?;
    results.push(run(&base, &["plan", "--detailed-exitcode"], &[0])?);
    results.push(run(&base, &["status"], &[0])?);
    let answered = agent.answers();
    if answered != 2 {
        bail!("the agent answered {answered} of 2 commands");
    }
    // The agent applies only its own file: edit it in place, as a user
    // does, then `apply` (the agent applies it for the command).
    let apply = |cfg: &Path| netloom_with(bin, &state, cfg, &["apply"], &[0], AGENT_APPLIES);
    std::fs::write(&base, config(n, ports, true, false))?;
    results.push(apply(&base)?);
    std::fs::write(&base, config(n, ports, false, false))?;
    apply(&base)?;
    std::fs::write(&base, config(n, ports, false, true))?;
    results.push(apply(&base)?);
    std::fs::write(&base, config(n, ports, false, false))?;
    apply(&base)?;
    let applied = agent.applies(4);
    if applied != 4 {
        bail!("the agent applied {applied} of 4 `apply` commands");
    }
    let (rss_kb, idle_ticks) = agent.footprint()?;
    drop(agent);
    println!("agent\t{rss_kb}\t{idle_ticks}");
    for (step, (t, c)) in STEPS.iter().zip(results) {
        println!(
            "{step}\t{}\t{}\t{}\t{}",
            t.as_nanos(),
            c.netlink,
            c.nft_read,
            c.nft_written
        );
    }
    Ok(())
}

/// The agent running in the sandbox; killed on drop.
struct Agent {
    child: std::process::Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `watch` and waits until it has reconciled and gone quiet.
    fn start(bin: &Path, state: &Path, cfg: &Path, dir: &Path) -> Result<Agent> {
        let log = dir.join("agent.log");
        let child = Command::new(bin)
            .env("NETLOOM_STATE_DIR", state)
            .env("RUST_LOG", "info,netloom::cmd::watch::serve=debug")
            .arg("-c")
            .arg(cfg)
            .args(["watch", "--resync", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start the agent")?;
        let agent = Agent { child, log };
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut last = String::new();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = std::fs::read_to_string(&agent.log).unwrap_or_default();
            if now == last
                && now.contains("reconciled in")
                && Path::new("/run/netloom/agent.sock").exists()
            {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("the agent did not settle:\n{now}");
            }
            last = now;
        }
    }

    fn answers(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("answering `")
            .count()
    }

    /// `apply` commands the agent applied for, once it logged `want` of
    /// them or after a few seconds: the agent answers an apply before it
    /// logs the reconcile, so the last line may come just after the
    /// command returned.
    fn applies(&self, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .matches("apply (command)")
                .count();
            if seen >= want || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// RSS in kB, and clock ticks of CPU used while idle for two seconds,
    /// once the agent logged nothing for two seconds (after the applies it
    /// checks its own changes and refreshes its view).
    fn footprint(&self) -> Result<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = std::fs::read_to_string(&self.log).unwrap_or_default();
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let now = std::fs::read_to_string(&self.log).unwrap_or_default();
            if now == last {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent did not go quiet:\n{now}");
            }
            last = now;
        }
        let pid = self.child.id();
        let ticks = || -> Result<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime: fields 14 and 15, i.e. 12 and 13 after the name.
            Ok(f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        };
        let before = ticks()?;
        std::thread::sleep(Duration::from_secs(2));
        let idle = ticks()? - before;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok((rss, idle))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sandbox's results: the steps, and the agent's (RSS kB, idle ticks).
type Sandbox = (Vec<(Duration, Counts)>, (u64, u64));

fn sandbox(me: &Path, n: usize, ports: usize) -> Result<Sandbox> {
    let dir = tempfile::tempdir()?;
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(me)
        .args(["--inner", &dir.path().display().to_string()])
        .arg(n.to_string())
        .arg(ports.to_string())
        .output()
        .context("run unshare")?;
    if !out.status.success() {
        bail!("sandbox failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut v = Vec::new();
    let mut agent = (0, 0);
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if let ["agent", rss, idle] = f.as_slice() {
            agent = (rss.parse()?, idle.parse()?);
            continue;
        }
        let [_, ns, nl, rd, wr] = f.as_slice() else {
            bail!("bad line from sandbox: {l}");
        };
        v.push((
            Duration::from_nanos(ns.parse()?),
            Counts {
                netlink: nl.parse()?,
                nft_read: rd.parse()?,
                nft_written: wr.parse()?,
            },
        ));
    }
    if v.len() != STEPS.len() {
        bail!("sandbox reported {} steps:\n{text}", v.len());
    }
    Ok((v, agent))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = std::env::var_os("NETLOOM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/netloom")
        });
    if args.get(1).map(String::as_str) == Some("--inner") {
        let (Some(dir), Some(n), Some(p)) = (args.get(2), args.get(3), args.get(4)) else {
            bail!("--inner DIR N PORTS");
        };
        return inner(&bin, Path::new(dir), n.parse()?, p.parse()?);
    }
    if !bin.exists() {
        bail!("build the binary first: cargo build --release");
    }
    let me = std::env::current_exe()?;
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let sizes: Vec<(usize, usize)> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|s| {
                let (n, p) = s.split_once('x').ok_or_else(|| anyhow!("size is NxP"))?;
                Ok((n.parse()?, p.parse()?))
            })
            .collect::<Result<_>>()?
    } else {
        vec![(100, 2), (1000, 2), (1000, 10)]
    };
    std::fs::create_dir_all("/etc/netns")?; // a mount point for the sandbox
    println!(
        "{:>10} {:>6}  {:<20} {:>10} {:>8} {:>9} {:>9}",
        "containers", "ports", "command", "median", "netlink", "nft read", "nft write"
    );
    for (n, p) in sizes {
        let mut all = Vec::new();
        let mut rss = Vec::new();
        let mut idle = Vec::new();
        for _ in 0..runs {
            let (steps, (r, i)) = sandbox(&me, n, p)?;
            all.push(steps);
            rss.push(r);
            idle.push(i);
        }
        rss.sort();
        idle.sort();
        for (i, step) in STEPS.iter().enumerate() {
            let mut times: Vec<Duration> = all.iter().map(|r| r[i].0).collect();
            times.sort();
            let c = &all[0][i].1;
            let stable = all.iter().all(|r| r[i].1 == *c);
            println!(
                "{:>10} {:>6}  {:<20} {:>8.1}ms {:>8} {:>9} {:>9}{}",
                n,
                n * p,
                step,
                times[times.len() / 2].as_secs_f64() * 1000.0,
                c.netlink,
                c.nft_read,
                c.nft_written,
                if stable { "" } else { "  (counts varied)" }
            );
        }
        println!(
            "{:>10} {:>6}  agent RSS {:.1} MiB (median of {runs}), CPU while idle for 2 s: {} tick(s) (median)",
            n,
            n * p,
            rss[rss.len() / 2] as f64 / 1024.0,
            idle[idle.len() / 2]
        );
    }
    Ok(())
}
