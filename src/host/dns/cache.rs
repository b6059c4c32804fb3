//! Forwarded replies, kept for their TTL.
//!
//! Only what an upstream said about a name outside our networks is kept
//! (members are answered from the index with TTL 0 and never cached). A
//! reply is kept for the smallest TTL among its records, at most
//! [`MAX_CACHE_TTL`], and is served with its TTLs aged by the time it has
//! been kept, the asker's ID and the asker's spelling of the question.
//! Replies without records (no TTL to go by), truncated ones, SERVFAIL and
//! REFUSED are not kept. At most [`MAX_CACHE_ENTRIES`] replies are kept;
//! when full, expired ones go first, then arbitrary ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire;

/// Upper bound on how long a reply is kept, whatever its TTL says.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Replies kept at once (a few hundred bytes each).
pub const MAX_CACHE_ENTRIES: usize = 10_000;
/// Replies kept per name (types, classes, with and without EDNS).
const MAX_PER_NAME: usize = 8;

/// What a reply answers: the question (name in lookup form, type, class)
/// and whether the asker spoke EDNS (the reply then carries an OPT record,
/// which a client that sent none must not get).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Key<'a> {
    pub(super) name: &'a str,
    pub(super) qtype: u16,
    pub(super) qclass: u16,
    pub(super) edns: bool,
}

struct Entry {
    qtype: u16,
    qclass: u16,
    edns: bool,
    bytes: Box<[u8]>,
    ttl_offsets: Box<[usize]>,
    stored: Instant,
    expires: Instant,
}

#[derive(Default)]
pub(super) struct Cache {
    /// By name, then a few entries (types, classes, EDNS or not).
    map: Mutex<HashMap<Box<str>, Vec<Entry>>>,
}

impl Cache {
    /// The kept reply to `key` into `out` (cleared first), TTLs aged, the
    /// ID and question still those of the first asker (the caller sets
    /// them). False when nothing valid is kept.
    pub(super) fn get(&self, key: &Key<'_>, now: Instant, out: &mut Vec<u8>) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get(key.name).and_then(|v| {
            v.iter()
                .find(|e| e.qtype == key.qtype && e.qclass == key.qclass && e.edns == key.edns)
        }) else {
            return false;
        };
        if now >= entry.expires {
            return false;
        }
        let aged = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        out.clear();
        out.extend_from_slice(&entry.bytes);
        for &at in entry.ttl_offsets.iter() {
            let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(aged).to_be_bytes());
        }
        true
    }

    /// Keeps `reply` (an upstream's reply to `key`, already checked to be
    /// NOERROR or NXDOMAIN and not truncated) for its smallest TTL.
    pub(super) fn put(&self, key: &Key<'_>, reply: &[u8], now: Instant) {
        let Some((offsets, min_ttl)) = wire::ttls(reply) else {
            return;
        };
        if offsets.is_empty() || min_ttl == 0 {
            return;
        }
        let keep = Duration::from_secs(u64::from(min_ttl)).min(MAX_CACHE_TTL);
        let entry = Entry {
            qtype: key.qtype,
            qclass: key.qclass,
            edns: key.edns,
            bytes: reply.into(),
            ttl_offsets: offsets.into(),
            stored: now,
            expires: now + keep,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get_mut(key.name) {
            v.retain(|e| !(e.qtype == key.qtype && e.qclass == key.qclass && e.edns == key.edns));
            // One name asked with every type must not grow without bound.
            if v.len() >= MAX_PER_NAME {
                v.remove(0);
            }
            v.push(entry);
            return;
        }
        if map.len() >= MAX_CACHE_ENTRIES {
            make_room(&mut map, now);
        }
        map.insert(key.name.into(), vec![entry]);
    }

    /// Names with a kept reply (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Frees a tenth of the cache at once, so that a full cache costs one
/// pass per [`MAX_CACHE_ENTRIES`] / 10 insertions, not one per insertion:
/// expired replies first, then arbitrary ones (a name evicted while still
/// asked for is fetched again once and kept again).
fn make_room(map: &mut HashMap<Box<str>, Vec<Entry>>, now: Instant) {
    map.retain(|_, v| {
        v.retain(|e| e.expires > now);
        !v.is_empty()
    });
    let target = MAX_CACHE_ENTRIES - MAX_CACHE_ENTRIES / 10;
    if map.len() > target {
        let victims: Vec<Box<str>> = map.keys().take(map.len() - target).cloned().collect();
        for victim in victims {
            map.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn reply(name: &str, ttl: u32) -> Vec<u8> {
        let n = Name::from_ascii(name).expect("name");
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(n.clone(), RecordType::A))
            .add_answer(Record::from_rdata(
                n,
                ttl,
                RData::A(Ipv4Addr::new(192, 0, 2, 1).into()),
            ));
        m.to_vec().expect("encode")
    }

    fn key(name: &str) -> Key<'_> {
        Key {
            name,
            qtype: 1,
            qclass: 1,
            edns: false,
        }
    }

    #[test]
    fn kept_for_the_ttl_and_aged() {
        let cache = Cache::default();
        let t0 = Instant::now();
        cache.put(&key("example.com"), &reply("example.com.", 300), t0);
        let mut out = Vec::new();
        assert!(cache.get(&key("example.com"), t0 + Duration::from_secs(100), &mut out));
        let m = Message::from_vec(&out).expect("parses");
        assert_eq!(m.answers()[0].ttl(), 200);
        // Another type, EDNS or not, or name is another question.
        assert!(!cache.get(
            &Key {
                qtype: 28,
                ..key("example.com")
            },
            t0,
            &mut out
        ));
        assert!(!cache.get(
            &Key {
                edns: true,
                ..key("example.com")
            },
            t0,
            &mut out
        ));
        assert!(!cache.get(&key("example.org"), t0, &mut out));
        // Expired.
        assert!(!cache.get(&key("example.com"), t0 + Duration::from_secs(300), &mut out));
        // TTL 0 is not kept.
        cache.put(&key("zero.example"), &reply("zero.example.", 0), t0);
        assert!(!cache.get(&key("zero.example"), t0, &mut out));
    }

    #[test]
    fn bounded() {
        let cache = Cache::default();
        let t0 = Instant::now();
        let names: Vec<String> = (0..MAX_CACHE_ENTRIES + 10)
            .map(|i| format!("n{i}.example"))
            .collect();
        for n in &names {
            cache.put(&key(n), &reply(&format!("{n}."), 60), t0);
        }
        // Full: a tenth was freed at once, then filled again.
        assert!(cache.len() <= MAX_CACHE_ENTRIES, "{}", cache.len());
        assert!(cache.len() > MAX_CACHE_ENTRIES * 9 / 10, "{}", cache.len());
        // Expired replies go before live ones.
        let mut i = 0;
        while cache.len() < MAX_CACHE_ENTRIES {
            let n = format!("m{i}.example");
            cache.put(&key(&n), &reply(&format!("{n}."), 60), t0);
            i += 1;
        }
        let later = t0 + Duration::from_secs(61);
        cache.put(&key("fresh.example"), &reply("fresh.example.", 60), later);
        assert_eq!(cache.len(), 1, "every older reply had expired");
        // The newest is always kept.
        let mut out = Vec::new();
        assert!(cache.get(&key("fresh.example"), later, &mut out));
    }
}
