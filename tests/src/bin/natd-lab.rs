//! `natd-lab demo [--keep]` (what `cargo xtask demo` runs) and `natd-lab load-check`
//! (`cargo xtask build-and-load`): natd in a throwaway topology of network namespaces.
use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use natlab::{EXT_IP, HOST_UPLINK_IP, Lab, wait_until};

fn main() -> ExitCode {
    natlab::live::clean_up_on_signal();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(args.iter().any(|a| a == "--keep")),
        Some("load-check") => load_check(),
        _ => {
            eprintln!("usage: natd-lab demo [--keep] | natd-lab load-check");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natd-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn show(lab: &Lab, args: &[&str]) {
    println!("$ natctl {}", args.join(" "));
    print!("{}", lab.ok(args));
}

fn demo(keep: bool) -> Result<()> {
    step("building a throwaway topology: namespaces 'ext' (the LAN) and 'host' (where natd runs)");
    let mut lab = Lab::new()?;
    println!(
        "host namespace {} (uplink up0 {HOST_UPLINK_IP}), external namespace {} ({EXT_IP})",
        lab.host_ns, lab.ext_ns
    );

    step("starting natd inside the host namespace");
    lab.start_natd(&["--dataplane", "ebpf"])?;
    show(&lab, &["info"]);

    step("creating a user-defined network and a sandbox running a web server, published as 8080 -> 80");
    show(&lab, &["network", "create", "demo-net"]);
    let reply = "echo HTTP/1.0 200 OK; echo; echo hello from the sandbox web - you are $SOCAT_PEERADDR";
    show(
        &lab,
        &[
            "run",
            "--name",
            "web",
            "--network",
            "demo-net",
            "-p",
            "8080:80",
            "--",
            "socat",
            "TCP-LISTEN:80,fork,reuseaddr",
            &format!("SYSTEM:{reply}"),
        ],
    );
    let ready = wait_until(Duration::from_secs(5), || {
        lab.exec("web", &["ss", "-ltn", "sport = :80"])
            .stdout
            .windows(3)
            .any(|w| w == b":80")
    });
    if !ready {
        bail!("the web server did not start in the sandbox");
    }

    step(&format!(
        "from the external namespace: curl http://{HOST_UPLINK_IP}:8080/"
    ));
    let out = lab.ext(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{HOST_UPLINK_IP}:8080/"),
    ]);
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let published_ok = out.status.success() && String::from_utf8_lossy(&out.stdout).contains(EXT_IP);

    step("from the sandbox: a connection out to the external namespace (masquerade)");
    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ext_ns,
            "socat",
            "TCP-LISTEN:9000,fork,reuseaddr",
            "SYSTEM:echo the external server sees you as $SOCAT_PEERADDR",
        ])
        .spawn()
        .context("start the external server")?;
    wait_until(Duration::from_secs(3), || {
        lab.ext(&["ss", "-ltn", "sport = :9000"])
            .stdout
            .windows(5)
            .any(|w| w == b":9000")
    });
    let out = lab.exec(
        "web",
        &[
            "socat",
            "-t3",
            "-T3",
            "-",
            &format!("TCP:{EXT_IP}:9000,connect-timeout=3"),
        ],
    );
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let masq_ok = out.status.success() && String::from_utf8_lossy(&out.stdout).contains(HOST_UPLINK_IP);
    let _ = server.kill();
    let _ = server.wait();

    step("what natd shows");
    show(&lab, &["ps"]);
    show(&lab, &["port", "web"]);
    show(&lab, &["info"]);

    println!();
    println!(
        "published port answered with the client's own address: {}",
        if published_ok { "yes" } else { "NO" }
    );
    println!(
        "outbound traffic masqueraded to the uplink address:     {}",
        if masq_ok { "yes" } else { "NO" }
    );

    if keep {
        let natd_pid = lab.natd.as_ref().map(|n| n.child.id()).unwrap_or(0);
        let ctl = format!(
            "{} --socket {}",
            natlab::natctl_bin().display(),
            lab.socket.display()
        );
        println!("\nThe topology is still running (--keep). Explore it:");
        println!("  {ctl} ps");
        println!("  {ctl} exec web -- ip addr");
        println!(
            "  ip netns exec {} curl http://{HOST_UPLINK_IP}:8080/",
            lab.ext_ns
        );
        println!("Tear it down:");
        println!("  kill {natd_pid}");
        println!(
            "  nsenter --net=/run/netns/{} {} {} --dataplane ebpf --cleanup",
            lab.host_ns,
            natlab::natd_bin().display(),
            lab.base_args().join(" ")
        );
        println!(
            "  ip netns del {}; ip netns del {}; rm -rf {}",
            lab.host_ns,
            lab.ext_ns,
            lab.dir.display()
        );
        std::mem::forget(lab);
        return Ok(());
    }
    step("removing everything the demo made");
    drop(lab);
    if !(published_ok && masq_ok) {
        bail!("the demo's checks failed (see above)");
    }
    println!("done");
    Ok(())
}

fn load_check() -> Result<()> {
    let mut lab = Lab::new()?;
    lab.start_natd(&["--dataplane", "ebpf"])?;
    lab.ok(&["run", "--name", "probe"]);
    let info = lab.json(&["info"]);
    let links = info["dataplane_detail"]["links"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!("programs attached: {links:?}");
    if info["dataplane"] != "ebpf" || links.len() < 3 {
        bail!("expected the eBPF dataplane with programs on the uplink and the sandbox veth:\n{info:#}");
    }
    println!("eBPF object loaded, verified and attached; removing the throwaway topology");
    Ok(())
}
