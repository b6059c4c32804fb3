//! The published ports' packet and byte counters, read from the kernel's
//! set elements over `NETLINK_NETFILTER` (`NFT_MSG_GETSETELEM` dumps of
//! the maps that count, see [`firewall::counted_maps`]).
//!
//! Why not the listing: a counter moves with every packet, and neither an
//! event nor the ruleset generation says so, so the agent cannot answer
//! `status` from the listing in its view; listing again with `nft -j`
//! costs ~50 ms at 2,000 elements, these dumps a few. Only what `status`
//! shows is decoded: each element's comment (its port key) and counter.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use rtnetlink::sys::Socket;

use super::nfnl::{
    self, NEWSETELEM, NFTA_LIST_ELEM, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, UDATA_COMMENT,
};
use crate::core::firewall;

const GETSETELEM: u16 = nfnl::nft_msg(13);
// enum nft_set_elem_attributes (the list's are nfnl's)
/// The element's one expression (a set with one, as netloom's maps).
const NFTA_SET_ELEM_EXPR: u16 = 7;
/// The element's expressions, when the set has several.
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 10;
// enum nft_expr_attributes, enum nft_counter_attributes
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// Packets and bytes per port key, as [`firewall::port_counters`] sums
/// them from a listing. A map or table that does not exist counts nothing.
pub fn port_counters() -> Result<BTreeMap<String, (u64, u64)>> {
    let socket = nfnl::socket()?;
    let mut counted = Vec::new();
    for (seq, (family, table, map)) in (1u32..).zip(firewall::counted_maps()) {
        dump_map(&socket, seq, family, table, map, &mut counted)
            .with_context(|| format!("read the counters of {family} {table} {map}"))?;
    }
    Ok(firewall::port_counters_of(
        counted.iter().map(|(c, n)| (c.as_str(), *n)),
    ))
}

/// Appends (comment, (packets, bytes)) of every counted element of one map.
fn dump_map(
    socket: &Socket,
    seq: u32,
    family: &str,
    table: &str,
    map: &str,
    out: &mut Vec<(String, (u64, u64))>,
) -> Result<()> {
    let family = match family {
        "inet" => libc::NFPROTO_INET as u8,
        "bridge" => libc::NFPROTO_BRIDGE as u8,
        other => bail!("unknown nft family {other}"),
    };
    crate::host::stats::netlink_request();
    socket
        .send(&request(seq, family, table, map), 0)
        .context("send the dump request")?;
    // A dump's messages come in batches, one per read; the kernel sizes a
    // batch to the reader's buffer (up to 32 KiB).
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0).context("read the dump")?;
        if parse_batch(&buf[..n], seq, out)? {
            return Ok(());
        }
    }
}

/// An `NFT_MSG_GETSETELEM` dump request for `table` `map`.
fn request(seq: u32, family: u8, table: &str, map: &str) -> Vec<u8> {
    let mut m = nfnl::request(GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, family);
    for (kind, name) in [
        (NFTA_SET_ELEM_LIST_TABLE, table),
        (NFTA_SET_ELEM_LIST_SET, map),
    ] {
        nfnl::push_attr(&mut m, kind, &[name.as_bytes(), &[0]].concat());
    }
    nfnl::finish(m)
}

/// Reads one batch of a dump's messages into `out`; true once the dump is
/// done. A missing table or map (ENOENT) is a done, empty dump.
fn parse_batch(buf: &[u8], seq: u32, out: &mut Vec<(String, (u64, u64))>) -> Result<bool> {
    for m in nfnl::messages(buf) {
        let (kind, msg_seq, msg) = m?;
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR if nfnl::errno(msg) == -libc::ENOENT => return Ok(true),
            NLMSG_ERROR => return nfnl::error(msg).map(|()| true),
            NEWSETELEM => {
                for (kind, list) in nfnl::attrs(nfnl::body(msg)) {
                    if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (kind, elem) in nfnl::attrs(list) {
                        if kind == NFTA_LIST_ELEM
                            && let Some(counted) = element(elem)
                        {
                            out.push(counted);
                        }
                    }
                }
            }
            other => bail!("unexpected netlink message type {other}"),
        }
    }
    Ok(false)
}

/// An element's comment and counter; None when it lacks either.
fn element(attrs: &[u8]) -> Option<(String, (u64, u64))> {
    let (mut comment, mut counter) = (None, None);
    for (kind, value) in nfnl::attrs(attrs) {
        match kind {
            NFTA_SET_ELEM_USERDATA => comment = udata_comment(value),
            NFTA_SET_ELEM_EXPR => counter = counter.or(expr_counter(value)),
            NFTA_SET_ELEM_EXPRESSIONS => {
                for (k, expr) in nfnl::attrs(value) {
                    if k == NFTA_LIST_ELEM {
                        counter = counter.or(expr_counter(expr));
                    }
                }
            }
            _ => {}
        }
    }
    Some((comment?, counter?))
}

