//! Reading many namespaces at once: one helper thread joins each namespace
//! in turn, opens a plain blocking socket there and dumps links, addresses
//! and routes with ordinary `send`/`recv` calls. No thread per namespace and
//! no async round trip per reply: at a thousand containers those, not the
//! kernel, were most of an observation's cost.

use std::path::PathBuf;

use super::*;

/// What one namespace holds, from one dump of each kind.
pub type Dumps = (Vec<Link>, Vec<Addr>, Vec<Route>);

/// Room for one datagram of a dump (the kernel sends at most 32 KiB per
/// datagram for dumps).
const RECV_BUF: usize = 256 * 1024;

/// Dumps every namespace of `paths`, in order, one result each. `threads`
/// helper threads share the list (the work is system calls, so more than
/// the number of cores gains nothing).
pub fn dump_each(paths: Vec<PathBuf>, threads: usize) -> Result<Vec<Result<Dumps>>> {
    let threads = threads.max(1).min(paths.len().max(1));
    let per = paths.len().div_ceil(threads).max(1);
    let mut handles = Vec::new();
    let mut chunks = paths
        .chunks(per)
        .map(<[PathBuf]>::to_vec)
        .collect::<Vec<_>>();
    for chunk in chunks.drain(..) {
        handles.push(std::thread::spawn(move || {
            // One receive buffer per thread: a fresh one per namespace
            // would be mapped and faulted in a thousand times.
            let mut buf = Vec::with_capacity(RECV_BUF);
            netns::run_in_each(chunk, || {
                let socket = new_socket()?;
                Ok((
                    dump_of(&socket, &mut buf)?,
                    dump_of(&socket, &mut buf)?,
                    dump_of(&socket, &mut buf)?,
                ))
            })
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => out.extend(r?),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    Ok(out)
}

/// Every object of kind `T` in the socket's namespace: one dump request
/// and all its replies, retried when the kernel says a concurrent change
/// interrupted it (after a pause, see `dump_backoff`), like the async
/// [`Netlink`] dumps.
fn dump_of<T: Dumped>(socket: &Socket, buf: &mut Vec<u8>) -> Result<Vec<T>> {
    let what = T::WHAT;
    for attempt in 0..super::DUMP_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(super::dump_backoff(attempt - 1));
        }
        crate::host::stats::netlink_request();
        let mut req = NetlinkMessage::from(T::request());
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = 1;
        req.finalize();
        let mut bytes = vec![0u8; req.buffer_len()];
        req.serialize(&mut bytes);
        socket
            .send(&bytes, 0)
            .with_context(|| format!("dump {what}: send"))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        'datagrams: loop {
            buf.clear();
            let n = socket
                .recv(buf, 0)
                .with_context(|| format!("dump {what}: receive"))?;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| anyhow!("dump {what}: bad reply: {e}"))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                match m.payload {
                    NetlinkPayload::Done(_) => break 'datagrams,
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(KernelError {
                            errno: e.raw_code().abs(),
                            message: ext_ack_message(m.header.flags, &e.header),
                        })
                        .with_context(|| format!("dump {what}"));
                    }
                    NetlinkPayload::Overrun(_) => bail!("dump {what}: receive buffer overrun"),
                    NetlinkPayload::InnerMessage(inner) => out.extend(T::parse(&inner)),
                    _ => {}
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
            }
        }
        if !interrupted {
            return Ok(out);
        }
    }
    bail!(
        "dump {what}: interrupted by concurrent changes {} times in a row",
        super::DUMP_ATTEMPTS
    )
}
