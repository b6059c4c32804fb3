//! A netlink connection without the async machinery: a plain blocking
//! socket on which each request is one `send` and its replies are read
//! right away. rtnetlink does a request's work inside the `send` call, so
//! the round trip is two system calls; through rtnetlink's connection
//! task it also costs a channel, a task wake-up and an epoll wait, which
//! at a thousand containers (ten requests each) were most of a cold
//! apply's netlink time. `apply` uses it; readers that interleave many
//! requests on the runtime keep the async connection.

use std::cell::RefCell;
use std::sync::Mutex;

use super::*;

/// Room for one datagram: the kernel caps a dump's datagrams at 32 KiB,
/// and single replies (acks, echoes) are far smaller.
const RECV_BUF: usize = 64 * 1024;

thread_local! {
    /// One receive buffer per thread, whatever the number of sockets (one
    /// per container namespace): a buffer each would be allocated and
    /// faulted in a thousand times.
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(RECV_BUF));
}

/// A blocking rtnetlink socket and the sequence number of its last request.
pub(super) struct Blocking {
    socket: Mutex<(Socket, u32)>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocking")
    }
}

impl Blocking {
    pub(super) fn new(socket: Socket) -> Blocking {
        Blocking {
            socket: Mutex::new((socket, 0)),
        }
    }

    /// Sends `req` and reads every reply up to the end of the exchange: the
    /// ack (or error) of a request with `NLM_F_ACK`, `NLMSG_DONE` of a dump,
    /// else the one answer. Replies are matched by sequence number, so
    /// what is left of an exchange an error cut short is skipped by the
    /// next one.
    pub(super) fn exchange(
        &self,
        mut req: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let mut guard = self
            .socket
            .lock()
            .map_err(|_| anyhow!("netlink socket: an earlier request panicked"))?;
        let (socket, seq) = &mut *guard;
        *seq = seq.wrapping_add(1).max(1);
        let seq = *seq;
        let flags = req.header.flags;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        req.header.sequence_number = seq;
        req.finalize();
        let mut bytes = vec![0u8; req.buffer_len()];
        req.serialize(&mut bytes);
        socket.send(&bytes, 0).context("netlink send")?;
        BUF.with_borrow_mut(|buf| {
            let mut out = Vec::new();
            loop {
                buf.clear();
                let n = socket.recv(buf, 0).context("netlink receive")?;
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                        .map_err(|e| anyhow!("netlink: bad reply: {e}"))?;
                    let len = m.header.length as usize;
                    if len == 0 {
                        bail!("netlink: reply of length 0");
                    }
                    rest = &rest[((len + 3) & !3).min(rest.len())..];
                    if m.header.sequence_number != seq {
                        continue;
                    }
                    match &m.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(KernelError {
                                errno: e.raw_code().abs(),
                                message: ext_ack_message(m.header.flags, &e.header),
                            }
                            .into());
                        }
                        NetlinkPayload::Overrun(_) => bail!("netlink receive buffer overrun"),
                        // The ack, or the end of a dump: the exchange is over.
                        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => {
                            out.push(m);
                            return Ok(out);
                        }
                        _ => {
                            out.push(m);
                            if !dump && !acked {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
        })
    }
}
