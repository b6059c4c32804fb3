//! A few port elements added to and deleted from `inet netloom`'s maps
//! as one nftables transaction of netloom's own: a netlink batch
//! (`NFNL_MSG_BATCH_BEGIN`, `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM`,
//! `NFNL_MSG_BATCH_END`), which the kernel commits whole or not at all,
//! like the script `nft -f -` sends.
//!
//! Why not the script: nft 1.0.6 reads every element of a map before it
//! deletes one from it, so unpublishing one port cost 12–24 ms at 2,000
//! published ports against 3 ms to publish one (measured), and each
//! script costs a process. Everything else (tables, skeletons, other
//! sets, large changes) still goes to nft; see
//! [`Transaction::port_edits`](crate::core::firewall::Transaction::port_edits).

use anyhow::{Context, Result, anyhow, bail};

use super::nfnl::{
    self, GETGEN, NEWGEN, NEWSETELEM, NFTA_LIST_ELEM, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NLM_F_REQUEST,
    NLMSG_ERROR, NfSocket, UDATA_COMMENT,
};
use crate::core::firewall::ElementEdit;

const DELSETELEM: u16 = nfnl::nft_msg(14);
/// `NFNL_MSG_BATCH_BEGIN` and `_END`: not nftables messages, nfnetlink's.
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// The batch's resource id: the nftables subsystem.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// Adds and deletes `edits` in one transaction. An error (the whole
/// batch undone by the kernel) names the first element it refused.
pub fn write(edits: &[ElementEdit]) -> Result<()> {
    if edits.is_empty() {
        return Ok(());
    }
    let socket = nfnl::socket()?;
    // The element messages are 1..=n; the batch's ends and the barrier
    // around them.
    let batch = batch(edits, 1);
    crate::host::stats::netlink_request();
    socket.send(&batch, 0).context("send the nftables batch")?;
    // The kernel handles a batch while it is sent: its answers (an
    // acknowledgement or an error per element) are queued by now. The
    // generation's reply comes after them, and tells where they end.
    let barrier = edits.len() as u32 + 2;
    crate::host::stats::netlink_request();
    socket
        .send(
            &nfnl::finish(nfnl::request(GETGEN, NLM_F_REQUEST, barrier, 0)),
            0,
        )
        .context("ask for the nftables generation")?;
    read_answers(&socket, edits, barrier)
}

/// The batch: begin at `seq - 1`, the elements at `seq..`, end after them.
fn batch(edits: &[ElementEdit], seq: u32) -> Vec<u8> {
    let mut out = bracket(BATCH_BEGIN, seq - 1);
    for (i, e) in edits.iter().enumerate() {
        out.extend(element_message(e, seq + i as u32));
    }
    out.extend(bracket(BATCH_END, seq + edits.len() as u32));
    out
}

/// A batch's begin or end: nfgenmsg with the subsystem as resource id.
fn bracket(kind: u16, seq: u32) -> Vec<u8> {
    let mut m = nfnl::request(kind, NLM_F_REQUEST, seq, 0);
    // res_id, big-endian, after family and version.
    let at = nfnl::HEADER + 2;
    m[at..at + 2].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    nfnl::finish(m)
}

