//! Embedded DNS for user-defined networks (the equivalent of Docker's
//! `127.0.0.11`, served instead on each network's gateway address by the
//! `netloom watch` agent).
//!
//! # What it answers
//!
//! For every [`Zone`] the server listens on UDP and TCP `gateway:53`, bound
//! to that one address only: it is never an open resolver on `0.0.0.0`.
//! Sockets are opened with `IP_FREEBIND`, so a listener can exist before the
//! bridge holds its address, or while the bridge is being recreated.
//!
//! * Only clients whose source address is inside the zone's subnet are
//!   served. Other sources are **dropped silently** (no REFUSED): a reply
//!   would make the gateway usable as a reflector, and legitimate clients
//!   never come from outside the subnet.
//! * `A`/`AAAA` for a member's `name`, `name.<network>`, each alias and
//!   `alias.<network>`, case-insensitive, with or without the trailing dot.
//!   Several members sharing a name (an alias used as a service name) all
//!   answer, like Docker's network-scoped aliases. A name that exists but
//!   has no record of the asked type gets NOERROR with no answer (NODATA).
//! * `PTR` for member addresses (`in-addr.arpa`, and `ip6.arpa` for members
//!   with IPv6), answering `name.` first, then each alias.
//! * A client only ever sees its own network's members: a name that exists
//!   only on another network is treated like any unknown name.
//! * Every local answer has TTL 0 (so an address change is seen by the next
//!   query), AA and RA set.
//!
//! # What is decided locally instead of forwarded
//!
//! * A **single-label name** (`db`, `localhost`) that is not a member gets
//!   NXDOMAIN locally: bare names are container names, and leaking them to
//!   the host's resolvers only leaks the application's topology (and breaks
//!   `ndots` search-list fallbacks with slow timeouts).
//! * A reverse (`in-addr.arpa`) name for an address inside the zone's subnet
//!   that is not a member's gets NXDOMAIN locally: the network is private to
//!   this host and nobody upstream can know better.
//! * `x.<network>` where `x` is not a member **is forwarded**, as Docker
//!   does: network names may coincide with real domains (`dev`, `app`,
//!   `internal`), and a network called `com` must not break `google.com`.
//!
//! Everything else is forwarded to the upstream servers: UDP first (retried
//! over TCP when the reply is truncated), each upstream in turn, within a
//! total budget of [`FORWARD_TIMEOUT`]; when no upstream gives a usable
//! answer the client gets SERVFAIL. Forwarded queries use a fresh socket
//! (random source port) and a fresh random query ID, and replies are checked
//! for ID and question before being relayed.
//!
//! # Robustness
//!
//! Malformed packets, and packets that are responses rather than queries,
//! are dropped without a reply. Local answers are computed inline in the
//! receive loop (no allocation of a task); queries that must go upstream
//! take a permit from a semaphore of [`MAX_IN_FLIGHT`] shared by all
//! listeners, and are dropped when none is free. TCP serves length-prefixed
//! messages, several per connection, closes a connection idle for
//! [`TCP_IDLE_TIMEOUT`] and accepts at most [`MAX_TCP_CONNECTIONS`] per
//! listener.
//!
//! # Updates
//!
//! [`DnsServer::update`] swaps all records at once (one pointer swap under a
//! lock). Listeners are keyed by gateway address: a gateway present before
//! and after an update keeps its sockets and open TCP connections, a new one
//! gets listeners, a removed one has its listeners (and their connections
//! and forwarded queries) closed.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnetwork::Ipv4Network;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
    sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::core::dns::Zone;

/// The port clients use; [`DnsServer::with_port`] overrides it for tests.
pub const DEFAULT_PORT: u16 = 53;
/// Total time a forwarded query may take, across all upstreams and both
/// transports, before the client gets SERVFAIL. Resolvers in containers
/// typically time out after 5 s, so 2 s leaves them room to retry.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once (all listeners together); beyond
/// this, new queries needing an upstream are dropped. Bounds the sockets and
/// tasks a flood of queries for unknown names can create.
pub const MAX_IN_FLIGHT: usize = 256;
/// TCP connections open at once per listener; newer ones are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP connection with no complete query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest query we read over UDP. Queries are a few dozen bytes; a longer
/// datagram is cut to this by the kernel and then fails to parse.
const UDP_QUERY_BUF: usize = 4096;
/// UDP payload we advertise in EDNS replies (the DNS flag day 2020 value,
/// which avoids IP fragmentation).
const EDNS_PAYLOAD: u16 = 1232;
/// Ceiling on the client's advertised EDNS payload we will honour over UDP.
const MAX_UDP_REPLY: usize = 4096;

