//! `plan` and `status` asking the running agent over its socket, in a
//! throwaway host: the agent's answers are the very output the commands
//! print when they read the kernel themselves (`NETLOOM_ASK_AGENT=0`), with
//! and without drift, also when the agent answers from its view without
//! reading anything again (each kind of drift alone, and the port
//! counters, which move with every packet); a stale, hostile or hung socket is not trusted (the
//! command reads the kernel); and the agent never applies while a command
//! holds the state dir, nor reads its file while a writer has it open.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Host, NETLOOM, Run, kernel_tests_possible};
use netloom::host::agentsock::VERSION;

const TOOLS: &[&str] = &[
    "ip", "bridge", "nft", "unshare", "nsenter", "python3", "setpriv",
];
/// How long an event may take on a loaded machine before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
const SOCK: &str = "/run/netloom/agent.sock";

const BASE: &str = "[networks.green]\nsubnet = \"10.60.0.0/24\"\n\n\
     [containers.c1]\nnetworks = [\"green\"]\nports = [\"8080:80\"]\n\n\
     [containers.c2]\nnetworks = [\"green\"]\n";

fn wait(mut f: impl FnMut() -> bool, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts the agent with its answers logged; returns its pid and log.
fn agent(h: &mut Host, cfg: &Path) -> (u32, std::path::PathBuf) {
    let log = h.dir.path().join("agent.log");
    let pid = h.spawn_logged(
        &format!(
            "env RUST_LOG=info,netloom::cmd::watch::serve=debug {NETLOOM} watch --resync 300 -c {}",
            cfg.display()
        ),
        &log,
    );
    let started = wait(
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("reconciled in")
                && h.sh(&format!("test -S {SOCK}")).code == 0
        },
        DEADLINE,
    );
    assert!(started, "agent did not start:\n{}", read(&log));
    (pid, log)
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Asserts that `r` exited 0; says what it printed and the agent's log
/// (`log`) otherwise.
#[track_caller]
fn succeeded(r: &Run, log: &Path) {
    assert_eq!(r.code, 0, "{}\n{}\nLOG:\n{}", r.stdout, r.stderr, read(log));
}

fn answers(log: &Path) -> usize {
    read(log).matches("answering `").count()
}

/// The command's output read from the kernel (no agent asked).
fn from_kernel(h: &Host, cfg: &Path, args: &[&str]) -> Run {
    h.sh(&format!(
        "env NETLOOM_ASK_AGENT=0 {NETLOOM} -c {} {}",
        cfg.display(),
        args.join(" ")
    ))
}

/// Runs the command as a user does: asking the agent first.
fn asking(h: &Host, cfg: &Path, args: &[&str]) -> Run {
    h.sh(&format!(
        "{NETLOOM} -c {} {}",
        cfg.display(),
        args.join(" ")
    ))
}

/// Runs `args` through the agent (checking that it answered) and from the
/// kernel; both must print the same and exit the same.
fn same_answer(h: &Host, cfg: &Path, log: &Path, args: &[&str]) -> Run {
    let before = answers(log);
    let a = asking(h, cfg, args);
    assert_eq!(
        answers(log),
        before + 1,
        "the agent did not answer {args:?}:\n{}",
        read(log)
    );
    let k = from_kernel(h, cfg, args);
    // With NETLOOM_ASK_AGENT=0 the command did not ask.
    assert_eq!(answers(log), before + 1, "asked with NETLOOM_ASK_AGENT=0");
    assert_eq!(a.stdout, k.stdout, "stdout of {args:?} differs");
    // The command reading the kernel may have waited for the state dir
    // while the agent held it (a reconcile, a refresh): it says so.
    let waited = |e: &str| -> String {
        e.lines()
            .filter(|l| !l.starts_with("netloom: waiting for "))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(
        waited(&a.stderr),
        waited(&k.stderr),
        "stderr of {args:?} differs"
    );
    assert_eq!(a.code, k.code, "exit of {args:?} differs");
    a
}

const QUERIES: &[&[&str]] = &[
    &["plan"],
    &["plan", "--detailed-exitcode"],
    &["plan", "--format", "json"],
    &["plan", "--verbose"],
    &["status"],
    &["status", "--format", "json"],
];

#[test]
fn agent_answers_are_the_kernel_answers_with_and_without_drift() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    // Converged: nothing to do, said the same way.
    for q in QUERIES {
        let r = same_answer(&h, &cfg, &log, q);
        assert_ne!(r.code, 1, "{q:?}: {}{}", r.stdout, r.stderr);
    }
    // (The kernel's own housekeeping in a namespace, e.g. IPv6 address
    // configuration, marks it to be read again; an untouched one is not.)
    assert!(
        read(&log).contains(": 0 of 2 namespaces") || from_view(&log) > 0,
        "an untouched host was read again:\n{}",
        read(&log)
    );

    // Drift the agent does not heal: a change awaiting confirmation holds
    // every reconcile back (the agent never undoes it), then its rollback
    // holds the rolled-back content back.
    roll_back_an_edit(&mut h, &cfg);
    let held = |l: &str| l.matches("held back").count();
    let settled = |n: usize| {
        // The agent judged the last events (a held-back reconcile) and
        // nothing more comes.
        let mut last = held(&read(&log));
        wait(
            || {
                std::thread::sleep(Duration::from_millis(500));
                let now = held(&read(&log));
                let quiet = now == last && now >= n;
                last = now;
                quiet
            },
            DEADLINE,
        )
    };
    assert!(settled(1), "the agent did not hold back:\n{}", read(&log));
    let n = held(&read(&log));
    h.sh("ip -n c1 link set eth0 mtu 1400").ok();
    h.sh("ip -n c2 addr add 10.60.0.77/24 dev eth0").ok();
    h.sh("echo '10.9.9.9 intruder' >> /etc/netns/c1/hosts").ok();
    h.sh("nft flush map inet netloom dnat_any").ok();
    assert!(settled(n + 1), "no held-back reconcile:\n{}", read(&log));
    for q in QUERIES {
        let r = same_answer(&h, &cfg, &log, q);
        if q.contains(&"status") || q.contains(&"--detailed-exitcode") {
            assert_ne!(r.code, 0, "{q:?} sees no drift: {}", r.stdout);
        }
    }
    let s = same_answer(&h, &cfg, &log, &["status"]);
    assert!(s.stdout.contains("drift"), "{}", s.stdout);
}

/// Edits the agent's file (a port moves) and applies it with a
/// confirmation that never comes: the edit is rolled back, and the agent
/// holds every reconcile back from then on. The agent may apply the edit
/// itself first (its debounce ended before the command took the state
/// dir); then there was nothing to roll back, and another port is tried.
fn roll_back_an_edit(h: &mut Host, cfg: &Path) {
    for port in 9090..9095 {
        h.config(
            "netloom.toml",
            &BASE.replace("ports = [\"8080:80\"]", &format!("ports = [\"{port}:80\"]")),
        );
        let r = h.netloom(cfg, &["apply", "--confirm-timeout", "1"]);
        if r.stderr.contains("Apply complete") {
            assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
            assert!(r.stderr.contains("rolled back"), "{}", r.stderr);
            return;
        }
    }
    panic!("the agent applied every edit before the command could");
}

/// Counts the answers given from the agent's view with nothing read again
/// (not its own refreshes, which say "refreshing the view").
fn from_view(log: &Path) -> usize {
    read(log)
        .matches("` from the view: nothing changed")
        .count()
}

#[test]
fn answers_from_the_view_see_each_kind_of_drift_alone() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    // An unconfirmed change rolled back: the agent holds every reconcile
    // back from here on, so drift stays until it is seen.
    roll_back_an_edit(&mut h, &cfg);
    assert!(
        wait(|| read(&log).contains("held back"), DEADLINE),
        "the agent did not hold back:\n{}",
        read(&log)
    );
    // Control: with nothing changing, an answer comes from the view (the
    // kernel's own housekeeping in new namespaces may take a moment).
    let before = from_view(&log);
    assert!(
        wait(
            || {
                same_answer(&h, &cfg, &log, &["plan"]);
                from_view(&log) > before
            },
            DEADLINE
        ),
        "no answer came from the view:\n{}",
        read(&log)
    );
    let bridge = h
        .sh("ip -o link show type bridge | awk -F': ' '{print $2}' | head -1")
        .stdout
        .trim()
        .to_string();
    assert!(!bridge.is_empty(), "no bridge");
    let port = h
        .sh(&format!(
            "ip -o link show master {bridge} | head -1 | awk -F': ' '{{print $2}}' | cut -d@ -f1"
        ))
        .stdout
        .trim()
        .to_string();
    assert!(!port.is_empty(), "no bridge port");
    let hairpin_on = h
        .sh(&format!("bridge -d link show dev {port}"))
        .stdout
        .contains("hairpin on");
    let other = if hairpin_on { "off" } else { "on" };
    // A bridge's notice about a port that says what the view holds
    // changes nothing: the host is not read again for it (neither by the
    // answer after it nor by a refresh), and the answer comes from the
    // view. The kernel sends one when a port's bridge settings move, also
    // one netloom does not manage (its spanning-tree cost, here), and for
    // a new port's some seconds after it joined.
    let host_reads = |log: &Path| read(log).matches("read again, the host namespace").count();
    let noticed_from_view = (0..5).any(|i| {
        let (views, hosts) = (from_view(&log), host_reads(&log));
        h.sh(&format!("bridge link set dev {port} cost {}", 10 + i))
            .ok();
        // Time for the agent's watch to take the notice.
        std::thread::sleep(Duration::from_millis(200));
        same_answer(&h, &cfg, &log, &["plan"]);
        from_view(&log) > views && host_reads(&log) == hosts
    });
    assert!(
        noticed_from_view,
        "a port notice that changed nothing made the agent read the host again:\n{}",
        read(&log)
    );
    let drifts = [
        (
            "a container interface's MTU",
            "ip -n c1 link set eth0 mtu 1400".to_string(),
        ),
        (
            "an extra container address",
            "ip -n c2 addr add 10.60.0.77/24 dev eth0".into(),
        ),
        (
            "an edited hosts file",
            // Above the user marker (lines below it are the user's).
            "sed -i '2s/.*/10.9.9.9 intruder/' /etc/netns/c1/hosts".into(),
        ),
        (
            "a flushed nft map",
            "nft flush map inet netloom dnat_any".into(),
        ),
        (
            "a port's hairpin mode",
            format!("bridge link set dev {port} hairpin {other}"),
        ),
        ("a bridge set down", format!("ip link set {bridge} down")),
        ("a sysctl", "sysctl -qw net.ipv4.ip_forward=0".into()),
        ("a deleted namespace", "ip netns delete c2".into()),
    ];
    let mut last = same_answer(&h, &cfg, &log, &["plan"]).stdout;
    for (what, cmd) in drifts {
        h.sh(&cmd).ok();
        // At once: an answer never waits for the agent to notice.
        let now = same_answer(&h, &cfg, &log, &["plan"]);
        assert_ne!(now.stdout, last, "the plan does not show {what}");
        // And the answer after it, from the view or not, still shows it.
        let again = same_answer(&h, &cfg, &log, &["plan"]);
        assert_eq!(again.stdout, now.stdout, "{what}: the next answer differs");
        last = now.stdout;
        if cmd.starts_with("sysctl") {
            // A sysctl's drift is seen by a timer, which keeps finding it
            // (and the held-back agent keeps logging reconciles): put it
            // back, so that the agent settles for `status` below.
            h.sh("sysctl -qw net.ipv4.ip_forward=1").ok();
            last = same_answer(&h, &cfg, &log, &["plan"]).stdout;
        }
    }
    // `status` also names the agent's last reconcile: compare it once the
    // agent judged the last events and nothing more comes.
    assert!(settled(&log), "the agent did not settle:\n{}", read(&log));
    let s = same_answer(&h, &cfg, &log, &["status"]);
    assert!(s.stdout.contains("drift"), "{}", s.stdout);
}