/// (packets, bytes) of a `counter` expression.
fn expr_counter(attrs: &[u8]) -> Option<(u64, u64)> {
    let mut is_counter = false;
    let (mut packets, mut bytes) = (None, None);
    for (kind, value) in nfnl::attrs(attrs) {
        match kind {
            NFTA_EXPR_NAME => is_counter = value.split(|b| *b == 0).next() == Some(b"counter"),
            NFTA_EXPR_DATA => {
                for (k, v) in nfnl::attrs(value) {
                    let n = v.get(..8).map(|s| {
                        u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
                    });
                    match k {
                        NFTA_COUNTER_BYTES => bytes = n,
                        NFTA_COUNTER_PACKETS => packets = n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    is_counter.then_some((packets?, bytes?))
}

/// The comment in an element's user data.
fn udata_comment(mut data: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = data {
        let value = rest.get(..*len as usize)?;
        if *kind == UDATA_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return String::from_utf8(text.to_vec()).ok();
        }
        data = &rest[*len as usize..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nft::nfnl::HEADER;

    /// A netlink attribute, padded.
    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(((4 + value.len()) as u16).to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(value);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend(((HEADER + body.len()) as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 2]);
        m.extend(seq.to_ne_bytes());
        m.extend([0u8; 4]);
        m.extend(body);
        m
    }

    fn counter(packets: u64, bytes: u64) -> Vec<u8> {
        [
            attr(NFTA_EXPR_NAME, b"counter\0"),
            nested(
                NFTA_EXPR_DATA,
                &[
                    attr(NFTA_COUNTER_BYTES, &bytes.to_be_bytes()),
                    attr(NFTA_COUNTER_PACKETS, &packets.to_be_bytes()),
                ],
            ),
        ]
        .concat()
    }

    fn udata(comment: &str) -> Vec<u8> {
        let mut text = comment.as_bytes().to_vec();
        text.push(0);
        let mut u = vec![UDATA_COMMENT, text.len() as u8];
        u.extend(text);
        u
    }

    fn elements(seq: u32, elems: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![1u8, 0, 0, 0];
        body.extend(attr(NFTA_SET_ELEM_LIST_TABLE, b"netloom\0"));
        body.extend(attr(NFTA_SET_ELEM_LIST_SET, b"dnat_any\0"));
        body.extend(nested(NFTA_SET_ELEM_LIST_ELEMENTS, elems));
        message(NEWSETELEM, seq, &body)
    }

    #[test]
    fn a_dump_gives_each_elements_comment_and_counter() {
        let one = nested(
            NFTA_LIST_ELEM,
            &[
                nested(1, &[attr(1, &[6, 0, 0, 0, 0, 80, 0, 0])]),
                attr(NFTA_SET_ELEM_USERDATA, &udata("web.8080/tcp web net0 br-1")),
                nested(NFTA_SET_ELEM_EXPR, &[counter(12, 796)]),
            ],
        );
        // Several expressions: the counter among them.
        let two = nested(
            NFTA_LIST_ELEM,
            &[
                nested(
                    NFTA_SET_ELEM_EXPRESSIONS,
                    &[
                        nested(NFTA_LIST_ELEM, &[attr(NFTA_EXPR_NAME, b"limit\0")]),
                        nested(NFTA_LIST_ELEM, &[counter(3, 180)]),
                    ],
                ),
                attr(NFTA_SET_ELEM_USERDATA, &udata("db.5432/tcp db net0 br-1")),
            ],
        );
        // No counter: left out.
        let bare = nested(
            NFTA_LIST_ELEM,
            &[attr(NFTA_SET_ELEM_USERDATA, &udata("x.1/tcp x net0 br-1"))],
        );
        let mut batch = elements(7, &[one, two]);
        batch.extend(elements(7, &[bare]));
        // Another request's message is not this dump's.
        batch.extend(elements(
            8,
            &[nested(
                NFTA_LIST_ELEM,
                &[
                    attr(NFTA_SET_ELEM_USERDATA, &udata("no.1/tcp no net0 br-1")),
                    nested(NFTA_SET_ELEM_EXPR, &[counter(1, 1)]),
                ],
            )],
        ));
        let mut out = Vec::new();
        assert!(!parse_batch(&batch, 7, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                ("web.8080/tcp web net0 br-1".to_string(), (12, 796)),
                ("db.5432/tcp db net0 br-1".to_string(), (3, 180)),
            ]
        );
        assert!(parse_batch(&message(NLMSG_DONE, 7, &[0; 4]), 7, &mut out).unwrap());
    }

    #[test]
    fn a_missing_map_is_empty_and_other_errors_fail() {
        let error = |errno: i32| {
            let mut body = errno.to_ne_bytes().to_vec();
            body.extend([0u8; HEADER]);
            message(NLMSG_ERROR, 3, &body)
        };
        let mut out = Vec::new();
        assert!(parse_batch(&error(-libc::ENOENT), 3, &mut out).unwrap());
        assert!(out.is_empty());
        let e = parse_batch(&error(-libc::EPERM), 3, &mut out).unwrap_err();
        assert!(e.to_string().contains("not permitted"), "{e}");
        assert!(parse_batch(&[8, 0, 0, 0, 1], 3, &mut out).is_err());
    }

    #[test]
    fn the_request_names_the_table_and_the_map() {
        let r = request(5, libc::NFPROTO_INET as u8, "netloom", "dnat_any");
        let mut msgs = nfnl::messages(&r);
        let (kind, seq, msg) = msgs.next().unwrap().unwrap();
        assert!(
            msgs.next().is_none(),
            "one message, its length the whole request"
        );
        assert_eq!((kind, seq, msg.len()), (GETSETELEM, 5, r.len()));
        let attrs: Vec<(u16, &[u8])> = nfnl::attrs(nfnl::body(msg)).collect();
        assert_eq!(
            attrs,
            vec![
                (NFTA_SET_ELEM_LIST_TABLE, &b"netloom\0"[..]),
                (NFTA_SET_ELEM_LIST_SET, &b"dnat_any\0"[..]),
            ]
        );
    }
}
