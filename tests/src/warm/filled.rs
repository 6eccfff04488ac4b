//! Warm cost of the established published-port paths with the connection table filled:
//! `flows` client flows to the published port made by the programs themselves (SYN,
//! SYN-ACK, ACK each, run by the wrapper with `repeat` = `flows`), then every measured
//! run on one of them drawn at random, so a run finds its entry in a table of that many,
//! its cache lines as cold as traffic across that many flows leaves them.
use anyhow::{Context as _, Result, ensure};
use aya::maps::HashMap;
use nat_common::{Ct4Entry, Ct4Key, bench, counter, ct, names::map};

use super::{PathCost, Vary, bench_setup_sized};
use crate::{
    bpf::{Bpf, HOST, SANDBOX, prelude::*},
    frames::{SYN, ack, segment, syn_ack},
};

/// The filled flows' clients: `FILL_CLIENT` + `n / 60000` in the last 16 bits, port
/// `1024 + n % 60000` (`bench::VARY_SADDR`), apart from every other measured flow.
const FILL_CLIENT: [u8; 4] = [198, 19, 0, 1];

/// Established-table entries per flow: the forward and the reply tuple.
pub const ENTRIES_PER_FLOW: u32 = 2;

impl Bpf {
    fn established_entries(&self) -> usize {
        let table: HashMap<_, Ct4Key, Ct4Entry> =
            HashMap::try_from(self.ebpf.map(map::CT4).expect("conntrack")).expect("conntrack map");
        table.keys().filter(Result::is_ok).count()
    }
}

/// The three frames of a filled flow and the published port's reply, as sent.
struct Frames {
    syn: Vec<u8>,
    syn_ack: Vec<u8>,
    ack: Vec<u8>,
    reply: Vec<u8>,
}

impl Frames {
    fn new() -> Self {
        Self {
            syn: segment(FILL_CLIENT, 1024, HOST, 8080, 1000, SYN),
            syn_ack: segment(SANDBOX, 80, FILL_CLIENT, 1024, 5000, syn_ack(1001)),
            ack: segment(FILL_CLIENT, 1024, HOST, 8080, 1001, ack(5001)),
            reply: segment(SANDBOX, 80, FILL_CLIENT, 1024, 5001, ack(1001)),
        }
    }
}

/// An empty table, then flows `1..=flows` established through the published port.
fn fill(bpf: &mut Bpf, frames: &Frames, flows: u32) -> Result<()> {
    bpf.clear_embryonic();
    bpf.clear_established();
    bpf.as_edge();
    let syn = (INGRESS, &frames.syn[..], Vary::new_flows(1, bench::VARY_SADDR));
    bpf.warm_checked("fill: SYN", syn, flows, TC_ACT_REDIRECT, Some(counter::DNAT_NEW))?;
    bpf.as_sandbox_veth(2, SANDBOX);
    let syn_ack = (SANDBOX_PROG, &frames.syn_ack[..], Vary::new_flows(1, bench::VARY_DADDR));
    bpf.warm_checked("fill: SYN-ACK", syn_ack, flows, TC_ACT_REDIRECT, Some(counter::DNAT_REPLY))?;
    bpf.as_edge();
    let ack = (INGRESS, &frames.ack[..], Vary::new_flows(1, bench::VARY_SADDR));
    bpf.warm_checked("fill: ACK", ack, flows, TC_ACT_REDIRECT, Some(counter::CT_PROMOTED))?;
    let entries = bpf.established_entries();
    ensure!(
        entries == (flows * ENTRIES_PER_FLOW) as usize,
        "{flows} flows established: {entries} entries in the table, expected {}",
        flows * ENTRIES_PER_FLOW
    );
    Ok(())
}

