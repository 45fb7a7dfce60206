//! Controller scale benchmark: resolve time, the cost of one route change, and memory, at
//! 1k and 10k Services with one HTTPRoute each and 100k endpoints in all.
//!
//! `cargo bench -p mesh-controller --bench resolve_scale` prints a table and writes
//! `bench/results/controller.json` and `bench/results/controller.md`.

use std::time::{Duration, Instant};

use mesh_controller::resolve::incremental::Resolver;
use mesh_controller::resolve::{Settings, resolve};
use mesh_controller::store::{Object, Store};
use serde_json::json;

const TOTAL_ENDPOINTS: usize = 100_000;
const RUNS: usize = 5;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("benchmark object is valid")
}

/// `services` Services in 10 namespaces, each with its EndpointSlice and one HTTPRoute:
/// even ones on a shared Gateway, odd ones as GAMMA producer routes on their own Service.
fn build_store(services: usize) -> Store {
    let per_service = TOTAL_ENDPOINTS / services;
    let mut store = Store::default();
    store.insert(Object::GatewayClass(object(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "weft"}, "spec": {"controllerName": "weft.dev/gateway-controller"}}),
    )));
    store.insert(Object::Gateway(object(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "infra"},
        "spec": {"gatewayClassName": "weft", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
    )));
    for i in 0..services {
        let ns = format!("team-{}", i % 10);
        let name = format!("svc-{i}");
        store.insert(Object::Service(object(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))));
        let endpoints: Vec<_> = (0..per_service)
            .map(|e| {
                let n = i * per_service + e;
                json!({"addresses": [format!("10.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256)],
                       "conditions": {"ready": true}, "nodeName": format!("node-{}", n % 50)})
            })
            .collect();
        store.insert(Object::EndpointSlice(object(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}))));
        store.insert(Object::HttpRoute(route(i, &ns, &name, 1)));
    }
    store
}

fn route(i: usize, ns: &str, name: &str, weight: i32) -> gateway_api::experimental::httproutes::HttpRoute {
    let parent = if i.is_multiple_of(2) {
        json!({"name": "edge", "namespace": "infra"})
    } else {
        json!({"group": "", "kind": "Service", "name": name, "port": 80})
    };
    object(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"parentRefs": [parent], "hostnames": [format!("{name}.example.com")],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}, {"headers": [{"name": "x-canary", "value": "1"}]}],
                       "backendRefs": [{"name": name, "port": 80, "weight": weight}]}]}}))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    services: usize,
    endpoints: usize,
    full_resolve_ms: f64,
    full_resolve_min_ms: f64,
    full_resolve_max_ms: f64,
    route_change_to_delta_ms: f64,
    endpoint_change_to_delta_ms: f64,
    full_recompute_change_to_delta_ms: f64,
    delta_upserts: usize,
    delta_bytes: usize,
    full_state_bytes: usize,
    full_state_encode_ms: f64,
    peak_rss_mib: f64,
}

/// The delta a proxy that holds the previous version receives: the changed resources.
fn delta_bytes(
    config: &mesh_api::model::Config,
    changed: &mesh_controller::resolve::incremental::Changed,
) -> (usize, usize) {
    let upserts: Vec<_> = changed.keys().filter_map(|(kind, key)| config.resource(*kind, key)).collect();
    (upserts.len(), upserts.iter().map(|r| r.body.len()).sum())
}

