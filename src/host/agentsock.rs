//! The agent's unix socket, `/run/netloom/agent.sock`: `plan` and
//! `status` ask the running agent, which answers from its view of the
//! host kept current by kernel events, instead of reading every container
//! namespace again.
//!
//! Nothing on the socket is trusted blindly. The client talks only to a
//! socket file owned by root with mode 0600 whose peer (SO_PEERCRED) is
//! root, that greets it with this protocol's version within a second and
//! answers within [`ANSWER_WAIT`]; otherwise the command reads the kernel
//! itself. The agent answers only peers whose uid is 0.
//!
//! The protocol: the agent writes a [`Hello`] line on accept; the client
//! writes one [`Request`] line; the agent writes one [`Reply`] line and
//! closes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::host::marks::RUN_DIR;

/// The protocol's version: a client and an agent of different versions
/// do not talk (the client reads the kernel itself). 2: the command asks
/// before parsing the file, so the state dir is its flag's only and the
/// agent works out the rest of the host settings.
pub const VERSION: u32 = 2;
/// How long the client waits for the agent's greeting.
pub const HELLO_WAIT: Duration = Duration::from_secs(1);
/// How long the client waits for an answer (the agent may be in the
/// middle of a reconcile; past this the command reads the kernel itself).
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// A request larger than this is refused (the file is at most a few MB).
const MAX_REQUEST: u64 = 16 << 20;

/// The socket's path.
pub fn path() -> PathBuf {
    Path::new(RUN_DIR).join("agent.sock")
}

/// The agent's greeting.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub netloom_agent: u32,
}

/// What the command asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    /// `plan` or `status`.
    pub command: String,
    /// The file, as the command was given it, and the bytes it read.
    pub config: PathBuf,
    pub config_text: String,
    /// The command's `--state-dir` (or `NETLOOM_STATE_DIR`), if given.
    /// The command asks before it parses the file, so without one the
    /// agent takes the state dir as the command would have: the one the
    /// file names (it answers only for the bytes it parsed itself), else
    /// the default.
    pub state_dir: Option<PathBuf>,
    /// resolv.conf's servers as the command read them. The agent plans
    /// with these, not with its own; and, like the command, it takes an
    /// agent to serve DNS when the state dir's status names a live one.
    pub upstream_dns: Vec<SocketAddr>,
    /// `text`, `json` or `markdown`.
    pub format: String,
    pub detailed: bool,
    pub verbose: bool,
    /// Colour the text (the command's stdout is a terminal).
    pub color: bool,
}

/// The agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    pub answer: Answer,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Answer {
    /// What the command prints, and its exit status.
    Output {
        stdout: String,
        stderr: String,
        exit: u8,
    },
    /// The agent does not answer this (another file or state dir, a
    /// cluster agent, the state dir busy): the command reads the kernel.
    Declined(String),
}

/// Asks the agent; an error says why the command reads the kernel itself.
pub fn ask(req: &Request) -> Result<Answer> {
    let p = path();
    let meta = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
    if !meta.file_type().is_socket() {
        bail!("{} is not a socket", p.display());
    }
    if meta.uid() != 0 || meta.permissions().mode() & 0o777 != 0o600 {
        bail!(
            "{} is not root's with mode 0600 (uid {}, mode {:o}): not trusted",
            p.display(),
            meta.uid(),
            meta.permissions().mode() & 0o777
        );
    }
    let stream = UnixStream::connect(&p).with_context(|| format!("connect {}", p.display()))?;
    let uid = peer_uid(&stream)?;
    if uid != 0 {
        bail!(
            "the process behind {} runs as uid {uid}, not root",
            p.display()
        );
    }
    stream.set_read_timeout(Some(HELLO_WAIT))?;
    stream.set_write_timeout(Some(ANSWER_WAIT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line).context("read the greeting")?;
    let hello: Hello = serde_json::from_str(&line).context("not a netloom agent's greeting")?;
    if hello.netloom_agent != VERSION {
        bail!(
            "the agent speaks version {} of the protocol, this command {VERSION}",
            hello.netloom_agent
        );
    }
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    (&stream)
        .write_all(text.as_bytes())
        .context("send the request")?;
    stream.set_read_timeout(Some(ANSWER_WAIT))?;
    line.clear();
    reader.read_line(&mut line).context("read the answer")?;
    let reply: Reply = serde_json::from_str(&line).context("not an answer")?;
    if reply.version != VERSION {
        bail!("the answer has version {}", reply.version);
    }
    Ok(reply.answer)
}

/// The uid of the process at the other end (SO_PEERCRED).
pub fn peer_uid(stream: &impl AsRawFd) -> Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_PEERCRED");
    }
    Ok(cred.uid)
}

/// The agent's socket file; dropping it removes the file if it is still
/// the one [`Listener::bind`] made.
pub struct SocketFile {
    /// (dev, inode) of the socket file.
    id: (u64, u64),
}

/// The agent's side of the protocol.
pub struct Listener;

impl Listener {
    /// Binds the socket root-only: made under a temporary name, given mode
    /// 0600, then renamed into place, so that it is never reachable with
    /// another mode. A socket left by an agent that died is replaced (only
    /// the holder of the agent lock calls this).
    pub fn bind() -> Result<(tokio::net::UnixListener, SocketFile)> {
        let p = path();
        let dir = p
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent", p.display()))?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let tmp = dir.join(format!(".agent.sock.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = tokio::net::UnixListener::bind(&tmp)
            .with_context(|| format!("bind {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("rename to {}", p.display()))?;
        let meta = std::fs::symlink_metadata(&p)?;
        Ok((
            listener,
            SocketFile {
                id: (meta.dev(), meta.ino()),
            },
        ))
    }

    /// Reads one request from an accepted connection after greeting it;
    /// None (and the connection dropped) for a peer that is not root or
    /// does not speak the protocol.
    pub async fn request(stream: &mut tokio::net::UnixStream) -> Option<Request> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        if peer_uid(stream).ok()? != 0 {
            return None;
        }
        let hello = serde_json::to_string(&Hello {
            netloom_agent: VERSION,
        })
        .ok()?;
        stream
            .write_all(format!("{hello}\n").as_bytes())
            .await
            .ok()?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(&mut *stream).take(MAX_REQUEST);
        tokio::time::timeout(ANSWER_WAIT, reader.read_line(&mut line))
            .await
            .ok()?
            .ok()?;
        let req: Request = serde_json::from_str(&line).ok()?;
        (req.version == VERSION).then_some(req)
    }

    /// Writes the reply (best effort: the client may have given up).
    pub async fn reply(stream: &mut tokio::net::UnixStream, answer: Answer) {
        use tokio::io::AsyncWriteExt;
        let Ok(mut text) = serde_json::to_string(&Reply {
            version: VERSION,
            answer,
        }) else {
            return;
        };
        text.push('\n');
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let p = path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&p);
        }
    }
}
