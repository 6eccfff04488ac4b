//! natd's eBPF object loaded outside natd, for the benchmark's program-cost and map-update
//! measurements: BPF_PROG_TEST_RUN in a private network namespace of the calling thread,
//! maps pinned in a scratch bpffs directory that is removed on drop.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use nat_common::{AddrKey, FAMILY_V4, IfaceConfig, NatConfig, NetInfo, PortKey, PortTarget, net, role};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const HOST: [u8; 4] = [198, 51, 100, 1];
const CLIENT: [u8; 4] = [203, 0, 113, 7];
const SANDBOX: [u8; 4] = [172, 20, 0, 2];

pub fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

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

pub struct Prog {
    ebpf: Ebpf,
    _pin: PinDir,
}

impl Prog {
    /// Loads the object in a fresh network namespace of this thread, with `mappings`
    /// published ports (0.0.0.0:1.. -> the sandbox) and one network 172.20.0.0/24.
    pub fn load(mappings: u32, ct_capacity: u32) -> Result<Self> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("private netns")?;
        let pin = PinDir::create("natbench")?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin.0)
            .map_max_entries("NATD_CT", ct_capacity.max(1024))
            .load(natd::EBPF_OBJECT)?;
        for name in [
            "natd_uplink_ingress",
            "natd_uplink_egress",
            "natd_sandbox_ingress",
            "natd_empty",
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context("program")?.try_into()?;
            p.load()?;
        }
        let mut prog = Self { ebpf, _pin: pin };
        prog.iface(role::UPLINK, 0);
        {
            let mut cfg: Array<_, NatConfig> =
                Array::try_from(prog.ebpf.map_mut("NATD_CONFIG").context("map")?)?;
            cfg.set(
                0,
                NatConfig {
                    snat_port_min: 1024,
                    snat_port_max: 65535,
                    _pad: 0,
                },
                0,
            )?;
            let mut local: HashMap<_, AddrKey, u32> =
                HashMap::try_from(prog.ebpf.map_mut("NATD_LOCAL_ADDRS").context("map")?)?;
            local.insert(
                AddrKey {
                    addr: v4(HOST),
                    family: FAMILY_V4,
                    _pad: [0; 3],
                },
                1,
                0,
            )?;
        }
        for (id, subnet) in [(2u32, [172, 20, 0, 0]), (3, [172, 21, 0, 0])] {
            let gateway = [subnet[0], subnet[1], 0, 1];
            let info = NetInfo {
                network_id: id,
                flags: net::ICC | net::MASQ,
                gateway: v4(gateway),
                subnet: v4(subnet),
                prefix_len: 24,
                _pad: [0; 7],
            };
            let mut trie: LpmTrie<_, [u8; 4], NetInfo> =
                LpmTrie::try_from(prog.ebpf.map_mut("NATD_NETS_V4").context("map")?)?;
            trie.insert(&Key::new(24, subnet), info, 0)?;
            let mut by_id: HashMap<_, u32, NetInfo> =
                HashMap::try_from(prog.ebpf.map_mut("NATD_NETWORKS").context("map")?)?;
            by_id.insert(id, info, 0)?;
        }
        for i in 0..mappings {
            prog.publish([0; 4], (1 + i % 65535) as u16, i + 1)?;
        }
        Ok(prog)
    }

    /// TCP `host_ip:port` (0.0.0.0 when all zero) -> the sandbox's port 80.
    fn publish(&mut self, host_ip: [u8; 4], port: u16, mapping_id: u32) -> Result<()> {
        let mut ports: HashMap<_, PortKey, PortTarget> =
            HashMap::try_from(self.ebpf.map_mut("NATD_PORTS").context("map")?)?;
        let key = PortKey {
            addr: v4(host_ip),
            port: port.to_be(),
            proto: 6,
            family: FAMILY_V4,
        };
        let target = PortTarget {
            addr: v4(SANDBOX),
            port: 80u16.to_be(),
            _pad: [0; 2],
            mapping_id,
        };
        ports.insert(key, target, 0)?;
        Ok(())
    }

    fn iface(&mut self, kind: u32, network_id: u32) {
        if let Some(map) = self.ebpf.map_mut("NATD_IFACE_CONFIG")
            && let Ok(mut cfg) = HashMap::<_, u32, IfaceConfig>::try_from(map)
        {
            let (addr, family) = if kind == role::UPLINK {
                (v4(HOST), FAMILY_V4)
            } else {
                ([0; 16], 0)
            };
            let _ = cfg.insert(
                1,
                IfaceConfig {
                    role: kind,
                    network_id,
                    addr,
                    family,
                    _pad: [0; 7],
                },
                0,
            );
        }
    }

    /// One run on a fresh copy of `frame`: (return value, ns the kernel measured).
    pub fn run_once(&mut self, program: &str, frame: &[u8]) -> Result<(u32, u64)> {
        let p: &mut SchedClassifier = self.ebpf.program_mut(program).context("program")?.try_into()?;
        let mut out = vec![0u8; frame.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts)?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    pub fn median_ns(&mut self, program: &str, frame: &[u8], samples: usize) -> Result<f64> {
        let mut v = Vec::with_capacity(samples);
        for _ in 0..samples {
            v.push(self.run_once(program, frame)?.1 as f64);
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok(v[v.len() / 2])
    }

    /// Median ns per packet of each datapath.
    pub fn paths(&mut self, samples: usize) -> Result<Vec<(&'static str, f64)>> {
        let ingress = "natd_uplink_ingress";
        let egress = "natd_uplink_egress";
        let mut out = Vec::new();
        out.push((
            "miss",
            self.median_ns(ingress, &tcp(CLIENT, 40000, HOST, 65535, true), samples)?,
        ));
        // Mapping 1 is 0.0.0.0:1 -> sandbox:80. First packet creates the flow.
        let first = tcp(CLIENT, 40000, HOST, 1, true);
        self.run_once(ingress, &first)?;
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
            new_flow.push(self.run_once(egress, &frame)?.1 as f64);
        }
        new_flow.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out.push(("snat_new", new_flow[new_flow.len() / 2]));
        out.push((
            "snat_established",
            self.median_ns(egress, &tcp(SANDBOX, 10000, CLIENT, 443, false), samples)?,
        ));
        self.iface(role::SANDBOX_VETH, 2);
        out.push((
            "isolation_drop",
            self.median_ns(
                "natd_sandbox_ingress",
                &tcp(SANDBOX, 5000, [172, 21, 0, 9], 80, true),
                samples,
            )?,
        ));
        self.iface(role::UPLINK, 0);
        Ok(out)
    }
}

/// Time to load `mappings` port entries, then per added mapping: the map update until a
/// test packet to it comes out translated (µs).
pub fn add_latency(mappings: u32, samples: usize) -> Result<(f64, Vec<f64>)> {
    let t0 = Instant::now();
    let mut prog = Prog::load(mappings, 4096)?;
    let load = t0.elapsed().as_secs_f64();
    let mut adds = Vec::with_capacity(samples);
    for i in 0..samples {
        let port = 40000 + i as u16;
        let frame = tcp(CLIENT, 30000 + i as u16, HOST, port, true);
        let t0 = Instant::now();
        // Bound to the host address: never one of the 0.0.0.0 entries already present.
        prog.publish(HOST, port, 2_000_000 + i as u32)?;
        prog.run_once("natd_uplink_ingress", &frame)?;
        adds.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok((load, adds))
}
