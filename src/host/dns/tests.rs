//! Everything runs on 127.0.0.0/8 with an unprivileged port. Each test
//! uses its own 127.0.N.x addresses so tests can run in parallel.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::forward::{self, random_u16};
use super::listen::{bind_tcp, bind_udp};
use super::*;
use crate::core::dns::testing::{ip, member, zone};

/// The servers' port: one free port chosen per test process (UDP and TCP
/// on 127.0.0.1), so that two runs on one machine do not collide.
static PORT: std::sync::LazyLock<u16> = std::sync::LazyLock::new(|| {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("local addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
});

fn port() -> u16 {
    *PORT
}
const WAIT: Duration = Duration::from_secs(3);
/// How long to wait before concluding that no reply is coming.
const SILENCE: Duration = Duration::from_millis(300);

fn query_msg(name: &Name, qtype: RecordType) -> Message {
    let mut msg = Message::new();
    msg.set_id(random_u16())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), qtype));
    msg
}

/// Names as they travel on the wire: always absolute.
fn name(text: &str) -> Name {
    let mut name = Name::from_ascii(text).expect("test name");
    name.set_fqdn(true);
    name
}

/// Send `packet` over UDP from `src` to `server`:PORT; the reply if one
/// comes within `wait`.
async fn udp_raw(
    src: Ipv4Addr,
    server: Ipv4Addr,
    packet: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((src, 0)).await.expect("bind client");
    sock.send_to(packet, (server, port())).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp_ask(
    src: Ipv4Addr,
    server: Ipv4Addr,
    qname: &str,
    qtype: RecordType,
) -> Option<Message> {
    let req = query_msg(&name(qname), qtype);
    let reply = udp_raw(src, server, &req.to_vec().expect("encode"), WAIT).await?;
    let resp = Message::from_vec(&reply).expect("reply parses");
    assert_eq!(resp.id(), req.id());
    assert_eq!(resp.queries(), req.queries());
    Some(resp)
}

async fn tcp_connect(src: Ipv4Addr, server: Ipv4Addr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind((src, 0).into()).expect("bind client");
    sock.connect((server, port()).into())
        .await
        .expect("connect")
}

async fn tcp_send(stream: &mut TcpStream, packet: &[u8]) {
    let len = u16::try_from(packet.len()).expect("small packet");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(packet).await.expect("write");
}

async fn tcp_ask(stream: &mut TcpStream, qname: &str, qtype: RecordType) -> Message {
    let req = query_msg(&name(qname), qtype);
    tcp_send(stream, &req.to_vec().expect("encode")).await;
    let read = async {
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        io::Result::Ok(buf)
    };
    let buf = tokio::time::timeout(WAIT, read)
        .await
        .expect("tcp reply in time")
        .expect("tcp reply");
    let resp = Message::from_vec(&buf).expect("reply parses");
    assert_eq!(resp.id(), req.id());
    resp
}

fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn assert_local(msg: &Message, rcode: ResponseCode) {
    assert_eq!(msg.response_code(), rcode);
    assert!(msg.authoritative(), "local answers are authoritative");
    assert!(msg.recursion_available());
    assert!(msg.answers().iter().all(|r| r.ttl() == 0), "TTL 0");
}

#[tokio::test]
async fn answers_names_aliases_network_names_and_ptr() {
    let gw = ip("127.0.1.1");
    let client = ip("127.0.1.100");
    let server = DnsServer::with_port(vec![], port());
    let mut members = vec![
        member("web", &["frontend"], "127.0.1.10", Some("fd00::10")),
        member("db", &["store"], "127.0.1.20", None),
        member("replica1", &["svc"], "127.0.1.31", None),
        member("replica2", &["svc"], "127.0.1.32", None),
    ];
    // 60 members behind one alias: too big for a 512-byte UDP reply.
    for i in 0..60 {
        members.push(member(
            &format!("m{i}"),
            &["many"],
            &format!("127.0.2.{i}"),
            None,
        ));
    }
    server
        .update(vec![zone("green", "127.0.1.1", "127.0.0.0/8", members)])
        .await
        .expect("update");

    for qname in [
        "web",
        "WEB.",
        "web.green",
        "Web.Green.",
        "frontend",
        "frontend.green.",
    ] {
        let resp = udp_ask(client, gw, qname, RecordType::A)
            .await
            .expect("reply");
        assert_local(&resp, ResponseCode::NoError);
        assert_eq!(a_records(&resp), vec![ip("127.0.1.10")], "{qname}");
        // The owner name echoes the question, case included.
        assert_eq!(resp.answers()[0].name().to_ascii(), name(qname).to_ascii());
    }

    let resp = udp_ask(client, gw, "web", RecordType::AAAA)
        .await
        .expect("reply");
    assert_local(&resp, ResponseCode::NoError);
    let v6: Vec<_> = resp.answers().iter().map(|r| r.data().clone()).collect();
    assert_eq!(v6, vec![RData::AAAA(AAAA("fd00::10".parse().expect("v6")))]);

    // Name exists, no IPv6: NODATA.
    let resp = udp_ask(client, gw, "store", RecordType::AAAA)
        .await
        .expect("reply");
    assert_local(&resp, ResponseCode::NoError);
    assert!(resp.answers().is_empty());

    let resp = udp_ask(client, gw, "svc", RecordType::A)
        .await
        .expect("reply");
    let mut svc = a_records(&resp);
    svc.sort();
    assert_eq!(svc, vec![ip("127.0.1.31"), ip("127.0.1.32")]);

    let ptr_targets = |msg: &Message| -> Vec<String> {
        msg.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect()
    };
    let resp = udp_ask(client, gw, "10.1.0.127.in-addr.arpa.", RecordType::PTR)
        .await
        .expect("reply");
    assert_local(&resp, ResponseCode::NoError);
    assert_eq!(ptr_targets(&resp), vec!["web.", "frontend."]);
    let v6_arpa = Name::from(IpAddr::V6("fd00::10".parse().expect("v6"))).to_ascii();
    let resp = udp_ask(client, gw, &v6_arpa, RecordType::PTR)
        .await
        .expect("reply");
    assert_eq!(ptr_targets(&resp), vec!["web.", "frontend."]);

    // In the subnet but nobody's: ours to deny.
    let resp = udp_ask(client, gw, "99.1.0.127.in-addr.arpa.", RecordType::PTR)
        .await
        .expect("reply");
    assert_local(&resp, ResponseCode::NXDomain);

    // Unknown bare name: NXDOMAIN locally even with no upstream at all.
    let resp = udp_ask(client, gw, "nosuch", RecordType::A)
        .await
        .expect("reply");
    assert_local(&resp, ResponseCode::NXDomain);

    // Too big for UDP: TC set, then the whole answer over TCP.
    let resp = udp_ask(client, gw, "many", RecordType::A)
        .await
        .expect("reply");
    assert!(resp.truncated());
    assert!(resp.answers().is_empty());
    let mut conn = tcp_connect(client, gw).await;
    let resp = tcp_ask(&mut conn, "many", RecordType::A).await;
    assert!(!resp.truncated());
    assert_eq!(a_records(&resp).len(), 60);
    // Several queries on one connection.
    let resp = tcp_ask(&mut conn, "db.green", RecordType::A).await;
    assert_local(&resp, ResponseCode::NoError);
    assert_eq!(a_records(&resp), vec![ip("127.0.1.20")]);
    let resp = tcp_ask(&mut conn, "nosuch", RecordType::A).await;
    assert_local(&resp, ResponseCode::NXDomain);

    let stats = server.stats();
    assert_eq!(stats.forwarded, 0);
    assert_eq!(stats.dropped, 0);
    assert!(stats.answered >= 17, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn networks_only_see_their_own_members() {
    // green serves 127.0.3.0/24 on 127.0.3.1, blue 127.0.4.0/24 on
    // 127.0.4.1; clients bind to an address of "their" network.
    let server = DnsServer::with_port(vec![], port());
    server
        .update(vec![
            zone(
                "green",
                "127.0.3.1",
                "127.0.3.0/24",
                vec![member("web", &[], "127.0.3.10", None)],
            ),
            zone(
                "blue",
                "127.0.4.1",
                "127.0.4.0/24",
                vec![member("db", &["cache"], "127.0.4.10", None)],
            ),
        ])
        .await
        .expect("update");
    let (green, blue) = (ip("127.0.3.1"), ip("127.0.4.1"));
    let (green_client, blue_client) = (ip("127.0.3.100"), ip("127.0.4.100"));

    let resp = udp_ask(green_client, green, "web", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![ip("127.0.3.10")]);
    for qname in ["db", "cache"] {
        let resp = udp_ask(green_client, green, qname, RecordType::A)
            .await
            .expect("reply");
        assert_local(&resp, ResponseCode::NXDomain);
    }
    // PTR of a blue member, asked on green: not in green's subnet, so
    // not green's to answer (it would go upstream; there is none).
    let resp = udp_ask(
        green_client,
        green,
        "10.4.0.127.in-addr.arpa.",
        RecordType::PTR,
    )
    .await
    .expect("reply");
    assert_eq!(resp.response_code(), ResponseCode::ServFail);

    let resp = udp_ask(blue_client, blue, "cache.blue", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![ip("127.0.4.10")]);

    // A blue client asking green's gateway is silently ignored, over
    // UDP and TCP; so is the default loopback source 127.0.0.1.
    let dropped = server.stats().dropped;
    let packet = query_msg(&name("web"), RecordType::A)
        .to_vec()
        .expect("encode");
    assert!(
        udp_raw(blue_client, green, &packet, SILENCE)
            .await
            .is_none()
    );
    assert!(
        udp_raw(ip("127.0.0.1"), green, &packet, SILENCE)
            .await
            .is_none()
    );
    let mut conn = tcp_connect(blue_client, green).await;
    // The server may already have closed the connection: a failed write
    // is as good as the closed read checked below.
    let mut framed = u16::try_from(packet.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&packet);
    let _ = conn.write_all(&framed).await;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, conn.read(&mut byte))
        .await
        .expect("closed in time");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "stranger's connection closed without reply"
    );
    assert_eq!(server.stats().dropped, dropped + 3);
    server.shutdown().await;
}

#[derive(Clone, Copy)]
enum Upstream {
    /// Answers every A query with 192.0.2.1.
    Answer,
    /// Answers UDP with TC set and no records; TCP with the records.
    TruncateUdp,
    /// Reads and never answers.
    Silent,
    /// Like `Answer`, except for names starting with `slow`: no answer.
    AnswerFast,
}

/// A fake upstream on `addr`:PORT; returns how many queries it got.
async fn fake_upstream(addr: Ipv4Addr, mode: Upstream) -> Arc<AtomicUsize> {
    fn reply(packet: &[u8], truncate: bool) -> Option<Vec<u8>> {
        let req = Message::from_vec(packet).ok()?;
        let mut resp = Message::new();
        resp.set_header(Header::response_from_request(req.header()));
        resp.set_recursion_available(true);
        resp.add_queries(req.queries().iter().cloned());
        if truncate {
            resp.set_truncated(true);
        } else {
            let qname = req.queries().first()?.name().clone();
            resp.add_answer(Record::from_rdata(
                qname,
                300,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
        }
        resp.to_vec().ok()
    }
    let count = Arc::new(AtomicUsize::new(0));
    let udp = UdpSocket::bind((addr, port()))
        .await
        .expect("bind fake upstream");
    let tcp = TcpListener::bind((addr, port()))
        .await
        .expect("bind fake upstream");
    let udp_count = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, src)) = udp.recv_from(&mut buf).await {
            udp_count.fetch_add(1, Ordering::SeqCst);
            let out = match mode {
                Upstream::Answer => reply(&buf[..n], false),
                Upstream::TruncateUdp => reply(&buf[..n], true),
                Upstream::Silent => None,
                Upstream::AnswerFast => {
                    let slow = Message::from_vec(&buf[..n]).is_ok_and(|m| {
                        m.queries()
                            .first()
                            .is_some_and(|q| q.name().to_ascii().starts_with("slow"))
                    });
                    if slow { None } else { reply(&buf[..n], false) }
                }
            };
            if let Some(out) = out {
                let _ = udp.send_to(&out, src).await;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let Ok(len) = stream.read_u16().await else {
                continue;
            };
            let mut buf = vec![0u8; usize::from(len)];
            if stream.read_exact(&mut buf).await.is_err() {
                continue;
            }
            if let Some(out) = reply(&buf, false) {
                let len = u16::try_from(out.len()).expect("small");
                let _ = stream.write_all(&len.to_be_bytes()).await;
                let _ = stream.write_all(&out).await;
            }
        }
    });
    count
}