/// Counters since the server was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Replies produced locally (answers, NODATA, NXDOMAIN, FORMERR, NOTIMP).
    pub answered: u64,
    /// Replies relayed from an upstream server.
    pub forwarded: u64,
    /// SERVFAIL sent because no upstream gave a usable reply in time.
    pub failed: u64,
    /// Packets dropped without a reply: malformed, not a query, source
    /// outside the zone's subnet, no zone for the address, or over the
    /// in-flight / connection limits.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    answered: AtomicU64,
    forwarded: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lookup tables of one zone, built once per [`DnsServer::update`].
#[derive(Debug)]
struct ZoneData {
    subnet: Ipv4Network,
    /// Lower-case dotted name without trailing dot -> indexes into `addrs`.
    names: HashMap<String, Vec<usize>>,
    /// Addresses of each member, same order as `Zone::members`.
    addrs: Vec<(Ipv4Addr, Option<Ipv6Addr>)>,
    ptr4: HashMap<Ipv4Addr, Vec<Name>>,
    ptr6: HashMap<Ipv6Addr, Vec<Name>>,
}

impl ZoneData {
    fn build(zone: &Zone) -> Self {
        let network = normalize(&zone.network);
        let mut names: HashMap<String, Vec<usize>> = HashMap::new();
        let mut ptr4: HashMap<Ipv4Addr, Vec<Name>> = HashMap::new();
        let mut ptr6: HashMap<Ipv6Addr, Vec<Name>> = HashMap::new();
        let mut addrs = Vec::with_capacity(zone.members.len());

        for (idx, member) in zone.members.iter().enumerate() {
            addrs.push((member.ipv4, member.ipv6));
            let mut targets = Vec::new();
            for label in std::iter::once(&member.name).chain(&member.aliases) {
                let key = normalize(label);
                if key.is_empty() {
                    continue;
                }
                let mut keys = vec![key.clone()];
                if !network.is_empty() {
                    keys.push(format!("{key}.{network}"));
                }
                for k in keys {
                    let entry = names.entry(k).or_default();
                    if !entry.contains(&idx) {
                        entry.push(idx);
                    }
                }
                // The PTR target keeps the name as configured (case included)
                // but is made absolute so resolvers do not append a search
                // domain to it.
                match Name::from_ascii(format!("{}.", label.trim_end_matches('.'))) {
                    Ok(name) if !targets.contains(&name) => targets.push(name),
                    Ok(_) => {}
                    Err(err) => warn!(name = %label, %err, "not a valid DNS name; no PTR record"),
                }
            }
            extend_unique(ptr4.entry(member.ipv4).or_default(), &targets);
            if let Some(v6) = member.ipv6 {
                extend_unique(ptr6.entry(v6).or_default(), &targets);
            }
        }
        Self {
            subnet: zone.subnet,
            names,
            addrs,
            ptr4,
            ptr6,
        }
    }
}

/// Append the names of `more` not yet in `list`, keeping order (the
/// member's own name first, then aliases, then other members sharing the
/// address).
fn extend_unique(list: &mut Vec<Name>, more: &[Name]) {
    for name in more {
        if !list.contains(name) {
            list.push(name.clone());
        }
    }
}

/// Lower-case, without trailing dot: the form names are looked up in.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The lookup key of a query name: its labels, lower-cased, joined by dots.
fn name_key(name: &Name) -> String {
    let mut key = String::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        key.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    key
}

