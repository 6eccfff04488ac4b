//! natd's eBPF object loaded outside natd, for the packet tests (BPF_PROG_TEST_RUN on
//! frames built with etherparse) and the benchmark's program-cost figures. The maps are
//! written by natd's own map writer (`natd::dataplane::ebpf::maps`) from a `Desired`, so
//! the entries under test are the ones natd installs. Everything lives in a private
//! network namespace of the calling thread (test runs use its loopback device, ifindex 1)
//! and a scratch pin directory that is removed on drop.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use ipnetwork::Ipv4Network;
use nat_common::{
    CtEntry, CtKey,
    names::{map, program},
    net,
};
use natd::{
    dataplane::{Desired, Iface, IfaceRole, NetworkRule, PortRule, ebpf::maps},
    portspec::Proto,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The test run's device: loopback of the private namespace.
const TEST_IFINDEX: u32 = 1;

pub const HOST: [u8; 4] = [198, 51, 100, 1];
pub const CLIENT: [u8; 4] = [203, 0, 113, 7];
pub const SANDBOX: [u8; 4] = [172, 20, 0, 2];

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, b"x").expect("frame");
    out
}

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
    _pin: PinDir,
}

impl Bpf {
    /// Loads the object in a fresh network namespace of this thread with every TC program
    /// verified. The test device is an uplink with address `HOST`, which is local; one
    /// network 172.20.0.0/24 (id 2, icc, masquerade) exists; NAT ports are 61000-61009.
    pub fn load(ct_capacity: u32) -> Result<Self> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("a private network namespace")?;
        let pin = PinDir::create("natlab-bpf")?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin.0)
            .map_max_entries(map::CT, ct_capacity)
            .load(natd::EBPF_OBJECT)
            .context("load natd's eBPF object")?;
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
            _pin: pin,
        };
        bpf.as_uplink();
        bpf.network(2, [172, 20, 0, 0], 24, [172, 20, 0, 1], net::ICC | net::MASQ);
        Ok(bpf)
    }

    /// Writes `desired` into the maps, as natd's sync does.
    pub fn sync(&mut self) {
        maps::write(&mut self.ebpf, &self.desired).expect("natd's map writer");
    }

    fn set_test_iface(&mut self, role: IfaceRole) {
        self.desired.ifaces.retain(|i| i.index != TEST_IFINDEX);
        self.desired.ifaces.push(Iface {
            index: TEST_IFINDEX,
            name: "lo".into(),
            role,
        });
        self.sync();
    }

    /// The test device is an uplink whose address is `HOST`.
    pub fn as_uplink(&mut self) {
        self.set_test_iface(IfaceRole::Uplink {
            addr: Some(HOST.into()),
        });
    }

    /// The test device is the host end of a sandbox veth of network `network_id`.
    pub fn as_sandbox_veth(&mut self, network_id: u32) {
        self.set_test_iface(IfaceRole::SandboxVeth { network_id });
    }

    pub fn snat_ports(&mut self, first: u16, last: u16) {
        self.desired.snat_ports = (first, last);
        self.sync();
    }

    /// One more address of the host.
    pub fn local(&mut self, ip: [u8; 4]) {
        self.desired.local_addrs.push(ip.into());
        self.sync();
    }

    /// A natd network; `flags` are `nat_common::net` bits.
    pub fn network(&mut self, id: u32, subnet: [u8; 4], prefix_len: u8, gateway: [u8; 4], flags: u32) {
        self.desired.networks.retain(|n| n.id != id);
        self.desired.networks.push(NetworkRule {
            id,
            bridge: format!("br{id}"),
            subnet: Ipv4Network::new(subnet.into(), prefix_len).expect("subnet"),
            gateway: gateway.into(),
            icc: flags & net::ICC != 0,
            internal: flags & net::INTERNAL != 0,
            masquerade: flags & net::MASQ != 0,
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
            host_ip: host_ip.map(Ipv4Addr::from),
            host_port,
            proto: proto_of(proto),
            target: target.into(),
            target_port,
            mapping_id,
        });
        self.sync();
    }

    /// Many published ports at once (one write of the maps).
    pub fn publish_many(&mut self, rules: impl IntoIterator<Item = PortRule>) {
        self.desired.ports.extend(rules);
        self.sync();
    }

    pub fn unpublish(&mut self, host_ip: Option<[u8; 4]>, host_port: u16, proto: u8) {
        let (host_ip, proto) = (host_ip.map(Ipv4Addr::from), proto_of(proto));
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

    pub fn ct(&self) -> Vec<(CtKey, CtEntry)> {
        let map: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map(map::CT).expect("conntrack")).expect("conntrack map");
        map.iter().map(|r| r.expect("entry")).collect()
    }

    pub fn median_ns(&mut self, program: &str, frame: &[u8], samples: usize) -> Result<f64> {
        let mut v = Vec::with_capacity(samples);
        for _ in 0..samples {
            v.push(self.run_timed(program, frame)?.2 as f64);
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok(v[v.len() / 2])
    }

    /// Median ns per packet of each datapath (the benchmark's program cost).
    pub fn paths(&mut self, samples: usize) -> Result<Vec<(&'static str, f64)>> {
        let (ingress, egress) = (program::UPLINK_INGRESS, program::UPLINK_EGRESS);
        let mut out = Vec::new();
        out.push((
            "miss",
            self.median_ns(ingress, &tcp(CLIENT, 40000, HOST, 65535, true), samples)?,
        ));
        // Mapping 1 is 0.0.0.0:1 -> sandbox:80. First packet creates the flow.
        self.run_timed(ingress, &tcp(CLIENT, 40000, HOST, 1, true))?;
        out.push((
            "dnat_forward",
            self.median_ns(ingress, &tcp(CLIENT, 40000, HOST, 1, false), samples)?,
        ));
        out.push((
            "dnat_reverse",
            self.median_ns(egress, &tcp(SANDBOX, 80, CLIENT, 40000, false), samples)?,
        ));
        let mut new_flow = Vec::with_capacity(samples);
        for i in 0..samples {
            let frame = tcp(SANDBOX, 10000 + i as u16, CLIENT, 443, true);
            new_flow.push(self.run_timed(egress, &frame)?.2 as f64);
        }
        new_flow.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out.push(("snat_new", new_flow[new_flow.len() / 2]));
        out.push((
            "snat_established",
            self.median_ns(egress, &tcp(SANDBOX, 10000, CLIENT, 443, false), samples)?,
        ));
        self.as_sandbox_veth(2);
        out.push((
            "isolation_drop",
            self.median_ns(
                program::SANDBOX_INGRESS,
                &tcp(SANDBOX, 5000, [172, 21, 0, 9], 80, true),
                samples,
            )?,
        ));
        self.as_uplink();
        Ok(out)
    }
}

