//! Warm program cost, for the benchmark: BPF_PROG_TEST_RUN with many repetitions of one
//! path. A test run does not reset the packet between repetitions, so each program runs
//! behind `natd_bench_wrapper`, which restores the frame's headers (and makes a new flow
//! per run when asked) and tail-calls it; the wrapper tail-calling `natd_empty` is the
//! baseline subtracted from every figure. Every run's verdict and the counters it must
//! move are checked: a figure from a path that did something else is an error, not a row.
use crate::bpf::prelude::*;
use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    maps::{Array, ProgramArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use nat_common::{
    BenchFrame, bench, counter,
    names::{map, program},
};
use natd::{dataplane::PortRule, portspec::Proto};

mod filled;
mod ipv6;
pub use filled::{ENTRIES_PER_FLOW, drawn_flows, filled, soak_filled};
pub use ipv6::{IPV4_BESIDE, paths6, soak6};

use crate::{
    bpf::{Bpf, CLIENT, HOST, SANDBOX},
    frames::{SYN, ack, segment, syn_ack},
};

/// A second host address: the filler mappings are bound to it, so they take no port the
/// masquerade of the host address could use (and `snat_new` measures a new flow, not a
/// search through published ports).
pub const FILLER_ADDR: [u8; 4] = [198, 51, 100, 77];
const OTHER_NETWORK: [u8; 4] = [172, 21, 0, 9];
/// The sandbox `snat_new` runs from: its mappings are told apart from the other rows'
/// (and removed before each of its measurements).
const NEW_MAPPINGS_SANDBOX: [u8; 4] = [172, 20, 0, 3];
/// Runs per `snat_new` measurement: each makes a mapping and takes a NAT port (of 64,512),
/// starting from none, so the last run still finds 84 % of the ports free, as a host with
/// room does (and no source port repeats: no run reuses a mapping).
const SNAT_NEW_RUNS: u32 = 10_000;

/// How the wrapper changes the frame from run to run (`BenchFrame`): `first` 0 keeps it;
/// otherwise a new flow per run numbered from `first`, made new as `how` says, or with
/// `pick_among` set, one of the flows `first..first + pick_among` drawn at random per run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vary {
    pub first: u32,
    pub how: u32,
    pub pick_among: u32,
}

impl Vary {
    const SAME: Self = Self {
        first: 0,
        how: 0,
        pick_among: 0,
    };

    fn new_flows(first: u32, how: u32) -> Self {
        Self {
            first,
            how,
            pick_among: 0,
        }
    }
}

/// One measured path: its name and ns per packet of each repetition.
pub struct PathCost {
    pub path: &'static str,
    pub ns: Vec<f64>,
}

