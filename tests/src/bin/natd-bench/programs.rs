//! Warm program cost rows (`natlab::warm`): ns per packet of each path, the wrapper's own
//! cost subtracted. The redirect-only program is reported as mode `redirect` on the
//! `dnat_forward` row: the difference is what the NAT itself costs. The established
//! published-port paths are also run on a random one of many established flows
//! (`natlab::warm::filled`), where the table's size, not the number of mappings, is what
//! they read.
use anyhow::Result;

use crate::{Plan, Results, Sample};

pub fn warm(plan: &Plan, results: &mut Results) -> Result<()> {
    let (repeat, reps) = (plan.warm_repeat, plan.reps.max(5));
    let sizes = plan.program_sizes.clone();
    let costs = own_thread("warm", move || natlab::warm::paths(&sizes, repeat, reps))?;
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
    let (flows, repeat_filled) = (plan.ct_flows.clone(), plan.warm_repeat / 10);
    let filled = own_thread("filled-table", move || natlab::warm::filled(&flows, repeat_filled, reps))?;
    for (flows, cost) in filled {
        for (rep, ns) in cost.ns.into_iter().enumerate() {
            results.samples.push(
                Sample::new("program", "ebpf", 1, "ns_per_packet_warm", ns)
                    .detail(filled_row(cost.path, flows))
                    .rep(rep),
            );
        }
    }
    let repeat6 = plan.warm_repeat;
    let ipv6 = own_thread("IPv6", move || natlab::warm::paths6(repeat6, reps))?;
    for (row, mode, cost) in ipv6 {
        for (rep, ns) in cost.ns.into_iter().enumerate() {
            results
                .samples
                .push(Sample::new("program", mode, 1, "ns_per_packet_warm", ns).detail(row).rep(rep));
        }
    }
    Ok(())
}

/// `measure` on a thread of its own: a measurement unshares its thread's network namespace.
fn own_thread<T: Send + 'static>(what: &str, measure: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(measure)
        .join()
        .map_err(|_| anyhow::anyhow!("{what} measurement thread panicked"))?
}

/// The row of `path` run on a random one of `flows` established flows.
pub fn filled_row(path: &str, flows: u32) -> String {
    let entries = flows * natlab::warm::ENTRIES_PER_FLOW;
    format!("{path}, random of {flows} flows ({entries} table entries)")
}