fn measure(services: usize) -> Row {
    let mut store = build_store(services);
    let settings = Settings::default();

    let mut full = Vec::new();
    let mut resolution = resolve(&store, &settings);
    for _ in 0..RUNS {
        let start = Instant::now();
        resolution = resolve(&store, &settings);
        full.push(start.elapsed());
    }
    assert_eq!(resolution.config.routes.len(), services, "every route resolved");
    let endpoints: usize = resolution.config.backends.values().map(|b| b.endpoints.len()).sum();

    let start = Instant::now();
    let full_update = resolution.config.to_full_update(1);
    let full_state_encode = start.elapsed();
    let full_state_bytes: usize = full_update.upserts.iter().map(|r| r.body.len()).sum();
    drop(full_update);

    // The old way, for comparison: a full resolve and a whole-config diff per change.
    let mut recompute = Vec::new();
    for run in 0..RUNS {
        let i = services / 2 + 1;
        let ns = format!("team-{}", i % 10);
        store.insert(Object::HttpRoute(route(i, &ns, &format!("svc-{i}"), 100 + run as i32)));
        let start = Instant::now();
        let next = resolve(&store, &settings);
        let _update = resolution.config.diff(&next.config, 2);
        recompute.push(start.elapsed());
        resolution = next;
    }
    drop(resolution);

    // Incremental: from the object landing in the store to the delta a proxy receives.
    let mut resolver = Resolver::new(settings.clone());
    let first = store.take_changes();
    resolver.resolve(&store, &first);
    let mut route_change = Vec::new();
    let mut delta = (0, 0);
    for run in 0..RUNS {
        let i = services / 2 + 1;
        let ns = format!("team-{}", i % 10);
        store.insert(Object::HttpRoute(route(i, &ns, &format!("svc-{i}"), 2 + run as i32)));
        let start = Instant::now();
        let changes = store.take_changes();
        let changed = resolver.resolve(&store, &changes);
        delta = delta_bytes(resolver.config(), &changed);
        route_change.push(start.elapsed());
        assert_eq!(changed.len(), 1, "one route changed");
    }
    // Endpoint churn: one EndpointSlice of one Service gains an endpoint.
    let mut endpoint_change = Vec::new();
    for run in 0..RUNS {
        let i = services / 3;
        let ns = format!("team-{}", i % 10);
        let name = format!("svc-{i}");
        store.insert(Object::EndpointSlice(object(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [format!("10.200.0.{run}")], "conditions": {"ready": true}, "nodeName": "node-1"}]}))));
        let start = Instant::now();
        let changes = store.take_changes();
        let changed = resolver.resolve(&store, &changes);
        let _ = delta_bytes(resolver.config(), &changed);
        endpoint_change.push(start.elapsed());
    }
    let min = full.iter().min().copied().unwrap_or_default();
    let max = full.iter().max().copied().unwrap_or_default();
    Row {
        services,
        endpoints,
        full_resolve_ms: ms(median(full)),
        full_resolve_min_ms: ms(min),
        full_resolve_max_ms: ms(max),
        route_change_to_delta_ms: ms(median(route_change)),
        endpoint_change_to_delta_ms: ms(median(endpoint_change)),
        full_recompute_change_to_delta_ms: ms(median(recompute)),
        delta_upserts: delta.0,
        delta_bytes: delta.1,
        full_state_bytes,
        full_state_encode_ms: ms(full_state_encode),
        peak_rss_mib: rss_kib("VmHWM:") as f64 / 1024.0,
    }
}

fn main() {
    // Each scale runs in a process of its own, so that its peak RSS is its own.
    let args: Vec<String> = std::env::args().collect();
    if let Some(scale) =
        args.iter().position(|a| a == "--scale").and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok())
    {
        println!("{}", serde_json::to_string(&measure(scale)).expect("row"));
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let rows: Vec<Row> = [1_000usize, 10_000]
        .into_iter()
        .map(|scale| {
            let out = std::process::Command::new(&exe)
                .args(["--scale", &scale.to_string()])
                .output()
                .expect("run scale");
            assert!(out.status.success(), "scale {scale} failed: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(text.lines().last().unwrap_or_default()).expect("row json")
        })
        .collect();

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = format!(
        "# Controller scale ({date}, {cores} cores, Linux {kernel})\n\n\
         Command: `cargo bench -p mesh-controller --bench resolve_scale` (release profile, one thread, each scale \
         in its own process).\n\
         One HTTPRoute per Service (half on a Gateway listener, half GAMMA), {TOTAL_ENDPOINTS} endpoints in all. \
         Median of {RUNS} runs. \"change → delta\" runs from the changed object in the store to the bytes of \
         the delta a proxy receives; \"full recompute\" is the same change done by a full resolve and a \
         whole-config diff, for comparison. Targets (issue 3): full resolve of 10k routes < 1 s, one change < \
         5 ms, memory < 300 MB.\n\n\
         | Services | endpoints | full resolve (min–max) | route change → delta | endpoint change → delta | full recompute per change | delta (upserts, bytes) | full state (bytes, encode) | peak RSS |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.0} ms ({:.0}–{:.0}) | {:.2} ms | {:.2} ms | {:.0} ms | {}, {} B | {:.1} MB, {:.0} ms | {:.0} MiB |\n",
            r.services,
            r.endpoints,
            r.full_resolve_ms,
            r.full_resolve_min_ms,
            r.full_resolve_max_ms,
            r.route_change_to_delta_ms,
            r.endpoint_change_to_delta_ms,
            r.full_recompute_change_to_delta_ms,
            r.delta_upserts,
            r.delta_bytes,
            r.full_state_bytes as f64 / 1e6,
            r.full_state_encode_ms,
            r.peak_rss_mib
        ));
    }
    let json_rows = serde_json::to_value(&rows).unwrap_or_default();
    print!("{md}");
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    if std::fs::create_dir_all(&results).is_ok() {
        let doc = json!({"date": date, "cores": cores, "kernel": kernel,
            "command": "cargo bench -p mesh-controller --bench resolve_scale", "runs": RUNS, "rows": json_rows});
        let _ = std::fs::write(
            results.join("controller.json"),
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        );
        let _ = std::fs::write(results.join("controller.md"), md);
    }
}
