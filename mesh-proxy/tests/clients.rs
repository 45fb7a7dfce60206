//! The proxy against the clients people use: curl (HTTP/1.1 and h2c with prior knowledge) and
//! h2load, as the issue asks. A machine without them skips these tests, saying so.

mod support;

use support::*;
use tokio::process::Command;

/// Runs `program` with `args`; `None` when the program is not installed.
async fn run(program: &str, args: &[&str]) -> Option<(bool, String)> {
    match Command::new(program).args(args).output().await {
        Ok(out) => {
            let text =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            Some((out.status.success(), text))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: {program} is not installed");
            None
        }
        Err(error) => panic!("cannot run {program}: {error}"),
    }
}

async fn proxy_with_echo() -> (mesh_proxy::Running, u16) {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let cfg = config(
        &l,
        vec![service_backend("v1", &[v1])],
        vec![route("r", 1, &[], &l, vec![rule(vec![prefix("/")], vec![to("v1", 1)])])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;
    (proxy, l.port)
}

#[tokio::test]
async fn curl_over_http1_and_h2c_prior_knowledge() {
    let (_proxy, port) = proxy_with_echo().await;
    let url = format!("http://127.0.0.1:{port}/curl?x=1");
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2-prior-knowledge", "HTTP/2.0")] {
        let Some((ok, out)) =
            run("curl", &["-sS", "--max-time", "10", flag, "-H", "host: app.example", &url]).await
        else {
            return;
        };
        assert!(ok, "{out}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(json["backend"], "v1");
        assert_eq!(json["path"], "/curl");
        assert_eq!(json["headers"]["host"], "app.example");
        // The backend speaks HTTP/1.1 whatever the client spoke.
        assert_eq!(json["version"], "HTTP/1.1", "{flag} ({version} to the proxy)");
    }
}

#[tokio::test]
async fn h2load_completes_every_request_over_h2c() {
    let (proxy, port) = proxy_with_echo().await;
    let url = format!("http://127.0.0.1:{port}/load");
    // 4 connections, 10 concurrent streams each: multiplexing, not one stream at a time.
    let Some((ok, out)) = run("h2load", &["-n", "400", "-c", "4", "-m", "10", &url]).await else { return };
    assert!(ok, "{out}");
    assert!(out.contains("400 succeeded, 0 failed, 0 errored"), "{out}");
    assert!(out.contains("status codes: 400 2xx"), "{out}");
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(metrics.contains(r#"backend="apps/v1:80",code="200"} 400"#), "{metrics}");
}
