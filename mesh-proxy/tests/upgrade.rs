//! HTTP/1.1 Upgrade (WebSocket) passthrough, and HTTP/1.1 clients to h2c backends.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_api::model::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that accepts any upgrade with 101 (reporting the `Sec-WebSocket-Key` it got), then
/// answers every byte upper-cased, so the client knows the bytes crossed the backend.
async fn upgrading_backend() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let key = req.headers().get("sec-websocket-key").cloned();
                    let protocol = req.headers().get("upgrade").cloned();
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on_upgrade.await else { return };
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if io.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    response.headers_mut().insert("connection", "upgrade".parse().expect("value"));
                    if let Some(protocol) = protocol {
                        response.headers_mut().insert("upgrade", protocol);
                    }
                    if let Some(key) = key {
                        response.headers_mut().insert("x-saw-key", key);
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Reads until the end of a response head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed mid-head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

const HANDSHAKE: &str = "GET /ws/chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn websocket_upgrades_are_forwarded_and_spliced() {
    let ws = upgrading_backend().await;
    let plain = backend("plain", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut ws_backend = service_backend("ws", &[ws]);
    ws_backend.app_protocol = AppProtocol::WebSocket;
    let cfg = config(
        &l,
        vec![ws_backend, service_backend("plain", &[plain])],
        vec![route(
            "r",
            1,
            &[],
            &l,
            vec![
                rule(vec![prefix("/ws")], vec![to("ws", 1)]),
                rule(vec![prefix("/plain")], vec![to("plain", 1)]),
            ],
        )],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;

    let mut stream = TcpStream::connect(("127.0.0.1", l.port)).await.expect("connect");
    stream.write_all(HANDSHAKE.as_bytes()).await.expect("handshake");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("x-saw-key: dghlihnhbxbszsbub25jzq=="), "the backend got the handshake: {head}");
    // Both directions, several times: the connections are spliced, not one message relayed.
    for message in ["hello", "over the proxy", "bye"] {
        stream.write_all(message.as_bytes()).await.expect("write");
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .expect("answer in time")
            .expect("read");
        assert_eq!(back, message.to_ascii_uppercase().as_bytes());
    }

    // A backend that does not switch answers like any request, and still saw the upgrade ask.
    let reply = get(l.port, "h", "/plain", &[("connection", "upgrade"), ("upgrade", "websocket")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.received_header("upgrade").as_deref(), Some("websocket"));
    assert!(reply.headers.get("upgrade").is_none());
    // Without `Connection: upgrade`, an `Upgrade` header is hop-by-hop and dropped.
    let reply = get(l.port, "h", "/plain", &[("upgrade", "websocket")]).await;
    assert_eq!(reply.received_header("upgrade"), None);
}

#[tokio::test]
async fn http1_clients_reach_h2c_backends_over_http2() {
    let h2 = backend("h2", Behaviour::Echo).await;
    let l = gateway_listener(free_port());
    let mut h2_backend = service_backend("h2", &[h2]);
    h2_backend.app_protocol = AppProtocol::H2c;
    let cfg = config(
        &l,
        vec![h2_backend],
        vec![route("r", 1, &[], &l, vec![rule(vec![prefix("/")], vec![to("h2", 1)])])],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;
    let req = Request::post(format!("http://127.0.0.1:{}/grpcish", l.port))
        .header("host", "app.example")
        .header("connection", "keep-alive")
        .body(Full::new(Bytes::from_static(b"body over h2")))
        .expect("request");
    let reply = send(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["version"], "HTTP/2.0", "the backend spoke HTTP/2: {json}");
    assert_eq!(json["body"], "body over h2");
    assert_eq!(json["headers"]["connection"], serde_json::Value::Null, "no connection header on h2");
    assert_eq!(json["headers"]["host"], "app.example", "the client's host is kept: {json}");
}
