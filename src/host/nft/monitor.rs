//! nftables change notifications (what `nft monitor` prints), read from a
//! NETLINK_NETFILTER socket in group NFNLGRP_NFTABLES and reduced to the
//! changes of netloom's own tables, so the agent heals a deleted element,
//! a deleted table or a flushed ruleset at once instead of at the next
//! resync. No `nft` process and no listing: the kernel pushes each change.

use anyhow::{Context, Result};
use rtnetlink::sys::{Socket, SocketAddr};
use tokio::sync::mpsc;

use super::nfnl;
use crate::core::firewall::TABLE;

/// `NETLINK_NETFILTER` (linux/netlink.h).
const NETLINK_NETFILTER: isize = 12;
/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nftables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFPROTO_INET` and `NFPROTO_BRIDGE`: the families netloom's tables use.
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// Attribute 1 of table, chain, rule, set and element messages is the
/// table's name (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
/// NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE).
const ATTR_TABLE: u16 = 1;
/// Receive buffer: a cold apply of thousands of elements echoes thousands
/// of notifications; an overflow is reported (ENOBUFS) and handled, but a
/// roomy buffer keeps it rare.
const RCVBUF: usize = 4 << 20;

/// A change to one of netloom's tables, described like `nft monitor`
/// ("delete element inet netloom"), or lost notifications.
pub type NftChange = String;

/// Subscribes to nftables notifications in the caller's namespace. A thread
/// blocks in `recv` (no polling, no CPU while idle) and forwards each change
/// to netloom's tables; the receiver ends when the socket fails.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<NftChange>> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("create netfilter netlink socket")?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .context("bind netfilter netlink socket")?;
    socket
        .add_membership(NFNLGRP_NFTABLES)
        .context("join the nftables notification group")?;
    // Best effort: a smaller buffer only makes ENOBUFS likelier.
    let _ = socket.set_rx_buf_sz(RCVBUF);
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("nft-monitor".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                buf.clear();
                match socket.recv(&mut buf, 0) {
                    Ok(_) => {
                        for change in changes_of_ours(&buf) {
                            if tx.send(change).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // Notifications were dropped: something changed,
                        // maybe in our tables; let a reconcile look.
                        if tx.send("nft notifications lost".into()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
        .context("start the nft monitor thread")?;
    Ok(rx)
}

/// The changes to netloom's tables in one datagram of netlink messages
/// (a truncated message ends it).
pub fn changes_of_ours(buf: &[u8]) -> Vec<NftChange> {
    let mut out = Vec::new();
    for (ty, _, msg) in nfnl::messages(buf).map_while(Result::ok) {
        if ty >> 8 == NFNL_SUBSYS_NFTABLES
            && let Some(change) = change_of_ours((ty & 0xff) as u8, &msg[nfnl::HEADER..])
            && !out.contains(&change)
        {
            out.push(change);
        }
    }
    out
}

/// One nftables message: its change if it concerns `table inet|bridge netloom`.
fn change_of_ours(msg: u8, payload: &[u8]) -> Option<NftChange> {
    // nfgenmsg: family, version, resource id (4 bytes), then attributes.
    let family = match *payload.first()? {
        NFPROTO_INET => "inet",
        NFPROTO_BRIDGE => "bridge",
        _ => return None,
    };
    let what = match msg {
        0 => "add table",
        2 => "delete table",
        3 => "add chain",
        5 => "delete chain",
        6 => "add rule",
        8 => "delete rule",
        9 => "add set",
        11 => "delete set",
        12 => "add element",
        14 => "delete element",
        16 => "add object",
        18 => "delete object",
        20 => "add flowtable",
        22 => "delete flowtable",
        _ => return None,
    };
    let (_, name) =
        nfnl::attrs(payload.get(nfnl::NFGENMSG..)?).find(|(ty, _)| *ty == ATTR_TABLE)?;
    let name = name.split(|b| *b == 0).next().unwrap_or(name);
    (name == TABLE.as_bytes()).then(|| format!("nft: {what} {family} {TABLE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nftables notification as the kernel sends it.
    fn msg(kind: u8, family: u8, table: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name = format!("{table}\0");
        attr.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&ATTR_TABLE.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = Vec::new();
        let len = 16 + 4 + attr.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(kind)).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn only_netloom_tables_count() {
        let mut buf = msg(14, NFPROTO_INET, "netloom");
        buf.extend(msg(2, NFPROTO_INET, "mine"));
        buf.extend(msg(2, 2, "netloom")); // table ip netloom: not ours
        buf.extend(msg(2, NFPROTO_BRIDGE, "netloom"));
        buf.extend(msg(14, NFPROTO_INET, "netloom")); // duplicate
        assert_eq!(
            changes_of_ours(&buf),
            vec![
                "nft: delete element inet netloom".to_string(),
                "nft: delete table bridge netloom".to_string()
            ]
        );
    }

    #[test]
    fn truncated_input_is_ignored() {
        let buf = msg(14, NFPROTO_INET, "netloom");
        assert!(changes_of_ours(&buf[..20]).is_empty());
        assert!(changes_of_ours(&[]).is_empty());
    }
}
