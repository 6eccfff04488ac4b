//! A host shaped like most real ones: besides the uplink (`up0`, the default route) a
//! second NIC on another LAN (`eth1`, 203.0.113.1/24, a neighbour at .2) and a VPN device
//! (`vpn0`, 100.64.0.1/24 as Tailscale numbers its peers, the peer at .2), a TUN device like wg0 or tailscale0 whose
//! packets a userspace process carries to the peer (what wireguard-go and tailscaled do,
//! minus the crypto). Every neighbour is a namespace of the lab's own, deleted with it.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{Lab, in_netns, must};

pub const NIC2_HOST_IP: &str = "203.0.113.1";
pub const NIC2_PEER_IP: &str = "203.0.113.2";
/// The second NIC's LAN over IPv6 (documentation prefix).
pub const NIC2_HOST_IP6: &str = "2001:db8:203::1";
pub const NIC2_PEER_IP6: &str = "2001:db8:203::2";
pub const VPN_HOST_IP: &str = "100.64.0.1";
pub const VPN_PEER_IP: &str = "100.64.0.2";

/// The second NIC's neighbour namespace.
pub struct SecondNic {
    pub peer_ns: String,
}

impl SecondNic {
    /// `eth1` in the host namespace, wired to a neighbour (its `lan0`) on 203.0.113.0/24 and
/// 2001:db8:203::/64.
    pub fn add(lab: &mut Lab) -> Self {
        let peer_ns = lab.add_netns("lan2").expect("neighbour namespace");
        must(
            "ip",
            &["link", "add", "eth1", "netns", &lab.host_ns, "type", "veth", "peer", "name", "lan0", "netns", &peer_ns],
        );
        must("ip", &["-n", &lab.host_ns, "addr", "add", &format!("{NIC2_HOST_IP}/24"), "dev", "eth1"]);
        must("ip", &["-n", &peer_ns, "addr", "add", &format!("{NIC2_PEER_IP}/24"), "dev", "lan0"]);
        // IPv6 without duplicate address detection: usable at once.
        must("ip", &["-n", &lab.host_ns, "addr", "add", &format!("{NIC2_HOST_IP6}/64"), "dev", "eth1", "nodad"]);
        must("ip", &["-n", &peer_ns, "addr", "add", &format!("{NIC2_PEER_IP6}/64"), "dev", "lan0", "nodad"]);
        must("ip", &["-n", &lab.host_ns, "link", "set", "eth1", "up"]);
        must("ip", &["-n", &peer_ns, "link", "set", "lan0", "up"]);
        must("ip", &["-n", &peer_ns, "link", "set", "lo", "up"]);
        Self { peer_ns }
    }
}

/// A userspace VPN between the host namespace and a peer namespace: a TUN device on each
/// side (`vpn0`), packets copied between them by two threads. The devices live while
/// their file descriptors are open: dropping the `Vpn` removes them.
pub struct Vpn {
    pub peer_ns: String,
    stop: Arc<AtomicBool>,
    relays: Vec<JoinHandle<()>>,
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

fn open_tun(ns_path: &str, name: &str) -> File {
    in_netns(ns_path, || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("/dev/net/tun (TUN is built into the kernel)");
        // SAFETY: an all-zero ifreq is valid; the name fits (checked below) and stays
        // NUL-terminated.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        assert!(name.len() < ifr.ifr_name.len());
        for (i, b) in name.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: a valid fd and ifreq for TUNSETIFF.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &ifr) };
        assert_eq!(rc, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        file
    })
}

/// Copies packets from `from` to `to` until `stop`.
fn relay(mut from: File, mut to: File, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
                continue;
            }
            match from.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let _ = to.write(&buf[..n]);
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

impl Vpn {
    /// Brings the VPN up: `vpn0` appears in the host namespace (natd, if running, sees a
    /// new interface), with 100.64.0.1/24, the peer at 100.64.0.2.
    pub fn start(lab: &mut Lab) -> Self {
        let peer_ns = lab.add_netns("vpn").expect("VPN peer namespace");
        let host = open_tun(&lab.host_path(), "vpn0");
        let peer = open_tun(&format!("/run/netns/{peer_ns}"), "vpn0");
        let stop = Arc::new(AtomicBool::new(false));
        let relays = vec![
            relay(host.try_clone().expect("dup"), peer.try_clone().expect("dup"), Arc::clone(&stop)),
            relay(peer, host, Arc::clone(&stop)),
        ];
        for (ns, ip) in [(&lab.host_ns, VPN_HOST_IP), (&peer_ns, VPN_PEER_IP)] {
            must("ip", &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "vpn0"]);
            must("ip", &["-n", ns, "link", "set", "vpn0", "up"]);
        }
        must("ip", &["-n", &peer_ns, "link", "set", "lo", "up"]);
        Self { peer_ns, stop, relays }
    }
}

impl Drop for Vpn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for relay in self.relays.drain(..) {
            let _ = relay.join();
        }
    }
}
