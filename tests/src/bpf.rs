//! natd's eBPF object loaded outside natd, for the packet tests (BPF_PROG_TEST_RUN on
//! frames built with etherparse) and the benchmark's program-cost figures. The maps are
//! written by natd's own map writer (`natd::dataplane::ebpf::maps`) from a `Desired`, so
//! the entries under test are the ones natd installs. Everything lives in a private
//! network namespace of the calling thread (test runs use its loopback device, ifindex 1)
//! and a scratch pin directory that is removed on drop.
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use nat_common::{
    Ct4Entry, Ct4Key, Ct6Entry, Ct6Key,
    names::{map, program},
    net,
};
use natd::{
    dataplane::{
        Desired, EndpointRule, Iface, IfaceRole, NetworkRule, NetworkRule6, PortRule, ebpf::{mapping_stats, maps::MapWriter},
    },
    model::NatFiltering,
    portspec::Proto,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The test run's device: loopback of the private namespace.
pub const TEST_IFINDEX: u32 = 1;
/// Offset of `mark` in struct __sk_buff.
const MARK: usize = 8;

pub const HOST: [u8; 4] = [198, 51, 100, 1];
/// The test uplink's IPv6 address (2001:db8:198::1).
pub const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x01, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const CLIENT: [u8; 4] = [203, 0, 113, 7];
pub const SANDBOX: [u8; 4] = [172, 20, 0, 2];
/// The sandbox endpoint the tests install for `SANDBOX`: its veth's ifindex (the test
/// device, which plays every sandbox's veth and the uplink in turn), its MAC and its
/// gateway's (the bridge's).
pub const SANDBOX_VETH: u32 = TEST_IFINDEX;
pub const SANDBOX_MAC: [u8; 6] = [2, 0x5a, 0, 0, 0, 2];
pub const BRIDGE_MAC: [u8; 6] = [2, 0xb0, 0, 0, 0, 1];
pub const UPLINK_MAC: [u8; 6] = [2, 0x0a, 0, 0, 0, 1];
/// What every program test names: verdicts, natd's TC programs, a remote peer.
pub mod prelude {
    use nat_common::names::program;

    /// What natd's programs return for a packet they let through (`nat_common::TC_PASS`,
    /// TCX_NEXT), as a test run reports it.
    pub const PASS: u32 = nat_common::TC_PASS as u32;
    pub const TC_ACT_SHOT: u32 = 2;
    pub const TC_ACT_REDIRECT: u32 = 7;
    pub const INGRESS: &str = program::EDGE_INGRESS;
    pub const EGRESS: &str = program::EDGE_EGRESS;
    pub const SANDBOX_PROG: &str = program::SANDBOX_INGRESS;
    /// A server on the internet, as far as the programs can tell.
    pub const REMOTE: [u8; 4] = [203, 0, 113, 9];
}

/// `route_via_uplink`: the routed uplink's MAC and its gateway's.
pub const UPLINK_ROUTED_MAC: [u8; 6] = [2, 0x0a, 0, 0, 0, 9];
pub const GATEWAY_MAC: [u8; 6] = [2, 0xfe, 0, 0, 0, 0xfe];

pub use crate::frames::tcp;

/// A scratch pin directory under /sys/fs/bpf, emptied and removed on drop, also when
/// loading fails halfway.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn create(tag: &str) -> Result<Self> {
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).context("bpffs is mounted (cargo xtask setup)")?;
        crate::live::register_pin(path.clone());
        Ok(Self(path))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
        crate::live::forget_pin(&self.0);
    }
}

fn proto_of(number: u8) -> Proto {
    match number {
        17 => Proto::Udp,
        132 => Proto::Sctp,
        _ => Proto::Tcp,
    }
}

/// natd's programs and maps with a configuration the caller builds up.
pub struct Bpf {
    pub ebpf: Ebpf,
    /// What the maps hold; every change is written with natd's map writer.
    pub desired: Desired,
    writer: MapWriter,
    _pin: PinDir,
}