/// The address named by a full reverse-lookup name, if it is one.
fn parse_reverse(name: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let n = labels.len();
    if n < 2 || !labels[n - 1].eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let suffix = labels[n - 2];
    if suffix.eq_ignore_ascii_case(b"in-addr") && n == 6 {
        let mut octets = [0u8; 4];
        for (i, label) in labels[..4].iter().enumerate() {
            // Octets appear least significant first; reject "01" and the
            // like, which are not how any address is spelled.
            let text = std::str::from_utf8(label).ok()?;
            if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
                return None;
            }
            octets[3 - i] = text.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if suffix.eq_ignore_ascii_case(b"ip6") && n == 34 {
        let mut value: u128 = 0;
        for label in labels[..32].iter().rev() {
            let [digit] = label else { return None };
            let nibble = char::from(*digit).to_digit(16)?;
            value = (value << 4) | u128::from(nibble);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// What to do with one question.
enum Resolution {
    Local(ResponseCode, Vec<Record>),
    Forward,
}

fn resolve(zone: &ZoneData, query: &Query) -> Resolution {
    // Members only exist in class IN; anything else (CHAOS version.bind...)
    // is the upstream's business.
    if query.query_class() != DNSClass::IN {
        return Resolution::Forward;
    }
    let name = query.name();
    let qtype = query.query_type();
    let record = |rdata: RData| Record::from_rdata(name.clone(), 0, rdata);

    if let Some(idxs) = zone.names.get(&name_key(name)) {
        let mut answers = Vec::new();
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            for &i in idxs {
                let a = RData::A(A(zone.addrs[i].0));
                let rec = record(a);
                if !answers.contains(&rec) {
                    answers.push(rec);
                }
            }
        }
        if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
            for &i in idxs {
                if let Some(v6) = zone.addrs[i].1 {
                    let rec = record(RData::AAAA(AAAA(v6)));
                    if !answers.contains(&rec) {
                        answers.push(rec);
                    }
                }
            }
        }
        return Resolution::Local(ResponseCode::NoError, answers);
    }

    if let Some(addr) = parse_reverse(name) {
        let targets = match addr {
            IpAddr::V4(a) => zone.ptr4.get(&a),
            IpAddr::V6(a) => zone.ptr6.get(&a),
        };
        return match (targets, addr) {
            (Some(targets), _) => {
                let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    targets
                        .iter()
                        .map(|t| record(RData::PTR(PTR(t.clone()))))
                        .collect()
                } else {
                    Vec::new()
                };
                Resolution::Local(ResponseCode::NoError, answers)
            }
            (None, IpAddr::V4(a)) if zone.subnet.contains(a) => {
                Resolution::Local(ResponseCode::NXDomain, Vec::new())
            }
            (None, _) => Resolution::Forward,
        };
    }

    if name.iter().len() == 1 {
        return Resolution::Local(ResponseCode::NXDomain, Vec::new());
    }
    Resolution::Forward
}

/// A reply skeleton for `req`: same ID, question, RD and CD; RA set; an OPT
/// record when the query had one.
fn response_for(req: &Message, rcode: ResponseCode) -> Message {
    let mut header = Header::response_from_request(req.header());
    header
        .set_recursion_available(true)
        .set_response_code(rcode);
    let mut resp = Message::new();
    resp.set_header(header);
    resp.add_queries(req.queries().iter().cloned());
    if req.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        resp.set_edns(edns);
    }
    resp
}

/// The largest UDP reply the client said it can take.
fn udp_limit(req: &Message) -> usize {
    req.extensions().as_ref().map_or(512, |e| {
        usize::from(e.max_payload()).clamp(512, MAX_UDP_REPLY)
    })
}

/// A reply with TC set and no records, telling the client to retry over TCP.
fn truncated_reply(req: &Message) -> Option<Vec<u8>> {
    let mut resp = response_for(req, ResponseCode::NoError);
    resp.set_truncated(true);
    resp.to_vec().ok()
}

/// Fit an encoded reply to the transport: over UDP to the client's limit,
/// over TCP to the 16-bit length prefix.
fn fit(bytes: Vec<u8>, req: &Message, udp: bool) -> Option<Vec<u8>> {
    let limit = if udp {
        udp_limit(req)
    } else {
        usize::from(u16::MAX)
    };
    if bytes.len() <= limit {
        Some(bytes)
    } else {
        truncated_reply(req)
    }
}

/// Whether `src` is inside the zone's subnet. (Listeners are AF_INET, so
/// an IPv6 source can only be v4-mapped.)
fn subnet_has(zone: &ZoneData, src: SocketAddr) -> bool {
    match src.ip() {
        IpAddr::V4(ip) => zone.subnet.contains(ip),
        IpAddr::V6(ip) => ip
            .to_ipv4_mapped()
            .is_some_and(|v4| zone.subnet.contains(v4)),
    }
}

/// The decision for one packet, made synchronously.
enum Step {
    Reply(Vec<u8>),
    Forward(Message),
    Drop,
}

