//! State shared by every listener, and the synchronous part of serving a
//! packet: source check, parse, local answer, cached forwarded answer.
//!
//! The records are an immutable [`Index`] swapped whole by each update. A
//! listener keeps its own [`Snapshot`] of it and only looks at the shared
//! one when the generation counter moved: serving a packet takes no lock
//! and touches no shared reference count. The common query is read and
//! answered straight from and into bytes ([`wire`]), into buffers the
//! listener reuses; the rest goes through hickory ([`codec`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use tokio::sync::Semaphore;
use tracing::debug;

use super::cache::{self, Cache};
use super::{codec, wire};
use crate::core::dns::{Answer, Index, Question};

#[derive(Default)]
pub(super) struct Counters {
    pub(super) answered: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) cached: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) dropped: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The decision for one packet, made synchronously.
pub(super) enum Step {
    /// The reply is in the scratch buffer's `out`.
    Reply,
    /// Ask upstream: the host's upstreams, or the asker's own `dns`
    /// servers when it has some.
    Forward(Message, Option<Arc<[SocketAddr]>>),
    Drop,
}

pub(super) struct Shared {
    pub(super) port: u16,
    index: RwLock<Arc<Index>>,
    /// Bumped after every swap of `index`.
    generation: AtomicU64,
    pub(super) upstreams: RwLock<Arc<Vec<SocketAddr>>>,
    /// Forwarded queries in flight, all networks together.
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) cache: Cache,
    pub(super) counters: Counters,
}

/// One listener's view of the records and its reusable buffers.
pub(super) struct Scratch {
    generation: u64,
    index: Arc<Index>,
    key: String,
    /// The reply of [`Step::Reply`].
    pub(super) out: Vec<u8>,
}

impl Shared {
    pub(super) fn new(port: u16, upstreams: Vec<SocketAddr>, in_flight: usize) -> Self {
        Shared {
            port,
            index: RwLock::new(Arc::new(Index::default())),
            generation: AtomicU64::new(0),
            upstreams: RwLock::new(Arc::new(upstreams)),
            in_flight: Arc::new(Semaphore::new(in_flight)),
            cache: Cache::default(),
            counters: Counters::default(),
        }
    }

