//! Types shared by natd's kernel programs and its agent.
//!
//! Only `#[repr(C)]` integers and byte arrays with explicit padding live here, so the
//! layout is the same on both sides of a map. Sizes are asserted at compile time.
//! Conventions: IPv4 addresses and ports are kept in network byte order exactly as they sit
//! in the packet (an address is the `u32` loaded from it); IPv4 maps have compact keys of
//! their own, and 16-byte addresses (`addr`) are used where both families meet.
#![no_std]

pub mod addr;
pub mod clock;
pub mod counter;
pub mod csum;
pub mod names;

/// The verdict natd's TC programs give a packet they let through: TCX_NEXT
/// (TC_ACT_UNSPEC), not TC_ACT_OK, so the programs and classic tc filters after natd's on
/// the same interface (shaping, other software's programs) still see it; at the end of
/// the chain the packet passes. Drops and redirects end the chain as they must.
pub const TC_PASS: i32 = -1;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Where a program is attached; the agent writes it into `NATD_IFACE_CONFIG`.
pub mod role {
    /// An edge: any interface of natd's namespace that is not natd's own (NICs, VLANs,
    /// bridges natd does not run, VPN devices), with an Ethernet header.
    pub const EDGE: u32 = 1;
    pub const SANDBOX_VETH: u32 = 2;
    /// An edge without a link layer (TUN devices: WireGuard, Tailscale, OpenVPN): frames
    /// start at the IP header; flows through it never take the fast path.
    pub const EDGE_L3: u32 = 3;
}

/// Connection tracking: entry kinds (which translation an entry performs), the hooks that
/// translate an entry's packets, flags, and TCP events seen.
pub mod ct {
    /// Client -> published host address: rewrite the destination to the sandbox.
    pub const DNAT_FORWARD: u8 = 1;
    /// Sandbox -> client reply: rewrite the source back to the published address.
    pub const DNAT_REPLY: u8 = 2;
    /// Sandbox -> outside: rewrite the source to the edge's address and NAT port.
    pub const SNAT_FORWARD: u8 = 3;
    /// Outside -> edge address reply: rewrite the destination back to the sandbox.
    pub const SNAT_REPLY: u8 = 4;

    /// The programs that translate an entry's packets (a bit each).
    pub const HOOK_EDGE_INGRESS: u8 = 1;
    pub const HOOK_EDGE_EGRESS: u8 = 2;
    pub const HOOK_SANDBOX: u8 = 4;

    /// The flow bypasses the host: its packets are redirected (both directions).
    pub const FAST: u8 = 1;
    /// The next hop's address was not resolved when the flow started: the kernel fills in
    /// the link-layer header (`bpf_redirect_neigh`).
    pub const NEIGH: u8 = 2;
    /// A reply was seen (UDP, ICMP echo).
    pub const REPLIED: u8 = 4;
    /// The entry's packets come from outside (an edge): from any edge.
    pub const FROM_OUTSIDE: u8 = 8;

    /// TCP events seen in an entry's direction.
    pub const TCP_SYN: u8 = 1;
    pub const TCP_SYNACK: u8 = 2;
    /// The three-way handshake completed (the originator acknowledged the SYN-ACK).
    pub const TCP_ESTABLISHED: u8 = 4;
    pub const TCP_FIN: u8 = 8;
    pub const TCP_RST: u8 = 16;
}

