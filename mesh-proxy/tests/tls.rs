//! HTTPS listeners: TLS termination with certificates chosen by SNI, ALPN h2 and http/1.1,
//! certificates replaced without rebinding, and garbage on the TLS port.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::model::*;
use rustls_pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TestCert {
    der: CertificateDer<'static>,
    model: Certificate,
}

fn cert(name: &str, san: &str) -> TestCert {
    let generated = rcgen::generate_simple_self_signed(vec![san.to_string()]).expect("cert");
    TestCert {
        der: generated.cert.der().clone(),
        model: Certificate {
            key: ObjectKey::new("infra", name),
            chain_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
            dns_names: vec![san.to_string()],
        },
    }
}

fn https_listener(section: &str, port: u16, hostname: &str, cert: &str) -> Listener {
    Listener {
        key: ListenerKey { gateway: ObjectKey::new("infra", "gw"), section: section.into() },
        addresses: vec!["127.0.0.1".parse().expect("ip")],
        port,
        protocol: ListenerProtocol::Https,
        hostname: Some(hostname.into()),
        tls: Some(ListenerTls { mode: TlsMode::Terminate, certificates: vec![format!("infra/{cert}")] }),
    }
}

/// A TLS connection that trusts only `trusted`, asking for `sni` and offering `alpn`.
async fn connect(
    port: u16,
    sni: &str,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("root");
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    connector.connect(ServerName::try_from(sni.to_string()).expect("name"), tcp).await
}

async fn get_over(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
) -> (StatusCode, serde_json::Value) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = http::Request::get(format!("https://{host}/"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2");
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.headers.remove("host");
        send.send_request(http::Request::from_parts(parts, body)).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("h1");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h1 response")
    };
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn https_listeners_terminate_tls_with_the_certificate_sni_asks_for() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let v2 = backend("v2", Behaviour::Echo).await;
    let port = free_port();
    let secure = cert("secure", "secure.example");
    let wild = cert("wild", "a.wild.example");
    let l_secure = https_listener("secure", port, "secure.example", "secure");
    let l_wild = https_listener("wild", port, "*.wild.example", "wild");
    let mut cfg = config(
        &l_secure,
        vec![service_backend("v1", &[v1]), service_backend("v2", &[v2])],
        vec![
            route(
                "to-v1",
                1,
                &["secure.example"],
                &l_secure,
                vec![rule(vec![prefix("/")], vec![to("v1", 1)])],
            ),
            route("to-v2", 1, &["*.wild.example"], &l_wild, vec![rule(vec![prefix("/")], vec![to("v2", 1)])]),
        ],
    );
    cfg.insert_listener(l_wild.clone());
    cfg.insert_certificate(secure.model.clone());
    cfg.insert_certificate(wild.model.clone());
    let proxy = start(cfg.clone()).await;
    wait_listening(port).await;

    let stream =
        connect(port, "secure.example", &secure.der, &[b"http/1.1"]).await.expect("secure handshake");
    let (status, seen) = get_over(stream, "secure.example").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["backend"], "v1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    let stream =
        connect(port, "a.wild.example", &wild.der, &[b"h2", b"http/1.1"]).await.expect("wild handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN picks h2");
    let (status, seen) = get_over(stream, "a.wild.example").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["backend"], "v2");

    // The wrong certificate for a name fails the client's verification.
    assert!(connect(port, "a.wild.example", &secure.der, &[]).await.is_err());

    // Garbage on the TLS port closes that connection only.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: secure.example\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(2), garbage.read_to_end(&mut buf)).await.expect("closed");
    assert!(read.is_err() || !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    let stream = connect(port, "secure.example", &secure.der, &[]).await.expect("still serving");
    assert_eq!(get_over(stream, "secure.example").await.0, StatusCode::OK);

    // A renewed Secret reaches the next handshake.
    let renewed = cert("secure", "secure.example");
    cfg.insert_certificate(renewed.model.clone());
    proxy.store.install(2, cfg);
    let stream =
        connect(port, "secure.example", &renewed.der, &[]).await.expect("renewed certificate served");
    assert_eq!(get_over(stream, "secure.example").await.0, StatusCode::OK);
}

#[tokio::test]
async fn one_listener_with_several_certificates_serves_each_by_its_names() {
    let v1 = backend("v1", Behaviour::Echo).await;
    let port = free_port();
    let shop = cert("shop", "shop.example");
    let blog = cert("blog", "*.blog.example");
    let mut listener = https_listener("multi", port, "unused", "shop");
    listener.hostname = None;
    if let Some(tls) = listener.tls.as_mut() {
        tls.certificates = vec!["infra/shop".into(), "infra/blog".into()];
    }
    let mut cfg = config(
        &listener,
        vec![service_backend("v1", &[v1])],
        vec![route("all", 1, &[], &listener, vec![rule(vec![prefix("/")], vec![to("v1", 1)])])],
    );
    cfg.insert_certificate(shop.model.clone());
    cfg.insert_certificate(blog.model.clone());
    let _proxy = start(cfg).await;
    wait_listening(port).await;

    // Each name gets the certificate that is valid for it (the client trusts only that one).
    let stream = connect(port, "shop.example", &shop.der, &[]).await.expect("shop certificate");
    assert_eq!(get_over(stream, "shop.example").await.0, StatusCode::OK);
    let stream = connect(port, "news.blog.example", &blog.der, &[]).await.expect("wildcard blog certificate");
    assert_eq!(get_over(stream, "news.blog.example").await.0, StatusCode::OK);
    // A name no certificate covers gets the listener's first one: a client trusting it sees
    // a trusted chain for the wrong name, and rustls names the certificate it was shown.
    let wrong_name = connect(port, "other.example", &shop.der, &[]).await.expect_err("wrong name");
    let text = wrong_name.to_string();
    assert!(text.contains("not valid for name") && text.contains("shop.example"), "{text}");
}