/// Packets counted for `port` in `status` output.
fn packets(status: &str, port: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(port))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {port} in:\n{status}"))
}

/// A web server on port 80 of container c1 (BASE publishes it on 8080).
fn serve_web_in_c1(h: &mut Host) {
    let web = h.dir.path().join("web.log");
    h.spawn_logged("ip netns exec c1 python3 -m http.server 80", &web);
}

#[test]
fn status_from_the_view_counts_the_traffic_since() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    serve_web_in_c1(&mut h);
    let before = same_answer(&h, &cfg, &log, &["status"]);
    assert_eq!(
        packets(&before.stdout, "c1.8080/tcp"),
        0,
        "{}",
        before.stdout
    );
    assert!(
        h.wait_for(
            "curl -sf -m 1 -o /dev/null http://10.60.0.1:8080/",
            DEADLINE
        ),
        "the published port does not answer"
    );
    // The connection's last packets are the kernel's, after curl exits.
    std::thread::sleep(Duration::from_secs(1));
    // Packets move no event and no ruleset generation: an answer from the
    // view must still count them. Ask until one comes from the view.
    let viewed = from_view(&log);
    assert!(
        wait(
            || {
                let s = same_answer(&h, &cfg, &log, &["status"]);
                assert!(packets(&s.stdout, "c1.8080/tcp") > 0, "{}", s.stdout);
                from_view(&log) > viewed
            },
            DEADLINE
        ),
        "no `status` came from the view:\n{}",
        read(&log)
    );
}