    pub(super) fn index(&self) -> Arc<Index> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc;
        // the Arc inside is still whole, so keep serving.
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs new records; listeners pick them up with their next packet.
    pub(super) fn swap(&self, index: Index) {
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(super) fn scratch(&self) -> Scratch {
        Scratch {
            generation: self.generation.load(Ordering::Acquire),
            index: self.index(),
            key: String::with_capacity(256),
            out: Vec::with_capacity(512),
        }
    }

    /// Brings `s` up to the current records when they changed.
    fn refresh(&self, s: &mut Scratch) {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != s.generation {
            s.generation = generation;
            s.index = self.index();
        }
    }

    /// Whether `src` may query the listener on `gateway` (inside its subnet).
    pub(super) fn allowed(&self, gateway: IpAddr, src: SocketAddr) -> bool {
        self.index().view(gateway, src.ip()).is_some()
    }

    pub(super) fn drop_packet(&self, why: &str, src: SocketAddr) -> Step {
        debug!(%src, why, "dns packet dropped");
        Counters::bump(&self.counters.dropped);
        Step::Drop
    }

    /// Everything that can be decided without waiting: source check, parse,
    /// local answer, a kept forwarded answer. Only names that need an
    /// upstream come back as `Forward`.
    pub(super) fn prepare(
        &self,
        s: &mut Scratch,
        gateway: IpAddr,
        src: SocketAddr,
        packet: &[u8],
        udp: bool,
    ) -> Step {
        self.refresh(s);
        let Scratch {
            index, key, out, ..
        } = s;
        let Some(view) = index.view(gateway, src.ip()) else {
            return self.drop_packet("source outside the network, or no zone here", src);
        };
        let Some(query) = wire::parse(packet) else {
            return self.prepare_general(index, key, out, gateway, src, packet, udp);
        };
        query.key(packet, key);
        let question = Question {
            name: key,
            qtype: query.qtype(),
            class_in: query.class_in(),
        };
        match index.answer(&view, &question) {
            Answer::Local { rcode, records } => {
                query.reply(packet, rcode, &records, udp, out);
                Counters::bump(&self.counters.answered);
                Step::Reply
            }
            Answer::Forward => {
                // A container with its own servers may see other answers
                // than the host's upstreams give: never from the shared
                // cache.
                if let Some(own) = index.servers(&view) {
                    return match Message::from_vec(packet) {
                        Ok(req) => Step::Forward(req, Some(own)),
                        Err(_) => self.drop_packet("malformed", src),
                    };
                }
                let cache_key = cache::Key {
                    name: key,
                    qtype: query.qtype,
                    qclass: query.qclass,
                    edns: query.edns.is_some(),
                };
                if self.cache.get(&cache_key, Instant::now(), out)
                    && query.copy_question(packet, out)
                    && fits(out, query.edns, udp)
                {
                    out[..2].copy_from_slice(&packet[..2]);
                    Counters::bump(&self.counters.cached);
                    return Step::Reply;
                }
                match Message::from_vec(packet) {
                    Ok(req) => Step::Forward(req, None),
                    Err(_) => self.drop_packet("malformed", src),
                }
            }
        }
    }

    /// The general path, for what [`wire::parse`] leaves: hickory parses,
    /// judges and encodes.
    #[allow(clippy::too_many_arguments)]
    fn prepare_general(
        &self,
        index: &Index,
        key: &mut String,
        out: &mut Vec<u8>,
        gateway: IpAddr,
        src: SocketAddr,
        packet: &[u8],
        udp: bool,
    ) -> Step {
        let Some(view) = index.view(gateway, src.ip()) else {
            return self.drop_packet("source outside the network, or no zone here", src);
        };
        let Ok(req) = Message::from_vec(packet) else {
            return self.drop_packet("malformed", src);
        };
        // Never answer responses: two servers must not be able to bounce
        // packets between them forever.
        if req.message_type() != MessageType::Query {
            return self.drop_packet("not a query", src);
        }
        let mut resp = if req.op_code() != OpCode::Query {
            codec::response_for(&req, ResponseCode::NotImp)
        } else if req.queries().len() != 1 {
            codec::response_for(&req, ResponseCode::FormErr)
        } else {
            let query = &req.queries()[0];
            match index.answer(&view, &codec::question(query, key)) {
                Answer::Local { rcode, records } => {
                    let mut resp = codec::response_for(&req, codec::rcode(rcode));
                    resp.insert_answers(codec::records(query.name(), &records));
                    resp
                }
                Answer::Forward => return Step::Forward(req, index.servers(&view)),
            }
        };
        resp.set_authoritative(true);
        match resp.to_vec().ok().and_then(|b| codec::fit(b, &req, udp)) {
            Some(bytes) => {
                *out = bytes;
                Counters::bump(&self.counters.answered);
                Step::Reply
            }
            None => self.drop_packet("reply could not be encoded", src),
        }
    }

    /// Upstreams to try: the configured ones, minus our own listeners (a
    /// gateway configured as upstream would forward to itself forever).
    pub(super) fn upstreams(&self, own: Option<&[SocketAddr]>) -> Vec<SocketAddr> {
        let configured = self
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = own.unwrap_or(&configured);
        let index = self.index();
        all.iter()
            .copied()
            .filter(|up| !(up.port() == self.port && index.serves(up.ip())))
            .collect()
    }
}

/// Whether a kept reply fits the asker's transport (else it is asked
/// upstream again, which fits or truncates it properly).
fn fits(reply: &[u8], edns: Option<u16>, udp: bool) -> bool {
    let limit = if udp {
        edns.map_or(512, |e| usize::from(e).clamp(512, wire::MAX_UDP_REPLY))
    } else {
        usize::from(u16::MAX)
    };
    reply.len() <= limit
}
