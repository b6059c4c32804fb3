//! State shared by every listener, and the synchronous part of serving a
//! packet: source check, parse, local answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use tokio::sync::Semaphore;
use tracing::debug;

use super::codec;
use crate::core::dns::{Answer, Index};

#[derive(Default)]
pub(super) struct Counters {
    pub(super) answered: AtomicU64,
    pub(super) forwarded: AtomicU64,
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
    Reply(Vec<u8>),
    Forward(Message),
    Drop,
}

pub(super) struct Shared {
    pub(super) port: u16,
    pub(super) index: RwLock<Arc<Index>>,
    pub(super) upstreams: RwLock<Arc<Vec<SocketAddr>>>,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) counters: Counters,
}

impl Shared {
    pub(super) fn index(&self) -> Arc<Index> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc;
        // the Arc inside is still whole, so keep serving.
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `src` may query the listener on `gateway` (inside its subnet).
    pub(super) fn allowed(&self, gateway: Ipv4Addr, src: SocketAddr) -> bool {
        self.index().view(gateway, src.ip()).is_some()
    }

    pub(super) fn drop_packet(&self, why: &str, src: SocketAddr) -> Step {
        debug!(%src, why, "dns packet dropped");
        Counters::bump(&self.counters.dropped);
        Step::Drop
    }

    /// Everything that can be decided without waiting: source check, parse,
    /// local answer. Only names that need an upstream come back as `Forward`.
    pub(super) fn prepare(
        &self,
        gateway: Ipv4Addr,
        src: SocketAddr,
        packet: &[u8],
        udp: bool,
    ) -> Step {
        let index = self.index();
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
            let mut key = String::new();
            match index.answer(&view, &codec::question(query, &mut key)) {
                Answer::Local { rcode, records } => {
                    let mut resp = codec::response_for(&req, codec::rcode(rcode));
                    resp.insert_answers(codec::records(query.name(), &records));
                    resp
                }
                Answer::Forward => return Step::Forward(req),
            }
        };
        resp.set_authoritative(true);
        match resp.to_vec().ok().and_then(|b| codec::fit(b, &req, udp)) {
            Some(bytes) => {
                Counters::bump(&self.counters.answered);
                Step::Reply(bytes)
            }
            None => self.drop_packet("reply could not be encoded", src),
        }
    }

    /// Upstreams to try: the configured ones, minus our own listeners (a
    /// gateway configured as upstream would forward to itself forever).
    pub(super) fn upstreams(&self) -> Vec<SocketAddr> {
        let all = self
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let index = self.index();
        all.iter()
            .copied()
            .filter(|up| match up {
                SocketAddr::V4(v4) => !(v4.port() == self.port && index.serves(*v4.ip())),
                SocketAddr::V6(_) => true,
            })
            .collect()
    }
}