#[test]
fn apply_of_the_agents_file_is_applied_by_the_agent() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    // Once `n` are logged (the agent answers an apply before it logs it),
    // how many applies the agent made for a command.
    let applied_by_agent = |log: &Path, n: usize| {
        let count = || read(log).matches("apply (command)").count();
        wait(|| count() >= n, DEADLINE);
        count()
    };
    h.config(
        "netloom.toml",
        &BASE.replace(
            "[containers.c2]\nnetworks = [\"green\"]\n",
            "[containers.c2]\nnetworks = [\"green\"]\nports = [\"9191:91\"]\n",
        ),
    );
    let by_agent = |h: &Host, args: &str| h.sh(&format!("{NETLOOM} -c {} {args}", cfg.display()));
    let r = by_agent(&h, "apply");
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("+ port.c2.9191/tcp"),
        "{}\n{}\nLOG:\n{}",
        r.stdout,
        r.stderr,
        read(&log)
    );
    assert!(r.stderr.contains("Apply complete! 1 added"), "{}", r.stderr);
    assert_eq!(applied_by_agent(&log, 1), 1, "{}", read(&log));
    assert!(
        h.sh("nft list map inet netloom dnat_any")
            .stdout
            .contains("9191"),
        "the port is not published"
    );
    // Nothing left to do, said as `apply` says it; `--detailed-exitcode`
    // and JSON as the command gives them.
    let r = by_agent(&h, "apply --detailed-exitcode");
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Nothing to apply"), "{}", r.stderr);
    h.config("netloom.toml", BASE);
    let r = by_agent(&h, "apply --format json --detailed-exitcode");
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert!(r.stdout.contains("port.c2.9191/tcp"), "{doc}");
    assert_eq!(applied_by_agent(&log, 3), 3, "{}", read(&log));
    assert!(
        !h.sh("nft list map inet netloom dnat_any")
            .stdout
            .contains("9191"),
        "the port is still published"
    );
    // Opted out: the command applies itself.
    let r = h.sh(&format!(
        "env NETLOOM_AGENT_APPLIES=0 {NETLOOM} -c {} apply",
        cfg.display()
    ));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(applied_by_agent(&log, 3), 3, "{}", read(&log));
}