struct Shared {
    port: u16,
    zones: RwLock<Arc<HashMap<Ipv4Addr, Arc<ZoneData>>>>,
    upstreams: RwLock<Arc<Vec<SocketAddr>>>,
    in_flight: Arc<Semaphore>,
    counters: Counters,
}

impl Shared {
    fn zone(&self, gateway: Ipv4Addr) -> Option<Arc<ZoneData>> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc;
        // the Arc inside is still whole, so keep serving.
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner());
        zones.get(&gateway).cloned()
    }

    /// Whether `src` may query the zone on `gateway` (inside its subnet).
    fn allowed(&self, gateway: Ipv4Addr, src: SocketAddr) -> bool {
        self.zone(gateway)
            .is_some_and(|zone| subnet_has(&zone, src))
    }

    fn drop_packet(&self, why: &str, src: SocketAddr) -> Step {
        debug!(%src, why, "dns packet dropped");
        Counters::bump(&self.counters.dropped);
        Step::Drop
    }

    /// Everything that can be decided without waiting: source check, parse,
    /// local answer. Only names that need an upstream come back as `Forward`.
    fn prepare(&self, gateway: Ipv4Addr, src: SocketAddr, packet: &[u8], udp: bool) -> Step {
        let Some(zone) = self.zone(gateway) else {
            return self.drop_packet("no zone on this address", src);
        };
        if !subnet_has(&zone, src) {
            return self.drop_packet("source outside the network", src);
        }
        let Ok(req) = Message::from_vec(packet) else {
            return self.drop_packet("malformed", src);
        };
        // Never answer responses: two servers must not be able to bounce
        // packets between them forever.
        if req.message_type() != MessageType::Query {
            return self.drop_packet("not a query", src);
        }
        let (rcode, answers) = if req.op_code() != OpCode::Query {
            (ResponseCode::NotImp, Vec::new())
        } else if req.queries().len() != 1 {
            (ResponseCode::FormErr, Vec::new())
        } else {
            match resolve(&zone, &req.queries()[0]) {
                Resolution::Local(rcode, answers) => (rcode, answers),
                Resolution::Forward => return Step::Forward(req),
            }
        };
        let mut resp = response_for(&req, rcode);
        resp.set_authoritative(true);
        resp.insert_answers(answers);
        match resp.to_vec().ok().and_then(|b| fit(b, &req, udp)) {
            Some(bytes) => {
                Counters::bump(&self.counters.answered);
                Step::Reply(bytes)
            }
            None => self.drop_packet("reply could not be encoded", src),
        }
    }

    /// Upstreams to try: the configured ones, minus our own listeners (a
    /// gateway configured as upstream would forward to itself forever).
    fn upstreams(&self) -> Vec<SocketAddr> {
        let all = self
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner()).clone();
        all.iter()
            .copied()
            .filter(|up| match up {
                SocketAddr::V4(v4) => !(v4.port() == self.port && zones.contains_key(v4.ip())),
                SocketAddr::V6(_) => true,
            })
            .collect()
    }

    /// Relay `req` (whose wire form is `packet`) upstream; the reply bytes
    /// for the client, SERVFAIL when no upstream helped.
    async fn forward(&self, req: &Message, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let upstreams = self.upstreams();
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        // A fresh ID upstream, so that an off-path attacker who sees or
        // guesses the client's ID still has to guess ours (and our port).
        let our_id = random_u16();
        let mut query = packet.to_vec();
        query[..2].copy_from_slice(&our_id.to_be_bytes());

        let mut fallback = None;
        for (i, upstream) in upstreams.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Share what is left among the upstreams not yet tried, so one
            // black-holed server cannot eat the whole budget.
            let budget = left / u32::try_from(upstreams.len() - i).unwrap_or(u32::MAX);
            let attempt =
                tokio::time::timeout(budget, ask_upstream(*upstream, &query, our_id, req));
            match attempt.await {
                Ok(Ok((mut bytes, rcode))) => {
                    bytes[..2].copy_from_slice(&req.id().to_be_bytes());
                    // A broken upstream's SERVFAIL/REFUSED is kept only in
                    // case no other upstream does better.
                    if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused) {
                        fallback = Some(bytes);
                        continue;
                    }
                    Counters::bump(&self.counters.forwarded);
                    return fit(bytes, req, udp);
                }
                Ok(Err(err)) => debug!(%upstream, %err, "upstream failed"),
                Err(_) => debug!(%upstream, "upstream timed out"),
            }
        }
        if let Some(bytes) = fallback {
            Counters::bump(&self.counters.forwarded);
            return fit(bytes, req, udp);
        }
        Counters::bump(&self.counters.failed);
        response_for(req, ResponseCode::ServFail).to_vec().ok()
    }
}

