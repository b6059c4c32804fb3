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

use anyhow::{Context, Result, anyhow, bail};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::core::firewall;

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM`.
const GETSETELEM: u16 = (10 << 8) | 13;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM`: a dump's messages.
const NEWSETELEM: u16 = (10 << 8) | 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const HEADER: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG: usize = 4;
/// Attribute types without the nested and byte-order flags.
const TYPE_MASK: u16 = 0x3fff;

// enum nft_set_elem_list_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
const NFTA_LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// The element's one expression (a set with one, as netloom's maps).
const NFTA_SET_ELEM_EXPR: u16 = 7;
/// The element's expressions, when the set has several.
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 10;
// enum nft_expr_attributes, enum nft_counter_attributes
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// libnftnl's user data: TLVs of one-byte type and length; type 0 is the
/// comment, NUL-terminated (`NFTNL_UDATA_SET_ELEM_COMMENT`).
const UDATA_COMMENT: u8 = 0;

/// Packets and bytes per port key, as [`firewall::port_counters`] sums
/// them from a listing. A map or table that does not exist counts nothing.
pub fn port_counters() -> Result<BTreeMap<String, (u64, u64)>> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("create netfilter netlink socket")?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .context("bind netfilter netlink socket")?;
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
    let mut m = vec![0u8; HEADER];
    m[4..6].copy_from_slice(&GETSETELEM.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m.extend([family, 0, 0, 0]);
    for (kind, name) in [
        (NFTA_SET_ELEM_LIST_TABLE, table),
        (NFTA_SET_ELEM_LIST_SET, map),
    ] {
        let len = 4 + name.len() + 1;
        m.extend((len as u16).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(name.as_bytes());
        m.push(0);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// Reads one batch of a dump's messages into `out`; true once the dump is
/// done. A missing table or map (ENOENT) is a done, empty dump.
fn parse_batch(mut buf: &[u8], seq: u32, out: &mut Vec<(String, (u64, u64))>) -> Result<bool> {
    while !buf.is_empty() {
        let len = u32_at(buf, 0).ok_or_else(|| anyhow!("short netlink message"))? as usize;
        let msg = buf
            .get(..len)
            .filter(|m| m.len() >= HEADER)
            .ok_or_else(|| anyhow!("truncated netlink message"))?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        if u32_at(msg, 8) != Some(seq) {
            continue;
        }
        match u16_at(msg, 4) {
            Some(NLMSG_DONE) => return Ok(true),
            Some(NLMSG_ERROR) => {
                let errno = msg
                    .get(HEADER..HEADER + 4)
                    .map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
                    .unwrap_or(0);
                match errno {
                    0 => return Ok(true),
                    e if e == -libc::ENOENT => return Ok(true),
                    e => bail!("{}", std::io::Error::from_raw_os_error(e.abs())),
                }
            }
            Some(NEWSETELEM) => {
                let attrs = msg.get(HEADER + NFGENMSG..).unwrap_or_default();
                for (kind, list) in nlattrs(attrs) {
                    if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (kind, elem) in nlattrs(list) {
                        if kind == NFTA_LIST_ELEM
                            && let Some(counted) = element(elem)
                        {
                            out.push(counted);
                        }
                    }
                }
            }
            other => bail!("unexpected netlink message type {other:?}"),
        }
    }
    Ok(false)
}

/// An element's comment and counter; None when it lacks either.
fn element(attrs: &[u8]) -> Option<(String, (u64, u64))> {
    let (mut comment, mut counter) = (None, None);
    for (kind, value) in nlattrs(attrs) {
        match kind {
            NFTA_SET_ELEM_USERDATA => comment = udata_comment(value),
            NFTA_SET_ELEM_EXPR => counter = counter.or(expr_counter(value)),
            NFTA_SET_ELEM_EXPRESSIONS => {
                for (k, expr) in nlattrs(value) {
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
    for (kind, value) in nlattrs(attrs) {
        match kind {
            NFTA_EXPR_NAME => is_counter = value.split(|b| *b == 0).next() == Some(b"counter"),
            NFTA_EXPR_DATA => {
                for (k, v) in nlattrs(value) {
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

/// The (type, value) of each netlink attribute in `buf`, padded to 4.
fn nlattrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(buf, 0)? as usize;
        let kind = u16_at(buf, 2)?;
        let value = buf.get(4..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind & TYPE_MASK, value))
    })
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(u32_at(&r, 0), Some(r.len() as u32));
        assert_eq!(u16_at(&r, 4), Some(GETSETELEM));
        assert_eq!(u32_at(&r, 8), Some(5));
        let attrs: Vec<(u16, &[u8])> = nlattrs(&r[HEADER + NFGENMSG..]).collect();
        assert_eq!(
            attrs,
            vec![
                (NFTA_SET_ELEM_LIST_TABLE, &b"netloom\0"[..]),
                (NFTA_SET_ELEM_LIST_SET, &b"dnat_any\0"[..]),
            ]
        );
    }
}