/// The command asks before it parses the file, so the agent works out the
/// state dir as the command would: a file that names it is answered
/// without the flag or `NETLOOM_STATE_DIR`, and another state dir given
/// on the command line is declined (the command reads the kernel).
#[test]
fn the_agent_takes_the_state_dir_the_file_names() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let named = format!(
        "[settings]\nstate_dir = \"{}\"\n\n{BASE}",
        h.state_dir().display()
    );
    let cfg = h.config("netloom.toml", &named);
    let (_pid, log) = agent(&mut h, &cfg);
    let truth = from_kernel(&h, &cfg, &["plan"]);
    assert_eq!(truth.code, 0, "{}", truth.stderr);
    // Only the file names the state dir.
    let before = answers(&log);
    let r = h.sh(&format!(
        "env -u NETLOOM_STATE_DIR {NETLOOM} -c {} plan",
        cfg.display()
    ));
    assert_eq!((r.code, &r.stdout), (0, &truth.stdout), "{}", r.stderr);
    assert_eq!(answers(&log), before + 1, "not answered:\n{}", read(&log));
    // Another state dir on the command line: declined (the command plans
    // against that one itself).
    let other = h.dir.path().join("other-state");
    let _ = h.sh(&format!(
        "{NETLOOM} -c {} --state-dir {} plan",
        cfg.display(),
        other.display()
    ));
    assert_eq!(answers(&log), before + 1, "answered for another state dir");
    assert!(
        read(&log).contains("another state dir"),
        "not declined:\n{}",
        read(&log)
    );
}