/// The layout of natd's pinned maps (`names::map::LAYOUT` records it on the host). Every
/// change to the entry layout of a pinned map (a field added, moved, resized or given
/// another meaning) bumps it, in the same change, with the converter from the previous
/// version in `nat-userspace`'s `dataplane::ebpf::pins`; a start refuses pins of a newer
/// version and converts older ones. A field carved out of padding, whose zero value means
/// what the padding meant, is not a change (e.g. `IfaceConfig::flags`). Versions:
/// 1, the pins of natd before versions; 2, `NATD_PORT_MARKS` added (converted from 1 by
/// marking every port the pinned tables use, `pins::mark_pinned_ports`); 3, the hash
/// tables allocated by use (`BPF_F_NO_PREALLOC`; converted from 1 and 2 by replacing
/// them, every entry carried over as it was by `pins`: flows, masquerade mappings and the
/// configuration the flows' slots refer to). A natd of layout 2 would replace such tables
/// as foreign (emptying the masquerade mappings): the version keeps it from starting over
/// them. 4, `NATD_MAPPING_STATS` one mmapable array of per-CPU regions sized to the
/// published ports natd allows (was a per-CPU array of `MAX_PORT_MAPPINGS` slots read
/// with a syscall per batch), `NATD_STATS_SLOTS` added (converted from 1 to 3 by copying
/// each CPU's counters of each slot into that CPU's region, `mapping_stats::StatsCarry`).
pub const LAYOUT_VERSION: u32 = 4;

/// The host-bound miss filter (`names::map::PORT_MARKS`): one `u32` per TCP and UDP port,
/// non-zero (the clock tick it was last marked at) once a flow, a mapping or a published
/// port may use the port as a destination arriving at an edge. A TCP or UDP packet from
/// outside to an unmarked port is nothing of natd's: it skips the connection, published
/// port and mapping lookups (the host's own traffic, the common case on a busy host).
pub mod port_marks {
    /// TCP's ports, then UDP's.
    pub const ENTRIES: u32 = 2 * 65536;

    /// The mark of `port` (as keys and packets hold it: network byte order) of `proto`;
    /// `None` for protocols without ports (their packets are never filtered).
    #[inline(always)]
    pub const fn index(proto: u8, port: u16) -> Option<u32> {
        match proto {
            crate::PROTO_TCP => Some(port as u32),
            crate::PROTO_UDP => Some(65536 + port as u32),
            _ => None,
        }
    }

    /// The mark a flow entry needs: one looked up at an edge's ingress needs its
    /// destination port's.
    #[inline(always)]
    pub fn of_flow<A>(key: &crate::CtKey<A>, entry: &crate::CtEntry<A>) -> Option<u32> {
        if entry.hooks & crate::ct::HOOK_EDGE_INGRESS == 0 {
            return None;
        }
        index(key.proto, key.dport)
    }

    /// The mark a port key (a published port, a mapping's holding) needs.
    #[inline(always)]
    pub fn of_port<A>(key: &crate::PortKey<A>) -> Option<u32> {
        index(key.proto, key.port)
    }
}

/// An IPv6 address as loaded from a packet: four `u32` words in network byte order.
pub type Addr6 = [u32; 4];

/// What a per-source quota counts the originator of a flow of entry kind `kind` under
/// (IPv6; IPv4 counts the address): a client from outside (a DNAT flow) by its /64, one
/// host having a whole /64 to send from; a sandbox (masqueraded or routed flows) by its
/// address, the sandboxes of a network sharing one /64. A sandbox reaching a published
/// port (hairpin DNAT) counts under its /64 too.
pub fn quota_key6(addr: Addr6, kind: u8) -> Addr6 {
    if kind == ct::DNAT_FORWARD || kind == ct::DNAT_REPLY {
        [addr[0], addr[1], 0, 0]
    } else {
        addr
    }
}

/// A connection tuple as seen at the point of lookup: `A` is `u32` (IPv4, 16 bytes) or
/// `Addr6` (IPv6, 40 bytes), so IPv4 tables keep their compact keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey<A> {
    pub src: A,
    pub dst: A,
    /// TCP/UDP ports; for ICMP echo the id sits in `sport` of requests and `dport` of replies.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
pub type Ct4Key = CtKey<u32>;
pub type Ct6Key = CtKey<Addr6>;
const _: () = assert!(core::mem::size_of::<Ct4Key>() == 16);
const _: () = assert!(core::mem::size_of::<Ct6Key>() == 40);