/// `mappings` TCP ports published on 0.0.0.0:1.. to the sandbox's port 80, and a second
/// network 172.21.0.0/24, for the benchmark.
pub fn bench_setup(mappings: u32, ct_capacity: u32) -> Result<Bpf> {
    let mut bpf = Bpf::load(ct_capacity.max(1024))?;
    bpf.snat_ports(1024, 65535);
    bpf.network(3, [172, 21, 0, 0], 24, [172, 21, 0, 1], net::ICC | net::MASQ);
    bpf.publish_many((0..mappings).map(|i| PortRule {
        host_ip: None,
        host_port: (1 + i % 65535) as u16,
        proto: Proto::Tcp,
        target: SANDBOX.into(),
        target_port: 80,
        mapping_id: i + 1,
    }));
    Ok(bpf)
}

/// Time to load `mappings` port entries, then per added mapping: natd's map write until
/// a test packet to it comes out translated (µs).
pub fn add_latency(mappings: u32, samples: usize) -> Result<(f64, Vec<f64>)> {
    let t0 = Instant::now();
    let mut bpf = bench_setup(mappings, 4096)?;
    let load = t0.elapsed().as_secs_f64();
    let mut adds = Vec::with_capacity(samples);
    for i in 0..samples {
        let port = 40000 + i as u16;
        let frame = tcp(CLIENT, 30000 + i as u16, HOST, port, true);
        let t0 = Instant::now();
        // Bound to the host address: never one of the 0.0.0.0 entries already present.
        bpf.publish(Some(HOST), port, 6, SANDBOX, 80, 2_000_000 + i as u32);
        bpf.run_timed(program::UPLINK_INGRESS, &frame)?;
        adds.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok((load, adds))
}
