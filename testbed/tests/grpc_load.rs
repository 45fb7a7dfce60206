//! The gRPC load generator against a real tonic echo on loopback: the rate is kept, every
//! call's latency is recorded, failed calls are counted by their gRPC status.

use std::net::SocketAddr;
use std::time::Duration;

use testbed::grpc::{Failing, GrpcEcho, Load, load};
use tonic::Code;

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[test]
fn open_loop_keeps_its_rate_and_counts_failed_calls_by_status() {
    // Every 10th call fails with UNAVAILABLE, the first one included.
    let failing = Failing { every: 10, code: Code::Unavailable };
    let echo = GrpcEcho::start(None, local(), "echo", Some(failing)).expect("echo");
    let (rate, seconds) = (400, 2);
    let spec = Load {
        connections: 2,
        concurrency: 32,
        ..Load::at_rate(echo.addr, rate, Duration::from_secs(seconds))
    };
    let out = load(None, &spec).expect("load");

    let total = (rate * seconds as u32) as usize;
    assert_eq!(out.calls, total, "every scheduled call is made once");
    assert_eq!(echo.calls(), total as u64, "and reaches the server");
    assert_eq!(out.latencies.micros.len() + out.errors(), total);
    assert_eq!(out.by_status.get("Unavailable"), Some(&(total / 10)), "{:?}", out.by_status);
    assert_eq!(out.by_status.len(), 1, "no other failure: {:?}", out.by_status);
    // The schedule is kept: 800 calls due over 2 s take about 2 s, not less (a closed loop
    // would finish them in a fraction of that on loopback), and not much more.
    let elapsed = out.latencies.elapsed.as_secs_f64();
    assert!((1.9..3.0).contains(&elapsed), "elapsed {elapsed} s");
    assert!((300.0..=410.0).contains(&out.rps()), "rps {}", out.rps());
    // Latencies are real and sorted: a loopback echo answers in well under 100 ms.
    let (p50, p99) = (out.percentile(50.0), out.percentile(99.0));
    assert!(p50 > 0 && p50 <= p99, "p50 {p50} p99 {p99}");
    assert!(p99 < 100_000, "p99 {p99} µs");
    assert!(out.latencies.micros.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn closed_loop_reports_the_rate_it_reached() {
    let echo = GrpcEcho::start(None, local(), "echo", None).expect("echo");
    let out = load(None, &Load::max(echo.addr, Duration::from_millis(500))).expect("load");
    assert_eq!(out.errors(), 0, "{:?}", out.by_status);
    assert!(out.calls > 100, "{} calls", out.calls);
    assert_eq!(echo.calls(), out.calls as u64);
    assert!(out.rps() > 200.0, "{} calls/s", out.rps());
}

#[test]
fn a_missing_server_is_an_error_not_a_hang() {
    let echo = GrpcEcho::start(None, local(), "echo", None).expect("echo");
    let addr = echo.addr;
    drop(echo);
    std::thread::sleep(Duration::from_millis(100));
    assert!(load(None, &Load::at_rate(addr, 10, Duration::from_millis(100))).is_err());
}

/// Coordinated omission: one call in flight at a time (as a client with one connection and no
/// multiplexing would be), 200 calls due a second, and the server stalls one call for 300 ms.
/// The ~60 calls due during the stall cannot leave before it ends; measured from when they were
/// due (not from when they could be sent), they show the stall, so the tail carries it. A
/// closed-loop client would report one slow call and ~60 fast ones.
#[test]
fn a_stall_shows_in_the_latencies_of_every_call_due_during_it() {
    let echo = GrpcEcho::start(None, local(), "echo", None).expect("echo");
    let spec =
        Load { connections: 1, concurrency: 1, ..Load::at_rate(echo.addr, 200, Duration::from_secs(2)) };
    let stall = Duration::from_millis(300);
    let out = std::thread::scope(|scope| {
        let run = scope.spawn(|| load(None, &spec));
        std::thread::sleep(Duration::from_millis(700));
        echo.stall_next(stall);
        run.join().expect("load thread")
    })
    .expect("load");
    assert_eq!(out.errors(), 0, "{:?}", out.by_status);
    assert_eq!(out.calls, 400);
    // Calls due in the stall's first 200 ms (~40) waited at least 100 ms each.
    let slow = out.latencies.micros.iter().filter(|&&us| us >= 100_000).count();
    assert!(slow >= 30, "{slow} calls ≥ 100 ms; max {} µs", out.percentile(100.0));
    assert!(out.percentile(100.0) >= stall.as_micros() as u64 * 9 / 10, "max {} µs", out.percentile(100.0));
    // … and the rest of the run is unaffected: the median is a normal loopback call.
    assert!(out.percentile(50.0) < 50_000, "p50 {} µs", out.percentile(50.0));
    // The schedule still ends on time: the queue drains after the stall.
    assert!(out.latencies.elapsed < Duration::from_millis(2600), "{:?}", out.latencies.elapsed);
}