/// What an `apply` through the agent made is there when the command
/// returns, although the agent answers before its own bookkeeping: the
/// new container's name is served by the embedded DNS and listed in its
/// peers' hosts files, asked once, without waiting.
#[test]
fn what_an_apply_through_the_agent_made_is_there_when_it_returns() {
    if !kernel_tests_possible(&[TOOLS, &["dig"]].concat()) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    h.config(
        "netloom.toml",
        &format!("{BASE}\n[containers.c3]\nnetworks = [\"green\"]\n"),
    );
    succeeded(
        &h.sh(&format!("{NETLOOM} -c {} apply", cfg.display())),
        &log,
    );
    let answer = h.sh("ip netns exec c1 dig +time=2 +tries=1 +short @10.60.0.1 c3");
    assert!(
        answer.stdout.trim().starts_with("10.60.0."),
        "c3 is not served right after the apply: {:?} {:?}\nLOG:\n{}",
        answer.stdout,
        answer.stderr,
        read(&log)
    );
    let hosts = h.sh("ip netns exec c1 cat /etc/hosts").stdout;
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("c3")),
        "{hosts}"
    );
    // And it was the agent's apply, not the command's own.
    assert!(
        wait(|| read(&log).contains("apply (command)"), DEADLINE),
        "{}",
        read(&log)
    );
}

/// Stops a fake agent and removes its socket.
fn stop(h: &Host, pid: u32) {
    h.sh(&format!("kill {pid}")).ok();
    assert!(h.wait_for(&common::exited(pid), DEADLINE));
    h.sh(&format!("rm -f {SOCK}")).ok();
}