/// One direction of a tracked flow: everything the rewrite and the forwarding of its
/// packets need, so an established packet costs one lookup (IPv4: 64 bytes, one cache
/// line; IPv6: 88).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<A> {
    /// What the packet becomes; the reverse direction's key is this tuple reversed.
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    /// `csum::diff` of the addresses `[key.src, key.dst]` to `[src, dst]`: the IP header
    /// (IPv4) and the L4 pseudo-header change.
    pub addr_csum: u32,
    /// `csum::diff1` of the ports word: the L4 header change.
    pub port_csum: u32,
    /// Fast path: where the packet is redirected (the host end of a sandbox veth, or an
    /// edge) and its link-layer addresses there.
    pub out_ifindex: u32,
    /// The interface this direction's packets must arrive on (0: any edge).
    pub in_ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Largest IP packet (without GSO) that may be redirected; larger ones take the
    /// kernel's path, which answers with fragmentation-needed / packet-too-big.
    pub mtu: u16,
    /// `ct::DNAT_FORWARD`...
    pub kind: u8,
    /// `ct::HOOK_*` bits.
    pub hooks: u8,
    /// `ct::FAST | ct::NEIGH | ct::REPLIED | ct::FROM_OUTSIDE`.
    pub flags: u8,
    /// `ct::TCP_*` events seen in this direction.
    pub tcp: u8,
    pub _pad: [u8; 2],
    /// The generation slot (`NATD_GENERATIONS`) the flow depends on, and its generation
    /// when the flow started: a published mapping (DNAT) or a sandbox endpoint (SNAT).
    pub gen_slot: u32,
    pub generation: u32,
    /// TCP. While the handshake runs: the originator's initial sequence number in the
    /// forward entry, the SYN-ACK's in the reply entry (the originator's ACK must
    /// acknowledge it before the flow leaves the embryonic table). Once established: the
    /// furthest end of this direction's segments (its SND.NXT as natd saw it), which an
    /// RST from this direction must carry to count (RFC 5961).
    pub seq: u32,
    /// `clock::ticks` of the last packet.
    pub last_seen: u32,
}
pub type Ct4Entry = CtEntry<u32>;
pub type Ct6Entry = CtEntry<Addr6>;
const _: () = assert!(core::mem::size_of::<Ct4Entry>() == 64);
const _: () = assert!(core::mem::size_of::<Ct6Entry>() == 88);

