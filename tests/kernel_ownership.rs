//! Ownership under interruption, damage and concurrency, each test in its
//! own throwaway host: signals and `kill -9` during `apply` and `watch`, a
//! full state disk, damaged and missing records, `down` with a state dir
//! that is a mount point or holds other files, the lock and its waiters,
//! a running agent, a second instance, foreign objects with netloom's
//! names. After each: the next `apply` converges, `plan` is empty, `down`
//! leaves nothing of netloom's, foreign objects are untouched.
//! (Kills after each single write: tests/kernel_crash.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::leaks::{foreign_snapshot, leftovers, make_foreign, many_containers};
use common::{Host, Run, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter", "flock", "mountpoint"];

fn tutorial() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/docker-tutorial.toml"
    ))
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Waits until `pid` has exited (gone, or a zombie with no thread left:
/// its files and locks are released then).
fn wait_dead(h: &Host, pid: u32) {
    assert!(
        h.wait_for(&common::exited(pid), Duration::from_secs(30)),
        "pid {pid} did not exit"
    );
}

fn finish(child: Child) -> Run {
    Run::from(child.wait_with_output().expect("wait for netloom"))
}

/// Waits until `child` holds the state dir's lock (it writes its pid into
/// the lock file once it has it; signal handlers are installed before).
fn wait_for_lock(h: &Host, pid: u32) {
    let lock = h.state_dir().join("lock");
    assert!(
        h.wait_for(
            &format!("grep -qx 'pid {pid}' {}", lock.display()),
            Duration::from_secs(60)
        ),
        "netloom (pid {pid}) never took the lock"
    );
}

fn namespaces(h: &Host) -> usize {
    h.sh("ls /run/netns | grep -vx foreign | wc -l")
        .stdout
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The next apply converges, plan is empty, down leaves nothing.
#[track_caller]
fn converges_and_cleans(h: &Host, cfg: &Path) {
    let apply = h.netloom(cfg, &["apply"]);
    assert_eq!(
        apply.code, 0,
        "apply after the interruption: {}",
        apply.stderr
    );
    let plan = h.netloom(cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 0,
        "plan not empty:\n{}{}",
        plan.stdout, plan.stderr
    );
    h.netloom(cfg, &["down"]).ok();
    assert_eq!(leftovers(h), Vec::<String>::new());
}

#[test]
fn sigint_and_sigterm_stop_between_operations_and_say_what_was_done() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    make_foreign(&h);
    let foreign = foreign_snapshot(&h);
    let cfg = h.config("big.toml", &many_containers(150));
    for sig in ["INT", "TERM"] {
        let child = h.netloom_child(&cfg, &["apply"], &[]);
        let pid = child.id();
        wait_for_lock(&h, pid);
        // Let it make a few objects first (not required for the checks).
        h.wait_for(
            "test $(ls /run/netns | wc -l) -ge 4",
            Duration::from_secs(10),
        );
        signal(pid, sig);
        let run = finish(child);
        assert_eq!(run.code, 1, "SIG{sig}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("apply interrupted by SIG{sig}")),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("not done:"), "{}", run.stderr);
        assert!(run.stderr.contains("netloom apply"), "{}", run.stderr);
        // The next run knows the apply was cut short, and finishes it.
        let next = h.netloom(&cfg, &["apply"]);
        assert_eq!(next.code, 0, "{}", next.stderr);
        assert!(next.stderr.contains("did not finish"), "{}", next.stderr);
        let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
        assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
        h.netloom(&cfg, &["down"]).ok();
        assert_eq!(leftovers(&h), Vec::<String>::new());
    }
    // SIGTERM during `down`: it stops between removals and says so; the
    // next `down` removes the rest.
    h.netloom(&cfg, &["apply"]).ok();
    let child = h.netloom_child(&cfg, &["down"], &[]);
    let pid = child.id();
    wait_for_lock(&h, pid);
    signal(pid, "TERM");
    let run = finish(child);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("down interrupted by SIGTERM"),
        "{}",
        run.stderr
    );
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(leftovers(&h), Vec::<String>::new());
    // A second signal exits at once; the host is still recoverable.
    let child = h.netloom_child(&cfg, &["apply"], &[]);
    let pid = child.id();
    wait_for_lock(&h, pid);
    h.wait_for(
        "test $(ls /run/netns | wc -l) -ge 4",
        Duration::from_secs(10),
    );
    signal(pid, "INT");
    signal(pid, "INT");
    let run = finish(child);
    assert_ne!(run.code, 0, "{}", run.stderr);
    converges_and_cleans(&h, &cfg);
    assert_eq!(foreign_snapshot(&h), foreign);
}

#[test]
fn kill_9_of_apply_at_any_time_is_recoverable() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    make_foreign(&h);
    let foreign = foreign_snapshot(&h);
    let cfg = h.config("big.toml", &many_containers(150));
    // Kills at moments of the apply marked by how many namespaces exist:
    // right after the lock, early, midway, late (veths, firewall, files).
    for at in [0usize, 2, 60, 140] {
        let child = h.netloom_child(&cfg, &["apply"], &[]);
        let pid = child.id();
        wait_for_lock(&h, pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        while namespaces(&h) < at && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        signal(pid, "KILL");
        let _ = finish(child);
        // Straight to `down` once, converge the other times.
        if at == 60 {
            h.netloom(&cfg, &["down"]).ok();
            assert_eq!(
                leftovers(&h),
                Vec::<String>::new(),
                "down after kill at {at}"
            );
        } else {
            converges_and_cleans(&h, &cfg);
        }
    }
    assert_eq!(foreign_snapshot(&h), foreign);
}

#[test]
fn kill_9_of_watch_mid_reconcile_is_recoverable() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("big.toml", &many_containers(150));
    let log = h.dir.path().join("watch.log");
    let pid = h.spawn_logged(
        &format!(
            "{} -c {} watch --resync 3600",
            common::NETLOOM,
            cfg.display()
        ),
        &log,
    );
    assert!(
        h.wait_for(
            "test $(ls /run/netns | wc -l) -ge 20",
            Duration::from_secs(60)
        ),
        "the agent created nothing"
    );
    signal(pid, "KILL");
    wait_dead(&h, pid);
    // The dead agent's status names a dead pid: it does not block `apply`.
    converges_and_cleans(&h, &cfg);
    // And a restarted agent converges as well.
    let pid = h.spawn_logged(
        &format!(
            "{} -c {} watch --resync 3600",
            common::NETLOOM,
            cfg.display()
        ),
        &log,
    );
    assert!(
        h.wait_for(
            "test $(ls /run/netns | wc -l) -ge 20",
            Duration::from_secs(60)
        ),
        "the agent created nothing"
    );
    signal(pid, "KILL");
    wait_dead(&h, pid);
    let pid = h.spawn_logged(
        &format!(
            "{} -c {} watch --resync 3600",
            common::NETLOOM,
            cfg.display()
        ),
        &log,
    );
    let status = h.state_dir().join("agent.json");
    assert!(
        h.wait_for(
            &format!(
                "grep -q '\"pid\": {pid}' {s} && grep -q 'last reconcile' {s} && ! grep -q failed {s}",
                s = status.display()
            ),
            Duration::from_secs(120)
        ),
        "restarted agent did not converge: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    signal(pid, "TERM");
    wait_dead(&h, pid);
    converges_and_cleans(&h, &cfg);
}

#[test]
fn a_full_state_disk_fails_cleanly_and_recovers() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let state = h.state_dir();
    let cfg = h.config("mid.toml", &many_containers(40));
    let s = state.display();
    // So small that not even the intent fits: nothing is created.
    h.sh(&format!("mount -t tmpfs -o size=4k netloom-state {s}"))
        .ok();
    h.sh(&format!("head -c 4096 /dev/zero > {s}/filler"));
    let run = h.netloom(&cfg, &["apply"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    assert_eq!(namespaces(&h), 0, "created objects without recording them");
    h.sh(&format!("rm {s}/filler")).ok();
    // Room for the intent, not for the record of the finished apply: the
    // objects are made, their record cannot be written. (The compact
    // record of these 40 containers: 6 KB for the intent, 13 KB when
    // done, written beside the intent before it replaces it; tmpfs counts
    // 4 KiB pages and the lock file takes one, so 20k holds the lock and
    // the intent, 12 KiB, and not the 28 KiB of the last write.)
    h.sh(&format!("mount -o remount,size=20k {s}")).ok();
    let run = h.netloom(&cfg, &["apply"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("No space left"), "{}", run.stderr);
    assert!(namespaces(&h) > 0);
    // With room again, the next apply adopts and converges.
    h.sh(&format!("mount -o remount,size=16m {s}")).ok();
    converges_and_cleans(&h, &cfg);
    // And `down` on the full disk removes everything; the mount point stays.
    h.sh(&format!("mount -o remount,size=20k {s}")).ok();
    assert_eq!(h.netloom(&cfg, &["apply"]).code, 1);
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(leftovers(&h), Vec::<String>::new());
    assert_eq!(h.sh(&format!("mountpoint -q {s}")).code, 0);
}

#[test]
fn damaged_or_missing_records_are_named_and_rebuilt() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = tutorial();
    let record = h.state_dir().join("state.json");
    let rec = record.display().to_string();
    h.netloom(&cfg, &["apply"]).ok();
    let addrs = h.sh("ip -n tomcat1 -4 -o addr show eth0; nft list map inet netloom dnat_any");
    h.netloom(&cfg, &["apply"]).ok();
    let good = std::fs::read(&record).expect("state.json");
    let damaged: [(&str, Vec<u8>); 5] = [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("garbage", b"\x00\x7fgarbage".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("empty", Vec::new()),
        (
            "future version",
            br#"{"version": 99, "owned": {}}"#.to_vec(),
        ),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&record, &bytes).unwrap();
        for args in [&["plan"][..], &["apply"], &["status"]] {
            let run = h.netloom(&cfg, args);
            assert_eq!(run.code, 1, "{what} {args:?}: {}", run.stderr);
            assert!(
                run.stderr.contains(&rec) && run.stderr.contains("netloom state rebuild"),
                "{what} {args:?}: {}",
                run.stderr
            );
        }
        if what == "future version" {
            let run = h.netloom(&cfg, &["apply"]);
            assert!(run.stderr.contains("newer netloom"), "{}", run.stderr);
        }
        let run = h.netloom(&cfg, &["apply"]);
        assert!(run.stderr.contains("state.json.prev"), "{}", run.stderr);
        // Rebuilt from the kernel: same addresses and ports, nothing to do.
        h.netloom(&cfg, &["state", "rebuild"]).ok();
        h.netloom(&cfg, &["apply"]).ok();
        let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
        assert_eq!(plan.code, 0, "{what}: {}{}", plan.stdout, plan.stderr);
        let again = h.sh("ip -n tomcat1 -4 -o addr show eth0; nft list map inet netloom dnat_any");
        assert_eq!(
            strip_counters(&again.stdout),
            strip_counters(&addrs.stdout),
            "{what}"
        );
    }
    // A lost record: apply adopts what carries netloom's marks.
    std::fs::remove_file(&record).unwrap();
    let run = h.netloom(&cfg, &["apply"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    // `down` without a readable record removes everything marked.
    std::fs::write(&record, b"garbage").unwrap();
    let down = h.netloom(&cfg, &["down"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert!(down.stderr.contains("marks"), "{}", down.stderr);
    assert_eq!(leftovers(&h), Vec::<String>::new());
    // Also with the record and the file both gone.
    h.netloom(&cfg, &["apply"]).ok();
    std::fs::remove_file(&record).unwrap();
    let none = h.dir.path().join("gone.toml");
    h.netloom(&none, &["down"]).ok();
    assert_eq!(leftovers(&h), Vec::<String>::new());
}

/// After `down` with a foreign `table inet netloom`: that table is all
/// that is left.
fn down_left_only_the_table(h: &Host) -> bool {
    leftovers(h) == vec!["nft table inet netloom".to_string()]
}

fn strip_counters(s: &str) -> String {
    s.lines()
        .map(|l| match l.find("counter packets") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn down_keeps_the_state_dir_and_files_that_are_not_its_own() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = tutorial();
    let state = h.state_dir();
    let s = state.display();
    h.sh(&format!(
        "mount -t tmpfs netloom-state {s} && mkdir {s}/backups && echo mine > {s}/backups/notes && echo mine > {s}/README"
    ))
    .ok();
    h.netloom(&cfg, &["apply"]).ok();
    h.netloom(&cfg, &["apply"]).ok();
    let lock_inode = h.sh(&format!("stat -c %i {s}/lock")).ok().stdout.clone();
    let down = h.netloom(&cfg, &["down"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert_eq!(h.sh(&format!("mountpoint -q {s}")).code, 0);
    assert_eq!(
        h.sh(&format!("cat {s}/README {s}/backups/notes"))
            .ok()
            .stdout,
        "mine\nmine\n"
    );
    // The lock file lives as long as the directory: a waiter's lock stays
    // the lock of whoever comes next.
    assert_eq!(
        h.sh(&format!("stat -c %i {s}/lock")).ok().stdout,
        lock_inode
    );
    assert_eq!(
        h.sh(&format!("ls -A {s} | sort")).ok().stdout,
        "README\nbackups\nlock\n"
    );
    assert_eq!(leftovers(&h), vec!["state-dir README", "state-dir backups"]);
}

#[test]
fn the_lock_says_who_holds_it_and_serialises_runs() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("mid.toml", &many_containers(40));
    let lock = h.state_dir().join("lock");
    // Someone holds the lock: the waiter says who at once, then proceeds.
    std::fs::write(
        &lock,
        "pid 4242\ncommand netloom watch -c /etc/x.toml\nsince 0\n",
    )
    .unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "3"])
        .spawn()
        .expect("flock");
    std::thread::sleep(Duration::from_millis(300));
    let run = h.netloom(&cfg, &["apply"]);
    let _ = holder.wait();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("waiting for")
            && run.stderr.contains("pid 4242")
            && run.stderr.contains("netloom watch -c /etc/x.toml"),
        "{}",
        run.stderr
    );
    h.netloom(&cfg, &["down"]).ok();

    // Two applies at once: one after the other, both succeed.
    let a = h.netloom_child(&cfg, &["apply"], &[]);
    let b = h.netloom_child(&cfg, &["apply"], &[]);
    let (a, b) = (finish(a), finish(b));
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);
    let full = namespaces(&h);

    // `apply` during `down` waits for it, then applies everything.
    let down = h.netloom_child(&cfg, &["down"], &[]);
    wait_for_lock(&h, down.id());
    let apply = h.netloom_child(&cfg, &["apply"], &[]);
    let (down, apply) = (finish(down), finish(apply));
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);
    // `down` then `apply` right after, many times: never both at once
    // (each down removes everything, each apply creates everything).
    for _ in 0..3 {
        let down = h.netloom_child(&cfg, &["down"], &[]);
        let apply = h.netloom_child(&cfg, &["apply"], &[]);
        let (down, apply) = (finish(down), finish(apply));
        assert_eq!(down.code, 0, "{}", down.stderr);
        assert_eq!(apply.code, 0, "{}", apply.stderr);
        let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
        let ns = namespaces(&h);
        // Whichever ran last decides: all or nothing, never half.
        assert!(
            (plan.code == 0 && ns == full) || (plan.code == 2 && ns == 0),
            "plan {} with {ns} namespaces:\n{}",
            plan.code,
            plan.stdout
        );
    }
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(leftovers(&h), Vec::<String>::new());
}

#[test]
fn apply_and_down_refuse_to_fight_a_running_agent() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let agent_cfg = tutorial();
    let other = h.config("other.toml", "[containers.solo]\n");
    let log = h.dir.path().join("watch.log");
    let pid = h.spawn_logged(
        &format!(
            "{} -c {} watch --resync 3600",
            common::NETLOOM,
            agent_cfg.display()
        ),
        &log,
    );
    let status = h.state_dir().join("agent.json");
    assert!(h.wait_for(
        &format!("grep -q '\"pid\": {pid}' {}", status.display()),
        Duration::from_secs(60)
    ));
    let run = h.netloom(&other, &["apply"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pid {pid}"))
            && run.stderr.contains(&agent_cfg.display().to_string()),
        "{}",
        run.stderr
    );
    assert_ne!(h.sh("ip netns list | grep -q solo").code, 0);
    // The agent's own file: fine, it is what the agent applies anyway.
    h.netloom(&agent_cfg, &["apply"]).ok();
    let run = h.netloom(&agent_cfg, &["down"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("pid {pid}")), "{}", run.stderr);
    assert_eq!(h.sh("ip link show docker0").code, 0, "down went ahead");
    signal(pid, "TERM");
    wait_dead(&h, pid);
    h.netloom(&agent_cfg, &["down"]).ok();
    assert_eq!(leftovers(&h), Vec::<String>::new());
}

#[test]
fn a_second_instance_is_refused_naming_the_first() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = tutorial();
    let first = h.state_dir();
    let second = h.dir.path().join("state2");
    let s2 = second.display().to_string();
    h.netloom(&cfg, &["apply"]).ok();
    let before = h
        .sh("ip -o addr; nft list table inet netloom")
        .ok()
        .stdout
        .clone();
    for args in [
        &["--state-dir", &s2, "apply"][..],
        &["--state-dir", &s2, "down"],
    ] {
        let run = h.netloom(&cfg, args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(&first.display().to_string())
                && run.stderr.contains("only one netloom instance"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(
        h.sh("ip -o addr; nft list table inet netloom").ok().stdout,
        before
    );
    // Once the first is down, the second may own the host.
    h.netloom(&cfg, &["down"]).ok();
    h.netloom(&cfg, &["--state-dir", &s2, "apply"]).ok();
    h.netloom(&cfg, &["--state-dir", &s2, "down"]).ok();
    assert_eq!(h.sh(&format!("ls -A {s2}")).ok().stdout, "lock\n");
    assert_eq!(leftovers(&h), Vec::<String>::new());
}

#[test]
fn a_foreign_table_and_hosts_file_are_refused_and_left_untouched() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = tutorial();
    h.sh("nft add table inet netloom && \
         nft add chain inet netloom input '{ type filter hook input priority 0; }' && \
         nft add rule inet netloom input tcp dport 22 accept comment '\"mine\"'")
        .ok();
    let table = h.sh("nft list table inet netloom").ok().stdout.clone();
    let run = h.netloom(&cfg, &["apply"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("nft table `inet netloom`")
            && run.stderr.contains("not created by netloom"),
        "{}",
        run.stderr
    );
    // Everything independent of the firewall is applied; the table is not.
    assert_eq!(h.sh("nft list table inet netloom").ok().stdout, table);
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(h.sh("nft list table inet netloom").ok().stdout, table);
    assert!(down_left_only_the_table(&h), "{:?}", leftovers(&h));
    h.sh("nft delete table inet netloom").ok();

    // A hosts file the user wrote before the first apply.
    h.sh("mkdir -p /etc/netns/web && printf '10.0.0.9 db\\n' > /etc/netns/web/hosts")
        .ok();
    let run = h.netloom(&cfg, &["apply"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("/etc/netns/web/hosts")
            && run.stderr.contains("not written by netloom"),
        "{}",
        run.stderr
    );
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(
        h.sh("cat /etc/netns/web/hosts").ok().stdout,
        "10.0.0.9 db\n"
    );
    // Moved away as the message says: apply works, down removes only its own.
    h.sh("rm /etc/netns/web/hosts").ok();
    h.netloom(&cfg, &["apply"]).ok();
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(leftovers(&h), Vec::<String>::new());
}
