//! The fast path of the wire format: the common query (one question, an
//! optional EDNS OPT record, nothing else) is read and answered straight
//! from and into bytes, without building a hickory `Message` (which
//! allocates for every name, record and section). Anything else (other
//! opcodes, several questions, compressed or odd names, EDNS versions
//! other than 0, trailing bytes) returns `None` and takes the general path
//! in [`super::codec`], which has the last word on what is valid.
//!
//! Replies built here carry what the general path's do: the query's ID,
//! opcode, RD and CD; QR, AA and RA set; the question copied verbatim (case
//! included); answers owned by a pointer to the question's name, TTL 0; an
//! OPT record advertising [`EDNS_PAYLOAD`] when the query had one.

use crate::core::dns::{Data, QType, Rcode, lookup_key};

/// UDP payload we advertise in EDNS replies (the DNS flag day 2020 value,
/// which avoids IP fragmentation). Same as the general path.
pub(super) const EDNS_PAYLOAD: u16 = 1232;
/// Ceiling on the client's advertised EDNS payload we honour over UDP.
pub(super) const MAX_UDP_REPLY: usize = 4096;

const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A query read by [`parse`]: offsets into the packet it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Query {
    /// End of the question section (name, type, class).
    question_end: usize,
    /// The question's type and class.
    pub(super) qtype: u16,
    pub(super) qclass: u16,
    /// The client's advertised UDP payload when it sent an OPT record.
    pub(super) edns: Option<u16>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads a plain query; `None` for anything the fast path leaves to the
/// general one.
pub(super) fn parse(p: &[u8]) -> Option<Query> {
    if p.len() < HEADER {
        return None;
    }
    let flags = u16_at(p, 2)?;
    let (qd, an, ns, ar) = (u16_at(p, 4)?, u16_at(p, 6)?, u16_at(p, 8)?, u16_at(p, 10)?);
    // QR=0 (a query), opcode 0 (QUERY), TC=0; one question, no answers or
    // authority, at most the OPT record.
    if flags & 0xfa00 != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut at = HEADER;
    let mut name_len = 1;
    loop {
        let len = usize::from(*p.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Pointers (0xc0) and the reserved label types (0x40, 0x80) are
        // the general path's to judge.
        if len > 63 {
            return None;
        }
        name_len += len + 1;
        if name_len > 255 {
            return None;
        }
        p.get(at..at + len)?;
        at += len;
    }
    let qtype = u16_at(p, at)?;
    let qclass = u16_at(p, at + 2)?;
    let question_end = at + 4;
    let mut edns = None;
    let mut end = question_end;
    if ar == 1 {
        // OPT: root name, type 41, class = payload size, TTL = extended
        // rcode, version, flags; then its options, skipped.
        if *p.get(end)? != 0 || u16_at(p, end + 1)? != TYPE_OPT {
            return None;
        }
        let payload = u16_at(p, end + 3)?;
        let version = *p.get(end + 6)?;
        if version != 0 {
            return None;
        }
        let rdlen = usize::from(u16_at(p, end + 9)?);
        end += 11 + rdlen;
        edns = Some(payload);
    }
    if end != p.len() {
        return None;
    }
    Some(Query {
        question_end,
        qtype,
        qclass,
        edns,
    })
}

impl Query {
    /// The question's labels.
    fn labels<'p>(&self, p: &'p [u8]) -> impl Iterator<Item = &'p [u8]> {
        let mut at = HEADER;
        std::iter::from_fn(move || {
            let len = usize::from(*p.get(at)?);
            if len == 0 {
                return None;
            }
            let label = p.get(at + 1..at + 1 + len)?;
            at += 1 + len;
            Some(label)
        })
    }

    /// Writes the question's name in lookup form into `key`.
    pub(super) fn key(&self, p: &[u8], key: &mut String) {
        lookup_key(self.labels(p), key);
    }

    pub(super) fn qtype(&self) -> QType {
        QType::from_code(self.qtype)
    }

    pub(super) fn class_in(&self) -> bool {
        self.qclass == CLASS_IN
    }

    /// The largest UDP reply the client said it can take.
    fn udp_limit(&self) -> usize {
        self.edns
            .map_or(512, |e| usize::from(e).clamp(512, MAX_UDP_REPLY))
    }

    /// The reply to this query (`packet`) into `out` (cleared first):
    /// `records` under `rcode`, or, when that does not fit the transport,
    /// an empty reply with TC set.
    pub(super) fn reply(
        &self,
        packet: &[u8],
        rcode: Rcode,
        records: &[Data<'_>],
        udp: bool,
        out: &mut Vec<u8>,
    ) {
        let limit = if udp {
            self.udp_limit()
        } else {
            usize::from(u16::MAX)
        };
        let rcode = match rcode {
            Rcode::NoError => 0,
            Rcode::NxDomain => 3,
        };
        self.head(packet, rcode, false, records.len(), out);
        for r in records {
            // The owner is the question's name: a pointer to offset 12.
            out.extend_from_slice(&[0xc0, HEADER as u8]);
            let (rtype, rdlen_at) = match r {
                Data::A(_) => (1u16, out.len() + 8),
                Data::Aaaa(_) => (28, out.len() + 8),
                Data::Ptr(_) => (12, out.len() + 8),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            match r {
                Data::A(a) => out.extend_from_slice(&a.octets()),
                Data::Aaaa(a) => out.extend_from_slice(&a.octets()),
                Data::Ptr(target) => push_name(out, target),
            }
            let rdlen = (out.len() - rdlen_at - 2) as u16;
            out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        }
        self.tail(out);
        if out.len() > limit {
            self.head(packet, 0, true, 0, out);
            self.tail(out);
        }
    }

    /// Header and question of a reply, into `out` (cleared first).
    fn head(&self, packet: &[u8], rcode: u8, truncated: bool, answers: usize, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&packet[..2]);
        // QR, the query's opcode (0) and RD; AA; TC when truncated.
        let rd = packet[2] & 0x01;
        let tc = if truncated { 0x02 } else { 0 };
        out.push(0x80 | 0x04 | tc | rd);
        // RA, the query's CD, the rcode.
        let cd = packet[3] & 0x10;
        out.push(0x80 | cd | (rcode & 0x0f));
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(answers as u16).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&u16::from(self.edns.is_some()).to_be_bytes());
        out.extend_from_slice(&packet[HEADER..self.question_end]);
    }

    /// The OPT record, when the query had one.
    fn tail(&self, out: &mut Vec<u8>) {
        if self.edns.is_some() {
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
        }
    }

    /// Copies this query's question (case included) over the question of
    /// `reply`, which asks the same name in another case. False when the
    /// reply's question is not where it should be.
    pub(super) fn copy_question(&self, packet: &[u8], reply: &mut [u8]) -> bool {
        match reply.get_mut(HEADER..self.question_end) {
            Some(q) => {
                q.copy_from_slice(&packet[HEADER..self.question_end]);
                true
            }
            None => false,
        }
    }
}