/// One element's message, asking for an acknowledgement.
fn element_message(e: &ElementEdit, seq: u32) -> Vec<u8> {
    let (kind, flags) = match e.delete {
        true => (DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        false => (NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
    };
    let mut m = nfnl::request(kind, flags, seq, libc::NFPROTO_INET as u8);
    nfnl::push_attr(&mut m, NFTA_SET_ELEM_LIST_TABLE, b"netloom\0");
    nfnl::push_attr(
        &mut m,
        NFTA_SET_ELEM_LIST_SET,
        &[e.map.as_bytes(), &[0]].concat(),
    );
    let mut elem = Vec::new();
    let mut key = Vec::new();
    nfnl::push_attr(&mut key, NFTA_DATA_VALUE, &e.key);
    nfnl::push_attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &key);
    if !e.delete {
        let mut data = Vec::new();
        nfnl::push_attr(&mut data, NFTA_DATA_VALUE, &e.data);
        nfnl::push_attr(&mut elem, NFTA_SET_ELEM_DATA | NLA_F_NESTED, &data);
        nfnl::push_attr(
            &mut elem,
            NFTA_SET_ELEM_USERDATA,
            &comment_udata(&e.comment),
        );
    }
    let mut list = Vec::new();
    nfnl::push_attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
    nfnl::push_attr(&mut m, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
    nfnl::finish(m)
}

/// A comment as libnftnl stores it: type, length, text and its NUL.
/// Validation keeps comments under nft's limit of 128 bytes; the length
/// is one byte.
fn comment_udata(comment: &str) -> Vec<u8> {
    let text = &comment.as_bytes()[..comment.len().min(254)];
    let mut u = vec![UDATA_COMMENT, text.len() as u8 + 1];
    u.extend(text);
    u.push(0);
    u
}

/// Reads answers up to the barrier's reply; the first error refused the
/// batch.
fn read_answers(socket: &NfSocket, edits: &[ElementEdit], barrier: u32) -> Result<()> {
    let mut refused: Option<anyhow::Error> = None;
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        let n = socket
            .recv(&mut buf, 0)
            .context("read the nftables batch's answers")?;
        for m in nfnl::messages(&buf[..n]) {
            let (kind, seq, msg) = m?;
            match kind {
                NEWGEN if seq == barrier => {
                    return match refused {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
                NLMSG_ERROR => {
                    let Err(e) = nfnl::error(msg) else {
                        continue;
                    };
                    if seq == barrier {
                        bail!("nftables generation after the batch: {e}");
                    }
                    if refused.is_none() {
                        let what = seq
                            .checked_sub(1)
                            .and_then(|i| edits.get(i as usize))
                            .map(describe)
                            .unwrap_or_else(|| "the batch".into());
                        refused = Some(anyhow!("{what}: {e}"));
                    }
                }
                _ => {}
            }
        }
    }
}

fn describe(e: &ElementEdit) -> String {
    format!(
        "{} element inet netloom {} ({})",
        if e.delete { "delete" } else { "add" },
        e.map,
        e.comment
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(delete: bool) -> ElementEdit {
        ElementEdit {
            delete,
            map: "dnat_any",
            key: vec![6, 0, 0, 0, 0x1f, 0x91, 0, 0],
            data: vec![172, 17, 0, 3, 0, 80, 0, 0],
            comment: "web.8081/tcp web bridge docker0".into(),
        }
    }

    #[test]
    fn a_batch_is_begin_elements_end_in_sequence() {
        let b = batch(&[edit(true), edit(false)], 1);
        let msgs: Vec<(u16, u32, Vec<u8>)> = nfnl::messages(&b)
            .map(|m| m.map(|(k, s, b)| (k, s, b.to_vec())))
            .collect::<Result<_>>()
            .expect("well formed");
        let kinds: Vec<(u16, u32)> = msgs.iter().map(|(k, s, _)| (*k, *s)).collect();
        assert_eq!(
            kinds,
            [
                (BATCH_BEGIN, 0),
                (DELSETELEM, 1),
                (NEWSETELEM, 2),
                (BATCH_END, 3)
            ]
        );
        // The begin names the nftables subsystem, big-endian.
        assert_eq!(&msgs[0].2[nfnl::HEADER..nfnl::HEADER + 4], &[0, 0, 0, 10]);
        // An added element carries key, data and comment; a deleted one
        // its key only.
        let elem = |m: &[u8]| -> Vec<u16> {
            let (_, list) = nfnl::attrs(nfnl::body(m))
                .find(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
                .expect("elements");
            let (_, elem) = nfnl::attrs(list).next().expect("one element");
            nfnl::attrs(elem).map(|(k, _)| k).collect()
        };
        assert_eq!(elem(&msgs[1].2), [NFTA_SET_ELEM_KEY]);
        assert_eq!(
            elem(&msgs[2].2),
            [
                NFTA_SET_ELEM_KEY,
                NFTA_SET_ELEM_DATA,
                NFTA_SET_ELEM_USERDATA
            ]
        );
    }

    #[test]
    fn a_comment_is_stored_as_libnftnl_does() {
        assert_eq!(comment_udata("ab"), [0, 3, b'a', b'b', 0]);
    }
}
