//! GRPCRoute through a real proxy with real tonic clients and servers over h2c: method and
//! header matches, a weighted split, and a bidirectional stream whose messages cross the proxy
//! one at a time.
//!
//! No `.proto`: one hand-written prost message and tonic's generic client and server.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::model::*;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

/// `test.Echo/Say` answers `<server>: <text> (<x-canary>)`.
#[derive(Clone)]
struct Say(&'static str);

impl tonic::server::UnaryService<Msg> for Say {
    type Response = Msg;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Msg>, Status>> + Send>>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let canary =
                request.metadata().get("x-canary").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
            let text = format!("{name}: {} ({canary})", request.into_inner().text);
            Ok(Response::new(Msg { text }))
        })
    }
}

/// `test.Echo/Chat` answers each message as it arrives, upper-cased.
#[derive(Clone)]
struct Chat(&'static str);

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<MsgStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let incoming = request.into_inner();
            let out =
                incoming.map(move |m| m.map(|m| Msg { text: format!("{name}: {}", m.text.to_uppercase()) }));
            Ok(Response::new(Box::pin(out) as MsgStream))
        })
    }
}

/// A gRPC server over h2c (prior knowledge), as a Kubernetes backend with appProtocol
/// `kubernetes.io/h2c` would be.
async fn grpc_backend(name: &'static str) -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                        let response = match req.uri().path() {
                            "/test.Echo/Say" => grpc.unary(Say(name), req).await,
                            "/test.Echo/Chat" => grpc.streaming(Chat(name), req).await,
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn grpc_match(method: &str, headers: &[(&str, &str)]) -> RouteMatch {
    RouteMatch::Grpc(GrpcMatch {
        method: Some(GrpcMethodMatch {
            service: Some("test.Echo".into()),
            method: Some(method.into()),
            regex: false,
        }),
        headers: headers
            .iter()
            .map(|(n, v)| HeaderMatch { name: n.to_string(), value: StringMatch::Exact(v.to_string()) })
            .collect(),
    })
}

fn h2c_backend(name: &str, addr: SocketAddr) -> Backend {
    let mut b = service_backend(name, &[addr]);
    b.app_protocol = AppProtocol::H2c;
    b
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn say(client: &mut Client, text: &str, canary: Option<&str>) -> Result<String, Status> {
    client.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(Msg { text: text.into() });
    if let Some(canary) = canary {
        request.metadata_mut().insert("x-canary", canary.parse().expect("metadata"));
    }
    let path = PathAndQuery::from_static("/test.Echo/Say");
    let response = client.unary(request, path, ProstCodec::<Msg, Msg>::default()).await?;
    Ok(response.into_inner().text)
}

#[tokio::test]
async fn tonic_clients_and_servers_through_a_grpc_route() {
    let v1 = grpc_backend("v1").await;
    let v2 = grpc_backend("v2").await;
    let canary = grpc_backend("canary").await;
    let l = gateway_listener(free_port());
    let mut r = route(
        "grpc",
        1,
        &[],
        &l,
        vec![
            // Header match beats the plain method match (more matching criteria).
            rule(vec![grpc_match("Say", &[("x-canary", "1")])], vec![to("canary", 1)]),
            rule(vec![grpc_match("Say", &[])], vec![to("v1", 3), to("v2", 1)]),
            rule(vec![grpc_match("Chat", &[])], vec![to("v2", 1)]),
            rule(vec![grpc_match("Broken", &[])], vec![to("missing", 1)]),
        ],
    );
    r.key.kind = RouteKind::Grpc;
    let cfg = config(
        &l,
        vec![h2c_backend("v1", v1), h2c_backend("v2", v2), h2c_backend("canary", canary)],
        vec![r],
    );
    let _proxy = start(cfg).await;
    wait_listening(l.port).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", l.port))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel);

    assert_eq!(say(&mut client, "hi", Some("1")).await.expect("canary"), "canary: hi (1)");
    // The 3:1 split: both backends answer, v1 more often (200 calls: the chance that either
    // never shows is below 1e-24).
    let (mut on_v1, mut on_v2) = (0, 0);
    for _ in 0..200 {
        let text = say(&mut client, "hi", Some("0")).await.expect("split");
        match text.as_str() {
            "v1: hi (0)" => on_v1 += 1,
            "v2: hi (0)" => on_v2 += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(on_v1 > 0 && on_v2 > 0 && on_v1 > on_v2, "v1 {on_v1}, v2 {on_v2}");

    // A bidirectional stream, in lockstep: each answer comes back before the next message is
    // sent, so nothing is buffered whole on the way.
    client.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel::<Msg>(1);
    let mut answers: Streaming<Msg> = client
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static("/test.Echo/Chat"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect("stream opened")
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(Msg { text: word.into() }).await.expect("send");
        let answer = answers.message().await.expect("answer").expect("not ended");
        assert_eq!(answer.text, format!("v2: {}", word.to_uppercase()));
    }
    drop(tx);
    assert!(answers.message().await.expect("clean end").is_none());

    // A method no rule matches.
    client.ready().await.expect("ready");
    let status = client
        .unary(
            Request::new(Msg::default()),
            PathAndQuery::from_static("/test.Echo/Nope"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // A rule whose backend is invalid: UNAVAILABLE, as GRPCRoute requires.
    client.ready().await.expect("ready");
    let status = client
        .unary(
            Request::new(Msg::default()),
            PathAndQuery::from_static("/test.Echo/Broken"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect_err("invalid backend");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
