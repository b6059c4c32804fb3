//! A real OCI runtime (runc) in a netloom namespace, in a throwaway host:
//! the bundle is `runc spec`'s config.json with `netloom oci-spec NAME`
//! merged in, the root file system busybox-static. The container keeps
//! running while a peer moves and while the agent starts and stops, and
//! sees each change through its bind-mounted hosts and resolv.conf; it
//! reaches a published port and resolves names. Nothing is left behind:
//! the container is deleted (with its cgroups) also when the test fails.
//!
//! Waits are on the event itself with generous deadlines: they bound a
//! hang, they do not measure speed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Host, OUTSIDE_IP, UPLINK_IP, kernel_tests_possible};

const TOOLS: &[&str] = &[
    "ip", "nft", "unshare", "nsenter", "mount", "runc", "busybox", "jq",
];
const DEADLINE: Duration = Duration::from_secs(30);
const GATEWAY: &str = "10.81.0.1";

fn config(client_ip: &str) -> String {
    format!(
        "[settings]\nupstream_dns = [\"{OUTSIDE_IP}\"]\n\n\
         [networks.app]\nsubnet = \"10.81.0.0/24\"\n\n\
         [containers.web]\nnetworks = [\"app\"]\nhostname = \"www\"\n\n\
         [containers.client]\nnetworks = {{ app = {{ ip = \"{client_ip}\" }} }}\n\n\
         [networks.other]\nsubnet = \"10.83.0.0/24\"\n\n\
         [containers.server]\nnetworks = {{ other = {{ ip = \"10.83.0.30\" }} }}\nports = [\"8080:80\"]\n"
    )
}

/// A runc container inside the host; deleted (process, state, cgroups)
/// on drop, so a failing test leaves nothing running.
struct Container {
    /// The host's sandbox process, whose namespaces runc runs in.
    sandbox: u32,
    root: PathBuf,
    id: String,
}

impl Container {
    fn runc(&self, args: &str) -> common::Run {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &self.sandbox.to_string(), "-n", "-m", "--"])
            .args([
                "sh",
                "-c",
                &format!("runc --root {} {args}", self.root.display()),
            ])
            .output()
            .expect("nsenter");
        common::Run::from(out)
    }

    /// Runs `cmd` inside the container.
    fn exec(&self, cmd: &str) -> common::Run {
        self.runc(&format!("exec {} {cmd}", self.id))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc(&format!("delete --force {}", self.id));
    }
}

