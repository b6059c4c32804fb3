//! Kernel errors: the errno and extended-ACK text of an `NLMSG_ERROR`,
//! kept in the error chain so callers can test for an errno.

use std::fmt;

use super::*;

/// An `NLMSG_ERROR` from the kernel: the (positive) errno plus the extended
/// ACK message if the kernel sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub errno: i32,
    pub message: Option<String>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let desc = nix::errno::Errno::from_raw(self.errno).desc();
        match &self.message {
            Some(msg) => write!(f, "{desc} ({msg})"),
            None => f.write_str(desc),
        }
    }
}

impl std::error::Error for KernelError {}

/// Whether `err` was caused by the OS error `errno` (e.g. `libc::EEXIST`),
/// whether it came from netlink, a syscall via nix, or std I/O.
pub fn is_errno(err: &anyhow::Error, errno: i32) -> bool {
    err.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<KernelError>() {
            e.errno == errno
        } else if let Some(e) = cause.downcast_ref::<nix::errno::Errno>() {
            *e as i32 == errno
        } else if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            e.raw_os_error() == Some(errno)
        } else if let Some(rtnetlink::Error::NetlinkError(e)) = cause.downcast_ref() {
            e.raw_code().abs() == errno
        } else {
            false
        }
    })
}

/// Extract the extended-ACK text (`NLMSGERR_ATTR_MSG`) from the payload of
/// an `NLMSG_ERROR` after its errno: the offending request's header (only the
/// header if `NLM_F_CAPPED`, else the whole request), then TLVs if
/// `NLM_F_ACK_TLVS`.
pub(super) fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    const NLMSGHDR_LEN: usize = 16;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSGHDR_LEN {
        return None;
    }
    let mut offset = if flags & NLM_F_CAPPED != 0 {
        NLMSGHDR_LEN
    } else {
        let len = u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize;
        len.checked_add(3)? & !3
    };
    while offset + 4 <= payload.len() {
        let len = u16::from_ne_bytes(payload[offset..offset + 2].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(payload[offset + 2..offset + 4].try_into().ok()?) & 0x3fff;
        if len < 4 || offset + len > payload.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &payload[offset + 4..offset + len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        offset += (len + 3) & !3;
    }
    None
}
