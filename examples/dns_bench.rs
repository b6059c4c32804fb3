//! Load test of the embedded DNS server, on loopback only.
//!
//! Starts a `DnsServer` on 127.0.77.1 (unprivileged port 15354) with one
//! zone of 100 members, then sends a fixed number of queries over UDP with
//! a fixed number in flight (one outstanding query per client socket), and
//! prints throughput and latency percentiles for several runs and their
//! medians. A second phase measures forwarded queries (each a new name)
//! against an in-process fake upstream on 127.0.77.2, a third the same 100
//! forwarded names asked again and again (answered from the cache of
//! forwarded replies). Stops by itself.
//!
//! ```text
//! cargo run --release --example dns_bench [-- QUERIES [RUNS [CONCURRENCY]]]
//! ```
//! Defaults: 50000 queries, 5 runs, 64 in flight (forward phase: a fifth of
//! the queries). For the real agent under dnsperf, see `examples/dns-perf.sh`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use netloom::core::dns::{Member, Zone};
use netloom::host::dns::DnsServer;
use tokio::net::UdpSocket;

const PORT: u16 = 15354;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 1);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 2);
const MEMBERS: u8 = 100;
/// A query not answered within this is counted as lost (the server drops
/// only on overload or bad input, so this should stay 0).
const LOST_AFTER: Duration = Duration::from_secs(1);

struct Run {
    qps: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    lost: usize,
}

fn zone() -> Zone {
    let members = (0..MEMBERS)
        .map(|i| Member {
            name: format!("svc{i}"),
            aliases: vec![format!("alias{i}")],
            ipv4: Ipv4Addr::new(127, 0, 78, i + 1),
            ipv6: (i % 2 == 0).then(|| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1)),
        })
        .collect();
    Zone {
        network: "bench".to_string(),
        gateway: GATEWAY,
        subnet: "127.0.0.0/8".parse().expect("constant subnet"),
        gateway6: None,
        subnet6: None,
        members,
    }
}

fn encode(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new();
    msg.set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("constant name"),
            qtype,
        ));
    msg.to_vec().expect("encodable query")
}

/// The local query mix: A by name, A by alias.network, AAAA (half of them
/// NODATA), PTR.
fn local_queries() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..MEMBERS {
        out.push(encode(&format!("svc{i}."), RecordType::A));
        out.push(encode(&format!("alias{i}.bench."), RecordType::A));
        out.push(encode(&format!("svc{i}."), RecordType::AAAA));
        out.push(encode(
            &format!("{}.78.0.127.in-addr.arpa.", i + 1),
            RecordType::PTR,
        ));
    }
    out
}

/// `n` names outside the zone, each asked once (when `n` covers every
/// query of a phase) so that each really goes upstream, not to the cache.
fn forward_queries(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| encode(&format!("host{i}.example.com."), RecordType::A))
        .collect()
}

/// One client socket: `count` queries, one at a time; latencies of the
/// answered ones and the number lost.
async fn worker(
    queries: Arc<Vec<Vec<u8>>>,
    offset: usize,
    count: usize,
) -> std::io::Result<(Vec<Duration>, usize)> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    sock.connect((GATEWAY, PORT)).await?;
    let mut latencies = Vec::with_capacity(count);
    let mut lost = 0;
    let mut buf = vec![0u8; 4096];
    for n in 0..count {
        let mut packet = queries[(offset + n) % queries.len()].clone();
        let id = (n as u16).to_be_bytes();
        packet[..2].copy_from_slice(&id);
        let start = Instant::now();
        sock.send(&packet).await?;
        let answered = tokio::time::timeout(LOST_AFTER, async {
            loop {
                let len = sock.recv(&mut buf).await?;
                // A late reply to an earlier, lost query: not ours.
                if len >= 2 && buf[..2] == id {
                    return std::io::Result::Ok(());
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => latencies.push(start.elapsed()),
            Ok(Err(e)) => return Err(e),
            Err(_) => lost += 1,
        }
    }
    Ok((latencies, lost))
}

/// `total` queries from `queries`, starting at `base`: each worker takes
/// the next slice, so no query is sent twice in a run (nor across runs
/// when `base` moves on by `total`).
async fn run(queries: &Arc<Vec<Vec<u8>>>, base: usize, total: usize, concurrency: usize) -> Run {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut offset = base;
    for w in 0..concurrency {
        let count = total / concurrency + usize::from(w < total % concurrency);
        tasks.push(tokio::spawn(worker(queries.clone(), offset, count)));
        offset += count;
    }
    let mut latencies = Vec::with_capacity(total);
    let mut lost = 0;
    for task in tasks {
        let (mut l, n) = task
            .await
            .expect("worker task")
            .expect("client socket works");
        latencies.append(&mut l);
        lost += n;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        qps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(50),
        p90: pct(90),
        p99: pct(99),
        lost,
    }
}

fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[values.len() / 2]
}

async fn phase(name: &str, queries: Vec<Vec<u8>>, total: usize, runs: usize, concurrency: usize) {
    let queries = Arc::new(queries);
    // Warm-up: sockets, caches, the server's first allocations.
    let warm = total.min(2000);
    run(&queries, 0, warm, concurrency).await;
    let mut results = Vec::new();
    for i in 0..runs {
        let r = run(&queries, warm + i * total, total, concurrency).await;
        println!(
            "  {name} run {}: {:>9.0} q/s  p50 {:>7.1?}  p90 {:>7.1?}  p99 {:>7.1?}  lost {}",
            i + 1,
            r.qps,
            r.p50,
            r.p90,
            r.p99,
            r.lost
        );
        results.push(r);
    }
    println!(
        "{name}: median of {runs} runs of {total} queries, {concurrency} in flight: {:.0} q/s, p50 {:.1?}, p90 {:.1?}, p99 {:.1?}, lost {}",
        median(results.iter().map(|r| r.qps).collect()),
        median(results.iter().map(|r| r.p50).collect()),
        median(results.iter().map(|r| r.p90).collect()),
        median(results.iter().map(|r| r.p99).collect()),
        results.iter().map(|r| r.lost).sum::<usize>(),
    );
}

/// An upstream that answers every query at once with 192.0.2.1.
async fn fake_upstream() -> std::io::Result<tokio::task::JoinHandle<()>> {
    let sock = UdpSocket::bind((UPSTREAM, PORT)).await?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, src)) = sock.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true)
                .add_queries(req.queries().iter().cloned());
            if let Some(q) = req.queries().first() {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, src).await;
            }
        }
    }))
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = arg(1, 50_000);
    let runs = arg(2, 5);
    let concurrency = arg(3, 64);

    let upstream = fake_upstream().await?;
    let server = DnsServer::with_port(vec![SocketAddr::from((UPSTREAM, PORT))], PORT);
    server.update(vec![zone()]).await?;
    println!(
        "dns_bench: server on {GATEWAY}:{PORT}, {MEMBERS} members, {} worker threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    phase("local", local_queries(), total, runs, concurrency).await;
    // Every forwarded query a new name: the upstream's round trip.
    let fwd = total / 5;
    let unique = forward_queries(fwd.min(2000) + runs * fwd);
    phase("forwarded", unique, fwd, runs, concurrency).await;
    // The same 100 names again and again: answered from the cache.
    phase("cached", forward_queries(100), total, runs, concurrency).await;

    let stats = server.stats();
    println!(
        "server counters: answered {}, forwarded {}, cached {}, failed {}, dropped {}",
        stats.answered, stats.forwarded, stats.cached, stats.failed, stats.dropped
    );
    server.shutdown().await;
    upstream.abort();
    Ok(())
}
