//! How publishing one more port scales with the number already published.
//!
//!     cargo run --release --example port_bench      (as root)
//!
//! For N existing port mappings it converges the firewall, then times the
//! firewall part of an apply that adds one port: observe (`nft -j list
//! table` + parse), plan_transaction, apply (one `nft -f -`), each the
//! median of RUNS. This is not a whole `netloom apply` command (no process
//! start, no netlink, no files): `apply_bench` times those. The transaction
//! should stay one element whatever N is; the time should be dominated by
//! reading the table back (observe), not by apply.
//!
//! The benchmark re-executes itself under `unshare -n`, so every nft call
//! happens in a throwaway network namespace and the host's ruleset is
//! never touched.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use netloom::core::firewall::{Firewall, FwNetwork, FwPort, Proto, plan_transaction};
use netloom::host::nft::{apply, delete_tables, observe};

const SIZES: [u32; 3] = [100, 1000, 10000];
const RUNS: usize = 5;
const INNER: &str = "NETLOOM_PORT_BENCH_IN_NETNS";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_none() {
        let exe = std::env::current_exe()?;
        let status = Command::new("unshare")
            .arg("-n")
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(INNER, "1")
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run unshare -n (root needed): {e}"))?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // Belt and braces: refuse to run nft in the machine's namespace.
    let init = std::fs::read_link("/proc/1/ns/net").ok();
    if init.is_some() && init == std::fs::read_link("/proc/self/ns/net").ok() {
        anyhow::bail!("not in a private network namespace");
    }

    println!(
        "the firewall part of one apply adding a port to N (not a whole netloom apply); times are medians of {RUNS} runs, build_ms is one run"
    );
    println!(
        "{:>6} {:>10} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
        "N", "build_ms", "tx_elems", "rebuild", "observe_ms", "plan_ms", "apply_ms", "total_ms"
    );
    for n in SIZES {
        bench(n)?;
    }
    Ok(())
}

fn mapping(i: u32) -> FwPort {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 17, 0, 2)) + i % 60000);
    FwPort {
        container: format!("c{i}"),
        network: "bridge".to_string(),
        bridge: "docker0".to_string(),
        host_ip: None,
        host_port: u16::try_from(20000 + i).unwrap_or(u16::MAX),
        container_ip: Some(ip),
        container_ip6: None,
        container_port: 80,
        count: 1,
        proto: Proto::Tcp,
    }
}

fn firewall(n: u32) -> Firewall {
    let mut networks = BTreeMap::new();
    networks.insert(
        "bridge".to_string(),
        FwNetwork {
            bridge: "docker0".to_string(),
            subnet: "172.17.0.0/16".parse().expect("literal subnet"),
            subnet6: None,
            masquerade: true,
            internal: false,
            icc: true,
        },
    );
    let ports: BTreeMap<_, _> = (0..n)
        .map(|i| (format!("c{i}.{}/tcp", 20000 + i), mapping(i)))
        .collect();
    Firewall {
        networks,
        ports: ports.into(),
        vxlans: Default::default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    ms(v[v.len() / 2])
}

fn bench(n: u32) -> anyhow::Result<()> {
    delete_tables()?;
    let base = firewall(n);
    let t = Instant::now();
    apply(&plan_transaction(&base, observe()?.as_ref()))?;
    let build = t.elapsed();

    let (mut obs, mut plan, mut app, mut total) = (vec![], vec![], vec![], vec![]);
    let (mut elems, mut rebuild) = (0, false);
    for run in 0..RUNS {
        let mut next = base.clone();
        let extra = n + 1 + u32::try_from(run)?;
        next.ports_mut()
            .insert(format!("extra.{}/tcp", 20000 + extra), mapping(extra));

        let t0 = Instant::now();
        let observed = observe()?;
        let t1 = Instant::now();
        let tx = plan_transaction(&next, observed.as_ref());
        let t2 = Instant::now();
        apply(&tx)?;
        let t3 = Instant::now();

        obs.push(t1 - t0);
        plan.push(t2 - t1);
        app.push(t3 - t2);
        total.push(t3 - t0);
        elems = tx.elements_added() + tx.elements_removed();
        rebuild |= tx.full_rebuild();

        // Back to N (untimed) so every run adds to the same table size.
        apply(&plan_transaction(&base, observe()?.as_ref()))?;
    }
    println!(
        "{n:>6} {:>10.1} {elems:>9} {rebuild:>9} {:>11.1} {:>9.2} {:>9.1} {:>9.1}",
        ms(build),
        median(obs),
        median(plan),
        median(app),
        median(total)
    );
    Ok(())
}
