//! The ruleset generation: a counter the kernel moves by one with every
//! committed nftables transaction, on any table (`NFT_MSG_GETGEN` over
//! `NETLINK_NETFILTER`). Reading it costs one small request, against a
//! listing of every element: it tells whether anything changed the
//! ruleset between two instants.

use anyhow::{Context, Result, anyhow, bail};

use super::nfnl::{self, GETGEN, NEWGEN, NLM_F_REQUEST, NLMSG_ERROR};

/// `NFTA_GEN_ID`: the generation, big-endian u32.
const NFTA_GEN_ID: u16 = 1;

/// The current ruleset generation of the caller's network namespace.
pub fn generation() -> Result<u32> {
    let socket = nfnl::socket()?;
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
    let req = nfnl::finish(nfnl::request(GETGEN, NLM_F_REQUEST, 1, 0));
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
    let Some(first) = nfnl::messages(buf).next() else {
        bail!("nftables generation: empty reply");
    };
    let (kind, _, msg) = first.map_err(|e| anyhow!("nftables generation: {e}"))?;
    match kind {
        NEWGEN => {}
        NLMSG_ERROR => match nfnl::error(msg) {
            Err(e) => bail!("nftables generation: {e}"),
            Ok(()) => bail!("nftables generation: an acknowledgement, not the generation"),
        },
        other => bail!("nftables generation: unexpected reply type {other}"),
    }
    nfnl::attrs(nfnl::body(msg))
        .find(|(kind, value)| *kind == NFTA_GEN_ID && value.len() >= 4)
        .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        .ok_or_else(|| anyhow!("nftables generation: no NFTA_GEN_ID in the reply"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nft::nfnl::{HEADER, NFGENMSG};

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
