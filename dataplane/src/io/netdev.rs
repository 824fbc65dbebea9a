//! Interface configuration by ioctl on the calling thread's network namespace: index, MAC,
//! MTU, administrative state and promiscuous mode.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::wire::EthernetAddress;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// `struct ifreq`: a name and a 24-byte union.
#[repr(C)]
pub(crate) struct IfReq {
    pub name: [u8; 16],
    pub data: [u8; 24],
}

impl IfReq {
    pub fn new(name: &str) -> io::Result<IfReq> {
        if name.is_empty() || name.len() > IFNAME_MAX || name.bytes().any(|b| b == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let mut req = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn ioctl(fd: &impl AsRawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `req` is a valid, properly sized `struct ifreq` for these requests.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut IfReq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get(name: &str, request: libc::c_ulong) -> io::Result<IfReq> {
    let mut req = IfReq::new(name)?;
    ioctl(&control_socket()?, request, &mut req)?;
    Ok(req)
}

/// The interface index of `name`, or `NotFound`.
pub fn index(name: &str) -> io::Result<u32> {
    let req = get(name, libc::SIOCGIFINDEX)?;
    Ok(i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]) as u32)
}

pub fn exists(name: &str) -> bool {
    index(name).is_ok()
}

pub fn mac(name: &str) -> io::Result<EthernetAddress> {
    let req = get(name, libc::SIOCGIFHWADDR)?;
    Ok(EthernetAddress::from_bytes(&req.data[2..8]))
}

pub fn set_mac(name: &str, mac: EthernetAddress) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    req.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
    req.data[2..8].copy_from_slice(mac.as_bytes());
    ioctl(&control_socket()?, libc::SIOCSIFHWADDR, &mut req)
}

pub fn mtu(name: &str) -> io::Result<u32> {
    let req = get(name, libc::SIOCGIFMTU)?;
    Ok(i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]) as u32)
}

pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    req.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
    ioctl(&control_socket()?, libc::SIOCSIFMTU, &mut req)
}

fn flags(sock: &OwnedFd, name: &str) -> io::Result<i16> {
    let mut req = IfReq::new(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    Ok(i16::from_ne_bytes([req.data[0], req.data[1]]))
}

/// Sets `set` and clears `clear` in the interface flags.
pub fn update_flags(name: &str, set: i32, clear: i32) -> io::Result<()> {
    let sock = control_socket()?;
    let current = flags(&sock, name)?;
    let new = (current | set as i16) & !(clear as i16);
    let mut req = IfReq::new(name)?;
    req.data[..2].copy_from_slice(&new.to_ne_bytes());
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)
}

pub fn set_up(name: &str) -> io::Result<()> {
    update_flags(name, libc::IFF_UP, 0)
}

pub fn is_up(name: &str) -> io::Result<bool> {
    Ok(flags(&control_socket()?, name)? as i32 & libc::IFF_UP != 0)
}
