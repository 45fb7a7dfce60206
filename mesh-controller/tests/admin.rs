//! The controller's admin endpoint over a real HTTP connection on loopback.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_api::model::{Certificate, Config, ObjectKey};
use mesh_controller::config_server::Publisher;

async fn get(base: &str, path: &str) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(format!("{base}{path}").parse().expect("uri")).await.expect("admin answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn ready_after_the_first_config_and_private_keys_never_dumped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let publisher = Publisher::new();
    let sources = mesh_controller::admin::Sources { publisher: publisher.clone(), ca: None };
    tokio::spawn(mesh_controller::admin::serve(sources, listener));

    assert_eq!(get(&base, "/ready").await.0, 503);
    let mut config = Config::default();
    config.insert_certificate(Certificate {
        key: ObjectKey::new("infra", "cert"),
        chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        key_pem: "-----BEGIN PRIVATE KEY----- secret".into(),
        dns_names: Vec::new(),
    });
    publisher.publish(config);
    assert_eq!(get(&base, "/ready").await.0, 200);

    let (status, metrics) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("weft_controller_config_version 1"), "{metrics}");
    assert!(metrics.contains("weft_controller_config_resources 1"), "{metrics}");

    let (status, dump) = get(&base, "/config_dump").await;
    assert_eq!(status, 200);
    assert!(dump.contains("infra/cert") && dump.contains("(redacted)"), "{dump}");
    assert!(!dump.contains("secret"), "a private key leaked: {dump}");
    assert_eq!(get(&base, "/nope").await.0, 404);
}
