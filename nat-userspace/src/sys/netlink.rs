//! Typed rtnetlink operations natd needs: links (bridge, veth), addresses and routes, in
//! natd's own namespace or in a sandbox's (a socket opened inside that namespace).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

use futures::TryStreamExt as _;
use ipnetwork::{IpNetwork, Ipv4Network};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType},
        route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
    },
};

use super::netns;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op} {target}: {message}")]
    Request {
        op: &'static str,
        target: String,
        message: String,
        errno: i32,
    },
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("interface {0} not found")]
    NoSuchLink(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The most ports a Linux bridge takes: port numbers are below `BR_MAX_PORTS` (1024,
/// net/bridge/br_private.h) and 0 is reserved. One more is refused with EXFULL.
pub const BRIDGE_MAX_PORTS: usize = 1023;

pub(crate) fn request_err(
    op: &'static str,
    target: impl ToString,
) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |e| {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
            _ => 0,
        };
        let mut message = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        };
        if errno == libc::EXFULL {
            // What enslaving a port to a full bridge answers.
            message.push_str(&format!(
                ": the bridge has the most ports a Linux bridge can have ({BRIDGE_MAX_PORTS})"
            ));
        }
        NetlinkError::Request {
            op,
            target: target.to_string(),
            message,
            errno,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    pub master: Option<u32>,
    /// The device this one is stacked on (IFLA_LINK: a VLAN's or macvlan's lower device).
    pub parent: Option<u32>,
    pub mtu: u32,
    pub up: bool,
    pub mac: Vec<u8>,
    pub loopback: bool,
    pub layer: LinkLayer,
}

/// What a link's frames start with, as TC programs see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (ARPHRD_ETHER: NICs, veths, bridges, VLANs, bonds).
    Ethernet,
    /// The IP header: TUN devices (WireGuard, Tailscale, OpenVPN), PPP, IP tunnels.
    Ip,
    /// Anything else (InfiniBand, CAN, ...): natd does not parse it.
    Other,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// rtm_protocol: 2 (kernel) for routes the kernel derives from addresses.
    pub protocol: u8,
    pub priority: Option<u32>,
    pub table: u32,
}

pub const RTPROT_KERNEL: u8 = 2;
pub const RT_TABLE_MAIN: u32 = 254;

