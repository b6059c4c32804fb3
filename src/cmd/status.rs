//! `status` (what netloom owns, live, with drift and port counters) and
//! `inspect` (Docker's `network inspect` fields).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Result, anyhow};
use serde_json::json;

use crate::cmd::cli::{Cli, Format};
use crate::cmd::steps::{self, Exit, LOCK_WAIT};
use crate::host::state::{AgentStatus, StateDir};

pub async fn status(cli: &Cli, format: Format) -> Result<Exit> {
    // A running agent of this file answers before the file is parsed.
    let ask = crate::cmd::agent_client::Ask {
        command: "status",
        format,
        detailed: false,
        verbose: false,
    };
    if let Some(exit) = crate::cmd::agent_client::ask(cli, &ask) {
        return Ok(exit);
    }
    let Some(l) = steps::load(cli)? else {
        return Ok(Exit::Error);
    };
    let sd = StateDir::open(&l.host.state_dir, LOCK_WAIT)?;
    let record = sd.load()?;
    let p = steps::plan_live(&l, &record).await?;
    let counters = listed_counters(&p);
    let (out, exit) = status_out(&l.path, sd.path(), &p, &counters, format)?;
    drop(sd);
    out.print();
    Ok(exit)
}

/// The port counters in the listing `p` read.
pub fn listed_counters(p: &steps::Planned) -> BTreeMap<String, (u64, u64)> {
    p.observation
        .firewall
        .as_deref()
        .map(crate::core::firewall::port_counters)
        .unwrap_or_default()
}

