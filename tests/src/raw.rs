//! Frames a neighbour sends by hand (AF_PACKET): what no well-behaved stack would send
//! (127.0.0.1 on the wire, forged ARP), aimed at one of the lab's links.
use crate::{Lab, in_netns, sh};

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

/// A TCP SYN from `src`:40000 to `dst`:`dport`, in an Ethernet frame from `src_mac` to
/// `dst_mac`.
pub fn tcp_syn(src_mac: [u8; 6], dst_mac: [u8; 6], src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(40000, dport, 1, 64240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

/// Segments the host namespace's TCP received (tcpInSegs in /proc/net/snmp, RFC 4022, which
/// shows the reading task's namespace): whether a crafted segment reached the host's TCP.
pub fn host_tcp_in_segs(lab: &Lab) -> u64 {
    let snmp = lab.host_ok(&["cat", "/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("Tcp header"), tcp.next().expect("Tcp values"));
    let at = names.split_whitespace().position(|name| name == "InSegs").expect("InSegs");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("InSegs value")
}
