//! A paced HTTP/1.1 load generator for the latency and connection-count measurements: wrk
//! measures throughput at saturation, which hides what tracing adds to each request at a normal
//! load.
//!
//! Open loop: each worker sends on a fixed schedule (its share of the rate) over keep-alive
//! connections, and records each request's latency from the moment it was sent to the last
//! byte of the response. Sleeping, not spinning, between sends (with the timer slack lowered to
//! 1 ns): on a two-core machine a spinning client would steal the server's core.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Latency percentiles of one run, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub requests: u64,
    pub p50: u64,
    pub p99: u64,
}

/// Lowers the calling thread's timer slack so a sleep of a few tens of microseconds wakes on
/// time (the default slack is 50 µs).
fn precise_sleeps() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
}

/// Raises this process's open-file soft limit to its hard limit, which must be at least `n`.
pub fn raise_nofile(n: u64) -> Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit struct to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    if lim.rlim_max < n {
        bail!("the open-file hard limit is {}, {n} are needed", lim.rlim_max);
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one GET and reads one complete response (headers + Content-Length body).
fn request(conn: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..])?;
        if n == 0 {
            bail!("connection closed");
        }
        have += n;
        let text = &buf[..have];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&text[..end]).unwrap_or("");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if have >= end + 4 + len {
                return Ok(());
            }
        }
        if have == buf.len() {
            bail!("response larger than {} bytes", buf.len());
        }
    }
}

/// `rate` requests/s for `secs`, spread over `workers` threads, each using `conns_per_worker`
/// keep-alive connections in turn. Returns the latency percentiles.
pub fn paced(port: u16, rate: u64, workers: usize, conns_per_worker: usize, secs: u64) -> Result<Latency> {
    let per_worker = (rate / workers as u64).max(1);
    let interval = Duration::from_nanos(1_000_000_000 / per_worker);
    let mut handles = Vec::new();
    for _ in 0..workers {
        handles.push(std::thread::spawn(move || -> Result<Vec<u64>> {
            precise_sleeps();
            let mut conns = (0..conns_per_worker)
                .map(|_| {
                    let c = TcpStream::connect(("127.0.0.1", port))?;
                    c.set_nodelay(true)?;
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut lat = Vec::with_capacity((per_worker * secs) as usize);
            let start = Instant::now();
            let end = start + Duration::from_secs(secs);
            let mut next = start;
            let mut i = 0usize;
            while next < end {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                let sent = Instant::now();
                let n = conns.len();
                let c = &mut conns[i % n];
                if request(c, &mut buf).is_err() {
                    // The server may close a keep-alive connection at any time: one new one.
                    *c = TcpStream::connect(("127.0.0.1", port))?;
                    c.set_nodelay(true)?;
                    request(c, &mut buf).context("paced request")?;
                }
                lat.push(sent.elapsed().as_nanos() as u64);
                i += 1;
                next += interval;
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("load worker panicked"))??);
    }
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
    Ok(Latency { requests: all.len() as u64, p50: pct(0.50).unwrap_or(0), p99: pct(0.99).unwrap_or(0) })
}

/// Opens `n` idle keep-alive connections (each sends one request, so the server has accepted
/// and served it). They stay open while the returned vector lives.
pub fn idle_connections(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    let mut buf = vec![0u8; 4096];
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connection {i}"))?;
            request(&mut c, &mut buf)?;
            Ok(c)
        })
        .collect()
}
