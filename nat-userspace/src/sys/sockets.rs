//! Sockets of natd's network namespace: which host ports are taken by the host's own
//! processes. Listeners come from sock_diag (the kernel walks only its listening tables:
//! cheap whatever the number of connections on the machine); every port in use, for
//! picking random ports, from a sock_diag dump of every socket (/proc/net where sock_diag
//! is missing).
use std::collections::HashSet;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::portspec::Proto;

/// (protocol, port) pairs of the namespace's sockets.
#[derive(Clone, Debug, Default)]
pub struct HostSockets {
    /// TCP listeners and bound UDP sockets.
    pub listening: HashSet<(Proto, u16)>,
    /// Every local port in use, listening or connected.
    pub in_use: HashSet<(Proto, u16)>,
}

/// TCP listeners and bound UDP sockets only (`in_use` holds the same), through
/// sock_diag; falls back to /proc/net if sock_diag is not available.
pub fn scan_listening() -> HostSockets {
    diag_scan(false).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "sock_diag unavailable, reading /proc/net");
        proc_scan()
    })
}

/// Every local port in use, listening or connected, through sock_diag (one dump per
/// family and protocol); falls back to /proc/net.
pub fn scan() -> HostSockets {
    diag_scan(true).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "sock_diag unavailable, reading /proc/net");
        proc_scan()
    })
}

/// `connected`: TCP sockets in every state too (for `in_use`), not only listeners.
fn diag_scan(connected: bool) -> std::io::Result<HostSockets> {
    let mut out = HostSockets::default();
    let mut socket = diag_socket()?;
    for (family, protocol, proto, states) in [
        (AF_INET, IPPROTO_TCP, Proto::Tcp, StateFlags::LISTEN),
        (AF_INET6, IPPROTO_TCP, Proto::Tcp, StateFlags::LISTEN),
        (AF_INET, IPPROTO_UDP, Proto::Udp, StateFlags::all()),
        (AF_INET6, IPPROTO_UDP, Proto::Udp, StateFlags::all()),
    ] {
        for port in diag_ports(&mut socket, family, protocol, states)? {
            out.listening.insert((proto, port));
            out.in_use.insert((proto, port));
        }
    }
    if connected {
        for family in [AF_INET, AF_INET6] {
            for port in diag_ports(&mut socket, family, IPPROTO_TCP, StateFlags::all())? {
                out.in_use.insert((Proto::Tcp, port));
            }
        }
    }
    Ok(out)
}

fn diag_socket() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Local ports of the sockets of one family and protocol in `states` (one dump).
fn diag_ports(
    socket: &mut Socket,
    family: u8,
    protocol: u8,
    states: StateFlags,
) -> std::io::Result<Vec<u16>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut ports = Vec::new();
    let mut receive = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    ports.push(r.header.socket_id.source_port)
                }
                NetlinkPayload::Done(_) => return Ok(ports),
                NetlinkPayload::Error(e) => return Err(std::io::Error::other(format!("sock_diag: {e:?}"))),
                _ => {}
            }
            if message.header.length == 0 {
                break;
            }
            offset += message.header.length as usize;
        }
    }
}

/// Reads /proc/net/{tcp,tcp6,udp,udp6}; a file that cannot be read counts as empty.
fn proc_scan() -> HostSockets {
    use std::io::Read as _;
    let mut out = HostSockets::default();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        // Each read of these files walks the socket tables from the start to where it
        // left off: few large reads, not many small ones.
        let mut text = String::with_capacity(1 << 20);
        if std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text)).is_ok() {
            parse_into(&text, proto, &mut out);
        }
    }
    out
}

fn parse_into(text: &str, proto: Proto, out: &mut HostSockets) {
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (fields.nth(1), fields.next(), fields.next()) else {
            continue;
        };
        let Some(port) = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        out.in_use.insert((proto, port));
        // 0A: TCP_LISTEN; 07: TCP_CLOSE, which is how bound UDP sockets show.
        if (proto == Proto::Tcp && state == "0A") || (proto == Proto::Udp && state == "07") {
            out.listening.insert((proto, port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_diag_finds_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let udp_port = udp.local_addr().expect("addr").port();
        let found = scan_listening();
        assert!(
            found.listening.contains(&(Proto::Tcp, port)),
            "TCP listener {port}"
        );
        assert!(
            found.listening.contains(&(Proto::Udp, udp_port)),
            "UDP socket {udp_port}"
        );
    }

    #[test]
    fn sock_diag_finds_a_connection_in_use() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let port = client.local_addr().expect("addr").port();
        let found = scan();
        assert!(found.in_use.contains(&(Proto::Tcp, port)), "connected port {port}");
        assert!(!found.listening.contains(&(Proto::Tcp, port)), "not a listener");
        assert!(!scan_listening().in_use.contains(&(Proto::Tcp, port)), "listeners only");
    }

    #[test]
    fn listeners_and_connections() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
   1: 0100007F:A3B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        let mut out = HostSockets::default();
        parse_into(tcp, Proto::Tcp, &mut out);
        assert!(out.listening.contains(&(Proto::Tcp, 8080)));
        assert!(!out.listening.contains(&(Proto::Tcp, 0xA3B2)));
        assert!(out.in_use.contains(&(Proto::Tcp, 0xA3B2)) && out.in_use.contains(&(Proto::Tcp, 8080)));
    }
}
