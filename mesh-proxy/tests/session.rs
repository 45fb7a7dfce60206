//! Session persistence through a real proxy: a cookie or header session pins later requests
//! (on new connections) to the endpoint that answered first, across weighted backendRefs, until
//! that endpoint leaves the config.

mod support;

use http::StatusCode;
use mesh_api::model::*;
use support::*;

fn persistent(
    path: &str,
    backends: Vec<WeightedBackend>,
    kind: SessionPersistenceKind,
    name: Option<&str>,
) -> Rule {
    let mut r = rule(vec![prefix(path)], backends);
    r.session_persistence = Some(SessionPersistence {
        name: name.map(str::to_string),
        kind,
        absolute_timeout_ms: None,
        idle_timeout_ms: None,
        permanent_cookie: false,
    });
    r
}

#[tokio::test]
async fn sessions_stick_to_their_endpoint() {
    let a = backend("a", Behaviour::Echo).await;
    let b = backend("b", Behaviour::Echo).await;
    let c = backend("c", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let rules = vec![
        // Two backendRefs split 1:1, so without the session half the requests would move.
        persistent("/cookie", vec![to("ab", 1), to("c", 1)], SessionPersistenceKind::Cookie, None),
        persistent(
            "/header",
            vec![to("ab", 1), to("c", 1)],
            SessionPersistenceKind::Header,
            Some("x-session"),
        ),
    ];
    let backends = || vec![service_backend("ab", &[a, b]), service_backend("c", &[c])];
    let proxy = start(config(&l, backends(), vec![route("r", 1, &[], &l, rules.clone())])).await;
    wait_listening(l.port).await;

    // Cookie: a session cookie (no Expires, no Max-Age), sent back on new connections.
    let first = get(l.port, "h", "/cookie", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let set_cookie =
        first.headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("set-cookie").to_string();
    assert!(set_cookie.starts_with("weft-session="), "{set_cookie}");
    assert!(!set_cookie.contains("Max-Age") && !set_cookie.contains("Expires"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("pair").to_string();
    let pinned = first.backend();
    for _ in 0..20 {
        let reply = get(l.port, "h", "/cookie", &[("cookie", &format!("theme=dark; {cookie}"))]).await;
        assert_eq!(reply.backend(), pinned);
        assert!(reply.headers.get("set-cookie").is_none(), "an unchanged session is not re-set");
    }

    // Header: the same with the route's header name.
    let first = get(l.port, "h", "/header", &[]).await;
    let session =
        first.headers.get("x-session").and_then(|v| v.to_str().ok()).expect("x-session").to_string();
    let pinned = first.backend();
    for _ in 0..20 {
        let reply = get(l.port, "h", "/header", &[("x-session", &session)]).await;
        assert_eq!(reply.backend(), pinned);
    }

    // Its endpoint gone, the session moves to another one, with a new cookie.
    let survivors = [("a", a), ("b", b), ("c", c)];
    let gone = get(l.port, "h", "/cookie", &[("cookie", &cookie)]).await.backend();
    let kept: Vec<_> = survivors.iter().filter(|(n, _)| *n != gone).map(|(_, addr)| *addr).collect();
    // Both backends now hold the two other endpoints, so any choice can answer.
    let next = vec![service_backend("ab", &kept), service_backend("c", &kept)];
    proxy.store.install(2, config(&l, next, vec![route("r", 1, &[], &l, rules)]));
    let moved = get(l.port, "h", "/cookie", &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_ne!(moved.backend(), gone);
    assert!(moved.headers.get("set-cookie").is_some(), "a new session starts");
}