/// A bundle: busybox-static as the root file system, `runc spec`'s
/// config.json with the fragment of `netloom oci-spec NAME` merged in
/// (the README's jq line), a non-terminal `sleep` as the process (with
/// CAP_NET_RAW, for busybox ping), and a
/// cgroup path of its own.
fn bundle(h: &Host, cfg: &Path, name: &str, cgroup: &str) -> PathBuf {
    let dir = h.dir.path().join(format!("bundle-{name}"));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir rootfs");
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "cat", "ping", "nslookup", "nc", "printf", "sleep", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
    }
    let fragment = h.netloom(cfg, &["oci-spec", name]);
    fragment.ok();
    let frag_path = dir.join("fragment.json");
    std::fs::write(&frag_path, &fragment.stdout).expect("write fragment");
    h.sh(&format!(
        "set -e; cd {dir}; runc spec; \
         jq --slurpfile f {frag} '$f[0] as $f | .hostname = $f.hostname | .mounts += $f.mounts \
           | .linux.namespaces = [(.linux.namespaces[] | select(.type != \"network\")), $f.linux.namespaces[]] \
           | .process.capabilities |= with_entries(.value += [\"CAP_NET_RAW\"]) \
           | .process.terminal = false | .process.args = [\"sleep\", \"100000\"] \
           | .linux.cgroupsPath = \"/{cgroup}\"' config.json > merged.json; \
         mv merged.json config.json",
        dir = dir.display(),
        frag = frag_path.display()
    ))
    .ok();
    dir
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_running_runc_container_sees_moves_and_the_agent_reaches_ports_and_resolves_names() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::with_outside();
    let cfg = h.config("netloom.toml", &config("10.81.0.10"));
    h.netloom(&cfg, &["apply"]).ok();

    // The fragment names the namespace, the two files and the hostname.
    let frag: serde_json::Value =
        serde_json::from_str(&h.netloom(&cfg, &["oci-spec", "web"]).ok().stdout)
            .expect("oci-spec prints JSON");
    assert_eq!(frag["linux"]["namespaces"][0]["path"], "/run/netns/web");
    assert_eq!(frag["mounts"][0]["source"], "/etc/netns/web/hosts");
    assert_eq!(frag["mounts"][1]["source"], "/etc/netns/web/resolv.conf");
    assert_eq!(frag["hostname"], "www");

    let cgroup = format!("netloom-test-{}", std::process::id());
    let dir = bundle(&h, &cfg, "web", &cgroup);
    let ctr = Container {
        sandbox: h.pid(),
        root: h.dir.path().join("runc-root"),
        id: format!("netloom-web-{}", std::process::id()),
    };
    // The detached container inherits runc's stdio: not our pipes, which
    // would stay open as long as it runs.
    let err = dir.join("run.err");
    let run = ctr.runc(&format!(
        "run --detach --bundle {} {} </dev/null >/dev/null 2>{}",
        dir.display(),
        ctr.id,
        err.display()
    ));
    assert_eq!(
        run.code,
        0,
        "runc run: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert_eq!(ctr.exec("hostname").ok().stdout.trim(), "www");
    let hosts = ctr.exec("cat /etc/hosts").ok().stdout.clone();
    assert!(hosts.contains("10.81.0.10\tclient client.app\n"), "{hosts}");
    let ping = ctr.exec("ping -c1 -W5 client");
    assert_eq!(
        ping.code, 0,
        "ping client before the move: {}{}",
        ping.stdout, ping.stderr
    );

    // client moves while the container runs: once `apply` returns, the
    // container's /etc/hosts (a bind mount of the file netloom rewrote in
    // place) already names the new address; no wait.
    std::fs::write(&cfg, config("10.81.0.20")).expect("edit config");
    h.netloom(&cfg, &["apply"]).ok();
    let hosts = ctr.exec("cat /etc/hosts").ok().stdout.clone();
    assert!(hosts.contains("10.81.0.20\tclient client.app\n"), "{hosts}");
    assert!(!hosts.contains("10.81.0.10"), "stale address kept: {hosts}");
    let ping = ctr.exec("ping -c1 -W5 client");
    assert_eq!(
        ping.code, 0,
        "ping client after the move: {}{}",
        ping.stdout, ping.stderr
    );
    assert!(ping.stdout.contains("10.81.0.20"), "{}", ping.stdout);

    // No agent: resolv.conf names only the upstream.
    let resolv = || ctr.exec("cat /etc/resolv.conf").ok().stdout.clone();
    assert_eq!(nameservers(&resolv()), [OUTSIDE_IP]);
    // The agent starts: the running container's resolv.conf names the
    // gateway, and names resolve through the embedded DNS.
    let (agent, log) = h.start_agent(&cfg);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait(|| nameservers(&resolv()) == [GATEWAY, OUTSIDE_IP]),
        "resolv.conf in the container: {}\n{}",
        resolv(),
        read_log()
    );
    assert!(
        wait(|| {
            let r = ctr.exec(&format!("nslookup client {GATEWAY}"));
            r.code == 0 && r.stdout.contains("10.81.0.20")
        }),
        "nslookup client: {:?}\n{}",
        ctr.exec(&format!("nslookup client {GATEWAY}")).stdout,
        read_log()
    );
    // server is on another network: not web's name.
    let other = ctr.exec(&format!("nslookup server {GATEWAY}"));
    assert!(!other.stdout.contains("10.83.0.30"), "{}", other.stdout);
    let lookup = ctr.exec("nslookup client");
    assert!(
        lookup.code == 0 && lookup.stdout.contains("10.81.0.20"),
        "nslookup client through resolv.conf: {}{}",
        lookup.stdout,
        lookup.stderr
    );

    // A published port of a container on another network, through a
    // host address.
    let www = h.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), "served by server\n").expect("write index");
    h.spawn(&format!(
        "ip netns exec server busybox httpd -f -p 80 -h {}",
        www.display()
    ));
    // busybox-static's wget crashes in its name lookup code even for a
    // literal address; nc sends the request as it is.
    let get = format!(
        "sh -c 'printf \"GET /index.html HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 {UPLINK_IP} 8080'"
    );
    assert!(
        wait(|| ctr.exec(&get).stdout.contains("served by server")),
        "published port not reached from the container: {:?}; from the host: {:?}",
        ctr.exec(&get).stdout,
        h.sh(&format!("curl -sS -m 5 http://{UPLINK_IP}:8080/index.html"))
            .stdout,
    );

    // The agent stops: the container's resolv.conf names only the
    // upstream again.
    h.sh(&format!("kill -TERM {agent}")).ok();
    assert!(
        wait(|| nameservers(&resolv()) == [OUTSIDE_IP]),
        "resolv.conf after the agent stopped: {}\n{}",
        resolv(),
        read_log()
    );
    assert!(
        wait(|| h.sh(&common::exited(agent)).code == 0),
        "agent did not exit"
    );

    // Nothing left behind: the container, its state and its cgroups go.
    drop(ctr);
    let left = h.sh(&format!(
        "ls -d /sys/fs/cgroup/*/{cgroup} /sys/fs/cgroup/{cgroup} 2>/dev/null; true"
    ));
    assert_eq!(left.stdout.trim(), "", "cgroups left behind");
    h.netloom(&cfg, &["down"]).ok();
}
