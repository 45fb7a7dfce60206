//! Requests through a real proxy to real backends on loopback: routing, filters, balancing and
//! the error statuses.

mod support;

use std::time::Duration;

use http::StatusCode;
use mesh_api::model::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn path_header_query_and_method_matches_pick_the_most_specific_rule() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    let exact = backend("exact", Behaviour::Echo).await;
    let regex = backend("regex", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let header_rule = Rule {
        matches: vec![RouteMatch::Http(HttpMatch {
            headers: vec![HeaderMatch { name: "x-canary".into(), value: StringMatch::Exact("1".into()) }],
            ..Default::default()
        })],
        backends: vec![to("v2", 1)],
        ..Default::default()
    };
    let query_rule = Rule {
        matches: vec![RouteMatch::Http(HttpMatch {
            path: PathMatch::Prefix("/api".into()),
            query_params: vec![QueryParamMatch { name: "v".into(), value: StringMatch::Exact("2".into()) }],
            ..Default::default()
        })],
        backends: vec![to("v2", 1)],
        ..Default::default()
    };
    let method_rule = Rule {
        matches: vec![RouteMatch::Http(HttpMatch {
            path: PathMatch::Prefix("/api".into()),
            method: Some("DELETE".into()),
            ..Default::default()
        })],
        backends: vec![to("exact", 1)],
        ..Default::default()
    };
    // Two routes: the older one's catch-all and the younger one's more specific matches.
    let main = route("main", 10, &[], &l, vec![rule(vec![prefix("/")], vec![to("v1", 1)]), header_rule]);
    let specific = route(
        "specific",
        20,
        &[],
        &l,
        vec![
            rule(
                vec![RouteMatch::Http(HttpMatch {
                    path: PathMatch::Exact("/api/exact".into()),
                    ..Default::default()
                })],
                vec![to("exact", 1)],
            ),
            rule(
                vec![RouteMatch::Http(HttpMatch {
                    path: PathMatch::RegularExpression("/api/v[0-9]+".into()),
                    ..Default::default()
                })],
                vec![to("regex", 1)],
            ),
            query_rule,
            method_rule,
            rule(vec![prefix("/api")], vec![to("v1", 1)]),
        ],
    );
    let cfg = config(
        &l,
        vec![
            service_backend("v1", &[v1]),
            service_backend("v2", &[v2]),
            service_backend("exact", &[exact]),
            service_backend("regex", &[regex]),
        ],
        vec![main, specific],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let h = "any.example";
    assert_eq!(get(l.port, h, "/", &[]).await.backend(), "v1");
    assert_eq!(get(l.port, h, "/other", &[("x-canary", "1")]).await.backend(), "v2");
    assert_eq!(get(l.port, h, "/other", &[("X-Canary", "2")]).await.backend(), "v1");
    assert_eq!(get(l.port, h, "/api/exact", &[]).await.backend(), "exact");
    assert_eq!(get(l.port, h, "/api/v12", &[]).await.backend(), "regex");
    assert_eq!(get(l.port, h, "/api/v12/x", &[]).await.backend(), "v1", "regex is a full match");
    assert_eq!(get(l.port, h, "/api/x?v=2", &[]).await.backend(), "v2");
    assert_eq!(request("DELETE", l.port, h, "/api/x", &[]).await.backend(), "exact");
    assert_eq!(get(l.port, h, "/apix", &[("x-canary", "1")]).await.backend(), "v2", "/api is segment-wise");
    // The longer /api prefix beats the header match on / (path comes first in precedence).
    assert_eq!(get(l.port, h, "/api/y", &[("x-canary", "1")]).await.backend(), "v1");
    let reply = get(l.port, h, "/api/y?a=b", &[]).await;
    assert_eq!(reply.json()["path"], "/api/y");
    assert_eq!(reply.json()["query"], "a=b");
}

#[tokio::test]
async fn only_the_most_specific_hostname_is_used_and_no_match_is_404() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let exact =
        route("exact", 1, &["a.example.com"], &l, vec![rule(vec![prefix("/only")], vec![to("v1", 1)])]);
    let wildcard = route("wild", 1, &["*.example.com"], &l, vec![rule(vec![prefix("/")], vec![to("v2", 1)])]);
    let cfg =
        config(&l, vec![service_backend("v1", &[v1]), service_backend("v2", &[v2])], vec![exact, wildcard]);
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "a.example.com:8080", "/only/x", &[]).await.backend(), "v1", "port ignored");
    assert_eq!(get(l.port, "A.EXAMPLE.COM", "/only", &[]).await.backend(), "v1");
    assert_eq!(get(l.port, "b.example.com", "/only", &[]).await.backend(), "v2");
    // a.example.com's bucket has no match for / and the wildcard's is not consulted.
    assert_eq!(get(l.port, "a.example.com", "/", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(l.port, "other.org", "/", &[]).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn header_modifiers_rewrites_and_per_backend_filters() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut r = rule(vec![prefix("/old")], vec![to("v1", 1)]);
    r.filters = vec![
        Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![("x-set".into(), "yes".into())],
            add: vec![("x-added".into(), "1".into())],
            remove: vec!["x-drop".into()],
        }),
        Filter::ResponseHeaderModifier(HeaderModifier {
            set: vec![("x-from-proxy".into(), "hi".into())],
            add: vec![],
            remove: vec!["x-remove-me".into()],
        }),
        Filter::UrlRewrite(UrlRewrite {
            hostname: Some("rewritten.internal".into()),
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        }),
    ];
    r.backends[0].filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![("x-backend-filter".into(), "v1".into())],
        ..Default::default()
    })];
    let cfg = config(&l, vec![service_backend("v1", &[v1])], vec![route("r", 1, &[], &l, vec![r])]);
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let reply = get(
        l.port,
        "app.example",
        "/old/page?q=1",
        &[("x-drop", "1"), ("x-set", "no"), ("connection", "x-private"), ("x-private", "secret")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["path"], "/new/page");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(reply.received_header("host").as_deref(), Some("rewritten.internal"));
    assert_eq!(reply.received_header("x-set").as_deref(), Some("yes"));
    assert_eq!(reply.received_header("x-added").as_deref(), Some("1"));
    assert_eq!(reply.received_header("x-backend-filter").as_deref(), Some("v1"));
    assert_eq!(reply.received_header("x-drop"), None);
    assert_eq!(reply.received_header("x-private"), None, "hop-by-hop named by Connection");
    assert_eq!(reply.received_header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(reply.received_header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(reply.headers.get("x-from-proxy").expect("response header set"), "hi");
    assert!(reply.headers.get("x-remove-me").is_none());
    assert_eq!(reply.headers.get("x-backend").expect("backend header kept"), "v1");
}

#[tokio::test]
async fn host_is_kept_without_a_rewrite() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let cfg = config(
        &l,
        vec![service_backend("v1", &[v1])],
        vec![route("r", 1, &[], &l, vec![rule(vec![prefix("/")], vec![to("v1", 1)])])],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let reply = get(l.port, "app.example:1234", "/", &[]).await;
    assert_eq!(reply.received_header("host").as_deref(), Some("app.example:1234"));
}

#[tokio::test]
async fn redirects_build_location_and_status() {
    let l = gateway_listener(free_port());
    let mut to_new = rule(vec![prefix("/old")], vec![]);
    to_new.filters = vec![Filter::RequestRedirect(Redirect {
        scheme: None,
        hostname: None,
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        port: None,
        status_code: 301,
    })];
    let mut to_https = rule(vec![prefix("/secure")], vec![]);
    to_https.filters = vec![Filter::RequestRedirect(Redirect {
        scheme: Some("https".into()),
        hostname: Some("secure.example".into()),
        path: None,
        port: None,
        status_code: 308,
    })];
    let cfg = config(&l, vec![], vec![route("r", 1, &[], &l, vec![to_new, to_https])]);
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let reply = get(l.port, "app.example", "/old/a?x=1", &[]).await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    let expected = format!("http://app.example:{}/new/a?x=1", l.port);
    assert_eq!(reply.headers.get("location").expect("location"), expected.as_str());
    let reply = get(l.port, "app.example", "/secure/z", &[]).await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(reply.headers.get("location").expect("location"), "https://secure.example/secure/z");
}

#[tokio::test]
async fn weighted_split_follows_the_weights_and_weight_zero_is_never_chosen() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    let never = backend("never", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let cfg = config(
        &l,
        vec![service_backend("v1", &[v1]), service_backend("v2", &[v2]), service_backend("never", &[never])],
        vec![route(
            "r",
            1,
            &[],
            &l,
            vec![rule(vec![prefix("/")], vec![to("v1", 3), to("v2", 1), to("never", 0)])],
        )],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    const N: usize = 400;
    let mut v1_count = 0;
    for _ in 0..N {
        match get(l.port, "h", "/", &[]).await.backend().as_str() {
            "v1" => v1_count += 1,
            "v2" => {}
            other => panic!("weight 0 backend {other} chosen"),
        }
    }
    // Expected 300, σ = sqrt(400·0.75·0.25) ≈ 8.7: ±40 is beyond 4.5σ.
    assert!((260..=340).contains(&v1_count), "v1 got {v1_count} of {N}");
}

#[tokio::test]
async fn invalid_and_missing_backends_are_500_and_a_dead_one_is_503() {
    let dead_port = free_port();
    let l = gateway_listener(free_port());
    let invalid = rule(
        vec![prefix("/invalid")],
        vec![WeightedBackend {
            weight: 1,
            backend: BackendRef::Invalid { reason: "no such Service".into() },
            filters: vec![],
        }],
    );
    let none = rule(vec![prefix("/none")], vec![]);
    let zero = rule(vec![prefix("/zero")], vec![to("dead", 0)]);
    let unready = rule(vec![prefix("/unready")], vec![to("unready", 1)]);
    let dead = rule(vec![prefix("/dead")], vec![to("dead", 1)]);
    let mut unready_backend = service_backend("unready", &["127.0.0.1:1".parse().expect("addr")]);
    unready_backend.endpoints[0].ready = false;
    let cfg = config(
        &l,
        vec![
            service_backend("dead", &[format!("127.0.0.1:{dead_port}").parse().expect("addr")]),
            unready_backend,
        ],
        vec![route("r", 1, &[], &l, vec![invalid, none, zero, unready, dead])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "h", "/invalid", &[]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(l.port, "h", "/none", &[]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(l.port, "h", "/zero", &[]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(l.port, "h", "/unready", &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(l.port, "h", "/dead", &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(proxy.metrics.upstream_failures(mesh_proxy::metrics::UpstreamFailure::Connect), 1);
}

#[tokio::test]
async fn a_backend_that_resets_gives_502_and_a_slow_one_504() {
    let reset = backend("reset", Behaviour::Reset).await;
    let truncate = backend("truncate", Behaviour::Truncate).await;
    let slow = backend("slow", Behaviour::Slow(Duration::from_secs(5))).await;
    let l = gateway_listener(free_port());
    let mut slow_rule = rule(vec![prefix("/slow")], vec![to("slow", 1)]);
    slow_rule.timeouts.request_ms = Some(200);
    let cfg = config(
        &l,
        vec![
            service_backend("reset", &[reset]),
            service_backend("slow", &[slow]),
            service_backend("truncate", &[truncate]),
        ],
        vec![route(
            "r",
            1,
            &[],
            &l,
            vec![
                rule(vec![prefix("/reset")], vec![to("reset", 1)]),
                slow_rule,
                rule(vec![prefix("/truncate")], vec![to("truncate", 1)]),
            ],
        )],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;
    assert_eq!(get(l.port, "h", "/reset", &[]).await.status, StatusCode::BAD_GATEWAY);
    let started = std::time::Instant::now();
    assert_eq!(get(l.port, "h", "/slow", &[]).await.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    use mesh_proxy::metrics::UpstreamFailure;
    assert_eq!(proxy.metrics.upstream_failures(UpstreamFailure::Reset), 1);

    // Headers already sent: the client sees its body cut short, and the failure is counted.
    let req = http::Request::get(format!("http://127.0.0.1:{}/truncate", l.port))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = client().request(req).await.expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(http_body_util::BodyExt::collect(response.into_body()).await.is_err(), "the body is cut");
    assert_eq!(proxy.metrics.upstream_failures(UpstreamFailure::Reset), 2);
    assert_eq!(proxy.metrics.upstream_failures(UpstreamFailure::Timeout), 1);
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(metrics.contains(r#"backend="apps/reset:80",code="502""#), "{metrics}");
}

/// Sends raw bytes and returns what the proxy answered (until it closes, or 2 s).
async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggling_and_oversized_heads_never_reach_a_backend() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let cfg = config(
        &l,
        vec![service_backend("v1", &[v1])],
        vec![route("r", 1, &[], &l, vec![rule(vec![prefix("/")], vec![to("v1", 1)])])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;
    let smuggle = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n";
    let answer = raw(l.port, smuggle).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("\"backend\""), "nothing reached the backend: {answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "the smuggled request is not served: {answer}");

    let huge = format!("GET / HTTP/1.1\r\nHost: h\r\nx-big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let answer = raw(l.port, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431") || answer.is_empty(), "{answer}");
    assert!(!answer.contains("\"backend\""));
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(!metrics.contains("code=\"200\""), "{metrics}");
}

#[tokio::test]
async fn h2c_clients_and_h2c_backends() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let grpcish = backend("h2", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut h2_backend = service_backend("h2", &[grpcish]);
    h2_backend.app_protocol = AppProtocol::H2c;
    let cfg = config(
        &l,
        vec![service_backend("v1", &[v1]), h2_backend],
        vec![route(
            "r",
            1,
            &[],
            &l,
            vec![rule(vec![prefix("/h1")], vec![to("v1", 1)]), rule(vec![prefix("/h2")], vec![to("h2", 1)])],
        )],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let h2_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for (path, backend, version) in [("/h1", "v1", "HTTP/1.1"), ("/h2", "h2", "HTTP/2.0")] {
        let req = http::Request::get(format!("http://app.example:{}{path}", l.port))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        // The authority names app.example, but the client must dial loopback.
        let req = {
            let (mut parts, body) = req.into_parts();
            parts.uri = format!("http://127.0.0.1:{}{path}", l.port).parse().expect("uri");
            parts.headers.insert("host", "app.example".parse().expect("host"));
            http::Request::from_parts(parts, body)
        };
        let response = h2_client.request(req).await.expect("h2c answer");
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["backend"], backend);
        assert_eq!(json["version"], version);
    }
}

#[tokio::test]
async fn grpc_routes_match_service_and_method_over_h2c() {
    let echo = backend("echo", Behaviour::Echo).await;
    let other = backend("other", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let grpc = |service: Option<&str>, method: Option<&str>| {
        RouteMatch::Grpc(GrpcMatch {
            method: Some(GrpcMethodMatch {
                service: service.map(str::to_string),
                method: method.map(str::to_string),
                regex: false,
            }),
            headers: vec![],
        })
    };
    let mut echo_backend = service_backend("echo", &[echo]);
    echo_backend.app_protocol = AppProtocol::H2c;
    let mut other_backend = service_backend("other", &[other]);
    other_backend.app_protocol = AppProtocol::H2c;
    let mut r = route(
        "g",
        1,
        &[],
        &l,
        vec![
            rule(vec![grpc(Some("pkg.Echo"), Some("Say"))], vec![to("echo", 1)]),
            rule(vec![grpc(Some("pkg.Echo"), None)], vec![to("other", 1)]),
        ],
    );
    r.key.kind = RouteKind::Grpc;
    let _proxy = start(config(&l, vec![echo_backend, other_backend], vec![r])).await;
    wait_listening(l.port).await;
    let h2_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for (path, expected) in
        [("/pkg.Echo/Say", Some("echo")), ("/pkg.Echo/Shout", Some("other")), ("/pkg.Nope/Say", None)]
    {
        let req = http::Request::post(format!("http://127.0.0.1:{}{path}", l.port))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let response = h2_client.request(req).await.expect("answer");
        match expected {
            Some(backend) => {
                assert_eq!(response.status(), StatusCode::OK);
                let body =
                    http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
                assert_eq!(json["backend"], backend);
                assert_eq!(json["version"], "HTTP/2.0");
                assert_eq!(json["headers"]["te"], "trailers", "gRPC needs te: trailers end to end");
            }
            // Said in gRPC: UNIMPLEMENTED, trailers-only.
            None => {
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["grpc-status"], "12");
            }
        }
    }
}

#[tokio::test]
async fn retries_bodyless_requests_on_the_listed_codes() {
    let flaky = backend("flaky", Behaviour::FailFirst(2)).await;
    let still_flaky = backend("still", Behaviour::FailFirst(1)).await;
    let l = gateway_listener(free_port());
    let retry = Retry { codes: vec![503], attempts: 2, backoff_ms: Some(10) };
    let mut retried = rule(vec![prefix("/get")], vec![to("flaky", 1)]);
    retried.retry = Some(retry.clone());
    let mut with_body = rule(vec![prefix("/post")], vec![to("still", 1)]);
    with_body.retry = Some(retry);
    let cfg = config(
        &l,
        vec![service_backend("flaky", &[flaky]), service_backend("still", &[still_flaky])],
        vec![route("r", 1, &[], &l, vec![retried, with_body])],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let reply = get(l.port, "h", "/get", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "two 503s then success within 1 + 2 attempts");
    assert_eq!(reply.backend(), "flaky");

    // A request with a body is streamed, not kept, so it is not retried.
    let req = http::Request::post(format!("http://127.0.0.1:{}/post", l.port))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"payload")))
        .expect("request");
    let reply = send(req).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["body"], "payload");
}