/// An unpredictable 16-bit value. `RandomState` keys SipHash with secret
/// per-process random keys (and changes them for every instance), which
/// makes its output a keyed PRF: good enough for a DNS ID, without an extra
/// dependency or `unsafe` for getrandom(2).
fn random_u16() -> u16 {
    (RandomState::new().build_hasher().finish() & 0xffff) as u16
}

/// Whether `bytes` answer our query: right ID, a response, same question.
fn check_reply(bytes: &[u8], our_id: u16, req: &Message) -> Option<(Message, ResponseCode)> {
    let resp = Message::from_vec(bytes).ok()?;
    if resp.id() != our_id
        || resp.message_type() != MessageType::Response
        || resp.queries() != req.queries()
    {
        return None;
    }
    let rcode = resp.response_code();
    Some((resp, rcode))
}

/// One upstream: UDP, then TCP when the UDP reply is truncated.
async fn ask_upstream(
    upstream: SocketAddr,
    query: &[u8],
    our_id: u16,
    req: &Message,
) -> io::Result<(Vec<u8>, ResponseCode)> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    // connect() makes the kernel discard datagrams from anyone else, and
    // reports ICMP port-unreachable as an error so we move on at once.
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Garbage or a stale reply: keep waiting for the real one (the
        // caller's timeout bounds this loop).
        if let Some((resp, rcode)) = check_reply(&buf[..n], our_id, req) {
            if !resp.truncated() {
                buf.truncate(n);
                return Ok((buf, rcode));
            }
            break;
        }
    }
    drop(sock);

    // Truncated: ask the same upstream again over TCP.

    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    match check_reply(&reply, our_id, req) {
        Some((_, rcode)) => Ok((reply, rcode)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TCP reply does not match the query",
        )),
    }
}

