//! Frames a neighbour sends by hand (AF_PACKET): what no well-behaved stack would send
//! (127.0.0.1 on the wire, forged ARP), aimed at one of the lab's links.
use crate::{in_netns, sh};

/// The MAC of `dev` in namespace `ns` (a name under /run/netns).
pub fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    mac_of_path(&format!("/run/netns/{ns}"), dev)
}

pub fn mac_of_path(ns_path: &str, dev: &str) -> [u8; 6] {
    let out = sh("nsenter", &[&format!("--net={ns_path}"), "ip", "-o", "link", "show", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("mac");
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

pub fn ifindex_in(ns_path: &str, dev: &str) -> i32 {
    let dev = dev.to_string();
    in_netns(ns_path, move || nix::net::if_::if_nametoindex(dev.as_str()).expect("ifindex") as i32)
}

/// Sends one raw Ethernet frame out of `ifindex` (AF_PACKET) in the calling thread's namespace.
pub fn send_raw(ifindex: i32, frame: &[u8]) {
    // SAFETY: plain socket syscalls with valid buffers; the fd is closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket");
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        libc::close(fd);
        assert_eq!(sent as usize, frame.len());
    }
}
