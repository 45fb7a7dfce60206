//! An open-loop HTTP/1.1 load generator for inside a pod: requests leave on a fixed schedule
//! whatever the answers do, and each latency is measured from when its request was *due*,
//! so a stall shows up in the tail instead of being hidden by a client that waited
//! (coordinated omission, the flaw wrk2 was written to fix).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns::in_netns;

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Latencies {
    /// Microseconds from each request's due time to its answer's last byte, sorted.
    pub micros: Vec<u64>,
    pub errors: usize,
    pub elapsed: Duration,
}

impl Latencies {
    pub fn percentile(&self, p: f64) -> u64 {
        if self.micros.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        self.micros[rank.min(self.micros.len() - 1)]
    }
}

/// `rate` requests a second to `addr` for `duration`, spread over `connections` keep-alive
/// connections opened from inside `netns`.
pub fn constant_rate(
    netns: &Path,
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    connections: u32,
) -> std::io::Result<Latencies> {
    let streams: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let netns = netns.to_path_buf();
            in_netns(&netns, move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        })
        .collect::<Result<_, _>>()?;
    // Each connection sends every `interval`, offset so the connections interleave evenly.
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(rate));
    let per_connection = (duration.as_secs_f64() / interval.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let offset = interval.mul_f64(i as f64 / f64::from(connections));
            std::thread::spawn(move || run_connection(stream, start + offset, interval, per_connection))
        })
        .collect();
    let mut all = Latencies { micros: Vec::new(), errors: 0, elapsed: Duration::ZERO };
    for worker in workers {
        let (micros, errors) = worker.join().map_err(|_| std::io::Error::other("load thread panicked"))?;
        all.micros.extend(micros);
        all.errors += errors;
    }
    all.elapsed = start.elapsed();
    all.micros.sort_unstable();
    Ok(all)
}

fn run_connection(stream: TcpStream, first: Instant, interval: Duration, count: usize) -> (Vec<u64>, usize) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let request = b"GET /bench HTTP/1.1\r\nhost: checkout\r\n\r\n";
    let mut micros = Vec::with_capacity(count);
    let mut errors = 0;
    for k in 0..count {
        let due = first + interval.mul_f64(k as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if (&stream).write_all(request).is_err() || read_answer(&mut reader).is_err() {
            errors += 1;
            // The connection is gone: count the rest as errors rather than stall.
            errors += count - k - 1;
            break;
        }
        micros.push(due.elapsed().as_micros() as u64);
    }
    (micros, errors)
}

fn read_answer(reader: &mut BufReader<&TcpStream>) -> std::io::Result<()> {
    let mut length = 0usize;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && line != "\r\n" {
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().map_err(std::io::Error::other)?;
        }
        line.clear();
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)
}
