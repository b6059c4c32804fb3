//! Forwarding to the upstream servers: UDP first (retried over TCP when
//! the reply is truncated), each upstream in turn, within a total budget of
//! [`FORWARD_TIMEOUT`]; SERVFAIL when no upstream gives a usable answer.
//! Forwarded queries use a fresh socket (random source port) and a fresh
//! random query ID, and replies are checked for ID and question before
//! being relayed.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

use super::codec::{fit, response_for};
use super::server::{Counters, Shared};
use super::{FORWARD_TIMEOUT, cache};
use crate::core::dns::lookup_key;

impl Shared {
    /// Relay `req` (whose wire form is `packet`) upstream; the reply bytes
    /// for the client, SERVFAIL when no upstream helped.
    /// `own`: the asker's own servers (`dns`), whose answers are not
    /// kept for others.
    pub(super) async fn forward(
        &self,
        req: &Message,
        packet: &[u8],
        udp: bool,
        own: Option<&[SocketAddr]>,
    ) -> Option<Vec<u8>> {
        let upstreams = self.upstreams(own);
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
                    if own.is_none() {
                        self.keep(req, &bytes, rcode);
                    }
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

impl Shared {
    /// Keeps an upstream's usable, complete reply for its TTL.
    fn keep(&self, req: &Message, reply: &[u8], rcode: ResponseCode) {
        let [query] = req.queries() else { return };
        let truncated = reply.get(2).is_none_or(|flags| flags & 0x02 != 0);
        if truncated || !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            return;
        }
        let mut name = String::new();
        lookup_key(query.name().iter(), &mut name);
        let key = cache::Key {
            name: &name,
            qtype: u16::from(query.query_type()),
            qclass: u16::from(query.query_class()),
            edns: req.extensions().is_some(),
        };
        self.cache.put(&key, reply, std::time::Instant::now());
    }
}

/// An unpredictable 16-bit value. `RandomState` keys SipHash with secret
/// per-process random keys (and changes them for every instance), which
/// makes its output a keyed PRF: good enough for a DNS ID, without an extra
/// dependency or `unsafe` for getrandom(2).
pub(super) fn random_u16() -> u16 {
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
pub(super) async fn ask_upstream(
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