/// `dnat_forward` and `dnat_reply` on a random one of `flows` established flows, for each
/// count of `flows` (taking turns in a new order each repetition, the table emptied and
/// filled again for each), the wrapper's own cost (same drawing) subtracted.
pub fn filled(flows: &[u32], repeat: u32, reps: usize) -> Result<Vec<(u32, PathCost)>> {
    let largest = flows.iter().copied().max().context("flow counts")?;
    // natd's default table sizes, unless a count needs more.
    let established = (largest * ENTRIES_PER_FLOW).max(nat_common::DEFAULT_CT_ENTRIES);
    let embryonic = (largest * ENTRIES_PER_FLOW).next_power_of_two().max(nat_common::DEFAULT_CT_ENTRIES / 4);
    let mut bpf = bench_setup_sized(established, embryonic)?;
    let frames = Frames::new();
    // (path, on the uplink (else the sandbox veth), program, frame, how flows differ,
    // counter moved per run)
    let paths: [(&'static str, bool, &str, &[u8], u32, u32); 2] = [
        ("dnat_forward", true, INGRESS, &frames.ack, bench::VARY_SADDR, counter::FAST_TO_SANDBOX),
        ("dnat_reply", false, SANDBOX_PROG, &frames.reply, bench::VARY_DADDR, counter::FAST_TO_EDGE),
    ];
    let mut out: Vec<(u32, PathCost)> = flows
        .iter()
        .flat_map(|&n| paths.iter().map(move |p| (n, PathCost { path: p.0, ns: Vec::new() })))
        .collect();
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..flows.len()).collect();
        fastrand::Rng::with_seed(0x6374_6669_6c6c ^ rep as u64).shuffle(&mut order);
        for f in order {
            fill(&mut bpf, &frames, flows[f])?;
            for (i, &(path, uplink, prog, frame, how, moved)) in paths.iter().enumerate() {
                if uplink {
                    bpf.as_edge();
                } else {
                    bpf.as_sandbox_veth(2, SANDBOX);
                }
                let vary = Vary {
                    first: 1,
                    how,
                    pick_among: flows[f],
                };
                let ns = bpf.net_cost(path, (prog, frame, vary), repeat, TC_ACT_REDIRECT, Some(moved))?;
                out[f * paths.len() + i].1.ns.push(ns);
            }
        }
    }
    Ok(out)
}

/// `runs` runs of `dnat_forward` on a random one of `flows` established flows, in a single
/// test run on this thread (for a profiler, started by `ready`): the mean ns per run.
pub fn soak_filled(flows: u32, runs: u32, ready: impl FnOnce()) -> Result<f64> {
    let entries = flows * ENTRIES_PER_FLOW;
    let mut bpf = bench_setup_sized(
        entries.max(nat_common::DEFAULT_CT_ENTRIES),
        entries.next_power_of_two().max(nat_common::DEFAULT_CT_ENTRIES / 4),
    )?;
    let frames = Frames::new();
    fill(&mut bpf, &frames, flows)?;
    bpf.as_edge();
    let vary = Vary {
        first: 1,
        how: bench::VARY_SADDR,
        pick_among: flows,
    };
    ready();
    bpf.warm_checked("dnat_forward", (INGRESS, &frames.ack, vary), runs, TC_ACT_REDIRECT, Some(counter::FAST_TO_SANDBOX))
}

/// How many different flows `runs` random draws among `flows` filled flows reached: each
/// drawn flow's forward entry records the measured segment's end (from sequence 1101, 100
/// past the fill's ACK, whose end stays below), which no undrawn flow has. Tells a random
/// draw from a fixed one.
pub fn drawn_flows(flows: u32, runs: u32) -> Result<usize> {
    let entries = flows * ENTRIES_PER_FLOW;
    let mut bpf = bench_setup_sized(
        entries.max(nat_common::DEFAULT_CT_ENTRIES),
        entries.next_power_of_two().max(nat_common::DEFAULT_CT_ENTRIES / 4),
    )?;
    fill(&mut bpf, &Frames::new(), flows)?;
    bpf.as_edge();
    let later = segment(FILL_CLIENT, 1024, HOST, 8080, 1101, ack(5001));
    let vary = Vary {
        first: 1,
        how: bench::VARY_SADDR,
        pick_among: flows,
    };
    bpf.warm_checked("dnat_forward", (INGRESS, &later, vary), runs, TC_ACT_REDIRECT, Some(counter::FAST_TO_SANDBOX))?;
    Ok(bpf
        .ct()
        .iter()
        // The end a forward entry records: the segment's sequence plus its payload.
        .filter(|(_, e, established)| *established && e.kind == ct::DNAT_FORWARD && u32::from_be(e.seq) > 1100)
        .count())
}