impl<A: Copy> CtKey<A> {
    /// The key of the other direction of the flow this key and `entry` belong to: the
    /// translated tuple, reversed.
    #[inline(always)]
    pub fn peer(&self, entry: &CtEntry<A>) -> CtKey<A> {
        CtKey {
            src: entry.dst,
            dst: entry.src,
            sport: entry.dport,
            dport: entry.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// A published host address and port. `addr` 0: every local address of the family
/// (0.0.0.0 / [::]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey<A> {
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
pub type Port4Key = PortKey<u32>;
pub type Port6Key = PortKey<Addr6>;
const _: () = assert!(core::mem::size_of::<Port4Key>() == 8);
const _: () = assert!(core::mem::size_of::<Port6Key>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget<A> {
    pub addr: A,
    pub port: u16,
    /// `port::TRUSTED_ONLY`.
    pub flags: u16,
    /// The mapping's generation slot and current generation: a flow of a removed or
    /// changed mapping no longer matches.
    pub slot: u32,
    pub generation: u32,
    /// natd's id of the mapping (for its statistics).
    pub mapping_id: u32,
}
pub type Port4Target = PortTarget<u32>;

pub mod port {
    /// A published container port opened on the sandbox's own address for edges a
    /// network trusts (`com.docker.network.bridge.trusted_host_interfaces`): only packets
    /// arriving on such an edge (`NATD_TRUSTED`) may use it.
    pub const TRUSTED_ONLY: u16 = 1;
}
pub type Port6Target = PortTarget<Addr6>;
const _: () = assert!(core::mem::size_of::<Port4Target>() == 20);
const _: () = assert!(core::mem::size_of::<Port6Target>() == 32);

/// An endpoint-independent masquerade mapping (RFC 4787 REQ-1, RFC 5382 REQ-1), keyed by
/// the sandbox's address and port and the external address (`NATD_SNAT4`, `NATD_SNAT6`):
/// every flow from that address and port out through that external address leaves with
/// the same external port. `port`: the sandbox's port (ICMP: the echo identifier).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnatKey<A> {
    pub internal: A,
    pub external: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
pub type Snat4Key = SnatKey<u32>;
pub type Snat6Key = SnatKey<Addr6>;
const _: () = assert!(core::mem::size_of::<Snat4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Snat6Key>() == 36);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatMapping {
    /// The external port (network byte order).
    pub port: u16,
    pub _pad: u16,
    /// `clock::ticks` of the last flow the mapping started, or of the last outbound
    /// packet of a flow natd expired (the agent keeps it there): the mapping lives while
    /// it has flows, and `mapping` seconds after (RFC 4787 REQ-5, REQ-6).
    pub last_seen: u32,
}
const _: () = assert!(core::mem::size_of::<SnatMapping>() == 8);

/// Who holds an external port (`NATD_SNAT4_PORTS`, `NATD_SNAT6_PORTS`, keyed by external
/// address, port and protocol as a `PortKey`): one sandbox address and port, so no two
/// sandboxes share an external port (REQ-3: no port overloading), and inbound packets to
/// it find their mapping (filtering, hairpinning).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatOwner<A> {
    pub internal: A,
    pub port: u16,
    /// `net::FILTER_*` of the owner's network when the mapping was made.
    pub filter: u8,
    pub _pad: u8,
}
pub type Snat4Owner = SnatOwner<u32>;
pub type Snat6Owner = SnatOwner<Addr6>;
const _: () = assert!(core::mem::size_of::<Snat4Owner>() == 8);
const _: () = assert!(core::mem::size_of::<Snat6Owner>() == 20);

/// A remote address a mapping has sent to (`NATD_SNAT4_PEERS`, `NATD_SNAT6_PEERS`):
/// address-dependent filtering admits packets from any port of it (RFC 4787 section 5).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnatPeerKey<A> {
    pub external: A,
    pub peer: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
pub type Snat4PeerKey = SnatPeerKey<u32>;
pub type Snat6PeerKey = SnatPeerKey<Addr6>;
const _: () = assert!(core::mem::size_of::<Snat4PeerKey>() == 12);
const _: () = assert!(core::mem::size_of::<Snat6PeerKey>() == 36);

/// A hairpinned packet its target's filtering refused (`NATD_PUNCH4`, `NATD_PUNCH6`, an
/// LRU): the sender's mapping `(external, from)` sent to `(external, to)`. What a punch
/// through an outside NAT leaves behind: the mapping behind `to` may answer it
/// (filtering as RFC 4787 section 5 defines it, applied to hairpinning), also where ports
/// are shared per destination and no `SnatOwner` names that mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PunchKey<A> {
    pub external: A,
    pub from: u16,
    pub to: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
pub type Punch4Key = PunchKey<u32>;
pub type Punch6Key = PunchKey<Addr6>;
const _: () = assert!(core::mem::size_of::<Punch4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Punch6Key>() == 24);

/// Who sent a punch (the sandbox address and port behind `PunchKey::from`), and when
/// (`clock` ticks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Punch<A> {
    pub internal: A,
    pub port: u16,
    pub _pad: u16,
    pub last_seen: u32,
}
pub type Punch4 = Punch<u32>;
pub type Punch6 = Punch<Addr6>;
const _: () = assert!(core::mem::size_of::<Punch4>() == 12);
const _: () = assert!(core::mem::size_of::<Punch6>() == 24);

/// A sandbox's endpoint, keyed by its address (`NATD_ENDPOINTS4` and `NATD_ENDPOINTS6`):
/// where packets to it are redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The host end of the sandbox's veth (`bpf_redirect_peer` lands on the other end).
    pub host_ifindex: u32,
    pub network_id: u32,
    pub slot: u32,
    pub generation: u32,
    /// The sandbox's MAC, and the bridge's (the sandbox's gateway).
    pub mac: [u8; 6],
    pub gw_mac: [u8; 6],
    pub mtu: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 32);

/// Value of `NATD_IFACE_CONFIG`: what natd attached to this ifindex and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    pub role: u32,
    /// Network id for sandbox veths, 0 for edges.
    pub network_id: u32,
    /// Edges: the address masqueraded traffic leaves with (0: none). Sandbox veths: the
    /// sandbox's address, the only source it may send from.
    pub addr4: u32,
    pub mtu: u32,
    /// Edges: their MAC (the source of redirected frames); sandbox veths: the host end's.
    pub mac: [u8; 6],
    /// `iface::MACVLAN_UPPERS`.
    pub flags: u8,
    pub _pad: u8,
    pub addr6: [u8; 16],
}

