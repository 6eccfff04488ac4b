//! Sockets of natd's network namespace, read from /proc/net: which host ports are taken
//! by the host's own processes.
use std::collections::HashSet;

use crate::portspec::Proto;

/// (protocol, port) pairs of the namespace's sockets.
#[derive(Clone, Debug, Default)]
pub struct HostSockets {
    /// TCP listeners and bound UDP sockets.
    pub listening: HashSet<(Proto, u16)>,
    /// Every local port in use, listening or connected.
    pub in_use: HashSet<(Proto, u16)>,
}

/// Reads /proc/net/{tcp,tcp6,udp,udp6}; a file that cannot be read counts as empty.
pub fn scan() -> HostSockets {
    let mut out = HostSockets::default();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
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
