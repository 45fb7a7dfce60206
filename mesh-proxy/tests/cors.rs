//! The CORS filter through a real proxy, on the cases of the Gateway API conformance test
//! `HTTPRouteCORS` (v1.5.1): preflights answered by the proxy, simple requests decorated.

mod support;

use http::StatusCode;
use mesh_api::model::*;
use support::*;

fn with_cors(path: &str, cors: Cors) -> Rule {
    let mut r = rule(vec![prefix(path)], vec![to("v1", 1)]);
    r.filters = vec![Filter::Cors(cors)];
    r
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn preflights_are_answered_and_simple_requests_get_the_headers() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let cors_1 = with_cors(
        "/cors-1",
        Cors {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
            expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
            allow_credentials: true,
            max_age_seconds: Some(3600),
        },
    );
    let cors_2 = with_cors(
        "/cors-2",
        Cors {
            allow_origins: vec!["https://www.foo.com".into()],
            allow_methods: vec!["*".into()],
            ..Default::default()
        },
    );
    let star = |credentials| Cors {
        allow_origins: vec!["*".into()],
        allow_methods: vec!["*".into()],
        allow_headers: vec!["*".into()],
        allow_credentials: credentials,
        ..Default::default()
    };
    let cfg = config(
        &l,
        vec![service_backend("v1", &[v1])],
        vec![route(
            "cors",
            1,
            &[],
            &l,
            vec![
                cors_1,
                cors_2,
                with_cors("/cors-wildcard-methods-headers", star(true)),
                with_cors("/cors-wildcard-methods-headers-unauth", star(false)),
            ],
        )],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let port = l.port;

    // Preflight from an exact and from wildcard origins (any number of labels for `*.`).
    for origin in ["https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com"] {
        let reply = request(
            "OPTIONS",
            port,
            "h",
            "/cors-1",
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-header-1, x-header-2"),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert!(reply.body.is_empty(), "answered by the proxy, not the backend: {}", reply.body);
        assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(&reply, "access-control-allow-methods"), Some("GET, OPTIONS"));
        assert_eq!(header(&reply, "access-control-allow-headers"), Some("x-header-1, x-header-2"));
        assert_eq!(header(&reply, "access-control-expose-headers"), Some("x-header-3, x-header-4"));
        assert_eq!(header(&reply, "access-control-max-age"), Some("3600"));
        assert_eq!(header(&reply, "access-control-allow-credentials"), Some("true"));
    }

    // An origin that is not allowed: no CORS header, preflight or not.
    let reply = request(
        "OPTIONS",
        port,
        "h",
        "/cors-1",
        &[("origin", "https://foobar.com"), ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&reply, "access-control-allow-origin"), None);
    let reply = get(port, "h", "/cors-1", &[("origin", "https://foobar.com")]).await;
    assert_eq!((reply.status, header(&reply, "access-control-allow-origin")), (StatusCode::OK, None));

    // Simple requests reach the backend and come back with the headers.
    for origin in ["https://www.foo.com", "https://www.bar.com"] {
        let reply = get(port, "h", "/cors-1", &[("origin", origin)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.backend(), "v1");
        assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(&reply, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&reply, "access-control-expose-headers"), Some("x-header-3, x-header-4"));
    }

    // `*` methods echo the requested one; no credentials header unless allowed.
    let reply = request(
        "OPTIONS",
        port,
        "h",
        "/cors-2",
        &[("origin", "https://www.foo.com"), ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(header(&reply, "access-control-allow-methods"), Some("POST"));
    assert_eq!(header(&reply, "access-control-allow-origin"), Some("https://www.foo.com"));
    assert_eq!(header(&reply, "access-control-allow-credentials"), None);

    // All wildcards with credentials: the origin, method and headers are echoed.
    for (path, credentials) in
        [("/cors-wildcard-methods-headers", Some("true")), ("/cors-wildcard-methods-headers-unauth", None)]
    {
        let reply = request(
            "OPTIONS",
            port,
            "h",
            path,
            &[
                ("origin", "https://other.foo.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-header-1, x-header-2"),
            ],
        )
        .await;
        assert_eq!(header(&reply, "access-control-allow-origin"), Some("https://other.foo.com"));
        assert_eq!(header(&reply, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(header(&reply, "access-control-allow-headers"), Some("x-header-1, x-header-2"));
        assert_eq!(header(&reply, "access-control-allow-credentials"), credentials);
        let reply =
            get(port, "h", path, &[("origin", "https://other.foo.com:12345"), ("cookie", "foo=bar")]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(header(&reply, "access-control-allow-origin"), Some("https://other.foo.com:12345"));
        assert_eq!(header(&reply, "access-control-allow-credentials"), credentials);
    }

    // An OPTIONS that is not a preflight goes to the backend like any request.
    let reply = request("OPTIONS", port, "h", "/cors-1", &[("origin", "https://www.foo.com")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "v1");
}