/// What `status` prints for `p` with the port `counters` (packets, bytes
/// per port key), and its exit status. The command and the agent
/// answering for it both print this.
pub fn status_out(
    config: &std::path::Path,
    state_dir: &std::path::Path,
    p: &steps::Planned,
    counters: &BTreeMap<String, (u64, u64)>,
    format: Format,
) -> Result<(steps::Out, Exit)> {
    let mut answer = steps::Out::default();
    for w in &p.warnings {
        let _ = writeln!(answer.stderr, "Warning: {w}");
    }
    let agent = AgentStatus::read(state_dir);
    // A change awaiting confirmation, or a rolled-back content that apply
    // and the agent hold back.
    let confirm_note = match steps::read_config(config) {
        Ok(bytes) => crate::cmd::confirm::refusal(state_dir, config, &bytes, false)?,
        Err(_) => None,
    };
    let pending: BTreeMap<&str, &str> = p
        .plan
        .changes
        .iter()
        .map(|c| (c.address.as_str(), c.action.symbol()))
        .collect();
    let drifted: BTreeSet<&str> = p.plan.drift.iter().map(|d| d.address.as_str()).collect();
    let held: BTreeSet<&str> = p.held.iter().map(|f| f.object.as_str()).collect();
    let want = &p.desired.state;
    // A row belongs to a held object: it is left as it is, not pending.
    let object_of = |addr: &str| -> String {
        if let Some(k) = addr.strip_prefix("container.") {
            if let Some(e) = want.endpoints.get(k) {
                return format!("container.{}", e.container);
            }
        }
        if let Some(k) = addr.strip_prefix("port.") {
            if let Some(pm) = want.firewall.as_ref().and_then(|f| f.fw.ports.get(k)) {
                return format!("container.{}", pm.container);
            }
        }
        if let Some(path) = addr.strip_prefix("file.") {
            if let Some(c) = crate::core::plan::file_owner(path, want) {
                return format!("container.{c}");
            }
        }
        addr.to_string()
    };
    let state_of = |addr: &str| {
        if held.contains(object_of(addr).as_str()) {
            return "failed".to_string();
        }
        match pending.get(addr) {
            None => "in sync".to_string(),
            // Changed outside netloom since its last apply.
            Some(_) if drifted.contains(addr) => "drift".to_string(),
            Some(&"-") => "to remove".to_string(),
            // The file asks for a change (or a new object) not yet
            // applied; what vanished from the host is drift, above.
            Some(_) => "pending".to_string(),
        }
    };
    let obs = &p.observation.state;
    // An apply that did not finish leaves the host unconverged, even when
    // its last change happened to land: only an apply records the end.
    let interrupted = p.interrupted.as_ref();
    let in_sync = p.plan.is_empty() && p.held.is_empty() && interrupted.is_none();
    if format == Format::Json {
        let networks: Vec<_> = want
            .bridges
            .iter()
            .map(|(n, b)| json!({"address": format!("network.{n}"), "name": n, "bridge": b.name, "addresses": b.addrs, "state": state_of(&format!("network.{n}"))}))
            .collect();
        let endpoints: Vec<_> = want
            .endpoints
            .iter()
            .map(|(k, e)| {
                let live = obs.endpoints.get(k);
                json!({"address": format!("container.{k}"), "container": e.container, "network": e.network, "interface": e.ifname, "host_veth": e.host_veth, "addresses": e.addrs, "mac": e.mac, "live_addresses": live.map(|l| &l.addrs), "state": state_of(&format!("container.{k}"))})
            })
            .collect();
        let fw = want.firewall.as_ref().map(|f| &*f.fw.ports);
        let ports: Vec<_> = fw
            .into_iter()
            .flatten()
            .map(|(k, pm)| {
                let (pk, by) = counters.get(k).copied().unwrap_or((0, 0));
                json!({"address": format!("port.{k}"), "container": pm.container, "host_ip": pm.host_ip.map(|i| i.to_string()).unwrap_or_else(|| "0.0.0.0".into()), "host_port": pm.host_port, "container_ip": pm.container_ip.map(|i| i.to_string()), "container_ip6": pm.container_ip6.map(|i| i.to_string()), "container_port": pm.container_port, "count": pm.count, "proto": pm.proto.to_string(), "packets": pk, "bytes": by, "state": state_of(&format!("port.{k}"))})
            })
            .collect();
        let doc = json!({
            "in_sync": in_sync,
            "networks": networks,
            "endpoints": endpoints,
            "ports": ports,
            "files": want.files.keys().map(|f| json!({"path": f, "state": state_of(&format!("file.{f}"))})).collect::<Vec<_>>(),
            "external_hosts_files": p.desired.external_files,
            "drift": p.plan.drift,
            "failed": p.held,
            "pending": p.plan.changes.iter().map(|c| json!({"address": c.address, "action": c.action})).collect::<Vec<_>>(),
            "agent": agent,
            "held_back": confirm_note,
            "interrupted": interrupted.map(|i| json!({"started": i.started, "changes": i.changes, "message": steps::interrupted_note(i), "hint": steps::INTERRUPTED_HINT})),
        });
        let _ = writeln!(answer.stdout, "{}", serde_json::to_string_pretty(&doc)?);
        return Ok((answer, status_exit(p, interrupted.is_some())));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NETWORK            BRIDGE           ADDRESSES                     STATE"
    );
    for (n, b) in &want.bridges {
        let addrs: Vec<&str> = b.addrs.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "{:<18} {:<16} {:<29} {}",
            n,
            b.name,
            addrs.join(","),
            state_of(&format!("network.{n}"))
        );
    }
    let _ = writeln!(
        out,
        "\nENDPOINT           VETH         ADDRESSES                     MAC                STATE"
    );
    for (k, e) in want.endpoints.iter() {
        let addrs: Vec<&str> = e.addrs.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "{:<18} {:<12} {:<29} {:<18} {}",
            k,
            e.host_veth,
            addrs.join(","),
            e.mac,
            state_of(&format!("container.{k}"))
        );
    }
    if let Some(ports) = want
        .firewall
        .as_ref()
        .map(|f| &*f.fw.ports)
        .filter(|p| !p.is_empty())
    {
        let _ = writeln!(
            out,
            "\nPORT                          TARGET                     PKTS      BYTES  STATE"
        );
        for (k, pm) in ports {
            let (pk, by) = counters.get(k).copied().unwrap_or((0, 0));
            let targets: Vec<String> = pm
                .mappings()
                .into_iter()
                .map(|(_, t)| format!("{t}:{}", pm.container_port))
                .collect();
            let target = format!("{}/{}", targets.join(","), pm.proto);
            let _ = writeln!(
                out,
                "{:<29} {:<22} {:>8} {:>10}  {}",
                k,
                target,
                pk,
                by,
                state_of(&format!("port.{k}"))
            );
        }
    }
    for (c, path) in &p.desired.external_files {
        let _ = writeln!(
            out,
            "\nhosts file of {c} (netns_path; bind-mount it on the container's /etc/hosts): {path}"
        );
    }
    if !p.plan.drift.is_empty() {
        let _ = writeln!(out, "\nDrift (changed outside netloom):");
        for d in &p.plan.drift {
            let _ = writeln!(out, "  ! {}: {}", d.address, d.what);
        }
    }
    if let Some(a) = &agent {
        let state = if a.alive() { "running" } else { "not running" };
        let summary = if a.summary.is_empty() {
            "(no runs recorded)"
        } else {
            &a.summary
        };
        let _ = writeln!(out, "\nAgent (pid {}, {state}): {summary}", a.pid);
        if let Some(e) = &a.config_error {
            let _ = writeln!(
                out,
                "  the agent keeps its last good configuration; the file has errors:\n{e}"
            );
        }
    }
    if let Some(why) = &confirm_note {
        let _ = writeln!(out, "\nNot applied: {why}.");
    }
    if !p.held.is_empty() {
        let _ = writeln!(
            out,
            "\nFailed (left as they are; everything else is applied):"
        );
        for f in &p.held {
            let _ = writeln!(out, "  ! {}: {}", f.object, f.error);
        }
    }
    if let Some(i) = interrupted {
        let _ = writeln!(
            out,
            "\nInterrupted: {}.\n  To continue: {}.",
            steps::interrupted_note(i),
            steps::INTERRUPTED_HINT
        );
    }
    let s = p.plan.summary();
    if in_sync {
        let _ = writeln!(out, "\nIn sync: no changes pending.");
    } else if p.plan.is_empty() && p.held.is_empty() {
        let _ = writeln!(
            out,
            "\nNot in sync: the last apply was interrupted (run `netloom apply`)."
        );
    } else {
        let _ = writeln!(
            out,
            "\nNot in sync: {} to add, {} to change, {} to destroy (run `netloom plan`).",
            s.add, s.change, s.destroy
        );
    }
    answer.stdout.push_str(&out);
    Ok((answer, status_exit(p, interrupted.is_some())))
}

