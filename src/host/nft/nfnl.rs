//! The little of nftables' netlink protocol (`NETLINK_NETFILTER`) that
//! netloom speaks itself, shared by the generation and counter readers:
//! message layout, a socket, and reading replies and attributes.

use anyhow::{Context, Result, bail};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `struct nlmsghdr`.
pub const HEADER: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
pub const NFGENMSG: usize = 4;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_DUMP: u16 = 0x300;
/// Attribute types without the nested and byte-order flags.
const TYPE_MASK: u16 = 0x3fff;

/// The message type of nftables message `msg` (`NFNL_SUBSYS_NFTABLES << 8
/// | NFT_MSG_...`).
pub const fn nft_msg(msg: u16) -> u16 {
    (10 << 8) | msg
}

/// `NFT_MSG_NEWSETELEM`: elements added, or a dump's messages.
pub const NEWSETELEM: u16 = nft_msg(12);
/// `NFT_MSG_GETGEN` and its reply, `NFT_MSG_NEWGEN`.
pub const GETGEN: u16 = nft_msg(16);
pub const NEWGEN: u16 = nft_msg(15);
// enum nft_set_elem_list_attributes
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
pub const NFTA_LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
pub const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// libnftnl's user data: TLVs of one-byte type and length; type 0 is the
/// comment, NUL-terminated (`NFTNL_UDATA_SET_ELEM_COMMENT`).
pub const UDATA_COMMENT: u8 = 0;

/// A bound `NETLINK_NETFILTER` socket ([`NfSocket`]).
pub fn socket() -> Result<NfSocket> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("create netfilter netlink socket")?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .context("bind netfilter netlink socket")?;
    Ok(NfSocket(Some(socket)))
}

/// A netfilter netlink socket, closed on a thread of its own. Closing one
/// waits until the kernel has freed what the last nftables transaction
/// deleted, an RCU grace period after it (nf_tables flushes that work
/// whenever such a socket is released): 10–20 ms here after unpublishing
/// a port, for any socket closed then, and nothing netloom does waits for
/// that memory.
pub struct NfSocket(Option<Socket>);

impl std::ops::Deref for NfSocket {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        self.0.as_ref().expect("an open socket")
    }
}

impl Drop for NfSocket {
    fn drop(&mut self) {
        use std::sync::OnceLock;
        use std::sync::mpsc::{Sender, channel};
        static CLOSER: OnceLock<Option<Sender<Socket>>> = OnceLock::new();
        let Some(socket) = self.0.take() else {
            return;
        };
        let closer = CLOSER.get_or_init(|| {
            let (tx, rx) = channel::<Socket>();
            std::thread::Builder::new()
                .name("nfnl-close".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| tx)
        });
        // Without the thread (or once it is gone), here.
        if let Some(tx) = closer
            && let Err(back) = tx.send(socket)
        {
            drop(back.0);
        }
    }
}

/// The request header and nfgenmsg of a message of `kind` with `flags`
/// and `seq`, for `family`; attributes go after it and the length is set
/// by [`finish`].
pub fn request(kind: u16, flags: u16, seq: u32, family: u8) -> Vec<u8> {
    let mut m = vec![0u8; HEADER];
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m.extend([family, 0, 0, 0]);
    m
}

/// Appends attribute `kind` holding `value` to message `m`, padded to 4.
pub fn push_attr(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    m.extend(((4 + value.len()) as u16).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(value);
    m.resize(m.len().next_multiple_of(4), 0);
}

/// Sets message `m`'s length.
pub fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// Each message in `buf` (a datagram), with its type and sequence number.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, u32, &[u8])>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let Some(len) = u32_at(buf, 0).map(|l| l as usize) else {
            buf = &[];
            return Some(Err(anyhow::anyhow!("short netlink message")));
        };
        let Some(msg) = buf.get(..len).filter(|m| m.len() >= HEADER) else {
            buf = &[];
            return Some(Err(anyhow::anyhow!("truncated netlink message")));
        };
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(Ok((
            u16_at(msg, 4).unwrap_or_default(),
            u32_at(msg, 8).unwrap_or_default(),
            msg,
        )))
    })
}

/// The errno of an `NLMSG_ERROR` message (0: an acknowledgement).
pub fn errno(msg: &[u8]) -> i32 {
    msg.get(HEADER..HEADER + 4)
        .map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// Fails with the error an `NLMSG_ERROR` message carries.
pub fn error(msg: &[u8]) -> Result<()> {
    match errno(msg) {
        0 => Ok(()),
        e => bail!("{}", std::io::Error::from_raw_os_error(e.abs())),
    }
}

/// The attributes of a message after its nfgenmsg.
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(HEADER + NFGENMSG..).unwrap_or_default()
}

/// The (type, value) of each netlink attribute in `buf`, padded to 4.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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