/// An absolute name (`web.`) as uncompressed labels. Names in the index
/// are valid (checked when it was built).
fn push_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The offsets of the TTL fields of every record of a reply (answer,
/// authority, additional; not the OPT record's, which holds flags), and
/// the smallest TTL among them; `None` when the reply cannot be walked.
/// Used to cache forwarded replies and age their TTLs.
pub(super) fn ttls(p: &[u8]) -> Option<(Vec<usize>, u32)> {
    if p.len() < HEADER {
        return None;
    }
    let qd = u16_at(p, 4)?;
    let records = u32::from(u16_at(p, 6)?) + u32::from(u16_at(p, 8)?) + u32::from(u16_at(p, 10)?);
    let mut at = HEADER;
    for _ in 0..qd {
        at = skip_name(p, at)? + 4;
    }
    let mut offsets = Vec::new();
    let mut min = u32::MAX;
    for _ in 0..records {
        at = skip_name(p, at)?;
        let rtype = u16_at(p, at)?;
        let ttl_at = at + 4;
        let ttl = u32::from_be_bytes(p.get(ttl_at..ttl_at + 4)?.try_into().ok()?);
        let rdlen = usize::from(u16_at(p, at + 8)?);
        if rtype != TYPE_OPT {
            offsets.push(ttl_at);
            min = min.min(ttl);
        }
        at += 10 + rdlen;
    }
    (at == p.len()).then_some((offsets, min))
}

/// The offset just past a name at `at` (labels, ending at the root or at
/// a compression pointer).
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *p.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                p.get(at + 1)?;
                return Some(at + 2);
            }
            l if l > 63 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every reply is read back by hickory: the fast path must produce
    //! what the general path would.

    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

    use super::*;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(0xbeef)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .set_checking_disabled(true)
            .add_query(HQuery::query(Name::from_ascii(name).expect("name"), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            msg.set_edns(e);
        }
        msg.to_vec().expect("encode")
    }

    #[test]
    fn reads_plain_queries_and_leaves_the_rest() {
        let p = query("Web.Green.", RecordType::AAAA, None);
        let q = parse(&p).expect("plain query");
        assert_eq!(q.qtype(), QType::Aaaa);
        assert!(q.class_in());
        assert_eq!(q.edns, None);
        let mut key = String::new();
        q.key(&p, &mut key);
        assert_eq!(key, "web.green");
        let p = query("web.", RecordType::A, Some(4096));
        assert_eq!(parse(&p).expect("with OPT").edns, Some(4096));

        // Left to the general path.
        let mut two = Message::from_vec(&query("a.", RecordType::A, None)).expect("parse");
        two.add_query(HQuery::query(
            Name::from_ascii("b.").expect("name"),
            RecordType::A,
        ));
        let mut response = Message::from_vec(&query("a.", RecordType::A, None)).expect("parse");
        response.set_message_type(MessageType::Response);
        let mut pointer = query("a.", RecordType::A, None);
        pointer.splice(12..15, [0xc0, 12]);
        let mut trailing = query("a.", RecordType::A, None);
        trailing.push(0);
        let mut cut = query("abc.", RecordType::A, None);
        cut.truncate(cut.len() - 1);
        let mut version1 = query("a.", RecordType::A, Some(1232));
        let opt_version = version1.len() - 11 + 6;
        version1[opt_version] = 1;
        for p in [
            two.to_vec().expect("encode"),
            response.to_vec().expect("encode"),
            pointer,
            trailing,
            cut,
            version1,
            vec![0; 11],
        ] {
            assert_eq!(parse(&p), None, "{p:?}");
        }
    }

    #[test]
    fn replies_read_back_as_the_general_path_writes_them() {
        let p = query("Web.Green.", RecordType::ANY, Some(1400));
        let q = parse(&p).expect("plain");
        let v6: Ipv6Addr = "fd00::10".parse().expect("v6");
        let mut out = Vec::new();
        q.reply(
            &p,
            Rcode::NoError,
            &[
                Data::A(Ipv4Addr::new(10, 1, 0, 10)),
                Data::Aaaa(v6),
                Data::Ptr("web."),
            ],
            true,
            &mut out,
        );
        let m = Message::from_vec(&out).expect("reply parses");
        assert_eq!(m.id(), 0xbeef);
        assert_eq!(m.message_type(), MessageType::Response);
        assert!(m.authoritative() && m.recursion_available() && m.recursion_desired());
        assert!(m.checking_disabled() && !m.truncated());
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.queries()[0].name().to_ascii(), "Web.Green.");
        assert_eq!(m.queries()[0].query_class(), DNSClass::IN);
        let data: Vec<RData> = m.answers().iter().map(|r| r.data().clone()).collect();
        assert_eq!(data.len(), 3);
        assert!(
            m.answers()
                .iter()
                .all(|r| r.ttl() == 0 && r.name().to_ascii() == "Web.Green.")
        );
        assert_eq!(data[0], RData::A(Ipv4Addr::new(10, 1, 0, 10).into()));
        assert_eq!(data[1], RData::AAAA(v6.into()));
        assert_eq!(
            data[2],
            RData::PTR(hickory_proto::rr::rdata::PTR(
                Name::from_ascii("web.").expect("name")
            ))
        );
        assert_eq!(
            m.extensions().as_ref().map(|e| e.max_payload()),
            Some(EDNS_PAYLOAD)
        );

        let p = query("nosuch.", RecordType::A, None);
        let q = parse(&p).expect("plain");
        q.reply(&p, Rcode::NxDomain, &[], true, &mut out);
        let m = Message::from_vec(&out).expect("reply parses");
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.answers().is_empty() && m.extensions().is_none());
    }

    #[test]
    fn too_big_for_udp_is_truncated_not_for_tcp() {
        let p = query("many.", RecordType::A, None);
        let q = parse(&p).expect("plain");
        let many: Vec<Data> = (0..60)
            .map(|i| Data::A(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        let mut out = Vec::new();
        q.reply(&p, Rcode::NoError, &many, true, &mut out);
        let m = Message::from_vec(&out).expect("reply parses");
        assert!(m.truncated() && m.answers().is_empty());
        q.reply(&p, Rcode::NoError, &many, false, &mut out);
        let m = Message::from_vec(&out).expect("reply parses");
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 60);
    }

    #[test]
    fn ttls_of_a_forwarded_reply() {
        let p = query("example.com.", RecordType::A, Some(1232));
        let mut m = Message::from_vec(&p).expect("parse");
        m.set_message_type(MessageType::Response);
        let name = Name::from_ascii("example.com.").expect("name");
        m.add_answer(hickory_proto::rr::Record::from_rdata(
            name.clone(),
            300,
            RData::A(Ipv4Addr::new(192, 0, 2, 1).into()),
        ));
        m.add_answer(hickory_proto::rr::Record::from_rdata(
            name,
            60,
            RData::A(Ipv4Addr::new(192, 0, 2, 2).into()),
        ));
        let bytes = m.to_vec().expect("encode");
        let (offsets, min) = ttls(&bytes).expect("walkable");
        assert_eq!(offsets.len(), 2, "the OPT record's TTL is not a TTL");
        assert_eq!(min, 60);
        assert_eq!(ttls(&bytes[..bytes.len() - 1]), None);
    }
}