fn up(addr: &str) -> SocketAddr {
    SocketAddr::from((ip(addr), port()))
}

#[tokio::test]
async fn forwards_unknown_names_upstream() {
    let gw = ip("127.0.8.1");
    let client = ip("127.0.8.100");
    let good = fake_upstream(ip("127.0.9.1"), Upstream::Answer).await;
    let tc = fake_upstream(ip("127.0.9.2"), Upstream::TruncateUdp).await;
    let server = DnsServer::with_port(vec![up("127.0.9.1")], port());
    let zones = vec![zone(
        "green",
        "127.0.8.1",
        "127.0.8.0/24",
        vec![member("web", &[], "127.0.8.10", None)],
    )];
    server.update(zones).await.expect("update");

    let resp = udp_ask(client, gw, "example.com.", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(resp.response_code(), ResponseCode::NoError);
    assert!(!resp.authoritative(), "relayed as the upstream said");
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(resp.answers()[0].ttl(), 300);

    // Over TCP too, and `x.<network>` for a non-member goes upstream.
    let mut conn = tcp_connect(client, gw).await;
    let resp = tcp_ask(&mut conn, "nobody.green", RecordType::A).await;
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(good.load(Ordering::SeqCst), 2);

    // Bare names never leave the host.
    let resp = udp_ask(client, gw, "nosuch", RecordType::A)
        .await
        .expect("reply");
    assert_local(&resp, ResponseCode::NXDomain);
    assert_eq!(good.load(Ordering::SeqCst), 2);

    // A truncated UDP reply is retried over TCP.
    server.set_upstreams(vec![up("127.0.9.2")]);
    let resp = udp_ask(client, gw, "big.example.", RecordType::A)
        .await
        .expect("reply");
    assert!(!resp.truncated());
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(tc.load(Ordering::SeqCst), 1);

    // Nobody at the first upstream (port unreachable): the next one
    // answers. That the dead one is given up at once, on the ICMP error
    // rather than after its share of the timeout, is the event checked:
    // asking it fails with "connection refused" (waited for with a
    // deadline far beyond any timeout of the forwarder).
    let dead = up("127.0.9.9");
    let probe = query_msg(&name("example.org."), RecordType::A);
    let asked = tokio::time::timeout(
        Duration::from_secs(30),
        forward::ask_upstream(dead, &probe.to_vec().expect("encode"), probe.id(), &probe),
    )
    .await
    .expect("no answer to a closed port within 30 s: ICMP not seen");
    assert_eq!(
        asked.map(|_| ()).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    server.set_upstreams(vec![dead, up("127.0.9.1")]);
    let resp = udp_ask(client, gw, "example.org.", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);

    // Our own listener as upstream would loop: skipped, SERVFAIL.
    server.set_upstreams(vec![SocketAddr::from((gw, port()))]);
    let resp = udp_ask(client, gw, "example.net.", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(resp.response_code(), ResponseCode::ServFail);

    let stats = server.stats();
    assert_eq!(
        (stats.forwarded, stats.failed, stats.answered),
        (4, 1, 1),
        "{stats:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn forwarded_answers_are_kept_for_their_ttl() {
    let gw = ip("127.0.17.1");
    let client = ip("127.0.17.100");
    let upstream = fake_upstream(ip("127.0.17.53"), Upstream::Answer).await;
    let server = DnsServer::with_port(vec![up("127.0.17.53")], port());
    server
        .update(vec![zone("n", "127.0.17.1", "127.0.17.0/24", vec![])])
        .await
        .expect("update");
    let first = udp_ask(client, gw, "kept.example.", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&first), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    // Asked again, in another case: from the cache, with the asker's ID
    // (checked by udp_ask) and spelling, and a TTL that can only have
    // aged.
    for qname in ["kept.example.", "KEPT.Example."] {
        let again = udp_ask(client, gw, qname, RecordType::A)
            .await
            .expect("reply");
        assert_eq!(a_records(&again), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(again.queries()[0].name().to_ascii(), qname);
        assert!(again.answers()[0].ttl() <= 300);
    }
    assert_eq!(upstream.load(Ordering::SeqCst), 1, "asked upstream once");
    // Another type is another question.
    udp_ask(client, gw, "kept.example.", RecordType::AAAA)
        .await
        .expect("reply");
    assert_eq!(upstream.load(Ordering::SeqCst), 2);
    let stats = server.stats();
    assert_eq!((stats.forwarded, stats.cached), (2, 2), "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn one_busy_network_does_not_starve_another() {
    // Both networks forward to the same upstream, which never answers
    // names starting with "slow". busy floods it with more slow queries
    // than the whole server may have in flight.
    let (busy_gw, calm_gw) = (ip("127.0.18.1"), ip("127.0.19.1"));
    let upstream = fake_upstream(ip("127.0.18.53"), Upstream::AnswerFast).await;
    let server = DnsServer::with_port(vec![up("127.0.18.53")], port());
    server
        .update(vec![
            zone("busy", "127.0.18.1", "127.0.18.0/24", vec![]),
            zone("calm", "127.0.19.1", "127.0.19.0/24", vec![]),
        ])
        .await
        .expect("update");
    let flood = MAX_IN_FLIGHT + 44;
    let sock = UdpSocket::bind((ip("127.0.18.100"), 0))
        .await
        .expect("bind");
    for i in 0..flood {
        let q = query_msg(&name(&format!("slow{i}.example.")), RecordType::A);
        sock.send_to(&q.to_vec().expect("encode"), (busy_gw, port()))
            .await
            .expect("send");
    }
    // Wait until every query of the flood was either sent upstream or
    // dropped over busy's share (the event), with a generous deadline.
    let over = (flood - MAX_IN_FLIGHT_PER_NETWORK) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.stats().dropped < over && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats().dropped, over, "{:?}", server.stats());
    while upstream.load(Ordering::SeqCst) < MAX_IN_FLIGHT_PER_NETWORK && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.load(Ordering::SeqCst), MAX_IN_FLIGHT_PER_NETWORK);
    // calm still gets its names forwarded while busy's are stuck.
    let resp = udp_ask(ip("127.0.19.100"), calm_gw, "fast.example.", RecordType::A)
        .await
        .expect("calm's query was starved");
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    drop(sock);
    server.shutdown().await;
}

#[tokio::test]
async fn servfail_when_upstream_is_silent() {
    let gw = ip("127.0.10.1");
    let silent = fake_upstream(ip("127.0.10.53"), Upstream::Silent).await;
    let server = DnsServer::with_port(vec![up("127.0.10.53")], port());
    server
        .update(vec![zone("n", "127.0.10.1", "127.0.10.0/24", vec![])])
        .await
        .expect("update");
    // The SERVFAIL is the event waited for, with a generous deadline; it
    // cannot come before the forwarder's timeout (timers never fire early),
    // which is the only bound on time asserted.
    let started = Instant::now();
    let req = query_msg(&name("example.com."), RecordType::A);
    let reply = udp_raw(
        ip("127.0.10.100"),
        gw,
        &req.to_vec().expect("encode"),
        Duration::from_secs(30),
    )
    .await
    .expect("no SERVFAIL within 30 s");
    let took = started.elapsed();
    let resp = Message::from_vec(&reply).expect("reply parses");
    assert_eq!(resp.id(), req.id());
    assert_eq!(resp.response_code(), ResponseCode::ServFail);
    assert!(
        took >= FORWARD_TIMEOUT,
        "SERVFAIL before the timeout: {took:?}"
    );
    assert_eq!(silent.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats().failed, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_packets_are_dropped() {
    let gw = ip("127.0.11.1");
    let client = ip("127.0.11.100");
    let server = DnsServer::with_port(vec![], port());
    let zones = vec![zone(
        "n",
        "127.0.11.1",
        "127.0.11.0/24",
        vec![member("web", &[], "127.0.11.10", None)],
    )];
    server.update(zones).await.expect("update");

    let mut response = query_msg(&name("web"), RecordType::A);
    response.set_message_type(MessageType::Response);
    let mut header_only = vec![0u8; 12];
    header_only[5] = 5; // claims 5 questions, has none
    let mut cut = query_msg(&name("web"), RecordType::A)
        .to_vec()
        .expect("encode");
    cut.truncate(cut.len() - 3);
    let mut loop_ptr = query_msg(&name("web"), RecordType::A)
        .to_vec()
        .expect("encode");
    loop_ptr[12] = 0xc0; // name is a compression pointer to itself
    loop_ptr[13] = 12;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xde, 0xad],
        header_only,
        cut,
        loop_ptr,
        vec![0xff; 3000],
        response.to_vec().expect("encode"),
    ];
    for packet in &junk {
        assert!(udp_raw(client, gw, packet, SILENCE).await.is_none());
    }
    let resp = udp_ask(client, gw, "web", RecordType::A)
        .await
        .expect("still answering");
    assert_eq!(a_records(&resp), vec![ip("127.0.11.10")]);

    // Junk on a TCP connection is skipped; the connection still works.
    let mut conn = tcp_connect(client, gw).await;
    tcp_send(&mut conn, &[1, 2, 3]).await;
    let resp = tcp_ask(&mut conn, "web", RecordType::A).await;
    assert_eq!(a_records(&resp), vec![ip("127.0.11.10")]);

    // A well-formed query with two questions gets FORMERR.
    let mut two = query_msg(&name("web"), RecordType::A);
    two.add_query(Query::query(name("web"), RecordType::AAAA));
    let reply = udp_raw(client, gw, &two.to_vec().expect("encode"), WAIT)
        .await
        .expect("reply");
    let reply = Message::from_vec(&reply).expect("parses");
    assert_eq!(reply.response_code(), ResponseCode::FormErr);

    // Every junk datagram, plus the junk TCP message.
    assert_eq!(server.stats().dropped, junk.len() as u64 + 1);
    server.shutdown().await;
}

#[tokio::test]
async fn update_swaps_records_and_keeps_unchanged_listeners() {
    let (a, b, c) = (ip("127.0.12.1"), ip("127.0.13.1"), ip("127.0.14.1"));
    let client = ip("127.0.12.100");
    let server = DnsServer::with_port(vec![], port());
    let zone_a = |addr: &str| {
        zone(
            "a",
            "127.0.12.1",
            "127.0.0.0/8",
            vec![member("web", &[], addr, None)],
        )
    };
    let zone_b = zone(
        "b",
        "127.0.13.1",
        "127.0.0.0/8",
        vec![member("db", &[], "127.0.13.10", None)],
    );
    let zone_c = zone(
        "c",
        "127.0.14.1",
        "127.0.0.0/8",
        vec![member("mq", &[], "127.0.14.10", None)],
    );
    server
        .update(vec![zone_a("127.0.12.10"), zone_b])
        .await
        .expect("update");
    assert_eq!(
        server.listening().await,
        vec![SocketAddr::from((a, port())), SocketAddr::from((b, port()))]
    );

    let mut conn = tcp_connect(client, a).await;
    let resp = tcp_ask(&mut conn, "web", RecordType::A).await;
    assert_eq!(a_records(&resp), vec![ip("127.0.12.10")]);
    assert!(udp_ask(client, b, "db", RecordType::A).await.is_some());

    // web moves, b goes away, c appears.
    server
        .update(vec![zone_a("127.0.12.11"), zone_c])
        .await
        .expect("update");
    assert_eq!(
        server.listening().await,
        vec![SocketAddr::from((a, port())), SocketAddr::from((c, port()))]
    );
    // Same TCP connection: the listener of `a` was not restarted, and the
    // new address is served at once.
    let resp = tcp_ask(&mut conn, "web", RecordType::A).await;
    assert_eq!(a_records(&resp), vec![ip("127.0.12.11")]);
    let resp = udp_ask(client, a, "web", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![ip("127.0.12.11")]);
    let packet = query_msg(&name("db"), RecordType::A)
        .to_vec()
        .expect("encode");
    assert!(
        udp_raw(client, b, &packet, SILENCE).await.is_none(),
        "b is closed"
    );
    let resp = udp_ask(client, c, "mq", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![ip("127.0.14.10")]);

    // The port of a closed listener is free again at once.
    let probe = bind_udp(SocketAddr::from((b, port()))).expect("b's port was released");
    drop(probe);

    // Two zones on one gateway: rejected, nothing changes.
    let dup = vec![
        zone_a("127.0.12.12"),
        zone("x", "127.0.12.1", "127.0.0.0/8", vec![]),
    ];
    assert!(server.update(dup).await.is_err());
    let resp = udp_ask(client, a, "web", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![ip("127.0.12.11")]);

    server.shutdown().await;
    // shutdown() returns after the sockets are closed.
    drop(bind_udp(SocketAddr::from((a, port()))).expect("a's port was released"));
    drop(bind_tcp(SocketAddr::from((c, port()))).expect("c's port was released"));
}

#[tokio::test]
async fn listens_on_addresses_not_yet_assigned() {
    // 198.51.100.1 (TEST-NET-2) is on no interface here; IP_FREEBIND
    // lets the listener exist before the bridge does. Nothing is sent.
    let server = DnsServer::with_port(vec![], port());
    let zones = vec![zone("later", "198.51.100.1", "198.51.100.0/24", vec![])];
    server
        .update(zones)
        .await
        .expect("bind without the address");
    assert_eq!(server.listening().await, vec![up("198.51.100.1")]);
    server.shutdown().await;
}

#[tokio::test]
async fn busy_port_is_reported_and_others_still_open() {
    let taken = UdpSocket::bind((ip("127.0.15.1"), port()))
        .await
        .expect("bind");
    let server = DnsServer::with_port(vec![], port());
    let zones = vec![
        zone("busy", "127.0.15.1", "127.0.0.0/8", vec![]),
        zone(
            "free",
            "127.0.16.1",
            "127.0.0.0/8",
            vec![member("web", &[], "127.0.16.10", None)],
        ),
    ];
    let err = server
        .update(zones.clone())
        .await
        .expect_err("port is taken");
    assert!(err.to_string().contains("127.0.15.1"), "{err:#}");
    let resp = udp_ask(ip("127.0.16.100"), ip("127.0.16.1"), "web", RecordType::A)
        .await
        .expect("reply");
    assert_eq!(a_records(&resp), vec![ip("127.0.16.10")]);
    // Once the port is free the next update picks it up.
    drop(taken);
    server.update(zones).await.expect("retried");
    assert_eq!(server.listening().await.len(), 2);
    server.shutdown().await;
}

#[test]
fn reverse_names_from_the_wire() {
    // hickory's own reverse names reach the core's parser intact.
    for addr in [
        IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
        IpAddr::V6("2001:db8::abcd".parse().expect("v6")),
    ] {
        let name = Name::from(addr);
        let mut key = String::new();
        crate::core::dns::lookup_key(name.iter(), &mut key);
        assert_eq!(crate::core::dns::parse_reverse(&key), Some(addr), "{name}");
    }
}

#[test]
fn upstream_parsing() {
    assert_eq!(
        parse_upstream("1.1.1.1").expect("ok"),
        "1.1.1.1:53".parse().expect("addr")
    );
    assert_eq!(
        parse_upstream("1.1.1.1:5353").expect("ok"),
        "1.1.1.1:5353".parse().expect("addr")
    );
    assert_eq!(
        parse_upstream("[::1]").expect("ok"),
        "[::1]:53".parse().expect("addr")
    );
    assert_eq!(
        parse_upstream("::1").expect("ok"),
        "[::1]:53".parse().expect("addr")
    );
    assert!(parse_upstream("dns.example").is_err());
    let conf = "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\noptions edns0\n";
    assert_eq!(
        parse_resolv_conf(conf),
        vec![
            "127.0.0.53:53".parse().expect("addr"),
            "[::1]:53".parse().expect("addr")
        ]
    );
}
