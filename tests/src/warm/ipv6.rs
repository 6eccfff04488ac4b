//! The IPv6 warm rows: the established published-port paths, the host-bound miss and the
//! redirect-only program over IPv6 (their IPv4 counterparts are `paths`' rows), and what
//! each family's program costs a packet of the other family, which it only hands on (every
//! packet runs both: natd attaches the IPv4 program, then the IPv6 one). The wrapper
//! restores an IPv6 frame's headers through the end of its TCP header.
use anyhow::{Result, ensure};
use nat_common::{counter, names::program};

use super::{PathCost, Vary, bench_setup};
use crate::{
    bpf::{CLIENT, HOST, HOST6, SANDBOX, SANDBOX_VETH, prelude::*},
    frames::{SYN, ack, segment, syn_ack},
    frames6::{GATEWAY6, NET6, SANDBOX6, segment6, v6},
};

const CLIENT6: [u8; 16] = v6([0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 7]);
/// IPv4's `dnat_forward` measured in the same repetitions as the IPv6 rows: the pair the
/// IPv6-against-IPv4 comparison is made of.
pub const IPV4_BESIDE: &str = "dnat_forward (IPv4, beside the IPv6 rows)";

/// One IPv6 published-port flow (client port 40000 to [host]:8080 -> [sandbox]:80),
/// established on the fast path.
fn establish6(bpf: &mut crate::bpf::Bpf) -> Result<()> {
    bpf.as_edge();
    bpf.run(program::EDGE_INGRESS6, &segment6(CLIENT6, 40000, HOST6, 8080, 1000, SYN));
    bpf.as_sandbox_veth6(2, SANDBOX, SANDBOX6);
    bpf.run(
        program::SANDBOX_INGRESS6,
        &segment6(SANDBOX6, 80, CLIENT6, 40000, 5000, syn_ack(1001)),
    );
    bpf.as_edge();
    let promoted = bpf.counter(counter::CT_PROMOTED);
    let (verdict, _) = bpf.run(program::EDGE_INGRESS6, &segment6(CLIENT6, 40000, HOST6, 8080, 1001, ack(5001)));
    ensure!(
        verdict == TC_ACT_REDIRECT && bpf.counter(counter::CT_PROMOTED) == promoted + 1,
        "the IPv6 flow is established before measuring (verdict {verdict})"
    );
    Ok(())
}

/// The benchmark's maps with the sandbox dual-stack, [host]:8080 published to
/// [sandbox]:80 and one IPv6 flow established through it.
fn setup6() -> Result<crate::bpf::Bpf> {
    let mut bpf = bench_setup(1 << 18)?;
    bpf.local6(HOST6);
    bpf.network6(2, NET6, 64, GATEWAY6, true);
    bpf.endpoint6(SANDBOX6, SANDBOX_VETH, 2);
    bpf.publish6(None, 8080, 6, SANDBOX6, 80, 11);
    // The IPv4 flows too: IPv4's `dnat_forward` is measured beside IPv6's, same tables.
    super::establish(&mut bpf)?;
    establish6(&mut bpf)?;
    Ok(bpf)
}

/// `runs` runs of the IPv6 `dnat_forward` in one test run on this thread, for a profiler
/// started by `ready`: the mean ns per run.
pub fn soak6(runs: u32, ready: impl FnOnce()) -> Result<f64> {
    let mut bpf = setup6()?;
    let dnat = segment6(CLIENT6, 40000, HOST6, 8080, 1001, ack(5001));
    bpf.as_edge();
    ready();
    bpf.warm_checked(
        "dnat_forward (IPv6)",
        (program::EDGE_INGRESS6, &dnat, Vary::SAME),
        runs,
        TC_ACT_REDIRECT,
        Some(counter::FAST_TO_SANDBOX),
    )
}

/// (row, mode) and `reps` repetitions of `repeat` runs of each, the wrapper's own cost
/// subtracted run by run.
pub fn paths6(repeat: u32, reps: usize) -> Result<Vec<(&'static str, &'static str, PathCost)>> {
    let mut bpf = setup6()?;
    let dnat = segment6(CLIENT6, 40000, HOST6, 8080, 1001, ack(5001));
    let dnat_reply = segment6(SANDBOX6, 80, CLIENT6, 40000, 5001, ack(1001));
    let miss = segment6(CLIENT6, 40000, HOST6, 65500, 1000, SYN);
    let redirect = segment6(CLIENT6, 40000, SANDBOX6, 80, 1001, ack(5001));
    let ipv4 = segment(CLIENT, 40000, HOST, 8080, 1001, ack(5001));
    // (row, mode, on the uplink, program, frame, verdict, counter moved per run)
    type Case<'a> = (&'static str, &'static str, bool, &'a str, &'a [u8], u32, Option<u32>);
    let cases: [Case; 7] = [
        ("dnat_forward (IPv6)", "ebpf", true, program::EDGE_INGRESS6, &dnat, TC_ACT_REDIRECT, Some(counter::FAST_TO_SANDBOX)),
        (IPV4_BESIDE, "ebpf", true, program::EDGE_INGRESS, &ipv4, TC_ACT_REDIRECT, Some(counter::FAST_TO_SANDBOX)),
        ("dnat_reply (IPv6)", "ebpf", false, program::SANDBOX_INGRESS6, &dnat_reply, TC_ACT_REDIRECT, Some(counter::FAST_TO_EDGE)),
        ("miss (IPv6)", "ebpf", true, program::EDGE_INGRESS6, &miss, PASS, None),
        ("dnat_forward (IPv6)", "redirect", true, program::BENCH_REDIRECT_INGRESS6, &redirect, TC_ACT_REDIRECT, None),
        ("IPv4 program handing an IPv6 packet on", "ebpf", true, program::EDGE_INGRESS, &dnat, PASS, None),
        ("IPv6 program handing an IPv4 packet on", "ebpf", true, program::EDGE_INGRESS6, &ipv4, PASS, None),
    ];
    let mut out: Vec<_> = cases
        .iter()
        .map(|c| (c.0, c.1, PathCost { path: c.0, ns: Vec::new() }))
        .collect();
    for _ in 0..reps {
        for (i, &(row, _, uplink, prog, frame, verdict, moved)) in cases.iter().enumerate() {
            if uplink {
                bpf.as_edge();
            } else {
                bpf.as_sandbox_veth6(2, SANDBOX, SANDBOX6);
            }
            let ns = bpf.net_cost(row, (prog, frame, Vary::SAME), repeat, verdict, moved)?;
            out[i].2.ns.push(ns);
        }
    }
    Ok(out)
}
