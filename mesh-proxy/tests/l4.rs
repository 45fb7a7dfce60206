//! TCP and TLS-passthrough listeners: bytes spliced to a weighted backend, TLS routed by SNI
//! with the handshake going end to end (the proxy holds no certificate), and what no route
//! takes closed.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::model::*;
use rustls_pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers every read with `<name>:<bytes>`, over TLS with a certificate for `tls_name` when
/// given, plain TCP otherwise.
async fn l4_backend(
    name: &'static str,
    tls_name: Option<&str>,
) -> (SocketAddr, Option<CertificateDer<'static>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (acceptor, cert) = match tls_name {
        Some(san) => {
            let generated = rcgen::generate_simple_self_signed(vec![san.to_string()]).expect("cert");
            let der = generated.cert.der().clone();
            let key = rustls_pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .expect("key");
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("server config");
            (Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), Some(der))
        }
        None => (None, None),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            answer(name, tls).await;
                        }
                    }
                    None => answer(name, stream).await,
                }
            });
        }
    });
    (addr, cert)
}

async fn answer(name: &str, mut io: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = [0u8; 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes `message` and reads the answer (the backend's name, `:`, the message).
async fn exchange(io: &mut (impl AsyncRead + AsyncWrite + Unpin), message: &str) -> String {
    io.write_all(message.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the proxy closed the connection without an answer.
async fn closed(mut stream: TcpStream, bytes: &[u8]) -> bool {
    let _ = stream.write_all(bytes).await;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn tcp_routes_splice_bytes_to_weighted_backends() {
    let (a, _) = l4_backend("a", None).await;
    let (b, _) = l4_backend("b", None).await;
    let l = l4_listener("tcp", free_port(), ListenerProtocol::Tcp);
    let cfg = config(
        &l,
        vec![service_backend("a", &[a]), service_backend("b", &[b])],
        vec![l4_route(RouteKind::Tcp, "t", &l, &[], vec![to("a", 1), to("b", 1), to("never", 0)])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;

    let mut stream = TcpStream::connect(("127.0.0.1", l.port)).await.expect("connect");
    let first = exchange(&mut stream, "hello").await;
    let backend = first.split(':').next().expect("name").to_string();
    assert!(first == "a:hello" || first == "b:hello", "{first}");
    // The connection stays with its backend, both ways, for every message.
    assert_eq!(exchange(&mut stream, "again").await, format!("{backend}:again"));
    drop(stream);

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(("127.0.0.1", l.port)).await.expect("connect");
        let answer = exchange(&mut stream, "x").await;
        seen.insert(answer);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a:x", "b:x"], "both weights get connections");
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(
        metrics.contains(
            r#"weft_l4_connections_total{listener="infra/gw/tcp",backend="apps/a:80",outcome="forwarded"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn tls_passthrough_routes_by_sni_end_to_end() {
    let (exact, exact_cert) = l4_backend("exact", Some("a.example.com")).await;
    let (wild, wild_cert) = l4_backend("wild", Some("b.example.com")).await;
    let l = l4_listener("tls", free_port(), ListenerProtocol::Tls);
    let cfg = config(
        &l,
        vec![service_backend("exact", &[exact]), service_backend("wild", &[wild])],
        vec![
            l4_route(RouteKind::Tls, "exact", &l, &["a.example.com"], vec![to("exact", 1)]),
            l4_route(RouteKind::Tls, "wild", &l, &["*.example.com"], vec![to("wild", 1)]),
        ],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;

    let tls = |sni: &str, trusted: CertificateDer<'static>| {
        let sni = sni.to_string();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(trusted).expect("root");
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = TcpStream::connect(("127.0.0.1", l.port)).await.expect("connect");
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from(sni).expect("name"), tcp)
                .await
        }
    };
    // The exact name beats the wildcard; the backend's own certificate completes the handshake.
    let exact_cert = exact_cert.expect("cert");
    let wild_cert = wild_cert.expect("cert");
    let mut stream = tls("a.example.com", exact_cert.clone()).await.expect("handshake with the backend");
    assert_eq!(exchange(&mut stream, "secret").await, "exact:secret");
    // Any other name under the wildcard goes to the wildcard route (whose backend presents its
    // own name: the client trusts that certificate but the name differs, so only the route is
    // checked here, through the handshake's failure being the backend's, not a closed socket).
    let wrong_name = tls("c.example.com", wild_cert.clone()).await;
    let error = wrong_name.expect_err("the backend's certificate is for b.example.com").to_string();
    assert!(error.contains("certificate") || error.contains("Certificate"), "{error}");
    let mut stream = tls("b.example.com", wild_cert.clone()).await.expect("handshake");
    assert_eq!(exchange(&mut stream, "hi").await, "wild:hi");

    // A name no route serves, and bytes that are not TLS: closed, nothing forwarded.
    assert!(tls("other.net", exact_cert.clone()).await.is_err());
    let plain = TcpStream::connect(("127.0.0.1", l.port)).await.expect("connect");
    assert!(closed(plain, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await);

    let metrics = admin_get(&proxy, "/metrics").await.body;
    for outcome in [
        r#"listener="infra/gw/tls",backend="apps/exact:80",outcome="forwarded"} 1"#,
        r#"listener="infra/gw/tls",backend="apps/wild:80",outcome="forwarded"} 2"#,
        r#"backend="-",outcome="no_route"} 1"#,
        r#"backend="-",outcome="invalid_hello"} 1"#,
    ] {
        assert!(metrics.contains(outcome), "{outcome} in {metrics}");
    }
}

#[tokio::test]
async fn https_and_tls_passthrough_share_a_port_by_sni() {
    let (pass, pass_cert) = l4_backend("pass", Some("pass.example.com")).await;
    let web = backend("web", Behaviour::Echo).await;
    let port = free_port();
    let mut passthrough = l4_listener("tls", port, ListenerProtocol::Tls);
    passthrough.hostname = Some("pass.example.com".into());
    let generated = rcgen::generate_simple_self_signed(vec!["web.example.com".to_string()]).expect("cert");
    let web_cert = generated.cert.der().clone();
    let https = Listener {
        key: ListenerKey { gateway: ObjectKey::new("infra", "gw"), section: "https".into() },
        addresses: vec!["127.0.0.1".parse().expect("ip")],
        port,
        protocol: ListenerProtocol::Https,
        hostname: Some("web.example.com".into()),
        tls: Some(ListenerTls { mode: TlsMode::Terminate, certificates: vec!["infra/web".into()] }),
    };
    let mut cfg = config(
        &passthrough,
        vec![service_backend("pass", &[pass]), service_backend("web", &[web])],
        vec![
            l4_route(RouteKind::Tls, "pass", &passthrough, &[], vec![to("pass", 1)]),
            route("web", 1, &[], &https, vec![rule(vec![prefix("/")], vec![to("web", 1)])]),
        ],
    );
    cfg.insert_listener(https);
    cfg.insert_certificate(Certificate {
        key: ObjectKey::new("infra", "web"),
        chain_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
        dns_names: vec!["web.example.com".into()],
    });
    let _proxy = start(cfg).await;
    wait_listening(port).await;

    let connect = |sni: &'static str, trusted: CertificateDer<'static>| async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted).expect("root");
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(sni).expect("name"), tcp)
            .await
            .expect("handshake")
    };
    // The passthrough name reaches the backend's own TLS.
    let mut stream = connect("pass.example.com", pass_cert.expect("cert")).await;
    assert_eq!(exchange(&mut stream, "raw").await, "pass:raw");
    // The HTTPS name is terminated by the proxy and routed as HTTP.
    let mut stream = connect("web.example.com", web_cert).await;
    let answer =
        exchange(&mut stream, "GET /x HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A UDP backend answering each datagram with `<name>:<datagram>`.
async fn udp_backend(name: &'static str) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&out, from).await;
        }
    });
    addr
}

/// Sends `message` from `client` to the proxy and returns the answer; the first datagrams may
/// arrive before the proxy has bound the port, so they are sent again (a bounded number of times).
async fn udp_exchange(client: &tokio::net::UdpSocket, port: u16, message: &str) -> String {
    let mut buf = [0u8; 2048];
    for _ in 0..100 {
        client.send_to(message.as_bytes(), ("127.0.0.1", port)).await.expect("send");
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), client.recv(&mut buf)).await {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no UDP answer");
}

#[tokio::test]
async fn udp_routes_relay_datagrams_per_client_flow() {
    let a = udp_backend("a").await;
    let b = udp_backend("b").await;
    let port = free_port();
    let l = l4_listener("udp", port, ListenerProtocol::Udp);
    let cfg = config(
        &l,
        vec![service_backend("a", &[a]), service_backend("b", &[b])],
        vec![l4_route(RouteKind::Udp, "u", &l, &[], vec![to("a", 1), to("b", 1)])],
    );
    let proxy = start(cfg).await;

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let first = udp_exchange(&client, port, "one").await;
    let backend = first.split(':').next().expect("name").to_string();
    assert!(first == "a:one" || first == "b:one", "{first}");
    // One client, one flow: its later datagrams reach the same endpoint.
    for i in 0..5 {
        assert_eq!(udp_exchange(&client, port, &format!("m{i}")).await, format!("{backend}:m{i}"));
    }
    // Many clients spread over both weights.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        seen.insert(udp_exchange(&client, port, "x").await);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a:x", "b:x"]);
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(metrics.contains(r#"weft_l4_connections_total{listener="infra/gw/udp""#), "{metrics}");
}

#[tokio::test]
async fn tls_terminate_listeners_splice_the_plaintext() {
    let (plain, _) = l4_backend("plain", None).await;
    let port = free_port();
    let mut l = l4_listener("tls-term", port, ListenerProtocol::Tls);
    l.tls = Some(ListenerTls { mode: TlsMode::Terminate, certificates: vec!["infra/term".into()] });
    let generated = rcgen::generate_simple_self_signed(vec!["t.example.com".to_string()]).expect("cert");
    let proxy_cert = generated.cert.der().clone();
    let mut cfg = config(
        &l,
        vec![service_backend("plain", &[plain])],
        vec![l4_route(RouteKind::Tcp, "term", &l, &[], vec![to("plain", 1)])],
    );
    cfg.insert_certificate(Certificate {
        key: ObjectKey::new("infra", "term"),
        chain_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
        dns_names: vec!["t.example.com".into()],
    });
    let proxy = start(cfg).await;
    wait_listening(port).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(proxy_cert).expect("root");
    let mut client =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    // The proxy's certificate completes the handshake; the backend sees plaintext.
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("t.example.com").expect("name"), tcp)
        .await
        .expect("handshake with the proxy");
    assert_eq!(stream.get_ref().1.alpn_protocol(), None, "no ALPN: the bytes inside are not the proxy's");
    assert_eq!(exchange(&mut stream, "inside").await, "plain:inside");
    assert_eq!(exchange(&mut stream, "twice").await, "plain:twice");
    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(
        metrics.contains(r#"listener="infra/gw/tls-term",backend="apps/plain:80",outcome="forwarded"} 1"#),
        "{metrics}"
    );
}