/// A locally administered unicast MAC derived from `name` (stable across restarts).
pub fn stable_mac(name: &str) -> [u8; 6] {
    let b = crate::stable_hash(name.bytes()).to_be_bytes();
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A netlink socket in the calling thread's namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// A netlink socket bound to the namespace at `path`: the socket keeps that namespace
    /// for its lifetime, whatever thread later uses it.
    pub fn connect_in(path: &Path) -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle) = netns::run_in(path, move || {
            let _guard = runtime.enter();
            rtnetlink::new_connection().map(|(c, h, _)| (c, h))
        })?
        .map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(request_err("dump links", ""))? {
            links.push(parse_link(msg));
        }
        Ok(links)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(parse_link(msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENODEV => Ok(None),
            Err(e) => Err(request_err("get link", name)(e)),
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// A bridge with a MAC of its own: left to the kernel, a bridge takes the lowest MAC of
    /// its ports and changes it when ports come and go, which breaks the neighbour entries
    /// every sandbox holds for its gateway (Docker sets one for the same reason).
    pub async fn create_bridge(&self, name: &str, mtu: u32) -> Result<Link, NetlinkError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).mtu(mtu).build())
            .execute()
            .await
            .map_err(request_err("create bridge", name))?;
        let link = self.require_link(name).await?;
        self.set_mac(link.index, &stable_mac(name)).await?;
        self.require_link(name).await
    }

    /// A veth pair whose host end `name` is up on bridge `master` and whose other end is
    /// made directly in `netns` as `peer` (with `peer_mac` if given), both with `mtu`: one
    /// request, and no move between namespaces (a move waits for the network stack to
    /// quiesce, which costs milliseconds per sandbox).
    pub async fn create_veth_into(
        &self,
        name: &str,
        master: u32,
        mtu: u32,
        peer: &str,
        netns: BorrowedFd<'_>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<Link, NetlinkError> {
        let mut peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd());
        if let Some(mac) = peer_mac {
            peer_message = peer_message.address(mac.to_vec());
        }
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .controller(master)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message.build())))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(request_err("create veth", name))?;
        self.require_link(name).await
    }

    async fn set(
        &self,
        op: &'static str,
        target: impl ToString,
        message: rtnetlink::packet_route::link::LinkMessage,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(request_err(op, target))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.set("set up", index, LinkUnspec::new_with_index(index).up().build())
            .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set(
            "set mtu",
            index,
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
        .await
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        self.set(
            "set master",
            index,
            LinkUnspec::new_with_index(index).controller(master).build(),
        )
        .await
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.set(
            "rename",
            name,
            LinkUnspec::new_with_index(index).name(name.to_string()).build(),
        )
        .await
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENODEV => Ok(()),
            Err(e) => Err(request_err("delete link", index)(e)),
        }
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(request_err("dump addresses", index))?
        {
            let prefix = msg.header.prefix_len;
            for attr in msg.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(net) = IpNetwork::new(ip, prefix)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Every address of every link: (ifindex, address).
    pub async fn all_addresses(&self) -> Result<Vec<(u32, IpNetwork)>, NetlinkError> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(request_err("dump addresses", "all"))?
        {
            let prefix = msg.header.prefix_len;
            let index = msg.header.index;
            for attr in msg.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(net) = IpNetwork::new(ip, prefix)
                {
                    out.push((index, net));
                }
            }
        }
        Ok(out)
    }

    /// Adds an address; already present is success. IPv6 addresses skip DAD: natd owns the
    /// subnet and has checked uniqueness, and DAD would delay the sandbox by a second.
    pub async fn add_address(&self, index: u32, address: IpNetwork) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, address.ip(), address.prefix());
        if address.is_ipv6() {
            let msg = request.message_mut();
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::EEXIST => Ok(()),
            Err(e) => Err(request_err("add address", address)(e)),
        }
    }

    pub async fn del_address(&self, index: u32, address: IpNetwork) -> Result<(), NetlinkError> {
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(request_err("dump addresses", index))?
        {
            let matches = msg.header.prefix_len == address.prefix()
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == address.ip()));
            if matches {
                return self
                    .handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(request_err("delete address", address));
            }
        }
        Ok(())
    }

    /// The namespace's default routes of the family (`v6`) in its main table, at any
    /// metric, as the kernel describes them (so they can be put back as they were).
    pub async fn default_routes(&self, v6: bool) -> Result<Vec<RouteMessage>, NetlinkError> {
        let query = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut stream = self.handle.route().get(query).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(request_err("dump routes", "default"))? {
            let table = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if msg.header.destination_prefix_length == 0 && table == RT_TABLE_MAIN && msg.header.kind == RouteType::Unicast {
                out.push(msg);
            }
        }
        Ok(out)
    }

    pub async fn delete_route(&self, route: RouteMessage) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(request_err("delete route", "default"))
    }

    /// Puts back a route `default_routes` described (replacing one of the same metric).
    pub async fn restore_route(&self, mut route: RouteMessage) -> Result<(), NetlinkError> {
        // What a dump reports of the route's state (a next hop's link down, dead) and
        // read-only attributes (cache info) are refused on add.
        route.header.flags.remove(RouteFlags::Dead | RouteFlags::Linkdown);
        route.attributes.retain(|a| {
            matches!(
                a,
                RouteAttribute::Gateway(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::PrefSource(_)
                    | RouteAttribute::MultiPath(_)
                    | RouteAttribute::Via(_)
                    | RouteAttribute::Metrics(_)
                    | RouteAttribute::Preference(_)
            )
        });
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(request_err("restore route", "default"))
    }

    /// The default route via `gateway` on `oif` (the caller has checked the namespace's
    /// own, `default_routes`).
    pub async fn add_default_route(&self, gateway: IpAddr, oif: u32) -> Result<(), NetlinkError> {
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(oif).build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).output_interface(oif).build(),
        };
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(request_err("add default route via", gateway))
    }

    /// Adds (or replaces) an IPv4 route through `oif`.
    pub async fn add_route_v4(&self, route: &Route, oif: u32) -> Result<(), NetlinkError> {
        let message = route_message(route, oif);
        match self.handle.route().add(message).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(request_err("add route", route.destination)(e)),
        }
    }

    pub async fn del_route_v4(&self, route: &Route, oif: u32) -> Result<(), NetlinkError> {
        match self.handle.route().del(route_message(route, oif)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ESRCH => Ok(()),
            Err(e) => Err(request_err("delete route", route.destination)(e)),
        }
    }

    pub async fn set_mac(&self, index: u32, mac: &[u8]) -> Result<(), NetlinkError> {
        self.set(
            "set address",
            index,
            LinkUnspec::new_with_index(index).address(mac.to_vec()).build(),
        )
        .await
    }

    /// Bridge port hairpin mode: frames may leave through the port they came in on.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let message = rtnetlink::LinkBridgePort::new(index).hairpin(on).build();
        self.handle
            .link()
            .set_port(message)
            .execute()
            .await
            .map_err(request_err("set hairpin", index))
    }

    pub async fn set_nomaster(&self, index: u32) -> Result<(), NetlinkError> {
        self.set(
            "release from bridge",
            index,
            LinkUnspec::new_with_index(index).nocontroller().build(),
        )
        .await
    }

    /// Unicast routes of the main table, IPv4.
    pub async fn routes_v4(&self) -> Result<Vec<Route>, NetlinkError> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(request_err("dump routes", "v4"))?
        {
            if msg.header.kind != RouteType::Unicast || msg.header.address_family != AddressFamily::Inet {
                continue;
            }
            let mut destination = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            let mut priority = None;
            let mut table = u32::from(msg.header.table);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => priority = Some(*p),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            let protocol = u8::from(msg.header.protocol);
            if let Ok(net) = Ipv4Network::new(destination, msg.header.destination_prefix_length) {
                out.push(Route {
                    destination: IpNetwork::V4(net),
                    gateway,
                    oif,
                    protocol,
                    priority,
                    table,
                });
            }
        }
        Ok(out)
    }
}

