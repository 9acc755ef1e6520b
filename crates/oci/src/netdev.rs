//! `linux.netDevices` (runtime-spec 1.3): host interfaces moved into the
//! container's new network namespace, renamed, and set up.
//!
//! All done by the runtime before the init goes on: it reads each device's
//! permanent global addresses (the spec says they are kept; the kernel drops
//! addresses on a move), moves the device with RTM_NEWLINK + IFLA_NET_NS_FD,
//! then, from a thread that joined the new namespace (netlink sockets belong
//! to their creator's namespace), renames it, sets it up and adds the
//! addresses back. The rename is a second message because the kernel only
//! applies a name given with a move when the old one clashes. Raw
//! rtnetlink: a handful of small messages do not need a netlink crate.
//!
//! Nothing moves them back on delete: the spec forbids it; when the
//! namespace dies the kernel returns physical devices to the host and
//! destroys virtual ones (veth, macvlan).

use crate::error::{Error, Result};
use oci_spec::runtime::LinuxNetDevice;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
const IFA_F_PERMANENT: u32 = 0x80;
const RT_SCOPE_UNIVERSE: u8 = 0;
const IFLA_IFNAME: u16 = 3;
const IFLA_NET_NS_FD: u16 = 28;
/// IFNAMSIZ less the terminating NUL.
const MAX_NAME: usize = 15;