impl Bpf {
    /// Loads the object in a fresh network namespace of this thread with every TC program
    /// verified. The test device is an uplink with address `HOST`, which is local; one
    /// network 172.20.0.0/24 (id 2, icc, masquerade) exists; NAT ports are 61000-61009.
    pub fn load(ct_capacity: u32) -> Result<Self> {
        Self::load_sized(ct_capacity, ct_capacity)
    }

    /// `load` with the established and embryonic tables sized apart.
    pub fn load_sized(established: u32, embryonic: u32) -> Result<Self> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("a private network namespace")?;
        let pin = PinDir::create("natlab-bpf")?;
        // The per-mapping counters as natd sizes them: a region of every slot per CPU.
        let cpus = mapping_stats::cpu_regions()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin.0)
            .map_max_entries(map::CT4, established)
            .map_max_entries(map::CT4_NEW, embryonic)
            .map_max_entries(map::MAPPING_STATS, mapping_stats::entries(nat_common::MAX_PORT_MAPPINGS, cpus))
            .load(natd::EBPF_OBJECT)
            .context("load natd's eBPF object")?;
        mapping_stats::write_slots(&mut ebpf, nat_common::MAX_PORT_MAPPINGS)?;
        for name in program::TC.iter().chain([&program::EMPTY]) {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context("program")?.try_into()?;
            p.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        let mut bpf = Self {
            ebpf,
            desired: Desired {
                snat_ports: (61000, 61009),
                local_addrs: vec![HOST.into()],
                ..Default::default()
            },
            writer: MapWriter::default(),
            _pin: pin,
        };
        // natd's steady state: the tables are empty, so every port in use is marked by
        // whoever adds it (the programs, the map writer).
        bpf.writer.set_port_filter(true);
        bpf.as_edge();
        bpf.network(2, [172, 20, 0, 0], 24, [172, 20, 0, 1], net::ICC | net::MASQ);
        bpf.endpoint(SANDBOX, SANDBOX_VETH, 2);
        Ok(bpf)
    }

    /// Writes `desired` into the maps, as natd's sync does.
    pub fn sync(&mut self) {
        self.writer
            .write(&mut self.ebpf, &self.desired)
            .expect("natd's map writer");
    }

    fn set_test_iface(&mut self, role: IfaceRole) {
        self.desired.ifaces.retain(|i| i.index != TEST_IFINDEX);
        self.desired.ifaces.push(Iface {
            index: TEST_IFINDEX,
            name: "lo".into(),
            role,
            mac: UPLINK_MAC,
            mtu: 1500,
            bridge: false,
        });
        self.sync();
    }

    /// A handshake through the edge from `client`:`port` to the published port 8080 (the
    /// sandbox's 80): SYN, the sandbox's SYN-ACK, the ACK. Returns the ACK's verdict.
    pub fn handshake(&mut self, client: [u8; 4], port: u16) -> u32 {
        use crate::frames::{Flags, SYN, ack, segment};
        self.as_edge();
        self.run(prelude::INGRESS, &segment(client, port, HOST, 8080, 1000, SYN));
        self.as_sandbox_veth(2, SANDBOX);
        let syn_ack = Flags {
            syn: true,
            ack: Some(1001),
            ..Flags::default()
        };
        self.run(prelude::SANDBOX_PROG, &segment(SANDBOX, 80, client, port, 7000, syn_ack));
        self.as_edge();
        self.run(prelude::INGRESS, &segment(client, port, HOST, 8080, 1001, ack(7001))).0
    }

    /// The test device is an edge whose address is `HOST`.
    pub fn as_edge(&mut self) {
        self.set_test_iface(IfaceRole::Edge {
            addr: Some(HOST.into()),
            addr6: Some(HOST6.into()),
            link_layer: true,
            macvlan_uppers: false,
        });
    }

    /// The test device is an edge carrying macvlan devices. (A test run delivers frames
    /// as the loopback device's, whose MAC is all zeroes: every test frame is for another
    /// MAC, as a macvlan's frames are on its lower device.)
    pub fn as_edge_with_macvlans(&mut self) {
        self.set_test_iface(IfaceRole::Edge {
            addr: Some(HOST.into()),
            addr6: Some(HOST6.into()),
            link_layer: true,
            macvlan_uppers: true,
        });
    }

    /// The test device is the host end of the veth of the sandbox `addr` on network
    /// `network_id` (the test frames then come from that sandbox).
    pub fn as_sandbox_veth(&mut self, network_id: u32, addr: [u8; 4]) {
        self.set_test_iface(IfaceRole::SandboxVeth {
            network_id,
            addr: addr.into(),
            addr6: None,
        });
    }

    /// A sandbox endpoint: address, the host end of its veth, network.
    pub fn endpoint(&mut self, addr: [u8; 4], host_ifindex: u32, network_id: u32) {
        self.desired.endpoints.retain(|e| e.addr != IpAddr::from(addr));
        self.desired.endpoints.push(EndpointRule {
            addr: IpAddr::from(addr),
            host_ifindex,
            network_id,
            mac: SANDBOX_MAC,
            gw_mac: BRIDGE_MAC,
            mtu: 1500,
        });
        self.sync();
    }

    /// Whether new flows may bypass the host.
    pub fn fast_path(&mut self, on: bool) {
        self.desired.fast_path = on;
        self.sync();
    }

    pub fn snat_ports(&mut self, first: u16, last: u16) {
        self.desired.snat_ports = (first, last);
        self.sync();
    }

    /// One more address of the host.
    pub fn local(&mut self, ip: [u8; 4]) {
        self.desired.local_addrs.push(IpAddr::from(ip));
        self.sync();
    }

    /// A natd network; `flags` are `nat_common::net` bits.
    pub fn network(&mut self, id: u32, subnet: [u8; 4], prefix_len: u8, gateway: [u8; 4], flags: u32) {
        self.desired.networks.retain(|n| n.id != id);
        self.desired.networks.push(NetworkRule {
            id,
            bridge: format!("br{id}"),
            bridge_ifindex: 0,
            subnet: Ipv4Network::new(subnet.into(), prefix_len).expect("subnet"),
            gateway: gateway.into(),
            icc: flags & net::ICC != 0,
            internal: flags & net::INTERNAL != 0,
            masquerade: flags & net::MASQ != 0,
            routed: flags & net::ROUTED != 0,
            v6: None,
            trusted: Vec::new(),
            nat_filtering: if flags & net::FILTER_ENDPOINT != 0 {
                NatFiltering::EndpointIndependent
            } else if flags & net::FILTER_ADDRESS != 0 {
                NatFiltering::AddressDependent
            } else {
                NatFiltering::AddressAndPortDependent
            },
            random_ports: flags & net::PORTS_RANDOM != 0,
            hairpin_external: flags & net::HAIRPIN_EXTERNAL != 0,
        });
        self.sync();
    }

    /// A published port; `host_ip` None is 0.0.0.0.
    pub fn publish(
        &mut self,
        host_ip: Option<[u8; 4]>,
        host_port: u16,
        proto: u8,
        target: [u8; 4],
        target_port: u16,
        mapping_id: u32,
    ) {
        self.desired.ports.push(PortRule {
            host_ip: host_ip.map(IpAddr::from),
            host_port,
            proto: proto_of(proto),
            target: IpAddr::from(target),
            target_port,
            mapping_id,
            legacy_id: 0,
            trusted_only: false,
        });
        self.sync();
    }

    /// Many published ports at once (one write of the maps).
    pub fn publish_many(&mut self, rules: impl IntoIterator<Item = PortRule>) {
        self.desired.ports.extend(rules);
        self.sync();
    }

    pub fn unpublish(&mut self, host_ip: Option<[u8; 4]>, host_port: u16, proto: u8) {
        let (host_ip, proto) = (host_ip.map(IpAddr::from), proto_of(proto));
        self.desired
            .ports
            .retain(|r| !(r.host_ip == host_ip && r.host_port == host_port && r.proto == proto));
        self.sync();
    }

    /// One test run: (return value, output frame).
    pub fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let (ret, out, _) = self.run_timed(program, frame).expect("BPF_PROG_TEST_RUN");
        (ret, out)
    }

    /// A TUN device (a link without a link layer, like wg0) in the private namespace:
    /// its ifindex. A test run on it hands the program the frame's IP packet only.
    pub fn tun_device(&mut self, name: &str) -> u32 {
        self.in_own_netns(&format!("ip tuntap add mode tun dev {name}; ip link set {name} up"));
        nix::net::if_::if_nametoindex(name).expect("ifindex")
    }

    /// The TUN device `ifindex` is an edge whose address is `HOST`.
    pub fn as_edge_l3(&mut self, ifindex: u32, name: &str) {
        self.desired.ifaces.retain(|i| i.index != ifindex);
        self.desired.ifaces.push(Iface {
            index: ifindex,
            name: name.into(),
            role: IfaceRole::Edge {
                addr: Some(HOST.into()),
                addr6: Some(HOST6.into()),
                link_layer: false,
                macvlan_uppers: false,
            },
            mac: [0; 6],
            mtu: 1500,
            bridge: false,
        });
        self.sync();
    }

    /// One test run on device `ifindex` (the frame's Ethernet header is taken off for a
    /// device without a link layer): (return value, output).
    pub fn run_on(&mut self, program: &str, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        const IFINDEX: usize = 40;
        let (ret, out, _) = self.run_ctx(program, frame, &[(IFINDEX, ifindex)]);
        (ret, out)
    }

    /// One test run of a packet carrying skb->mark `mark`: (return value, output frame,
    /// mark afterwards).
    pub fn run_marked(&mut self, program: &str, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        self.run_skb(program, frame, mark, 0)
    }

    /// One test run of a packet with skb->mark `mark` and, if not 0, a GSO segment size
    /// (a packet the stack would segment): (return value, output frame, mark afterwards).
    pub fn run_skb(&mut self, program: &str, frame: &[u8], mark: u32, gso_size: u32) -> (u32, Vec<u8>, u32) {
        const GSO_SIZE: usize = 176;
        self.run_ctx(program, frame, &[(MARK, mark), (GSO_SIZE, gso_size)])
    }

    /// One test run with fields of struct __sk_buff set (offset, value): (return value,
    /// output frame, mark afterwards). The kernel accepts only a few fields set on the way
    /// in (mark, ifindex, gso_size among them) but writes the whole structure (192 bytes)
    /// out, or fails with ENOSPC.
    fn run_ctx(&mut self, program: &str, frame: &[u8], fields: &[(usize, u32)]) -> (u32, Vec<u8>, u32) {
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx_in = [0u8; 192];
        for (at, value) in fields {
            ctx_in[*at..*at + 4].copy_from_slice(&value.to_ne_bytes());
        }
        let mut ctx_out = [0u8; 192];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx_in);
        opts.ctx_out = Some(&mut ctx_out);
        let result = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[MARK..MARK + 4].try_into().expect("4 bytes"));
        (result.return_value, out, mark)
    }

    /// One test run: (return value, output frame, ns the kernel measured).
    pub fn run_timed(&mut self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>, u64)> {
        let p: &mut SchedClassifier = self.ebpf.program_mut(program).context("program")?.try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = p.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration.as_nanos() as u64))
    }

    pub fn counter(&self, id: u32) -> u64 {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map::COUNTERS).expect("counters")).expect("counter array");
        array.get(&id, 0).expect("counter").iter().sum()
    }

    /// The refused hairpins recorded as punches (`NATD_PUNCH4`): (from port, to port) ->
    /// (sandbox address, port).
    pub fn punches(&self) -> Vec<((u16, u16), ([u8; 4], u16))> {
        let table: HashMap<_, nat_common::Punch4Key, nat_common::Punch4> =
            HashMap::try_from(self.ebpf.map(map::PUNCH4).expect("punches")).expect("punch map");
        table
            .iter()
            .map(|r| r.expect("entry"))
            .map(|(k, v)| {
                (
                    (u16::from_be(k.from), u16::from_be(k.to)),
                    (v.internal.to_ne_bytes(), u16::from_be(v.port)),
                )
            })
            .collect()
    }

    /// The counters of the published mapping `mapping_id` in each CPU's region of
    /// `NATD_MAPPING_STATS` (regions of `MAX_PORT_MAPPINGS` slots, as this harness loads
    /// them), by CPU: (packets, bytes).
    pub fn mapping_stats(&self, mapping_id: u32) -> Vec<(u64, u64)> {
        let slot = self
            .writer
            .mapping_slots()
            .into_iter()
            .find_map(|(id, slot)| (id == mapping_id).then_some(slot))
            .expect("the mapping holds a slot");
        let array: Array<_, nat_common::MappingStats> =
            Array::try_from(self.ebpf.map(map::MAPPING_STATS).expect("mapping stats")).expect("an array");
        let cpus = mapping_stats::cpu_regions().expect("possible CPUs");
        (0..cpus)
            .map(|cpu| {
                let index = nat_common::mapping_stats_index(cpu, nat_common::MAX_PORT_MAPPINGS, slot);
                let s = array.get(&index, 0).expect("in the array");
                (s.packets, s.bytes)
            })
            .collect()
    }

    /// Every counter, by id.
    pub fn counters(&self) -> Vec<u64> {
        (0..nat_common::counter::COUNT)
            .map(|id| self.counter(id))
            .collect()
    }

    /// Both connection tables: (key, entry, established).
    pub fn ct(&self) -> Vec<(Ct4Key, Ct4Entry, bool)> {
        let mut out = Vec::new();
        for (name, established) in [(map::CT4, true), (map::CT4_NEW, false)] {
            let table: HashMap<_, Ct4Key, Ct4Entry> =
                HashMap::try_from(self.ebpf.map(name).expect("conntrack")).expect("conntrack map");
            out.extend(
                table
                    .iter()
                    .map(|r| r.expect("entry"))
                    .map(|(k, e)| (k, e, established)),
            );
        }
        out
    }

    /// The test device is the host end of the veth of a dual-stack sandbox (`addr` and
    /// `addr6`) on network `network_id`.
    pub fn as_sandbox_veth6(&mut self, network_id: u32, addr: [u8; 4], addr6: [u8; 16]) {
        self.set_test_iface(IfaceRole::SandboxVeth {
            network_id,
            addr: addr.into(),
            addr6: Some(addr6.into()),
        });
    }

    /// A sandbox endpoint on an IPv6 address: address, the host end of its veth, network.
    pub fn endpoint6(&mut self, addr: [u8; 16], host_ifindex: u32, network_id: u32) {
        self.desired.endpoints.retain(|e| e.addr != IpAddr::from(addr));
        self.desired.endpoints.push(EndpointRule {
            addr: IpAddr::from(addr),
            host_ifindex,
            network_id,
            mac: SANDBOX_MAC,
            gw_mac: BRIDGE_MAC,
            mtu: 1500,
        });
        self.sync();
    }

    /// The IPv6 side of the existing network `id`: subnet, gateway, and whether it is
    /// masqueraded (false: routed).
    pub fn network6(
        &mut self,
        id: u32,
        subnet: [u8; 16],
        prefix_len: u8,
        gateway: [u8; 16],
        masquerade: bool,
    ) {
        let network = self
            .desired
            .networks
            .iter_mut()
            .find(|n| n.id == id)
            .expect("network6 adds the IPv6 side of a network that exists");
        network.v6 = Some(NetworkRule6 {
            subnet: Ipv6Network::new(subnet.into(), prefix_len).expect("subnet"),
            gateway: gateway.into(),
            masquerade,
            routed: !masquerade,
        });
        self.sync();
    }

    /// One more IPv6 address of the host.
    pub fn local6(&mut self, ip: [u8; 16]) {
        self.desired.local_addrs.push(IpAddr::from(ip));
        self.sync();
    }

    /// A published port aimed at an IPv6 address; `host_ip` None is [::].
    pub fn publish6(
        &mut self,
        host_ip: Option<[u8; 16]>,
        host_port: u16,
        proto: u8,
        target: [u8; 16],
        target_port: u16,
        mapping_id: u32,
    ) {
        self.desired.ports.push(PortRule {
            host_ip: host_ip.map(IpAddr::from),
            host_port,
            proto: proto_of(proto),
            target: IpAddr::from(target),
            target_port,
            mapping_id,
            legacy_id: 0,
            trusted_only: false,
        });
        self.sync();
    }

    /// Both IPv6 connection tables: (key, entry, established).
    pub fn ct6(&self) -> Vec<(Ct6Key, Ct6Entry, bool)> {
        let mut out = Vec::new();
        for (name, established) in [(map::CT6, true), (map::CT6_NEW, false)] {
            let table: HashMap<_, Ct6Key, Ct6Entry> =
                HashMap::try_from(self.ebpf.map(name).expect("conntrack")).expect("conntrack map");
            out.extend(
                table
                    .iter()
                    .map(|r| r.expect("entry"))
                    .map(|(k, e)| (k, e, established)),
            );
        }
        out
    }

    /// The sandbox network's bridge and an uplink with a default route (via
    /// 198.51.100.254, whose neighbour entry exists if `neighbour`), as veth ends in this
    /// thread's namespace, plus a route to 10.99.0.0/24 out of another device; the test
    /// device plays the sandbox's veth. Returns (uplink ifindex, bridge ifindex).
    pub fn route_via_uplink(&mut self, neighbour: bool) -> (u32, u32) {
        self.in_own_netns(
            "for dev in up0 brt other0; do
                 ip link add $dev type veth peer name $dev-peer
                 ip link set $dev-peer up
             done
             ip link set up0 address 02:0a:00:00:00:09
             ip addr add 198.51.100.1/24 dev up0
             ip addr add 172.20.0.1/24 dev brt
             ip link set up0 up
             ip link set brt up
             ip link set other0 up
             ip route add default via 198.51.100.254 dev up0
             ip route add 10.99.0.0/24 dev other0
             echo 1 > /proc/sys/net/ipv4/ip_forward",
        );
        if neighbour {
            self.in_own_netns("ip neigh add 198.51.100.254 lladdr 02:fe:00:00:00:fe dev up0 nud permanent");
        }
        let index = |name: &str| nix::net::if_::if_nametoindex(name).expect("ifindex");
        let (uplink, bridge) = (index("up0"), index("brt"));
        self.desired.ifaces.push(Iface {
            index: uplink,
            name: "up0".into(),
            role: IfaceRole::Edge {
                addr: Some(HOST.into()),
                addr6: None,
                link_layer: true,
                macvlan_uppers: false,
            },
            mac: UPLINK_ROUTED_MAC,
            mtu: 1500,
            bridge: false,
        });
        for n in &mut self.desired.networks {
            n.bridge_ifindex = bridge;
        }
        self.as_sandbox_veth(2, SANDBOX);
        (uplink, bridge)
    }

    /// The host-bound miss filter on or off (on after `load`, as natd runs once its
    /// programs hold every link).
    pub fn port_filter(&mut self, on: bool) {
        self.writer.set_port_filter(on);
        self.sync();
    }

    /// The mark of `port` (host byte order) of `proto` (`nat_common::port_marks`): 0 when
    /// unmarked, else the clock tick it was marked at.
    pub fn port_mark(&self, proto: u8, port: u16) -> u32 {
        let index = nat_common::port_marks::index(proto, port.to_be()).expect("TCP or UDP");
        let marks: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.ebpf.map(map::PORT_MARKS).expect("port marks")).expect("an array");
        marks.get(&index, 0).expect("a mark")
    }

    /// Sets the mark of `port` (host byte order) of `proto` (an old mark: a small tick).
    pub fn set_port_mark(&mut self, proto: u8, port: u16, tick: u32) {
        let index = nat_common::port_marks::index(proto, port.to_be()).expect("TCP or UDP");
        let mut marks: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.ebpf.map_mut(map::PORT_MARKS).expect("port marks")).expect("an array");
        marks.set(index, tick, 0).expect("a mark written");
    }

    /// natd's housekeeping tick as far as the marks go: the expiry pass (default timeouts),
    /// then the sweep of marks made before tick `before`. Returns how many marks went.
    pub fn expire_and_sweep(&mut self, before: u32) -> usize {
        use natd::dataplane::ebpf::{conntrack, portmarks};
        let mut used = conntrack::PortsInUse::default();
        conntrack::expire(&mut self.ebpf, &conntrack::Timeouts::default(), &mut used).expect("expiry pass");
        let marks = self.writer.marks(&self.ebpf).expect("marks open").expect("the object has marks");
        portmarks::sweep(&self.ebpf, marks, used, before)
    }

    /// Empties the IPv4 embryonic table (flows that never completed a handshake); returns
    /// how many entries went. Established flows stay.
    pub fn clear_embryonic(&mut self) -> usize {
        self.clear_ct(map::CT4_NEW)
    }

    /// Empties the IPv4 established table; returns how many entries went.
    pub fn clear_established(&mut self) -> usize {
        self.clear_ct(map::CT4)
    }

    fn clear_ct(&mut self, name: &str) -> usize {
        let mut table: HashMap<_, Ct4Key, Ct4Entry> =
            HashMap::try_from(self.ebpf.map_mut(name).expect("conntrack")).expect("conntrack map");
        let keys: Vec<Ct4Key> = table.keys().filter_map(Result::ok).collect();
        keys.iter().filter(|k| table.remove(k).is_ok()).count()
    }

    /// Rewrites every entry of both tables with `f` (to age flows, for example).
    pub fn edit_ct(&mut self, f: impl Fn(&Ct4Key, &mut Ct4Entry)) {
        for (name, _) in [(map::CT4, true), (map::CT4_NEW, false)] {
            let mut table: HashMap<_, Ct4Key, Ct4Entry> =
                HashMap::try_from(self.ebpf.map_mut(name).expect("conntrack")).expect("conntrack map");
            let all: Vec<_> = table.iter().map(|r| r.expect("entry")).collect();
            for (key, mut entry) in all {
                f(&key, &mut entry);
                table.insert(key, entry, 0).expect("rewrite entry");
            }
        }
    }

    /// Runs a shell script in this thread's private network namespace (interfaces,
    /// routes, neighbours, per-namespace sysctls for the fast path's route lookups). It
    /// refuses to run in the machine's own namespace.
    pub fn in_own_netns(&self, script: &str) {
        // The initial namespace's inode number is fixed since Linux 6.18 (PROC_NET_INIT_INO);
        // before, it is PID 1's (when /proc/1 can be read).
        let guard = "own=$(stat -L -c %i /proc/self/ns/net); \
            init=$(stat -L -c %i /proc/1/ns/net 2>/dev/null || echo none); \
            [ \"$own\" != 4026531833 ] && [ \"$own\" != \"$init\" ] || \
            { echo 'refusing: this is the machine network namespace' >&2; exit 3; }";
        let out = std::process::Command::new("sh")
            .args(["-ec", &format!("{guard}\n{script}")])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "script failed: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