fn route_message(route: &Route, oif: u32) -> RouteMessage {
    let IpNetwork::V4(dest) = route.destination else {
        unreachable!("IPv4 routes only")
    };
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest.ip(), dest.prefix())
        .output_interface(oif)
        .table_id(route.table)
        .protocol(rtnetlink::packet_route::route::RouteProtocol::from(
            route.protocol,
        ));
    if let Some(IpAddr::V4(gw)) = route.gateway {
        builder = builder.gateway(gw);
    }
    if let Some(priority) = route.priority {
        builder = builder.priority(priority);
    }
    builder.build()
}

fn parse_link(msg: rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Other(String::new()),
        master: None,
        parent: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac: Vec::new(),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        layer: match msg.header.link_layer_type {
            LinkLayerType::Ether => LinkLayer::Ethernet,
            LinkLayerType::None
            | LinkLayerType::Ppp
            | LinkLayerType::Rawip
            | LinkLayerType::Tunnel
            | LinkLayerType::Tunnel6
            | LinkLayerType::Sit
            | LinkLayerType::Ipgre
            | LinkLayerType::Ip6gre => LinkLayer::Ip,
            _ => LinkLayer::Other,
        },
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Controller(master) => link.master = Some(master),
            LinkAttribute::Link(parent) => link.parent = Some(parent),
            LinkAttribute::Address(mac) => link.mac = mac,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = match kind {
                            InfoKind::Bridge => LinkKind::Bridge,
                            InfoKind::Veth => LinkKind::Veth,
                            other => LinkKind::Other(format!("{other:?}").to_lowercase()),
                        };
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// A change the kernel announced in natd's namespace: a link appeared, changed or went
/// (with its name), an address was added to or removed from a link, or announcements were
/// lost (the socket overran: anything may have changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Link { index: u32, name: String, gone: bool },
    Address { index: u32 },
    Lost,
}

/// Subscribes to link and address changes of the calling thread's namespace
/// (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR). Needs a tokio runtime; the
/// events arrive on the returned channel until it is dropped.
pub fn watch_links() -> Result<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>, NetlinkError> {
    use netlink_packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
    use netlink_sys::AsyncSocket as _;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&netlink_sys::SocketAddr::new(0, groups))
        .map_err(NetlinkError::Socket)?;
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    let link = parse_link(link);
                    LinkEvent::Link {
                        index: link.index,
                        name: link.name,
                        gone: false,
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    let link = parse_link(link);
                    LinkEvent::Link {
                        index: link.index,
                        name: link.name,
                        gone: true,
                    }
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address),
                ) => LinkEvent::Address {
                    index: address.header.index,
                },
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => LinkEvent::Lost,
                _ => continue,
            };
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
