//! The ruleset generation: a counter the kernel moves by one with every
//! committed nftables transaction, on any table (`NFT_MSG_GETGEN` over
//! `NETLINK_NETFILTER`). Reading it costs one small request, against a
//! listing of every element: it tells whether anything changed the
//! ruleset between two instants.

use anyhow::{Context, Result, anyhow, bail};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN`.
const GETGEN: u16 = (10 << 8) | 16;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN`: the reply.
const NEWGEN: u16 = (10 << 8) | 15;
const NLMSG_ERROR: u16 = 2;
/// `NFTA_GEN_ID`: the generation, big-endian u32.
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const HEADER: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG: usize = 4;

/// The current ruleset generation of the caller's network namespace.
pub fn generation() -> Result<u32> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("create netfilter netlink socket")?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .context("bind netfilter netlink socket")?;
    let mut req = [0u8; HEADER + NFGENMSG];
    req[0..4].copy_from_slice(&((HEADER + NFGENMSG) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&GETGEN.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0: all zero.
    crate::host::stats::netlink_request();
    socket
        .send(&req, 0)
        .context("ask for the nftables generation")?;
    let mut buf = Vec::with_capacity(8192);
    let n = socket
        .recv(&mut buf, 0)
        .context("read the nftables generation")?;
    parse_reply(&buf[..n])
}

/// The generation in a `NFT_MSG_NEWGEN` reply.
fn parse_reply(buf: &[u8]) -> Result<u32> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let len = buf
        .get(0..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or_else(|| anyhow!("nftables generation: short reply"))?;
    let msg = buf
        .get(..len)
        .filter(|m| m.len() >= HEADER)
        .ok_or_else(|| anyhow!("nftables generation: truncated reply"))?;
    match u16_at(msg, 4) {
        Some(NEWGEN) => {}
        Some(NLMSG_ERROR) => {
            let errno = msg
                .get(HEADER..HEADER + 4)
                .map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
                .unwrap_or(0);
            bail!(
                "nftables generation: {}",
                std::io::Error::from_raw_os_error(errno.abs())
            );
        }
        other => bail!("nftables generation: unexpected reply type {other:?}"),
    }
    // Attributes after the nfgenmsg: length, type, value, padded to 4.
    let mut rest = msg.get(HEADER + NFGENMSG..).unwrap_or_default();
    while let (Some(alen), Some(atype)) = (u16_at(rest, 0), u16_at(rest, 2)) {
        let alen = alen as usize;
        if alen < 4 || alen > rest.len() {
            break;
        }
        if atype & 0x3fff == NFTA_GEN_ID && alen >= 8 {
            return Ok(u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]));
        }
        rest = &rest[((alen + 3) & !3).min(rest.len())..];
    }
    bail!("nftables generation: no NFTA_GEN_ID in the reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; NFGENMSG];
        for (t, v) in attrs {
            body.extend(((4 + v.len()) as u16).to_ne_bytes());
            body.extend(t.to_ne_bytes());
            body.extend(*v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend(((HEADER + body.len()) as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn reads_the_generation_among_other_attributes() {
        let pid = 77u32.to_be_bytes();
        let id = 0x0102_0304u32.to_be_bytes();
        let r = reply(NEWGEN, &[(2, &pid), (3, b"nft\0"), (NFTA_GEN_ID, &id)]);
        assert_eq!(parse_reply(&r).unwrap(), 0x0102_0304);
    }

    #[test]
    fn errors_and_strange_replies_are_refused() {
        let mut err = reply(NLMSG_ERROR, &[]);
        err[HEADER..HEADER + 4].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let e = parse_reply(&err).unwrap_err().to_string();
        assert!(e.contains("not permitted"), "{e}");
        assert!(parse_reply(&reply(NEWGEN, &[(2, &[0, 0, 0, 1])])).is_err());
        assert!(parse_reply(&reply(99, &[])).is_err());
        assert!(parse_reply(&[1, 2]).is_err());
    }
}