impl Bpf {
    /// Loads the wrapper and the redirect-only programs (natd never loads them).
    pub fn load_bench_programs(&mut self) -> Result<()> {
        for name in [
            program::BENCH_WRAPPER,
            program::BENCH_REDIRECT_INGRESS,
            program::BENCH_REDIRECT_SANDBOX,
            program::BENCH_REDIRECT_INGRESS6,
            program::BENCH_REDIRECT_SANDBOX6,
        ] {
            let p: &mut SchedClassifier = self.ebpf.program_mut(name).context("program")?.try_into()?;
            p.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(())
    }

    /// `repeat` runs of `program` on `frame` behind the wrapper, changed from run to run as
    /// `vary` says: (last verdict, mean ns per run as the kernel measured it).
    pub fn warm(&mut self, program: &str, frame: &[u8], vary: Vary, repeat: u32) -> Result<(u32, f64)> {
        let mut saved = BenchFrame {
            len: frame.len() as u32,
            vary: vary.first,
            vary_how: vary.how,
            pick_among: vary.pick_among,
            bytes: [0; 128],
        };
        ensure!(frame.len() <= saved.bytes.len(), "frame too long for the wrapper");
        saved.bytes[..frame.len()].copy_from_slice(frame);
        let mut frames: Array<_, BenchFrame> =
            Array::try_from(self.ebpf.map_mut(map::BENCH_FRAME).context("frame map")?)?;
        frames.set(0, saved, 0)?;
        let target = self.ebpf.program(program).context("program")?.fd()?.try_clone()?;
        let mut jump = ProgramArray::try_from(self.ebpf.map_mut(map::BENCH_JUMP).context("jump map")?)?;
        jump.set(0, &target, 0)?;
        let wrapper: &mut SchedClassifier = self
            .ebpf
            .program_mut(program::BENCH_WRAPPER)
            .context("wrapper")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let result = wrapper.test_run(opts)?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    /// `warm`, checking the verdict and that counter `id` moved by exactly `repeat`.
    fn warm_checked(
        &mut self,
        path: &str,
        run: (&str, &[u8], Vary),
        repeat: u32,
        verdict: u32,
        id: Option<u32>,
    ) -> Result<f64> {
        let before = self.counters();
        let (got, ns) = self.warm(run.0, run.1, run.2, repeat)?;
        let after = self.counters();
        let moved = |id: u32| after[id as usize] - before[id as usize];
        let all_moved = || {
            (0..counter::COUNT)
                .filter(|&i| moved(i) > 0)
                .map(|i| format!("{} +{}", counter::name(i).unwrap_or("?"), moved(i)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if got != verdict {
            bail!(
                "{path}: verdict {got}, expected {verdict} (counters: {})",
                all_moved()
            );
        }
        if let Some(id) = id
            && moved(id) != u64::from(repeat)
        {
            bail!(
                "{path}: {} moved by {}, expected {repeat} (counters: {})",
                counter::name(id).unwrap_or("?"),
                moved(id),
                all_moved()
            );
        }
        Ok(ns)
    }
}

impl Bpf {
    /// ns per run of `path` beyond the wrapper's own: the wrapper with `natd_empty` on the
    /// same frame and variation (restoring, varying, drawing), run just before, subtracted.
    fn net_cost(&mut self, path: &str, run: (&str, &[u8], Vary), repeat: u32, verdict: u32, id: Option<u32>) -> Result<f64> {
        let empty = self.warm_checked("empty", (program::EMPTY, run.1, run.2), repeat, PASS, None)?;
        let ns = self.warm_checked(path, run, repeat, verdict, id)?;
        Ok((ns - empty).max(0.0))
    }
}

/// natd's maps as the benchmark's program rows need them, in a private namespace of the
/// calling thread: the measured published port (0.0.0.0:8080 -> the sandbox's port 80), a
/// second network, a routed uplink for new outbound flows, the fast path on, NAT ports
/// 1024-65535. `set_mappings` adds the fillers.
pub fn bench_setup(ct_capacity: u32) -> Result<Bpf> {
    bench_setup_sized(ct_capacity, ct_capacity)
}

/// `bench_setup` with the established and embryonic tables sized apart.
pub fn bench_setup_sized(established: u32, embryonic: u32) -> Result<Bpf> {
    let mut bpf = Bpf::load_sized(established, embryonic)?;
    bpf.load_bench_programs()?;
    bpf.fast_path(true);
    bpf.snat_ports(1024, 65535);
    bpf.local(FILLER_ADDR);
    bpf.network(
        3,
        [172, 21, 0, 0],
        24,
        [172, 21, 0, 1],
        nat_common::net::ICC | nat_common::net::MASQ,
    );
    bpf.route_via_uplink(true);
    bpf.as_edge();
    set_mappings(&mut bpf, 1);
    Ok(bpf)
}

/// `mappings` published ports in all: the measured one and fillers bound to
/// `FILLER_ADDR` (their mapping ids stay the same whatever the count, so changing the
/// count touches only the fillers).
pub fn set_mappings(bpf: &mut Bpf, mappings: u32) {
    let fillers = (1..=65535u16)
        .filter(|p| *p != 8080)
        .take(mappings.saturating_sub(1) as usize);
    let mut rules: Vec<PortRule> = fillers
        .enumerate()
        .map(|(i, port)| PortRule {
            host_ip: Some(FILLER_ADDR.into()),
            host_port: port,
            proto: Proto::Tcp,
            target: SANDBOX.into(),
            target_port: 80,
            mapping_id: 2 + i as u32,
            legacy_id: 0,
            trusted_only: false,
        })
        .collect();
    rules.push(PortRule {
        host_ip: None,
        host_port: 8080,
        proto: Proto::Tcp,
        target: SANDBOX.into(),
        target_port: 80,
        mapping_id: 1,
        legacy_id: 0,
        trusted_only: false,
    });
    bpf.desired.ports = rules;
    bpf.sync();
}

/// A published-port flow and a masqueraded flow, both established on the fast path.
/// Returns the masqueraded flow's NAT port.
fn establish(bpf: &mut Bpf) -> Result<u16> {
    let (ingress, sandbox) = (program::EDGE_INGRESS, program::SANDBOX_INGRESS);
    bpf.as_edge();
    bpf.run(ingress, &segment(CLIENT, 40000, HOST, 8080, 1000, SYN));
    bpf.as_sandbox_veth(2, SANDBOX);
    bpf.run(sandbox, &segment(SANDBOX, 80, CLIENT, 40000, 5000, syn_ack(1001)));
    let (_, out) = bpf.run(sandbox, &segment(SANDBOX, 5000, REMOTE, 443, 1000, SYN));
    let nat_port = crate::frames::inspect(&out).sport;
    bpf.as_edge();
    bpf.run(ingress, &segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)));
    bpf.run(
        ingress,
        &segment(REMOTE, 443, HOST, nat_port, 9000, syn_ack(1001)),
    );
    bpf.as_sandbox_veth(2, SANDBOX);
    bpf.run(sandbox, &segment(SANDBOX, 5000, REMOTE, 443, 1001, ack(9001)));
    let promoted = bpf.counter(counter::CT_PROMOTED);
    ensure!(
        promoted == 2,
        "both flows established before measuring (promoted {promoted})"
    );
    Ok(nat_port)
}

/// The host-bound miss with the port filter off.
pub const MISS_UNFILTERED: &str = "miss_unfiltered";

/// The frame of each measured path.
struct PathFrames {
    miss: Vec<u8>,
    dnat_new: Vec<u8>,
    dnat: Vec<u8>,
    dnat_reply: Vec<u8>,
    snat_new: Vec<u8>,
    snat_new_mapped: Vec<u8>,
    snat: Vec<u8>,
    snat_reply: Vec<u8>,
    isolation: Vec<u8>,
    redirect: Vec<u8>,
}

impl PathFrames {
    /// `nat_port`: the established masqueraded flow's (`establish`).
    fn new(nat_port: u16) -> Self {
        Self {
            miss: segment(CLIENT, 40000, HOST, 65500, 1000, SYN),
            dnat_new: segment([198, 18, 0, 1], 1024, HOST, 8080, 1000, SYN),
            dnat: segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001)),
            dnat_reply: segment(SANDBOX, 80, CLIENT, 40000, 5001, ack(1001)),
            snat_new: segment(NEW_MAPPINGS_SANDBOX, 1024, REMOTE, 10000, 1000, SYN),
            // New flows of one source: the masquerade mapping is found and reused (its
            // lookup is what this costs beyond a flow's own inserts); `snat_new` makes a
            // mapping per run.
            snat_new_mapped: segment(SANDBOX, 1025, REMOTE, 20000, 1000, SYN),
            snat: segment(SANDBOX, 5000, REMOTE, 443, 1001, ack(9001)),
            snat_reply: segment(REMOTE, 443, HOST, nat_port, 9001, ack(1001)),
            isolation: segment(SANDBOX, 5000, OTHER_NETWORK, 80, 1000, SYN),
            redirect: segment(CLIENT, 40000, SANDBOX, 80, 1001, ack(5001)),
        }
    }
}

/// Paths `soak` can run: (name, on the uplink, verdict, the counter each run moves).
const SOAKABLE: [(&str, bool, u32, Option<u32>); 5] = [
    ("dnat_forward", true, TC_ACT_REDIRECT, Some(counter::FAST_TO_SANDBOX)),
    ("dnat_reply", false, TC_ACT_REDIRECT, Some(counter::FAST_TO_EDGE)),
    ("snat_established", false, TC_ACT_REDIRECT, Some(counter::SNAT_ESTABLISHED)),
    ("snat_reply", true, TC_ACT_REDIRECT, Some(counter::SNAT_REPLY)),
    ("miss", true, PASS, None),
];

/// `runs` runs of one established path in a single test run, on this thread (for a
/// profiler sampling its CPU, started by `ready` once the programs are loaded and the
/// flows made): the mean ns per run, checked like the rows' runs.
pub fn soak(path: &str, runs: u32, ready: impl FnOnce()) -> Result<f64> {
    let (_, uplink, verdict, moved) = *SOAKABLE
        .iter()
        .find(|(name, ..)| *name == path)
        .with_context(|| format!("no soakable path {path}"))?;
    let mut bpf = bench_setup(1 << 18)?;
    let nat_port = establish(&mut bpf)?;
    let f = PathFrames::new(nat_port);
    let frame = match path {
        "dnat_forward" => &f.dnat,
        "dnat_reply" => &f.dnat_reply,
        "snat_established" => &f.snat,
        "snat_reply" => &f.snat_reply,
        _ => &f.miss,
    };
    let program = if uplink {
        bpf.as_edge();
        program::EDGE_INGRESS
    } else {
        bpf.as_sandbox_veth(2, SANDBOX);
        program::SANDBOX_INGRESS
    };
    ready();
    bpf.warm_checked(path, (program, frame, Vary::SAME), runs, verdict, moved)
}

/// Every path's warm cost with each number of `mappings`, `reps` repetitions of `repeat`
/// runs each, the wrapper's own cost (with `natd_empty`) subtracted run by run. The
/// numbers of mappings take turns within each repetition, so a slow phase of the machine
/// spreads over all of them instead of landing on one.
pub fn paths(mappings: &[u32], repeat: u32, reps: usize) -> Result<Vec<(u32, PathCost)>> {
    // The established table holds the measured flows. Room in the embryonic table for every new flow of one measurement (two entries each).
    let mut bpf = bench_setup_sized(1 << 18, (2 * repeat + 1024).next_power_of_two().max(1 << 18))?;
    let nat_port = establish(&mut bpf)?;
    let (ingress, sandbox) = (program::EDGE_INGRESS, program::SANDBOX_INGRESS);
    let PathFrames {
        miss,
        dnat_new,
        dnat,
        dnat_reply,
        snat_new,
        snat_new_mapped,
        snat,
        snat_reply,
        isolation,
        redirect,
    } = PathFrames::new(nat_port);
    // (path, device role, program, frame, new flow per run (how), verdict, counter moved
    // per run)
    type Case<'a> = (
        &'static str,
        bool,
        &'a str,
        &'a [u8],
        Option<u32>,
        u32,
        Option<u32>,
    );
    let cases: [Case; 11] = [
        ("miss", true, ingress, &miss, None, PASS, None),
        // The same packet with the host-bound miss filter off (as during an upgrade's
        // switch): the lookups the filter saves, paired with `miss` run by run.
        (MISS_UNFILTERED, true, ingress, &miss, None, PASS, None),
        (
            "dnat_new",
            true,
            ingress,
            &dnat_new,
            Some(bench::VARY_SADDR),
            TC_ACT_REDIRECT,
            Some(counter::DNAT_NEW),
        ),
        (
            "dnat_forward",
            true,
            ingress,
            &dnat,
            None,
            TC_ACT_REDIRECT,
            Some(counter::FAST_TO_SANDBOX),
        ),
        (
            "dnat_reply",
            false,
            sandbox,
            &dnat_reply,
            None,
            TC_ACT_REDIRECT,
            Some(counter::FAST_TO_EDGE),
        ),
        (
            "snat_new",
            false,
            sandbox,
            &snat_new,
            Some(bench::VARY_DPORT),
            TC_ACT_REDIRECT,
            Some(counter::SNAT_NEW),
        ),
        (
            "snat_new_mapped",
            false,
            sandbox,
            &snat_new_mapped,
            Some(bench::VARY_DST),
            TC_ACT_REDIRECT,
            Some(counter::SNAT_MAPPING_REUSED),
        ),
        (
            "snat_established",
            false,
            sandbox,
            &snat,
            None,
            TC_ACT_REDIRECT,
            Some(counter::SNAT_ESTABLISHED),
        ),
        (
            "snat_reply",
            true,
            ingress,
            &snat_reply,
            None,
            TC_ACT_REDIRECT,
            Some(counter::SNAT_REPLY),
        ),
        (
            "isolation_drop",
            false,
            sandbox,
            &isolation,
            None,
            TC_ACT_SHOT,
            Some(counter::DROP_CROSS_NETWORK),
        ),
        (
            "redirect_only",
            true,
            program::BENCH_REDIRECT_INGRESS,
            &redirect,
            None,
            TC_ACT_REDIRECT,
            None,
        ),
    ];
    let mut out: Vec<(u32, PathCost)> = mappings
        .iter()
        .flat_map(|&n| {
            cases.iter().map(move |c| {
                (
                    n,
                    PathCost {
                        path: c.0,
                        ns: Vec::new(),
                    },
                )
            })
        })
        .collect();
    // The mapping `snat_new_mapped` reuses, made once beforehand.
    bpf.as_sandbox_veth(2, SANDBOX);
    let (made, _) = bpf.run(sandbox, &snat_new_mapped);
    ensure!(made == TC_ACT_REDIRECT, "the mapping of snat_new_mapped is made (verdict {made})");
    let mut round = 0u32;
    for _ in 0..reps {
        for (m, &n) in mappings.iter().enumerate() {
            set_mappings(&mut bpf, n);
            for (i, &(path, uplink, prog, frame, new_flows, verdict, id)) in cases.iter().enumerate() {
                // New flows never repeat a tuple of an earlier round, and each round starts on
                // an embryonic table with room: full, every insert would evict (an LRU), and
                // the row would measure eviction instead of a new flow.
                let vary = new_flows.map_or(Vary::SAME, |how| Vary::new_flows(1 + round * repeat, how));
                if new_flows.is_some() {
                    round += 1;
                    bpf.clear_embryonic();
                }
                let makes_mappings = path == "snat_new";
                let runs = if makes_mappings { repeat.min(SNAT_NEW_RUNS) } else { repeat };
                if makes_mappings {
                    remove_mappings_of(&mut bpf, NEW_MAPPINGS_SANDBOX);
                }
                bpf.port_filter(path != MISS_UNFILTERED);
                if uplink {
                    bpf.as_edge();
                } else {
                    bpf.as_sandbox_veth(2, if makes_mappings { NEW_MAPPINGS_SANDBOX } else { SANDBOX });
                }
                let ns = bpf.net_cost(path, (prog, frame, vary), runs, verdict, id)?;
                if makes_mappings {
                    let made = remove_mappings_of(&mut bpf, NEW_MAPPINGS_SANDBOX);
                    ensure!(made == runs as usize, "snat_new: {made} mappings made by {runs} runs");
                }
                out[m * cases.len() + i].1.ns.push(ns);
            }
        }
    }
    Ok(out)
}

