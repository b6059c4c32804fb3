//! The wire format: a DNS message to the core's [`Question`], the core's
//! [`Answer`] back to a reply, and fitting a reply to its transport.

use hickory_proto::op::{Edns, Header, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use crate::core::dns::{Data, QType, Question, Rcode, lookup_key};

use super::wire::{EDNS_PAYLOAD, MAX_UDP_REPLY};

/// The core's view of `query`; its name in lookup form is written to
/// `key` (a buffer reused between queries).
pub(super) fn question<'k>(query: &Query, key: &'k mut String) -> Question<'k> {
    lookup_key(query.name().iter(), key);
    Question {
        name: key,
        qtype: QType::from_code(u16::from(query.query_type())),
        class_in: query.query_class() == DNSClass::IN,
    }
}

/// The records of a local answer, owned by the question's name, TTL 0.
/// A PTR target the core holds is always a valid name; one that would
/// not parse is left out rather than failing the whole reply.
pub(super) fn records(name: &Name, data: &[Data<'_>]) -> Vec<Record> {
    data.iter()
        .filter_map(|d| {
            let rdata = match d {
                Data::A(a) => RData::A(A(*a)),
                Data::Aaaa(a) => RData::AAAA(AAAA(*a)),
                Data::Ptr(t) => RData::PTR(PTR(Name::from_ascii(t).ok()?)),
            };
            Some(Record::from_rdata(name.clone(), 0, rdata))
        })
        .collect()
}

pub(super) fn rcode(r: Rcode) -> ResponseCode {
    match r {
        Rcode::NoError => ResponseCode::NoError,
        Rcode::NxDomain => ResponseCode::NXDomain,
    }
}

/// A reply skeleton for `req`: same ID, question, RD and CD; RA set; an OPT
/// record when the query had one.
pub(super) fn response_for(req: &Message, rcode: ResponseCode) -> Message {
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
pub(super) fn fit(bytes: Vec<u8>, req: &Message, udp: bool) -> Option<Vec<u8>> {
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