/// The UDP and TCP tasks serving one gateway address. Dropping the handles
/// does not stop them; [`Listener::abort`] does, and with them every
/// connection and forwarded query they own (those live in `JoinSet`s inside
/// the tasks).
struct Listener {
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl Listener {
    async fn open(shared: &Arc<Shared>, gateway: Ipv4Addr) -> io::Result<Self> {
        let addr = SocketAddrV4::new(gateway, shared.port);
        let udp = bind_udp(addr)?;
        let tcp = bind_tcp(addr)?;
        Ok(Self {
            udp: tokio::spawn(udp_loop(shared.clone(), gateway, Arc::new(udp))),
            tcp: tokio::spawn(tcp_loop(shared.clone(), gateway, tcp)),
        })
    }

    fn abort(&self) {
        self.udp.abort();
        self.tcp.abort();
    }

    /// Stop both tasks and wait until their sockets are closed, so the
    /// address can be bound again as soon as this returns.
    async fn close(self) {
        self.abort();
        let _ = self.udp.await;
        let _ = self.tcp.await;
    }
}

/// A socket of `ty` bound to `addr` with IP_FREEBIND: the bind succeeds
/// even when no interface holds the address yet (bridge not created, or
/// being recreated), and starts receiving as soon as one does.
fn bound_socket(addr: SocketAddrV4, ty: SockType) -> io::Result<std::os::fd::OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if ty == SockType::Stream {
        // Rebinding right after a close must not fail because of old
        // connections in TIME_WAIT. (Not set on UDP, where it would let a
        // second server silently share the port.)
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(fd)
}

fn bind_udp(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let fd = bound_socket(addr, SockType::Datagram)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

fn bind_tcp(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let fd = bound_socket(addr, SockType::Stream)?;
    listen(&fd, Backlog::new(128)?)?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// Pause after an error from accept/recv that is not about one packet
/// (EMFILE, ENOBUFS), so the loop does not spin on it.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

async fn udp_loop(shared: Arc<Shared>, gateway: Ipv4Addr, sock: Arc<UdpSocket>) {
    let mut forwards = JoinSet::new();
    let mut buf = vec![0u8; UDP_QUERY_BUF];
    loop {
        tokio::select! {
            received = sock.recv_from(&mut buf) => {
                let (n, src) = match received {
                    Ok(r) => r,
                    Err(err) => {
                        debug!(%gateway, %err, "udp receive failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                match shared.prepare(gateway, src, &buf[..n], true) {
                    Step::Reply(reply) => {
                        if let Err(err) = sock.send_to(&reply, src).await {
                            debug!(%src, %err, "udp send failed");
                        }
                    }
                    Step::Forward(req) => {
                        let Some(permit) = take_permit(&shared, src) else { continue };
                        let packet = buf[..n].to_vec();
                        let (shared, sock) = (shared.clone(), sock.clone());
                        forwards.spawn(async move {
                            let _permit = permit;
                            if let Some(reply) = shared.forward(&req, &packet, true).await
                                && let Err(err) = sock.send_to(&reply, src).await
                            {
                                debug!(%src, %err, "udp send failed");
                            }
                        });
                    }
                    Step::Drop => {}
                }
            }
            // Reap finished forwards so the set does not grow.
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

fn take_permit(shared: &Shared, src: SocketAddr) -> Option<OwnedSemaphorePermit> {
    match shared.in_flight.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => {
            shared.drop_packet("too many queries in flight", src);
            None
        }
    }
}

async fn tcp_loop(shared: Arc<Shared>, gateway: Ipv4Addr, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, src) = match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        debug!(%gateway, %err, "tcp accept failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                // Strangers must not hold one of the few connection slots
                // for the idle timeout: refuse them before reading anything.
                if !shared.allowed(gateway, src) {
                    shared.drop_packet("source outside the network", src);
                    continue;
                }
                if conns.len() >= MAX_TCP_CONNECTIONS {
                    shared.drop_packet("too many tcp connections", src);
                    continue;
                }
                conns.spawn(tcp_conn(shared.clone(), gateway, stream, src));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn tcp_conn(shared: Arc<Shared>, gateway: Ipv4Addr, mut stream: TcpStream, src: SocketAddr) {
    loop {
        // The idle timeout covers the whole message, so a client trickling
        // bytes cannot hold the connection either.
        let read = async {
            let len = stream.read_u16().await?;
            let mut packet = vec![0u8; usize::from(len)];
            stream.read_exact(&mut packet).await?;
            io::Result::Ok(packet)
        };
        let packet = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => return,
        };
        let reply = match shared.prepare(gateway, src, &packet, false) {
            Step::Reply(reply) => reply,
            Step::Forward(req) => {
                let Some(_permit) = take_permit(&shared, src) else {
                    continue;
                };
                match shared.forward(&req, &packet, false).await {
                    Some(reply) => reply,
                    None => continue,
                }
            }
            // A stranger gets no more reads; junk on a good connection is
            // skipped like a junk datagram.
            Step::Drop if shared.allowed(gateway, src) => continue,
            Step::Drop => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// The embedded DNS server of all networks on this host.
pub struct DnsServer {
    shared: Arc<Shared>,
    /// Listeners by gateway. The async mutex also serialises `update`s.
    listeners: Mutex<HashMap<Ipv4Addr, Listener>>,
}

impl DnsServer {
    /// A server with no zones yet, forwarding unknown names to `upstreams`
    /// (use [`parse_upstream`] for addresses given without a port).
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self::with_port(upstreams, DEFAULT_PORT)
    }

    /// Like [`DnsServer::new`], listening on `port` instead of 53 (tests,
    /// benchmarks, running unprivileged).
    pub fn with_port(upstreams: Vec<SocketAddr>, port: u16) -> Self {
        Self {
            shared: Arc::new(Shared {
                port,
                zones: RwLock::new(Arc::new(HashMap::new())),
                upstreams: RwLock::new(Arc::new(upstreams)),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                counters: Counters::default(),
            }),
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// Install a new set of zones. Listeners (UDP+TCP on gateway:port) are
    /// opened for new gateways, closed for removed ones, and left untouched
    /// (no gap, open TCP connections kept) for unchanged ones; records of
    /// all zones are swapped at once. Must be called on a tokio runtime.
    ///
    /// Two zones with the same gateway are an error and change nothing. A
    /// listener that cannot be opened (port taken) does not stop the others:
    /// the records are installed, the other listeners opened and closed,
    /// and the error names the failed gateways; the next `update` retries
    /// them.
    pub async fn update(&self, zones: Vec<Zone>) -> anyhow::Result<()> {
        let mut table = HashMap::with_capacity(zones.len());
        for zone in &zones {
            if table
                .insert(zone.gateway, Arc::new(ZoneData::build(zone)))
                .is_some()
            {
                bail!("two networks use the gateway {}", zone.gateway);
            }
        }
        let mut listeners = self.listeners.lock().await;
        // Records first: new listeners answer from their first packet, and
        // removed gateways stop answering before their sockets go.
        *self.shared.zones.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);

        let removed: Vec<Ipv4Addr> = listeners
            .keys()
            .filter(|gw| !zones.iter().any(|z| z.gateway == **gw))
            .copied()
            .collect();
        for gateway in removed {
            if let Some(listener) = listeners.remove(&gateway) {
                listener.close().await;
                info!(%gateway, "dns listener closed");
            }
        }

        let mut failed = Vec::new();
        for zone in &zones {
            if listeners.contains_key(&zone.gateway) {
                continue;
            }
            match Listener::open(&self.shared, zone.gateway).await {
                Ok(listener) => {
                    info!(gateway = %zone.gateway, network = %zone.network, port = self.shared.port, "dns listener opened");
                    listeners.insert(zone.gateway, listener);
                }
                Err(err) => {
                    warn!(gateway = %zone.gateway, %err, "cannot open dns listener");
                    failed.push(format!("{}:{} ({err})", zone.gateway, self.shared.port));
                }
            }
        }
        if !failed.is_empty() {
            bail!("cannot listen for DNS on {}", failed.join(", "));
        }
        Ok(())
    }

    /// Replace the forwarders; queries already being forwarded finish with
    /// the old list.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self
            .shared
            .upstreams
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(upstreams);
    }

    /// The addresses being listened on (UDP and TCP each).
    pub async fn listening(&self) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().await;
        let mut addrs: Vec<SocketAddr> = listeners
            .keys()
            .map(|gw| SocketAddr::from((*gw, self.shared.port)))
            .collect();
        addrs.sort();
        addrs
    }

    /// Close every listener, connection and forwarded query, and wait until
    /// the sockets are closed.
    pub async fn shutdown(self) {
        let listeners = std::mem::take(&mut *self.listeners.lock().await);
        for (_, listener) in listeners {
            listener.close().await;
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            answered: c.answered.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DnsServer {
    /// Dropping without `shutdown` still stops the tasks (they would
    /// otherwise keep serving with nobody able to update them); the sockets
    /// close as soon as the runtime gets to the cancelled tasks.
    fn drop(&mut self) {
        for listener in self.listeners.get_mut().values() {
            listener.abort();
        }
    }
}

/// An upstream as written in resolv.conf or a config file: `1.1.1.1`,
/// `1.1.1.1:5353`, `2606:4700::1111`, `[2606:4700::1111]:53`; port 53 when
/// none is given.
pub fn parse_upstream(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("not an address or address:port: {text:?}"))?;
    Ok(SocketAddr::new(ip, DEFAULT_PORT))
}

/// The `nameserver` lines of a resolv.conf, port 53. The agent runs in the
/// host's namespace, so a loopback stub such as systemd-resolved's
/// 127.0.0.53 is a usable upstream here (unlike inside a container).
/// IPv6 link-local addresses with a zone (`fe80::1%eth0`) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Everything runs on 127.0.0.0/8 with an unprivileged port. Each test
    //! uses its own 127.0.N.x addresses so tests can run in parallel.

    use super::*;
    use crate::core::dns::Member;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpSocket;

    const PORT: u16 = 15353;
    const WAIT: Duration = Duration::from_secs(3);
    /// How long to wait before concluding that no reply is coming.
    const SILENCE: Duration = Duration::from_millis(300);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn member(name: &str, aliases: &[&str], ipv4: &str, ipv6: Option<&str>) -> Member {
        Member {
            name: name.to_string(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ipv4: ip(ipv4),
            ipv6: ipv6.map(|v6| v6.parse().expect("test address")),
        }
    }

    fn zone(network: &str, gateway: &str, subnet: &str, members: Vec<Member>) -> Zone {
        Zone {
            network: network.to_string(),
            gateway: ip(gateway),
            subnet: subnet.parse().expect("test subnet"),
            members,
        }
    }

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
        sock.send_to(packet, (server, PORT)).await.expect("send");
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
        sock.connect((server, PORT).into()).await.expect("connect")
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
        let server = DnsServer::with_port(vec![], PORT);
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
        let server = DnsServer::with_port(vec![], PORT);
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
        let udp = UdpSocket::bind((addr, PORT))
            .await
            .expect("bind fake upstream");
        let tcp = TcpListener::bind((addr, PORT))
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
        SocketAddr::from((ip(addr), PORT))
    }

    #[tokio::test]
    async fn forwards_unknown_names_upstream() {
        let gw = ip("127.0.8.1");
        let client = ip("127.0.8.100");
        let good = fake_upstream(ip("127.0.9.1"), Upstream::Answer).await;
        let tc = fake_upstream(ip("127.0.9.2"), Upstream::TruncateUdp).await;
        let server = DnsServer::with_port(vec![up("127.0.9.1")], PORT);
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

        // Nobody at the first upstream (port unreachable): next one, fast.
        server.set_upstreams(vec![up("127.0.9.9"), up("127.0.9.1")]);
        let started = Instant::now();
        let resp = udp_ask(client, gw, "example.org.", RecordType::A)
            .await
            .expect("reply");
        assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        // Our own listener as upstream would loop: skipped, SERVFAIL.
        server.set_upstreams(vec![SocketAddr::from((gw, PORT))]);
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
    async fn servfail_when_upstream_is_silent() {
        let gw = ip("127.0.10.1");
        let silent = fake_upstream(ip("127.0.10.53"), Upstream::Silent).await;
        let server = DnsServer::with_port(vec![up("127.0.10.53")], PORT);
        server
            .update(vec![zone("n", "127.0.10.1", "127.0.10.0/24", vec![])])
            .await
            .expect("update");
        let started = Instant::now();
        let resp = udp_ask(ip("127.0.10.100"), gw, "example.com.", RecordType::A)
            .await
            .expect("reply");
        let took = started.elapsed();
        assert_eq!(resp.response_code(), ResponseCode::ServFail);
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert_eq!(silent.load(Ordering::SeqCst), 1);
        assert_eq!(server.stats().failed, 1);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_packets_are_dropped() {
        let gw = ip("127.0.11.1");
        let client = ip("127.0.11.100");
        let server = DnsServer::with_port(vec![], PORT);
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
        let server = DnsServer::with_port(vec![], PORT);
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
            vec![SocketAddr::from((a, PORT)), SocketAddr::from((b, PORT))]
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
            vec![SocketAddr::from((a, PORT)), SocketAddr::from((c, PORT))]
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
        let probe = bind_udp(SocketAddrV4::new(b, PORT)).expect("b's port was released");
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
        drop(bind_udp(SocketAddrV4::new(a, PORT)).expect("a's port was released"));
        drop(bind_tcp(SocketAddrV4::new(c, PORT)).expect("c's port was released"));
    }

    #[tokio::test]
    async fn listens_on_addresses_not_yet_assigned() {
        // 198.51.100.1 (TEST-NET-2) is on no interface here; IP_FREEBIND
        // lets the listener exist before the bridge does. Nothing is sent.
        let server = DnsServer::with_port(vec![], PORT);
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
        let taken = UdpSocket::bind((ip("127.0.15.1"), PORT))
            .await
            .expect("bind");
        let server = DnsServer::with_port(vec![], PORT);
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
    fn reverse_names() {
        let v4 = |s: &str| parse_reverse(&name(s));
        assert_eq!(
            v4("4.3.2.1.in-addr.arpa."),
            Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)))
        );
        assert_eq!(
            v4("4.3.2.1.IN-ADDR.ARPA"),
            Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)))
        );
        assert_eq!(v4("3.2.1.in-addr.arpa."), None);
        assert_eq!(v4("256.3.2.1.in-addr.arpa."), None);
        assert_eq!(v4("04.3.2.1.in-addr.arpa."), None);
        assert_eq!(v4("x.3.2.1.in-addr.arpa."), None);
        assert_eq!(v4("4.3.2.1.example."), None);
        let addr: Ipv6Addr = "2001:db8::abcd".parse().expect("v6");
        assert_eq!(
            parse_reverse(&Name::from(IpAddr::V6(addr))),
            Some(IpAddr::V6(addr))
        );
        assert_eq!(v4("b.a.ip6.arpa."), None);
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
}