/// Checks an interface name as the kernel's dev_valid_name does, so a bad
/// one fails create before anything exists.
pub fn valid_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_NAME {
        return Err("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("may not be \".\" or \"..\"");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err("may not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// Validates the map: host names and new names (`%d` templates allowed in
/// new names, as the spec says), and that a new network namespace exists.
pub fn validate(file: &str, devs: &HashMap<String, LinuxNetDevice>, new_netns: bool) -> Result<()> {
    if devs.is_empty() {
        return Ok(());
    }
    if !new_netns {
        return Err(Error::config(
            file,
            "linux.netDevices",
            "moving network devices needs a new network namespace in linux.namespaces",
        ));
    }
    for (host, d) in devs {
        valid_name(host).map_err(|m| {
            Error::config(
                file,
                format!("linux.netDevices.{host}"),
                format!("host name {m}"),
            )
        })?;
        if let Some(n) = d.name() {
            valid_name(n).map_err(|m| {
                Error::config(
                    file,
                    format!("linux.netDevices.{host}.name"),
                    format!("{n:?} {m}"),
                )
            })?;
        }
    }
    Ok(())
}

/// A struct nlmsghdr whose length [`finish`] fills in.
fn header(typ: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&typ.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

/// Appends one attribute (struct rtattr + data, padded to 4 bytes).
fn attr(m: &mut Vec<u8>, typ: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&typ.to_ne_bytes());
    m.extend_from_slice(data);
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// One RTM_NEWLINK request for interface `index`: optionally to the network
/// namespace `ns_fd`, a new name, and IFF_UP.
pub fn encode_newlink(
    seq: u32,
    index: i32,
    ns_fd: Option<RawFd>,
    name: Option<&str>,
    up: bool,
) -> Vec<u8> {
    let mut m = header(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let iff_up = if up { libc::IFF_UP as u32 } else { 0 };
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&iff_up.to_ne_bytes());
    m.extend_from_slice(&iff_up.to_ne_bytes());
    if let Some(fd) = ns_fd {
        attr(&mut m, IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes());
    }
    if let Some(n) = name {
        let mut z = n.as_bytes().to_vec();
        z.push(0);
        attr(&mut m, IFLA_IFNAME, &z);
    }
    finish(m)
}

/// An address to carry over: struct ifaddrmsg's family, prefix length and
/// flags, and its IFA_LOCAL / IFA_ADDRESS / IFA_BROADCAST attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    family: u8,
    prefixlen: u8,
    attrs: Vec<(u16, Vec<u8>)>,
}

/// The attributes of one message body after a fixed header of `skip` bytes.
fn attrs_of(body: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = skip;
    while at + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        let typ = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
        if len < 4 || at + len > body.len() {
            break;
        }
        out.push((typ, &body[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// Parses one RTM_NEWADDR body (ifaddrmsg + attributes): the address if it
/// is interface `index`'s, permanent and of global scope (the ones the spec
/// says move with the device).
pub fn parse_addr(body: &[u8], index: i32) -> Option<Addr> {
    if body.len() < 8 {
        return None;
    }
    let (family, prefixlen, flags8, scope) = (body[0], body[1], body[2], body[3]);
    let ifindex = i32::from_ne_bytes(body[4..8].try_into().ok()?);
    let attrs = attrs_of(body, 8);
    // IFA_FLAGS (32 bits) supersedes the 8-bit field when present.
    let flags = attrs
        .iter()
        .find(|(t, d)| *t == IFA_FLAGS && d.len() == 4)
        .map(|(_, d)| u32::from_ne_bytes([d[0], d[1], d[2], d[3]]))
        .unwrap_or(flags8 as u32);
    if ifindex != index || scope != RT_SCOPE_UNIVERSE || flags & IFA_F_PERMANENT == 0 {
        return None;
    }
    let keep = attrs
        .into_iter()
        .filter(|(t, _)| matches!(*t, IFA_LOCAL | IFA_ADDRESS | IFA_BROADCAST))
        .map(|(t, d)| (t, d.to_vec()))
        .collect();
    Some(Addr {
        family,
        prefixlen,
        attrs: keep,
    })
}

/// RTM_NEWADDR for `a` on interface `index`.
pub fn encode_newaddr(seq: u32, index: i32, a: &Addr) -> Vec<u8> {
    let mut m = header(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    );
    m.extend_from_slice(&[a.family, a.prefixlen, 0, RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&index.to_ne_bytes());
    for (t, d) in &a.attrs {
        attr(&mut m, *t, d);
    }
    finish(m)
}

/// Sends one request on a fresh NETLINK_ROUTE socket (of the calling
/// thread's network namespace) and waits for the kernel's ack.
fn request(msg: &[u8]) -> std::io::Result<()> {
    exchange(msg, |_| {})
}

/// Sends `msg` and hands every reply body to `each` until the ack, an
/// error or the end of a dump.
fn exchange(msg: &[u8], mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and addr are valid for the given lengths.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        // One datagram may hold several messages (dumps).
        let mut at = 0;
        let n = n as usize;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let typ = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < 16 || at + len > n {
                return Err(std::io::Error::other("malformed netlink reply"));
            }
            let body = &buf[at + 16..at + len];
            match typ {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR if body.len() >= 4 => {
                    // struct nlmsgerr: int error, then the request's header.
                    let err = i32::from_ne_bytes(body[..4].try_into().unwrap());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::from_raw_os_error(-err))
                    };
                }
                _ => each(body),
            }
            at += (len + 3) & !3;
        }
    }
}

/// The permanent global addresses of interface `index` (this namespace).
fn addrs_of(index: i32) -> std::io::Result<Vec<Addr>> {
    let mut m = header(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1);
    // struct ifaddrmsg, all families.
    m.extend_from_slice(&[0u8; 8]);
    let mut out = Vec::new();
    exchange(&finish(m), |body| out.extend(parse_addr(body, index)))?;
    Ok(out)
}

fn index_of(name: &str) -> std::io::Result<i32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(i as i32)
}

/// Moves every listed host device into the network namespace of process
/// `pid` (the container's init), then names it, sets it up and gives it
/// back its permanent addresses there.
pub fn move_all(devs: &HashMap<String, LinuxNetDevice>, pid: i32) -> Result<()> {
    if devs.is_empty() {
        return Ok(());
    }
    let ns = crate::fsutil::open_path(
        std::path::Path::new(&format!("/proc/{pid}/ns/net")),
        libc::O_RDONLY | libc::O_CLOEXEC,
    )?;
    let mut moved = Vec::new();
    for host in sorted(devs) {
        let err = |e: std::io::Error| Error::Os {
            ctx: format!("linux.netDevices.{host}: moving it into the container"),
            err: e,
        };
        let i = index_of(host).map_err(err)?;
        let addrs = addrs_of(i).map_err(err)?;
        request(&encode_newlink(1, i, Some(ns.as_raw_fd()), None, false)).map_err(err)?;
        moved.push((host.clone(), devs[host].name().clone(), addrs));
    }
    // setns(CLONE_NEWNET) changes only the calling thread: a short-lived
    // thread does the in-namespace part and the runtime stays where it is.
    let ns_fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // SAFETY: ns_fd is an open network namespace fd.
            if unsafe { libc::setns(ns_fd, libc::CLONE_NEWNET) } != 0 {
                return Err(crate::error::last_os(
                    "linux.netDevices: joining the container's network namespace",
                ));
            }
            for (host, name, addrs) in &moved {
                configure(host, name.as_deref(), addrs)?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Other("linux.netDevices: thread panicked".into())))
    })
}

