//! Warm program cost rows (`natlab::warm`): ns per packet of each path, the wrapper's own
//! cost subtracted. The redirect-only program is reported as mode `redirect` on the
//! `dnat_forward` row: the difference is what the NAT itself costs.
use anyhow::Result;

use crate::{Plan, Results, Sample};

pub fn warm(plan: &Plan, results: &mut Results) -> Result<()> {
    let (repeat, reps) = (plan.warm_repeat, plan.reps.max(5));
    let sizes = plan.program_sizes.clone();
    // The measurement unshares its thread's network namespace: a thread of its own.
    let costs = std::thread::spawn(move || natlab::warm::paths(&sizes, repeat, reps))
        .join()
        .map_err(|_| anyhow::anyhow!("warm measurement thread panicked"))??;
    for (mappings, cost) in costs {
        let (mode, path) = match cost.path {
            "redirect_only" => ("redirect", "dnat_forward"),
            other => ("ebpf", other),
        };
        // Repetition i of every path ran in the same round (`natlab::warm::paths`).
        for (rep, ns) in cost.ns.into_iter().enumerate() {
            results
                .samples
                .push(Sample::new("program", mode, mappings, "ns_per_packet_warm", ns).detail(path).rep(rep));
        }
    }
    Ok(())
}