/// 1 when an object cannot be applied; 2 on drift, pending changes or an
/// interrupted apply (all three mean "run `netloom apply`").
fn status_exit(p: &steps::Planned, interrupted: bool) -> Exit {
    if !p.held.is_empty() {
        Exit::Error
    } else if p.plan.is_empty() && !interrupted {
        Exit::Ok
    } else {
        Exit::Changes
    }
}

/// A stable 64-hex-digit id for a name (Docker shows ids of that shape).
pub fn id_of(kind: &str, name: &str) -> String {
    (0..4u8)
        .map(|i| {
            format!(
                "{:016x}",
                crate::core::hash::fnv64(format!("{kind}\0{name}\0{i}").as_bytes())
            )
        })
        .collect()
}

pub async fn inspect(cli: &Cli, network: &str, format: Format) -> Result<Exit> {
    let Some(l) = steps::load(cli)? else {
        return Ok(Exit::Error);
    };
    let Some(net) = l.spec.networks.get(network).cloned() else {
        let known: Vec<&str> = l.spec.networks.keys().map(String::as_str).collect();
        return Err(anyhow!(
            "unknown network `{network}` (declared: {})",
            known.join(", ")
        ));
    };
    let sd = StateDir::open(&l.host.state_dir, LOCK_WAIT)?;
    let record = sd.load()?;
    let desired = steps::resolve(&l, &record)?;
    let observation = crate::host::observe::observe(&desired.state, &record).await?;
    drop(sd);
    let mut containers = serde_json::Map::new();
    for e in observation
        .state
        .endpoints
        .values()
        .filter(|e| e.network == network)
    {
        let v4 = e
            .addrs
            .iter()
            .find(|a| !a.contains(':'))
            .cloned()
            .unwrap_or_default();
        let v6 = e
            .addrs
            .iter()
            .find(|a| a.contains(':'))
            .cloned()
            .unwrap_or_default();
        containers.insert(
            id_of("container", &e.container),
            json!({"Name": e.container, "EndpointID": id_of("endpoint", &format!("{}.{}", e.container, e.ifname)), "MacAddress": e.mac, "IPv4Address": v4, "IPv6Address": v6}),
        );
    }
    let mut config =
        vec![json!({"Subnet": net.subnet.to_string(), "Gateway": net.gateway.to_string()})];
    if let (Some(s6), Some(g6)) = (net.subnet6, net.gateway6) {
        config.push(json!({"Subnet": s6.to_string(), "Gateway": g6.to_string()}));
    }
    let doc = json!([{
        "Name": net.name,
        "Id": id_of("network", &net.name),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": net.subnet6.is_some(),
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": net.internal,
        "Attachable": false,
        "Containers": containers,
        "Options": {
            "com.docker.network.bridge.name": net.bridge,
            "com.docker.network.bridge.enable_ip_masquerade": net.masquerade.to_string(),
            "com.docker.network.bridge.enable_icc": net.icc.to_string(),
            "com.docker.network.driver.mtu": net.mtu.to_string(),
        },
        "Labels": {}
    }]);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Format::Text | Format::Markdown => {
            println!(
                "Name:    {}\nDriver:  bridge\nBridge:  {}\nSubnet:  {}\nGateway: {}\nInternal: {}",
                net.name, net.bridge, net.subnet, net.gateway, net.internal
            );
            println!("Containers:");
            for v in containers.values() {
                println!(
                    "  {:<16} {:<20} {}",
                    v["Name"].as_str().unwrap_or(""),
                    v["IPv4Address"].as_str().unwrap_or(""),
                    v["MacAddress"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(Exit::Ok)
}