#[test]
fn stale_hostile_or_hung_sockets_are_not_trusted() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    h.netloom(&cfg, &["apply"]).ok();

    // A socket nobody listens on (an agent killed with SIGKILL).
    let (pid, _log) = agent(&mut h, &cfg);
    h.sh(&format!("kill -9 {pid}")).ok();
    assert!(h.wait_for(&common::exited(pid), DEADLINE));
    h.sh(&format!("test -S {SOCK}")).ok();
    // (The agent's DNS is gone: resolv.conf files are to change back.)
    let truth = from_kernel(&h, &cfg, &["plan"]);
    assert_eq!(truth.code, 0, "{}", truth.stderr);
    let r = asking(&h, &cfg, &["plan"]);
    assert_eq!((r.code, &r.stdout), (0, &truth.stdout), "{}", r.stderr);
    h.sh(&format!("rm -f {SOCK}")).ok();

    // A liar: answers with a made-up plan, from a socket others may use,
    // or from a process that is not root behind a root-owned 0600 file.
    let fake = h.dir.path().join("fake.py");
    std::fs::write(
        &fake,
        format!(
            "import socket, os, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind('{SOCK}')\n\
             os.chmod('{SOCK}', int(sys.argv[1], 8))\n\
             s.listen(8)\n\
             open(sys.argv[2], 'w').write('up')\n\
             while True:\n\
             \x20   c, _ = s.accept()\n\
             \x20   c.sendall(b'{{\"netloom_agent\":{VERSION}}}\\n')\n\
             \x20   c.recv(1 << 20)\n\
             \x20   c.sendall(b'{{\"version\":{VERSION},\"answer\":{{\"Output\":{{\"stdout\":\"HACKED\\\\n\",\"stderr\":\"\",\"exit\":0}}}}}}\\n')\n\
             \x20   c.close()\n"
        ),
    )
    .unwrap();
    // Where a process that is not root can read the script and say it is
    // up (the test's own directory is root's alone).
    h.sh(&format!(
        "cp {} /run/fake.py; chmod 0644 /run/fake.py",
        fake.display()
    ))
    .ok();
    let up = "/run/fake.up";
    let is_up = |h: &Host| h.sh(&format!("test -e {up}")).code == 0;
    let liars = [
        ("0666", ""),
        ("0600", "setpriv --reuid=65534 --regid=65534 --clear-groups"),
    ];
    for (mode, who) in liars {
        h.sh(&format!(
            "rm -f {up}; mkdir -p /run/netloom; chmod 0777 /run /run/netloom"
        ))
        .ok();
        let flog = h.dir.path().join("fake.log");
        let fake_pid = h.spawn_logged(
            &format!("{who} /usr/bin/python3 /run/fake.py {mode} {up}"),
            &flog,
        );
        assert!(
            wait(|| is_up(&h), DEADLINE),
            "the fake did not start: {}",
            read(&flog)
        );
        if !who.is_empty() {
            // The file root's and 0600, the process behind it not root.
            h.sh(&format!("chown 0:0 {SOCK}; chmod 0600 {SOCK}")).ok();
        }
        let r = asking(&h, &cfg, &["plan"]);
        assert!(
            !r.stdout.contains("HACKED"),
            "trusted a {mode} {who} socket"
        );
        assert_eq!((r.code, &r.stdout), (0, &truth.stdout), "{}", r.stderr);
        stop(&h, fake_pid);
    }
    // Control: the same liar as root behind 0600 is believed, so the
    // checks above are what refused it.
    h.sh(&format!("rm -f {up}")).ok();
    let fake_pid = h.spawn(&format!("/usr/bin/python3 /run/fake.py 0600 {up}"));
    assert!(wait(|| is_up(&h), DEADLINE));
    let r = asking(&h, &cfg, &["plan"]);
    assert_eq!(r.stdout, "HACKED\n");
    stop(&h, fake_pid);

    // A hung agent (stopped): the command gives up and reads the kernel.
    let (pid, _log) = agent(&mut h, &cfg);
    h.sh(&format!("kill -STOP {pid}")).ok();
    let truth = from_kernel(&h, &cfg, &["plan"]);
    let r = asking(&h, &cfg, &["plan"]);
    h.sh(&format!("kill -CONT {pid}")).ok();
    assert_eq!((r.code, &r.stdout), (0, &truth.stdout), "{}", r.stderr);
}

