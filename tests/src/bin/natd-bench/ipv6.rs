//! The IPv6 rows: CRR and RR through a published port ([host]:8080 -> [sandbox]:80) and
//! out of the sandbox (masquerade to the uplink's IPv6 address), in the modes `baseline`
//! (routed, no NAT: the sandbox's subnet routed to the host), `redirect` (routed the same
//! way through the IPv6 redirect-only programs), `iptables` (the ip6tables rules Docker 27
//! writes for an IPv6 network, natd only plumbing), `nftables` and `ebpf`, interleaved
//! like the IPv4 runs, with the programs' in-situ cost in the ebpf and redirect modes.
//! Scenarios `publish6` and `masquerade6`; same validity rules (no client error, no natd
//! drop).
use anyhow::{Context as _, Result, bail};
use natlab::{EXT_IP6, HOST_UPLINK_IP6, sh, wait_listening};

use crate::{
    Plan, Results,
    beds::Bed,
    traffic::{Run, loadgen},
};

const MODES6: [&str; 5] = ["baseline", "redirect", "iptables", "nftables", "ebpf"];
/// The sandbox network's IPv6 subnet, routed via the host in the baseline.
const SUBNET6: &str = "fd42:6:6:1::/64";

fn bed(mode: &'static str) -> Result<Bed> {
    let mut lab = natlab::Lab::new()?;
    let dataplane = match mode {
        "ebpf" | "nftables" => mode,
        _ => "none",
    };
    lab.start_natd(&["--dataplane", dataplane])?;
    crate::beds::pin_natd(&lab);
    lab.ok(&["network", "create", "--ipv6", "--subnet", SUBNET6, "v6"]);
    let loadgen_dir = natlab::natctl_bin().parent().expect("bin dir").display().to_string();
    let script = format!("PATH={loadgen_dir}:$PATH; exec taskset -c 1 natd-loadgen serve6 80");
    lab.ok(&["run", "--name", "srv", "--network", "v6", "-p", "8080:80", "--", "sh", "-c", &script]);
    let view = lab.json(&["inspect", "srv"]);
    let sandbox_ns = view["netns"].as_str().context("sandbox netns")?.to_string();
    let endpoint = &view["endpoints"][0];
    let sandbox6 = endpoint["ipv6"].as_str().context("sandbox IPv6 address")?.to_string();
    let sandbox_veth = endpoint["host_ifname"].as_str().context("host veth")?.to_string();
    let bridge = lab.json(&["network", "inspect", "v6"])["bridge"].as_str().context("bridge")?.to_string();
    for ns in [lab.ext_path(), sandbox_ns.clone()] {
        crate::beds::many_connections(&ns);
    }
    let mut redirect = None;
    let target = match mode {
        "baseline" | "redirect" => {
            lab.ext(&["ip", "-6", "route", "add", SUBNET6, "via", HOST_UPLINK_IP6]);
            if mode == "redirect" {
                redirect = Some(crate::beds::attach_redirect(&lab, sandbox6.parse()?, &sandbox_veth, endpoint, &bridge)?);
            }
            (format!("[{sandbox6}]"), 80, 0)
        }
        "iptables" => {
            ip6tables_rules(&lab, &bridge, &sandbox6)?;
            (format!("[{HOST_UPLINK_IP6}]"), 8080, 0)
        }
        _ => (format!("[{HOST_UPLINK_IP6}]"), 8080, 0),
    };
    if !wait_listening(&sandbox_ns, "tcp", 80) {
        bail!("server did not start in {mode}");
    }
    Ok(Bed {
        mode,
        lab,
        target,
        // wrk and iperf3 are run over IPv4 only.
        wrk_target: String::new(),
        mappings: 1,
        rule_position: None,
        sandbox_ns,
        sandbox_veth,
        _redirect: redirect,
    })
}

/// What Docker 27 writes with ip6tables for an IPv6 bridge network and one published
/// port (notes: libnetwork setup_ip_tables_linux.go, port_mapping_linux.go).
fn ip6tables_rules(lab: &natlab::Lab, bridge: &str, sandbox6: &str) -> Result<()> {
    let rules = format!(
        "*nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s {SUBNET6} ! -o {bridge} -j MASQUERADE\n-A DOCKER -i {bridge} -j RETURN\n\
         -A DOCKER ! -i {bridge} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [{sandbox6}]:80\n\
         COMMIT\n*filter\n:DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n\
         -P FORWARD DROP\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
         -A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -o {bridge} -j DOCKER\n-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT\n\
         -A FORWARD -i {bridge} -o {bridge} -j ACCEPT\n\
         -A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2\n\
         -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP\n\
         -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n\
         -A DOCKER -d {sandbox6}/128 ! -i {bridge} -o {bridge} -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT\n"
    );
    let path = lab.dir.join("docker6.rules");
    std::fs::write(&path, rules)?;
    let out = sh(
        "sh",
        &["-c", &format!("ip netns exec {} ip6tables-restore --noflush < {}", lab.host_ns, path.display())],
    );
    if !out.status.success() {
        bail!("ip6tables-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn run(plan: &Plan, results: &mut Results) -> Result<()> {
    let mut beds = Vec::new();
    for mode in MODES6 {
        beds.push(bed(mode).with_context(|| format!("IPv6 {mode} topology"))?);
    }
    let mut servers = Vec::new();
    for b in &beds {
        servers.push(b.lab.spawn_in(
            &b.lab.ext_ns,
            &["taskset", "-c", "1", &natlab::loadgen_bin(), "serve6", "9000"],
        ));
        wait_listening(&b.lab.ext_path(), "tcp", 9000);
    }
    let outside = format!("[{EXT_IP6}]:9000");
    for bed in &beds {
        let published = format!("{}:{}", bed.target.0, bed.target.1);
        let _ = loadgen(&bed.lab.ext_path(), "crr", &published, crate::traffic::WARM_UP_SECS);
        let _ = loadgen(&bed.sandbox_ns, "crr", &outside, crate::traffic::WARM_UP_SECS);
    }
    for rep in 0..plan.reps {
        for bed in crate::traffic::rotated(&beds, rep) {
            eprintln!("  rep {} ipv6 {}", rep + 1, bed.mode);
            let ext = bed.lab.ext_path();
            let published = format!("{}:{}", bed.target.0, bed.target.1);
            let mut run = Run {
                bed,
                mappings: 1,
                rep,
                results,
            };
            for (scenario, ns, target) in [("publish6", &ext, &published), ("masquerade6", &bed.sandbox_ns, &outside)] {
                for kind in ["crr", "rr"] {
                    run.loadgen(scenario, ns, kind, target, plan.secs)?;
                }
            }
        }
    }
    drop(servers);
    Ok(())
}