/// Removes the masquerade mappings of sandbox `internal` and the ports they hold; returns
/// how many mappings went.
fn remove_mappings_of(bpf: &mut Bpf, internal: [u8; 4]) -> usize {
    use aya::maps::HashMap;
    use nat_common::{Port4Key, Snat4Key, Snat4Owner, SnatMapping};
    let owner = u32::from_ne_bytes(internal);
    let mut mappings: HashMap<_, Snat4Key, SnatMapping> =
        HashMap::try_from(bpf.ebpf.map_mut(map::SNAT4).expect("mappings")).expect("mapping map");
    let keys: Vec<Snat4Key> = mappings.keys().filter_map(Result::ok).filter(|k| k.internal == owner).collect();
    let removed = keys.iter().filter(|k| mappings.remove(k).is_ok()).count();
    for name in [map::SNAT4_PORTS, map::SNAT4_SHARED] {
        let mut ports: HashMap<_, Port4Key, Snat4Owner> =
            HashMap::try_from(bpf.ebpf.map_mut(name).expect("ports")).expect("port map");
        let held: Vec<Port4Key> = ports
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, o)| o.internal == owner)
            .map(|(k, _)| k)
            .collect();
        for k in held {
            let _ = ports.remove(&k);
        }
    }
    removed
}