#[test]
fn the_agent_does_not_apply_while_a_command_holds_the_state_dir() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    // What `apply` holds while it applies: the state dir's lock.
    let lock = h.state_dir().join("lock");
    let released = h.dir.path().join("released");
    h.spawn(&format!(
        "flock {} sh -c 'touch {}.held; sleep 3; touch {}'",
        lock.display(),
        released.display(),
        released.display()
    ));
    let held = released.with_extension("held");
    assert!(wait(|| held.exists(), DEADLINE));
    h.config(
        "netloom.toml",
        &BASE.replace(
            "ports = [\"8080:80\"]",
            "ports = [\"8080:80\", \"9090:80\"]",
        ),
    );
    let has_9090 = || {
        h.sh("nft list map inet netloom dnat_any | grep -q 9090")
            .code
            == 0
    };
    // Until the holder lets go, the agent changes nothing.
    while !released.exists() {
        assert!(!has_9090(), "the agent applied while the lock was held");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wait(has_9090, DEADLINE),
        "the agent did not apply after:\n{}",
        read(&log)
    );
    // Meanwhile `plan` fell back or was answered; either way it is right.
    let r = asking(&h, &cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// A slow writer edits the agent's file to publish `port` (c2's): it
/// truncates the file, runs `meanwhile` (with `$AGENT`, the agent's pid),
/// and writes it a second and a half later. Meanwhile the file is empty,
/// which is a valid file that wants nothing: read then, the agent would
/// tear the host down. The edit must be applied with nothing destroyed.
fn slow_write_is_applied_whole(port: &str, meanwhile: &str) {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (pid, log) = agent(&mut h, &cfg);
    let edited = h.config(
        "edited.toml",
        &BASE.replace(
            "[containers.c2]\nnetworks = [\"green\"]\n",
            &format!("[containers.c2]\nnetworks = [\"green\"]\nports = [\"{port}:92\"]\n"),
        ),
    );
    let r = h.sh(&format!(
        "AGENT={pid}; exec 3>{}; {meanwhile}; sleep 1.5; cat {} >&3; exec 3>&-",
        cfg.display(),
        edited.display()
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        wait(
            || h.sh("nft list map inet netloom dnat_any")
                .stdout
                .contains(port),
            DEADLINE
        ),
        "the edit was not applied:\n{}",
        read(&log)
    );
    let destroying: Vec<String> = read(&log)
        .lines()
        .filter(|l| l.contains("reconciled in") && !l.contains(" 0 destroyed"))
        .map(str::to_string)
        .collect();
    assert!(destroying.is_empty(), "{destroying:#?}\n{}", read(&log));
    assert!(h.netns_list().contains("c1"), "{}", read(&log));
}

#[test]
fn a_file_being_written_is_read_once_its_writer_closes_it() {
    slow_write_is_applied_whole("9292", "true");
}

#[test]
fn sighup_while_the_file_is_being_written_waits_for_its_writer() {
    // SIGHUP reads the file at once, but not while a writer has it open.
    // (The ordering of such triggers is tested without a kernel in
    // cmd::watch's tests.)
    slow_write_is_applied_whole("9393", "sleep 0.3; kill -HUP $AGENT");
}

/// Waits until the agent's log stays the same for 700 ms.
fn settled(log: &Path) -> bool {
    let mut seen = read(log);
    wait(
        || {
            std::thread::sleep(Duration::from_millis(700));
            let now = read(log);
            let quiet = now == seen;
            seen = now;
            quiet
        },
        DEADLINE,
    )
}

#[test]
fn a_reconcile_that_changes_nothing_leaves_its_plan_as_the_answer() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    // The kernel's own housekeeping in the new namespaces (IPv6 link-local
    // addresses settling) is news to the view for a while: an attempt
    // that sees some reads that namespace again, and is tried again.
    let mut seen = Vec::new();
    for _ in 0..10 {
        assert!(settled(&log), "the agent did not settle:\n{}", read(&log));
        // An event that is no drift: the file's identity changes, its
        // text does not. The agent reconciles, reads the file again,
        // changes nothing.
        let start = read(&log).len();
        h.sh("touch /etc/netns/c1/hosts").ok();
        let after = |what: &str, then: &str| {
            let text = read(&log);
            let (_, rest) = text[start..].split_once(what)?;
            rest.lines().find(|l| l.contains(then)).map(str::to_string)
        };
        let reconciled = || after("", "/etc/netns/c1/hosts changed");
        assert!(
            wait(|| reconciled().is_some(), DEADLINE),
            "no reconcile for the touched file:\n{}",
            read(&log)
        );
        let line = reconciled().expect("seen above");
        assert!(line.contains("0 added, 0 changed, 0 destroyed"), "{line}");
        // Its plan is the view's answer: the refresh after it (a second
        // later) plans nothing again, and `plan` is answered from the
        // view, as the kernel answers.
        let refresh = || after(&line, "refreshing the view");
        assert!(
            wait(|| refresh().is_some(), DEADLINE),
            "no refresh after the reconcile:\n{}",
            read(&log)
        );
        let refresh = refresh().expect("seen above");
        let before = from_view(&log);
        same_answer(&h, &cfg, &log, &["plan"]);
        if refresh.contains("refreshing the view from the view: nothing changed")
            && from_view(&log) == before + 1
        {
            return;
        }
        seen.push(refresh);
    }
    panic!(
        "no reconcile that changed nothing left its plan as the answer; the refreshes after them:\n{}\n{}",
        seen.join("\n"),
        read(&log)
    );
}

#[test]
fn a_change_of_published_ports_only_is_applied_from_the_resolution_before() {
    if !kernel_tests_possible(&[TOOLS, &["curl", "dig"]].concat()) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", BASE);
    let (_pid, log) = agent(&mut h, &cfg);
    serve_web_in_c1(&mut h);
    assert!(
        h.wait_for(
            "curl -sf -m 1 -o /dev/null http://10.60.0.1:8080/",
            DEADLINE
        ),
        "the published port does not answer"
    );
    let taken = |log: &Path| read(log).matches("only published ports changed").count();
    let apply = |h: &Host| succeeded(&asking(h, &cfg, &["apply"]), &log);
    // 8080 moves to 8081, and c2 publishes an auto-allocated port.
    let moved = BASE
        .replace("ports = [\"8080:80\"]", "ports = [\"8081:80\"]")
        .replace(
            "[containers.c2]\nnetworks = [\"green\"]\n",
            "[containers.c2]\nnetworks = [\"green\"]\nports = [\"90\"]\n",
        );
    h.config("netloom.toml", &moved);
    apply(&h);
    assert!(
        wait(|| read(&log).contains("apply (command)"), DEADLINE),
        "the agent did not apply it:\n{}",
        read(&log)
    );
    assert_eq!(taken(&log), 1, "{}", read(&log));
    assert_eq!(
        h.sh("curl -sf -m 1 -o /dev/null http://10.60.0.1:8081/")
            .code,
        0,
        "the moved port does not answer"
    );
    assert_ne!(
        h.sh("curl -sf -m 1 -o /dev/null http://10.60.0.1:8080/")
            .code,
        0,
        "the old port still answers"
    );
    // Converged as a command reading the kernel sees it, with the
    // allocated host port recorded.
    let p = same_answer(&h, &cfg, &log, &["plan", "--detailed-exitcode"]);
    assert_eq!(p.code, 0, "{}\n{}", p.stdout, p.stderr);
    let s = from_kernel(&h, &cfg, &["status"]);
    let published = |l: &str| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.starts_with("c2.") && w.ends_with("/tcp"))
    };
    assert!(s.stdout.lines().any(published), "{}", s.stdout);
    // What judges drift and serves names was kept: both still work.
    let answer = h.sh("ip netns exec c1 dig +time=2 +tries=1 +short @10.60.0.1 c2");
    assert!(
        answer.stdout.trim().starts_with("10.60.0."),
        "{:?} {:?}",
        answer.stdout,
        answer.stderr
    );
    h.sh("rm /etc/netns/c2/hosts");
    assert!(
        h.wait_for("grep -q c1 /etc/netns/c2/hosts", DEADLINE),
        "a deleted hosts file was not healed:\n{}",
        read(&log)
    );
    // Anything else changed is resolved whole.
    h.config(
        "netloom.toml",
        &moved.replace(
            "[containers.c2]\nnetworks = [\"green\"]\n",
            "[containers.c2]\nnetworks = [\"green\"]\nhostname = \"two\"\n",
        ),
    );
    apply(&h);
    assert_eq!(taken(&log), 1, "{}", read(&log));
    let hosts = h.sh("ip netns exec c2 cat /etc/hosts").stdout;
    assert!(hosts.contains("two"), "{hosts}");
}
