//! The `hostbridge` driver (what pipework does): sandboxes get addresses on the host's LAN
//! through a bridge that holds the host's NIC. Creating such a network moves the NIC's
//! addresses and routes onto the bridge and enslaves the NIC; removing it puts everything
//! back. Addresses are checked on the wire (ARP probe, RFC 5227) before use.
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::netlink::{Netlink, NetlinkError, RT_TABLE_MAIN, RTPROT_KERNEL, Route};

/// What the parent NIC had before natd took it into the bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentState {
    pub parent: String,
    pub addresses: Vec<String>,
    /// (destination, gateway, metric, protocol) of the routes through the NIC.
    pub routes: Vec<(String, Option<String>, Option<u32>, u8)>,
}

fn to_route(saved: &(String, Option<String>, Option<u32>, u8)) -> Option<Route> {
    Some(Route {
        destination: saved.0.parse().ok()?,
        gateway: saved.1.as_ref().and_then(|g| g.parse().ok()),
        oif: None,
        protocol: saved.3,
        priority: saved.2,
        table: RT_TABLE_MAIN,
    })
}

/// Moves `parent`'s addresses and routes onto `bridge` and enslaves `parent`; on failure
/// everything done so far is undone.
pub async fn attach_parent(nl: &Netlink, bridge: &str, parent: &str) -> Result<ParentState, NetlinkError> {
    let bridge_link = nl.require_link(bridge).await?;
    let parent_link = nl.require_link(parent).await?;
    let addresses: Vec<IpNetwork> = nl
        .addresses(parent_link.index)
        .await?
        .into_iter()
        .filter(|a| match a {
            IpNetwork::V4(_) => true,
            // Link-local IPv6 addresses belong to the device, not to the host's identity.
            IpNetwork::V6(v6) => (v6.ip().segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    let routes: Vec<Route> = nl
        .routes_v4()
        .await?
        .into_iter()
        .filter(|r| {
            r.oif == Some(parent_link.index) && r.protocol != RTPROT_KERNEL && r.table == RT_TABLE_MAIN
        })
        .collect();
    let state = ParentState {
        parent: parent.to_string(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        routes: routes
            .iter()
            .map(|r| {
                (
                    r.destination.to_string(),
                    r.gateway.map(|g| g.to_string()),
                    r.priority,
                    r.protocol,
                )
            })
            .collect(),
    };
    let result = async {
        // The bridge takes over the NIC's identity: same MAC, so neighbours' ARP caches
        // stay right.
        nl.set_mac(bridge_link.index, &parent_link.mac).await?;
        nl.set_up(bridge_link.index).await?;
        for address in &addresses {
            nl.del_address(parent_link.index, *address).await?;
            nl.add_address(bridge_link.index, *address).await?;
        }
        nl.set_master(parent_link.index, bridge_link.index).await?;
        nl.set_up(parent_link.index).await?;
        for route in &routes {
            nl.add_route_v4(route, bridge_link.index).await?;
        }
        Ok::<_, NetlinkError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = restore_parent(nl, bridge, &state).await;
        return Err(e);
    }
    Ok(state)
}

/// Puts the NIC back as it was: out of the bridge, with its addresses and routes.
/// Collects errors and keeps going.
pub async fn restore_parent(nl: &Netlink, bridge: &str, state: &ParentState) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(Some(parent)) = nl.link(&state.parent).await else {
        return vec![format!("parent {} is gone", state.parent)];
    };
    let bridge = nl.link(bridge).await.ok().flatten();
    if let Err(e) = nl.set_nomaster(parent.index).await {
        errors.push(e.to_string());
    }
    for address in state.addresses.iter().filter_map(|a| a.parse::<IpNetwork>().ok()) {
        if let Some(bridge) = &bridge
            && let Err(e) = nl.del_address(bridge.index, address).await
        {
            errors.push(e.to_string());
        }
        if let Err(e) = nl.add_address(parent.index, address).await {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = nl.set_up(parent.index).await {
        errors.push(e.to_string());
    }
    for route in state.routes.iter().filter_map(to_route) {
        if let Err(e) = nl.add_route_v4(&route, parent.index).await {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Whether anyone on the segment of `ifindex` answers ARP for `target`: two probes from
/// 0.0.0.0 (RFC 5227), answered within `wait` each.
pub fn address_in_use(ifindex: u32, mac: &[u8], target: Ipv4Addr, wait: Duration) -> std::io::Result<bool> {
    const ETH_P_ARP: u16 = 0x0806;
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
    let addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: valid fd and sockaddr_ll of the given length.
    if unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            addr_len,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
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
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    for _ in 0..2 {
        // SAFETY: valid fd, frame buffer and sockaddr.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                addr_len,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 128];
        while Instant::now() < deadline {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
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
