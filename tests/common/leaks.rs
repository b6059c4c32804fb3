//! Ownership checks shared by the crash and ownership tests: foreign
//! objects that must stay byte-identical, and what netloom may leave
//! behind after `down` (nothing but the state dir's lock file).

use super::Host;

/// A topology with every kind of object netloom writes: the default
/// bridge with fixed and auto-published ports and links, a user network
/// with DNS (hosts and resolv.conf files), containers on two networks, a
/// `none` container and one sharing another's namespace.
pub fn many_containers(n: usize) -> String {
    let mut s = String::from(
        "[settings]\nupstream_dns = [\"10.99.0.2\"]\n\n\
         [networks.mynet]\nsubnet = \"10.50.0.0/16\"\ngateway = \"10.50.0.1\"\n\n\
         [containers.quiet]\nnetwork_mode = \"none\"\n\n\
         [containers.side]\nnetwork_mode = \"container:c0\"\n\n",
    );
    for i in 0..n {
        s.push_str(&format!("[containers.c{i}]\n"));
        match i % 3 {
            0 => s.push_str(&format!("ports = [\"{}:80\", \"8080\"]\n", 20000 + i)),
            1 => s.push_str("networks = [\"mynet\"]\n"),
            _ => s.push_str(&format!(
                "networks = [\"bridge\", \"mynet\"]\nlinks = [\"c{}:peer\"]\n",
                i - 2
            )),
        }
        s.push('\n');
    }
    s
}

/// Creates objects netloom must never touch: a namespace, a bridge, an nft
/// table with a rule, and a file under /etc/netns.
pub fn make_foreign(h: &Host) {
    h.sh(
        "ip netns add foreign && ip link add br-user type bridge && \
         ip link set br-user alias 'users own bridge' && \
         nft add table inet user && \
         nft add chain inet user c '{ type filter hook input priority 0; }' && \
         nft add rule inet user c tcp dport 22 accept comment '\"mine\"' && \
         mkdir -p /etc/netns/foreign && printf 'users own hosts\\n' > /etc/netns/foreign/hosts",
    )
    .ok();
}

/// The foreign objects as text, to compare byte for byte.
pub fn foreign_snapshot(h: &Host) -> String {
    h.sh(
        "ip netns list | grep foreign; ip -d link show br-user | sed 's/ state [A-Z]*//'; \
         nft list table inet user; cat /etc/netns/foreign/hosts; \
         ip netns exec foreign ip -o link",
    )
    .ok()
    .stdout
    .clone()
}

/// What of netloom's is still there: should be empty after `down`.
pub fn leftovers(h: &Host) -> Vec<String> {
    let state = h.state_dir();
    let script = format!(
        "ls /run/netns | grep -vx foreign | sed 's/^/netns /'; \
         ip -o link show | grep -E 'netloom:|veth|docker0|br-[0-9a-f]|nl~' | grep -v br-user | sed 's/^/link /'; \
         nft list tables | grep -vx 'table inet user' | sed 's/^/nft /'; \
         ls /etc/netns | grep -vx foreign | sed 's/^/etc-netns /'; \
         ls /run/netloom/netns 2>/dev/null | sed 's/^/mark /'; \
         ls -A {state} | grep -vx -e lock -e agent.lock | sed 's/^/state-dir /'; \
         true",
        state = state.display()
    );
    h.sh(&script)
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}
