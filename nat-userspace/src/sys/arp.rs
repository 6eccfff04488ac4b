//! ARP probes (RFC 5227) on a raw packet socket: is an IPv4 address in use on a segment.
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

const ETH_P_ARP: u16 = 0x0806;

/// A raw ARP socket bound to `ifindex`, with a short receive timeout, and the broadcast
/// address probes are sent to.
fn arp_socket(ifindex: u32) -> std::io::Result<(OwnedFd, libc::sockaddr_ll)> {
    // SAFETY: socket() with constant arguments; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ARP.to_be())) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: valid fd and sockaddr_ll of the given length.
    if unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            ADDR_LEN,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 100_000),
    )?;
    Ok((socket, addr))
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;

/// An ARP probe (RFC 5227): who has `target`, asked from 0.0.0.0.
fn probe_frame(mac: &[u8], target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac[..6]);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac[..6]);
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// Whether anyone on the segment of `ifindex` answers ARP for `target`: two probes from
/// 0.0.0.0 (RFC 5227), answered within `wait` each.
pub fn address_in_use(ifindex: u32, mac: &[u8], target: Ipv4Addr, wait: Duration) -> std::io::Result<bool> {
    let (socket, addr) = arp_socket(ifindex)?;
    let frame = probe_frame(mac, target);
    for _ in 0..2 {
        // SAFETY: valid fd, frame buffer and sockaddr.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                ADDR_LEN,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 128];
        while Instant::now() < deadline {
            let Ok(n) =
                nix::sys::socket::recv(socket.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty())
            else {
                continue;
            };
            if n < 42 {
                continue;
            }
            let arp = &buf[14..42];
            let op = u16::from_be_bytes([arp[6], arp[7]]);
            let sender_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
            if op == 2 && sender_ip == target {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