pub mod iface {
    /// An edge carrying macvlan devices of natd's namespace: a frame for another MAC is a
    /// macvlan's, judged by that device's programs.
    pub const MACVLAN_UPPERS: u8 = 1;
}
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 40);

/// A natd network as the kernel sees it: in `NATD_NETS4` (by subnet, LPM) and
/// `NATD_NETWORKS` (by id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetInfo4 {
    pub network_id: u32,
    /// `net::ICC | net::INTERNAL | net::MASQ`.
    pub flags: u32,
    pub gateway: u32,
    pub subnet: u32,
    /// The bridge: the interface the kernel routes the network's packets from.
    pub bridge_ifindex: u32,
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NetInfo4>() == 24);

/// A natd network's IPv6 side, in `NATD_NETS6` (by subnet, LPM). The network's policy
/// flags for IPv6 traffic are its own (`net::MASQ` off in routed mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetInfo6 {
    pub network_id: u32,
    pub flags: u32,
    pub gateway: Addr6,
    pub bridge_ifindex: u32,
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NetInfo6>() == 32);

pub mod net {
    pub const ICC: u32 = 1;
    pub const INTERNAL: u32 = 2;
    pub const MASQ: u32 = 4;
    /// Routed gateway mode: the sandboxes' addresses are reachable from outside (only on
    /// published container ports), nothing is masqueraded.
    pub const ROUTED: u32 = 8;
    /// Inbound filtering of masquerade mappings (RFC 4787 section 5; REQ-8): none of
    /// these two is address-and-port-dependent (only replies to what a sandbox sent get
    /// in, as Linux and Docker do); `FILTER_ADDRESS`: anything from an address the mapping
    /// has sent to; `FILTER_ENDPOINT`: anything ("full cone"). Both only to the mapping's
    /// own port on the external address, never past a published port or a drop rule.
    pub const FILTER_ADDRESS: u32 = 16;
    pub const FILTER_ENDPOINT: u32 = 32;
    /// New mappings take a random port (RFC 6056) instead of keeping the sandbox's.
    pub const PORTS_RANDOM: u32 = 64;
    /// A sandbox reaching a published port through a host address is seen by the
    /// target with its external address and mapping (RFC 4787 REQ-9a), not its own.
    pub const HAIRPIN_EXTERNAL: u32 = 128;
}

/// Per-mapping traffic, per CPU, by generation slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<MappingStats>() == 16);

/// Where CPU `cpu`'s counters of slot `slot` sit in `names::map::MAPPING_STATS`: one region
/// of `slots` counters per CPU (`names::map::STATS_SLOTS`), so no counter is written from
/// two CPUs and no cache line is shared between them.
#[inline(always)]
pub const fn mapping_stats_index(cpu: u32, slots: u32, slot: u32) -> u32 {
    cpu.wrapping_mul(slots).wrapping_add(slot)
}

/// A socket whose destination a cgroup hook rewrote, and the address it rewrote it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);