/// In the container's namespace: the device's name (the host's when none
/// is given), IFF_UP, and its addresses.
fn configure(host: &str, name: Option<&str>, addrs: &[Addr]) -> Result<()> {
    let want = name.unwrap_or(host);
    let err = |e: std::io::Error| Error::Os {
        ctx: format!("linux.netDevices.{host}.name {want:?}"),
        err: e,
    };
    let i = index_of(host).map_err(err)?;
    let rename = (want != host).then_some(want);
    request(&encode_newlink(1, i, None, rename, true)).map_err(err)?;
    for a in addrs {
        request(&encode_newaddr(1, i, a)).map_err(|e| Error::Os {
            ctx: format!("linux.netDevices.{host}: restoring an address"),
            err: e,
        })?;
    }
    Ok(())
}

/// A stable order, so errors and renames do not depend on hashing.
fn sorted(devs: &HashMap<String, LinuxNetDevice>) -> Vec<&String> {
    let mut v: Vec<&String> = devs.keys().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlink_encoding() {
        let m = encode_newlink(7, 42, Some(9), Some("eth1"), true);
        // 16 header + 16 ifinfomsg + 8 (ns fd) + 12 ("eth1\0" padded)
        assert_eq!(m.len(), 52);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 52);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWLINK);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 42);
        assert_eq!(u32::from_ne_bytes(m[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(m[28..32].try_into().unwrap()), 1);
        assert_eq!(&m[32..36], &[8, 0, 28, 0][..]);
        assert_eq!(u32::from_ne_bytes(m[36..40].try_into().unwrap()), 9);
        assert_eq!(&m[40..44], &[9, 0, 3, 0][..]);
        assert_eq!(&m[44..52], b"eth1\0\0\0\0");
        // Only what is asked for.
        assert_eq!(encode_newlink(1, 3, None, None, false).len(), 32);
    }

    #[test]
    fn address_round_trip() {
        // ifaddrmsg: AF_INET /24, IFA_F_PERMANENT, global scope, index 5;
        // IFA_ADDRESS and IFA_LOCAL 10.1.2.3, and an IFA_LABEL to drop.
        let mut body = vec![libc::AF_INET as u8, 24, 0x80, 0];
        body.extend_from_slice(&5i32.to_ne_bytes());
        attr(&mut body, IFA_ADDRESS, &[10, 1, 2, 3]);
        attr(&mut body, IFA_LOCAL, &[10, 1, 2, 3]);
        attr(&mut body, 3, b"eth0\0");
        let a = parse_addr(&body, 5).unwrap();
        assert_eq!(a.attrs.len(), 2);
        assert!(parse_addr(&body, 6).is_none());
        // Not permanent (a DHCP lease), or link scope: not carried over.
        let mut dyn_ = body.clone();
        dyn_[2] = 0;
        assert!(parse_addr(&dyn_, 5).is_none());
        let mut link = body.clone();
        link[3] = 253;
        assert!(parse_addr(&link, 5).is_none());
        let m = encode_newaddr(1, 9, &a);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0][..]);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 9);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
    }

    #[test]
    fn names() {
        for ok in ["eth0", "a", "ctr_0-x.y", "eth%d", "123456789012345"] {
            assert!(valid_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "tab\t",
            "1234567890123456",
        ] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }
}
