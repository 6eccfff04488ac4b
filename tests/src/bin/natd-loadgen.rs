//! The benchmark's load generator: a 1-byte request/response server, and clients that
//! measure connection rate (CRR: connect, 1 byte each way, close) and transaction rate on a
//! kept-alive connection (RR), with latency percentiles from an HDR histogram.
//! Bounded by duration; prints one JSON object. `flood` sends spoofed TCP SYNs (sources
//! in 198.18.0.0/15, the benchmarking range) at a bounded rate for a bounded time.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve("0.0.0.0", args.get(1).and_then(|p| p.parse().ok()).unwrap_or(80)),
        Some("serve6") => serve("::", args.get(1).and_then(|p| p.parse().ok()).unwrap_or(80)),
        Some(kind @ ("crr" | "rr")) => {
            let target = args.get(1).expect("HOST:PORT").clone();
            let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
            client(kind, &target, Duration::from_secs_f64(seconds));
        }
        Some("flood") => {
            let dst: std::net::Ipv4Addr = args
                .get(1)
                .and_then(|a| a.parse().ok())
                .expect("IPv4 destination");
            let port: u16 = args.get(2).and_then(|p| p.parse().ok()).expect("PORT");
            let seconds: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2.0);
            let pps: u32 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(10_000);
            flood(
                dst,
                port,
                Duration::from_secs_f64(seconds.min(30.0)),
                pps.min(1_000_000),
            );
        }
        _ => {
            eprintln!(
                "usage: natd-loadgen serve PORT | serve6 PORT | crr HOST:PORT SECONDS | rr HOST:PORT SECONDS | \
                 flood IPV4 PORT SECONDS PPS"
            );
            std::process::exit(2);
        }
    }
}

/// The echo server: one thread, one epoll loop (tokio's current-thread runtime), a task
/// per connection. A thread per connection cost about 100 µs of a CRR transaction of about
/// 120 µs, hiding what the path under test costs to set a flow up.
fn serve(addr: &str, port: u16) {
    let listener = TcpListener::bind((addr, port)).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn(async move {
                let mut byte = [0u8; 1];
                while let Ok(1) = stream.read(&mut byte).await {
                    if stream.write_all(&byte).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Bounded connect: a dropped SYN must cost a measured error, not two minutes of retries.
fn connect(target: &str) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs as _;
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(stream)
}

fn exchange(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut byte = [7u8; 1];
    stream.write_all(&byte)?;
    stream.read_exact(&mut byte)
}

fn client(kind: &str, target: &str, duration: Duration) {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0u64;
    let start = Instant::now();
    let mut kept: Option<TcpStream> = None;
    while start.elapsed() < duration {
        let t0 = Instant::now();
        let ok = if kind == "crr" {
            connect(target).and_then(|mut s| exchange(&mut s)).is_ok()
        } else {
            if kept.is_none() {
                kept = connect(target).ok();
            }
            match kept.as_mut().map(exchange) {
                Some(Ok(())) => true,
                _ => {
                    kept = None;
                    false
                }
            }
        };
        if ok {
            let _ = histogram.record(t0.elapsed().as_micros().max(1) as u64);
        } else {
            errors += 1;
            if errors > 1000 {
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"ops\": {}, \"per_s\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {errors}}}",
        histogram.len(),
        histogram.len() as f64 / elapsed,
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99)
    );
}

/// Spoofed SYNs to `dst:port`, `pps` per second in 10 ms batches, for `duration`.
fn flood(dst: std::net::Ipv4Addr, port: u16, duration: Duration, pps: u32) {
    // SAFETY: plain socket(2); the descriptor is closed at exit.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut state = Instant::now().elapsed().as_nanos() as u64 | 1;
    let mut next = || {
        // xorshift64: spread, not secrecy.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let batch = (pps / 100).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut frame = Vec::with_capacity(64);
    while start.elapsed() < duration {
        let tick = Instant::now();
        for _ in 0..batch {
            let r = next();
            let src = [198, 18 + (r & 1) as u8, (r >> 8) as u8, (r >> 16) as u8];
            frame.clear();
            etherparse::PacketBuilder::ipv4(src, dst.octets(), 64)
                .tcp(1024 + (r >> 24) as u16 % 60000, port, (r >> 32) as u32, 64240)
                .syn()
                .write(&mut frame, &[])
                .expect("SYN");
            // SAFETY: valid buffer and address of the sizes given.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        if let Some(rest) = Duration::from_millis(10).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    println!("{{\"sent\": {sent}}}");
}