/// The address the application asked for, restored for recvmsg/getpeername.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOrig {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockOrig>() == 24);

/// Single entry of `NATD_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Host byte order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `config::FAST_PATH`.
    pub flags: u32,
    /// Per-source quotas (0: none): flows one source address may have in the embryonic
    /// table, and UDP/ICMP flows it may have promoted to the established table. A source
    /// over its quota gets no new flow (counted), so one client cannot churn the tables.
    pub embryonic_per_source: u32,
    pub promoted_per_source: u32,
}
const _: () = assert!(core::mem::size_of::<NatConfig>() == 16);

/// Flows of one source address (`NATD_QUOTA4`, `NATD_QUOTA6`): counted up by the programs
/// as flows start or are promoted, set to the live count by natd at every expiry pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceQuota {
    pub embryonic: u32,
    pub promoted: u32,
}
const _: () = assert!(core::mem::size_of::<SourceQuota>() == 8);

/// Which edge a network trusts (`NATD_TRUSTED`): may reach its sandboxes' published
/// container ports directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustKey {
    pub ifindex: u32,
    pub network_id: u32,
}
const _: () = assert!(core::mem::size_of::<TrustKey>() == 8);

pub mod config {
    /// Flows may bypass the host (natd's `--fast-path`, off while netfilter rules exist).
    pub const FAST_PATH: u32 = 1;
    /// The daemon's `allow-direct-routing` (Docker 28.2): every edge may reach published
    /// container ports on sandbox addresses.
    pub const DIRECT_ROUTING: u32 = 2;
    /// `port_marks` is complete (natd marked every port its tables held after its programs
    /// took over every link): unmarked ports may skip the lookups. Off, every packet takes
    /// them (an upgrade's switch, whose older programs did not mark).
    pub const PORT_FILTER: u32 = 4;
}

/// The benchmark's warm test runs: the frame the wrapper program restores before every
/// run (never used by natd itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFrame {
    pub len: u32,
    /// Non-zero: a new flow per run. The run's number `n` (counted from this value) sets
    /// the source port to `1024 + n % 60000`, and per `vary_how` adds `n % 251` to the
    /// destination port (`bench::VARY_DPORT`) or `n / 60000` to the source address
    /// (`bench::VARY_SADDR`, for flows to one published port); or keeps the source and
    /// adds `n % 60000` to the destination port and `n / 60000` to the destination address
    /// (`bench::VARY_DST`); or sets the destination port to `1024 + n % 60000` and adds
    /// `n / 60000` to the destination address (`bench::VARY_DADDR`: the replies to
    /// `VARY_SADDR`'s flows).
    pub vary: u32,
    pub vary_how: u32,
    /// Non-zero (with `vary`): no new flow per run, but flow `vary + random % pick_among`,
    /// one of flows made before, drawn afresh each run (the table's cache lines cold).
    pub pick_among: u32,
    pub bytes: [u8; 128],
}
const _: () = assert!(core::mem::size_of::<BenchFrame>() == 144);

pub mod bench {
    /// `BenchFrame::vary_how`: new flows differ in source and destination port.
    pub const VARY_DPORT: u32 = 0;
    /// New flows differ in source port and source address.
    pub const VARY_SADDR: u32 = 1;
    /// New flows from one source address and port (one masquerade mapping, reused),
    /// differing in destination port and address.
    pub const VARY_DST: u32 = 2;
    /// The other direction of `VARY_SADDR`'s flows: destination address and port vary.
    pub const VARY_DADDR: u32 = 3;
}

/// The benchmark's redirect-only baseline: where packets out of a sandbox are sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchRoute {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<BenchRoute>() == 16);

/// The mark a sandbox program puts on a packet it redirects to an edge: the edge's egress
/// program passes it on untouched (it is translated already) and clears the mark.
/// Packets from sandboxes arrive with mark 0 (crossing the veth clears it).
pub const FASTPATH_MARK: u32 = 0x6e61_7464;

