//! Reliability matrix, row 1: natd SIGKILLed again and again while clients keep opening
//! short TCP connections (published port and masquerade), exchange UDP datagrams and hold
//! long-lived TCP connections. Not one request may fail, not one long connection break.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use natlab::{
    EXT_IP, HOST_UPLINK_IP, Lab, in_netns,
    soak::{report, rng, size},
    wait_listening,
};
use nix::sys::signal::Signal;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

const TIMEOUT: Duration = Duration::from_secs(3);

fn tcp_line(addr: (&str, u16)) -> Result<String, String> {
    let stream = TcpStream::connect_timeout(&format!("{}:{}", addr.0, addr.1).parse().unwrap(), TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    Ok(line.trim().to_string())
}

/// A long-lived connection to an echo server: a line every 50 ms, echoed back.
fn hold(stream: TcpStream, stop: &AtomicBool, tally: &Tally, errors: &std::sync::Mutex<Vec<String>>) {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = format!("line-{n}\n");
        let mut back = String::new();
        let result = writer
            .write_all(sent.as_bytes())
            .and_then(|()| reader.read_line(&mut back).map(|_| ()));
        match result {
            Ok(()) if back == sent => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().push(format!(
                    "long-lived connection broke at line {n}: {other:?} {back:?}"
                ));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn restart_under_load(dataplane: &str) {
    let mut lab = Lab::started(&["--dataplane", dataplane]);
    lab.run_script(
        "srv",
        &["-p", "8080:80", "-p", "8081:81", "-p", "5353:53/udp"],
        &format!(
            "{} & socat TCP-LISTEN:81,fork,reuseaddr EXEC:cat & socat UDP-LISTEN:53,fork,reuseaddr PIPE & wait",
            natlab::whoami(80)
        ),
    );
    lab.ok(&["run", "--name", "cli"]);
    let _servers = [
        lab.spawn_in(
            &lab.ext_ns,
            &["socat", "TCP-LISTEN:9000,fork,reuseaddr", "EXEC:cat"],
        ),
        lab.spawn_in(
            &lab.ext_ns,
            &[
                "socat",
                "TCP-LISTEN:9001,fork,reuseaddr,backlog=256",
                "SYSTEM:echo $SOCAT_PEERADDR",
            ],
        ),
    ];
    let srv = lab.netns_of("srv");
    let cli = lab.netns_of("cli");
    for (ns, proto, port) in [(&srv, "tcp", 80), (&srv, "tcp", 81), (&srv, "udp", 53)] {
        assert!(wait_listening(ns, proto, port));
    }
    assert!(wait_listening(&lab.ext_path(), "tcp", 9000) && wait_listening(&lab.ext_path(), "tcp", 9001));

    let stop = Arc::new(AtomicBool::new(false));
    let short_in = Arc::new(Tally::default());
    let short_out = Arc::new(Tally::default());
    let udp = Arc::new(Tally::default());
    let long = Arc::new(Tally::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ext = lab.ext_path();
    let mut threads = Vec::new();
    // Long-lived: two inbound through the published port, two outbound masqueraded.
    for (ns, target) in [
        (&ext, (HOST_UPLINK_IP, 8081)),
        (&ext, (HOST_UPLINK_IP, 8081)),
        (&cli, (EXT_IP, 9000)),
        (&cli, (EXT_IP, 9000)),
    ] {
        let stream = in_netns(ns, || {
            TcpStream::connect_timeout(&format!("{}:{}", target.0, target.1).parse().unwrap(), TIMEOUT)
                .expect("long-lived connect")
        });
        let (stop, long, errors) = (stop.clone(), long.clone(), errors.clone());
        threads.push(std::thread::spawn(move || hold(stream, &stop, &long, &errors)));
    }
    // Short requests, each in its namespace (a thread that entered it stays there).
    let short = |ns: String, tally: Arc<Tally>, target: (&'static str, u16), want: &'static str| {
        let (stop, errors) = (stop.clone(), errors.clone());
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match tcp_line(target) {
                    Ok(line) if line == want => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("{target:?}: {other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    threads.push(short(
        ext.clone(),
        short_in.clone(),
        (HOST_UPLINK_IP, 8080),
        EXT_IP,
    ));
    threads.push(short(
        cli.clone(),
        short_out.clone(),
        (EXT_IP, 9001),
        HOST_UPLINK_IP,
    ));
    {
        let (stop, udp, errors, ext) = (stop.clone(), udp.clone(), errors.clone(), ext.clone());
        threads.push(std::thread::spawn(move || {
            let file = std::fs::File::open(&ext).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = format!("dgram-{n}");
                let mut buf = [0u8; 512];
                let result = socket
                    .send_to(sent.as_bytes(), (HOST_UPLINK_IP, 5353))
                    .and_then(|_| socket.recv_from(&mut buf));
                match result {
                    Ok((len, _)) if buf[..len] == *sent.as_bytes() => {
                        udp.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        udp.failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("udp {sent}: {other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }

    let mut rng = rng(&format!("restart under load ({dataplane})"));
    let kills = size(6, 100);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.u64(100..400)));
        lab.stop_natd(Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        lab.restart_natd().expect("natd starts again");
    }
    std::thread::sleep(Duration::from_millis(300));
    // The long-lived flows are still tracked after all the restarts.
    let flows = lab.json(&["ct", "ls"]);
    let tracked = |port: u16| match dataplane {
        "ebpf" => flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["proto"] == "tcp" && f["original"][3] == port && f["established"] == true),
        // The nftables dataplane translates in the kernel's own conntrack.
        _ => String::from_utf8_lossy(
            &lab.host(&["conntrack", "-L", "-p", "tcp", "--dport", &port.to_string()])
                .stdout,
        )
        .contains("ESTABLISHED"),
    };
    let long_tracked = tracked(8081) && tracked(9000);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    let total = |t: &Tally| (t.ok.load(Ordering::Relaxed), t.failed.load(Ordering::Relaxed));
    let figures = [
        ("short TCP in", total(&short_in)),
        ("short TCP out", total(&short_out)),
        ("UDP", total(&udp)),
        ("long-lived lines", total(&long)),
    ];
    let failed: usize = figures.iter().map(|(_, (_, f))| f).sum();
    report(
        &format!("1 restart under load ({dataplane})"),
        kills,
        failed + usize::from(!long_tracked),
        &format!("{figures:?} (ok, failed); long-lived flows tracked afterwards: {long_tracked}"),
    );
    assert!(
        errors.is_empty(),
        "{} failures, first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    for (what, (ok, _)) in figures {
        assert!(ok > 0, "{what}: nothing got through at all");
    }
    assert!(
        long_tracked,
        "the long-lived flows are in natd's conntrack: {flows}"
    );
}

#[test]
fn restart_under_load_ebpf() {
    restart_under_load("ebpf");
}

#[test]
fn restart_under_load_nftables() {
    restart_under_load("nftables");
}
