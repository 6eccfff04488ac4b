//! TCP's counterpart of a STUN binding request, for the NAT behaviour tests: a reflector
//! in a lab namespace answers each connection with the address and port it came from,
//! and sockets of a sandbox bound to a chosen port (SO_REUSEADDR, so the port is bound
//! again for the next connection) ask it.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Served, in_netns};

/// The reflector: runs until dropped.
pub struct TcpReflector(#[allow(dead_code)] Served);

impl TcpReflector {
    /// Listens on `addr` in the namespace at `ns_path`.
    pub fn start(ns_path: &str, addr: SocketAddr) -> Self {
        let listener = in_netns(ns_path, || TcpListener::bind(addr).expect("reflector"));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let mut served = Served::default();
        served.spawn(move |s| {
            while s.serving() {
                match listener.accept() {
                    Ok((mut stream, from)) => {
                        let _ = stream.write_all(from.to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self(served)
    }
}

/// A TCP socket of the namespace at `ns_path` bound to `port` of the family of `v6`.
pub fn tcp_socket(ns_path: &str, v6: bool, port: u16) -> Socket {
    in_netns(ns_path, || {
        let (domain, any): (Domain, SocketAddr) = if v6 {
            (Domain::IPV6, SocketAddr::from(([0u16; 8], port)))
        } else {
            (Domain::IPV4, SocketAddr::from(([0u8; 4], port)))
        };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket.bind(&any.into()).expect("bind");
        socket
    })
}

/// The address and port a reflector at `reflector` saw a connection from port `port` of
/// the namespace at `ns_path` come from.
pub fn tcp_seen(ns_path: &str, v6: bool, port: u16, reflector: SocketAddr) -> SocketAddr {
    let socket = tcp_socket(ns_path, v6, port);
    socket
        .connect_timeout(&reflector.into(), Duration::from_secs(3))
        .expect("the reflector answers");
    let mut stream: TcpStream = socket.into();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text.parse().expect("an address")
}