pub const MAX_IFACES: u32 = 4096;
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;
/// Published mappings (generation slots and per-mapping counters): the most natd allows
/// (`--max-published-ports` sets fewer) and its default.
pub const MAX_PORT_MAPPINGS: u32 = 131_072;
/// The fewest published mappings `--max-published-ports` may set (above the dormant IPv6
/// tables' size, which `NATD_PORTS6`'s capacity is told from).
pub const MIN_PORT_MAPPINGS: u32 = 1024;
/// The range of `--masquerade-max` (masquerade mappings per family).
pub const MIN_SNAT_MAPPINGS: u32 = 1024;
pub const MAX_SNAT_MAPPINGS_SET: u32 = 4_194_304;
pub const MAX_ENDPOINTS: u32 = 16_384;
/// Generation slots: published mappings first, then endpoints.
pub const GENERATION_SLOTS: u32 = MAX_PORT_MAPPINGS + MAX_ENDPOINTS;
pub const MAX_NETWORKS: u32 = 1024;
pub const MAX_SOCK_REWRITES: u32 = 65_536;
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Source addresses whose flows are counted for the per-source quotas (an LRU: the least
/// active sources are forgotten first).
pub const MAX_QUOTA_SOURCES: u32 = 65_536;
/// (edge, network) pairs of trusted interfaces.
pub const MAX_TRUSTED: u32 = 1024;
/// NAT source ports for masquerade when natd has configured none (host byte order,
/// inclusive); natd itself picks a range outside the host's ephemeral ports.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);
/// How many NAT ports a new masqueraded flow tries before it is dropped.
pub const SNAT_PORT_TRIES: u32 = 32;
/// Masquerade mappings per family (one per sandbox address, port, protocol and external
/// address in use), and the remote addresses they have sent to (address-dependent
/// filtering; an LRU).
pub const MAX_SNAT_MAPPINGS: u32 = 131_072;
pub const MAX_SNAT_PEERS: u32 = 131_072;
/// Refused hairpins remembered per family (an LRU), and for how long one may be answered
/// (`clock` ticks, about 32 s: an unanswered UDP flow's life).
pub const MAX_PUNCHES: u32 = 16_384;
pub const PUNCH_TICKS: u32 = 30;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] integer/byte-array structs without implicit padding
    // (asserted sizes above), valid for any bit pattern.
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::Ct4Entry {}
    unsafe impl aya::Pod for super::Ct6Key {}
    unsafe impl aya::Pod for super::Ct6Entry {}
    unsafe impl aya::Pod for super::Port4Key {}
    unsafe impl aya::Pod for super::Port4Target {}
    unsafe impl aya::Pod for super::Port6Key {}
    unsafe impl aya::Pod for super::Port6Target {}
    unsafe impl aya::Pod for super::Snat4Key {}
    unsafe impl aya::Pod for super::Snat6Key {}
    unsafe impl aya::Pod for super::SnatMapping {}
    unsafe impl aya::Pod for super::Snat4Owner {}
    unsafe impl aya::Pod for super::Snat6Owner {}
    unsafe impl aya::Pod for super::Snat4PeerKey {}
    unsafe impl aya::Pod for super::Snat6PeerKey {}
    unsafe impl aya::Pod for super::Punch4Key {}
    unsafe impl aya::Pod for super::Punch6Key {}
    unsafe impl aya::Pod for super::Punch4 {}
    unsafe impl aya::Pod for super::Punch6 {}
    unsafe impl aya::Pod for super::NetInfo6 {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::IfaceConfig {}
    unsafe impl aya::Pod for super::NetInfo4 {}
    unsafe impl aya::Pod for super::MappingStats {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::SockOrig {}
    unsafe impl aya::Pod for super::NatConfig {}
    unsafe impl aya::Pod for super::SourceQuota {}
    unsafe impl aya::Pod for super::TrustKey {}
    unsafe impl aya::Pod for super::BenchFrame {}
    unsafe impl aya::Pod for super::BenchRoute {}
}
