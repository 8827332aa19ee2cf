//! Who holds the other end of each connection to a Unix socket (the daemon's): the kernel's
//! sock_diag netlink interface (what `ss -xp` asks) lists each connected socket bound to the path
//! with its peer's inode, and `/proc/PID/fd` says which process holds that inode.
//!
//! Hand-written over `libc`: one request and one reply format (`unix_diag_req`; `unix_diag_msg` with
//! its NAME and PEER attributes), where netlink-packet-sock-diag would bring four crates for it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// `SOCK_DIAG_BY_FAMILY`: the request, and the type of each answer.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
/// A connected stream socket's state (`TCP_ESTABLISHED`, as the kernel names it for Unix sockets too).
const TCP_ESTABLISHED: u32 = 1;
const HEADER: usize = 16;

/// One connection to a watched socket: the inode of the daemon's end, and of the client's end
/// when the kernel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub inode: u32,
    pub peer: Option<u32>,
}

/// The connected sockets bound to one of `paths` — the daemon's end of each client's connection
/// (an accepted socket carries its listener's name) — with their peers.
pub fn connections(paths: &[PathBuf]) -> io::Result<Vec<Connection>> {
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = request();
    // SAFETY: the buffer is valid for its length; the kernel is addressed by a zeroed sockaddr_nl.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let names: Vec<&[u8]> = paths.iter().map(|path| path.as_os_str().as_bytes()).collect();
    let mut found = Vec::new();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: the buffer is valid for writes of its length.
        let received = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if received < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if received == 0 || read_batch(&buffer[..received as usize], &names, &mut found)? {
            return Ok(found);
        }
    }
}

/// The dump request: a netlink header, then `unix_diag_req` asking for connected sockets with
/// their names and peers.
fn request() -> Vec<u8> {
    let mut request = Vec::with_capacity(HEADER + 24);
    request.extend_from_slice(&((HEADER + 24) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    request.push(libc::AF_UNIX as u8); // sdiag_family
    request.push(0); // sdiag_protocol
    request.extend_from_slice(&0u16.to_ne_bytes()); // pad
    request.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes()); // udiag_states
    request.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino: any
    request.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    request.extend_from_slice(&[0u8; 8]); // udiag_cookie
    request
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads one batch of answers into `found` (the sockets bound to one of `names`); `Ok(true)` at
/// the dump's end.
fn read_batch(batch: &[u8], names: &[&[u8]], found: &mut Vec<Connection>) -> io::Result<bool> {
    let broken = || io::Error::new(io::ErrorKind::InvalidData, "a malformed sock_diag answer");
    let mut at = 0;
    while at + HEADER <= batch.len() {
        let length = u32_at(batch, at).ok_or_else(broken)? as usize;
        let kind = u16_at(batch, at + 4).ok_or_else(broken)?;
        if length < HEADER || at + length > batch.len() {
            return Err(broken());
        }
        let body = &batch[at + HEADER..at + length];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or_else(broken)? as i32;
                return Err(io::Error::from_raw_os_error(-code));
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= 16 => {
                // unix_diag_msg: family, type, state, pad, inode, cookie[2]; then the attributes.
                let inode = u32_at(body, 4).ok_or_else(broken)?;
                let (name, peer) = attributes(&body[16..]);
                let name = name.map(|name| name.split(|byte| *byte == 0).next().unwrap_or_default());
                if name.is_some_and(|name| names.contains(&name)) {
                    found.push(Connection { inode, peer });
                }
            }
            _ => {}
        }
        at += length.next_multiple_of(4);
    }
    Ok(false)
}

/// A socket's NAME (the path it is bound to, as given to bind(2)) and PEER (the inode of the other
/// end) attributes.
fn attributes(mut rest: &[u8]) -> (Option<&[u8]>, Option<u32>) {
    let (mut name, mut peer) = (None, None);
    while rest.len() >= 4 {
        let (Some(length), Some(kind)) = (u16_at(rest, 0), u16_at(rest, 2)) else { break };
        let length = length as usize;
        if length < 4 || length > rest.len() {
            break;
        }
        let payload = &rest[4..length];
        match kind {
            UNIX_DIAG_NAME => name = Some(payload),
            UNIX_DIAG_PEER => peer = u32_at(payload, 0),
            _ => {}
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    (name, peer)
}

/// For each socket inode of `inodes`, the process that holds it: its pid and its name
/// (`/proc/PID/comm`, as `ps -o comm` shows it). Processes the agent may not look into (it is not
/// root) are left out, and so are their sockets.
pub fn owners(inodes: &[u32]) -> HashMap<u32, (u32, String)> {
    let mut wanted: HashSet<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let mut found = HashMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return found };
    for process in processes.flatten() {
        if wanted.is_empty() {
            break;
        }
        let Some(pid) = process.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(descriptors) = std::fs::read_dir(process.path().join("fd")) else { continue };
        for descriptor in descriptors.flatten() {
            let Ok(target) = std::fs::read_link(descriptor.path()) else { continue };
            let Some(target) = target.to_str() else { continue };
            if wanted.remove(target) {
                let inode = target["socket:[".len()..target.len() - 1].parse().unwrap_or_default();
                let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
                found.insert(inode, (pid, name.trim().to_string()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `unix_diag_msg` answer as the kernel writes it.
    fn answer(inode: u32, name: Option<&[u8]>, peer: Option<u32>) -> Vec<u8> {
        let mut body = vec![libc::AF_UNIX as u8, 1, 1, 0];
        body.extend_from_slice(&inode.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        let mut attribute = |kind: u16, payload: &[u8]| {
            body.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(payload);
            body.resize(body.len().next_multiple_of(4), 0);
        };
        if let Some(name) = name {
            attribute(UNIX_DIAG_NAME, name);
        }
        if let Some(peer) = peer {
            attribute(UNIX_DIAG_PEER, &peer.to_ne_bytes());
        }
        let mut message = ((HEADER + body.len()) as u32).to_ne_bytes().to_vec();
        message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        message.extend_from_slice(&[0u8; 10]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn the_sockets_bound_to_a_watched_path_are_read_with_their_peers() {
        let mut batch = answer(100, Some(b"/run/docker.sock\0"), Some(200));
        batch.extend(answer(101, Some(b"/run/containerd/containerd.sock\0"), Some(201)));
        batch.extend(answer(102, None, Some(100)));
        batch.extend(answer(103, Some(b"/run/docker.sock\0"), None));
        let names: Vec<&[u8]> = vec![b"/run/docker.sock"];
        let mut found = Vec::new();
        assert!(!read_batch(&batch, &names, &mut found).unwrap(), "no end of the dump yet");
        assert_eq!(found, [Connection { inode: 100, peer: Some(200) }, Connection { inode: 103, peer: None }]);

        let mut done = ((HEADER + 4) as u32).to_ne_bytes().to_vec();
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0u8; 14]);
        assert!(read_batch(&done, &names, &mut found).unwrap());
        assert!(read_batch(&batch[..20], &names, &mut found).is_err(), "a truncated answer");
    }

    #[test]
    fn a_connection_of_this_process_is_found_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let found = connections(std::slice::from_ref(&path)).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let peer = found[0].peer.expect("the client's end");
        use std::os::unix::fs::MetadataExt;
        let client_inode = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd())).unwrap().ino();
        assert_eq!(u64::from(peer), client_inode);
        let owners = owners(&[peer]);
        assert_eq!(owners.get(&peer).map(|(pid, _)| *pid), Some(std::process::id()), "{owners:?}");
    }
}
