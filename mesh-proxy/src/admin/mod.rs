//! The admin server: readiness, Prometheus metrics and the config being served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_api::model::Config;
use tokio::net::TcpListener;

use crate::config::ConfigStore;

/// Renders one part of `/metrics` that lives outside [`crate::metrics::Metrics`] (the mesh's
/// HBONE and certificate counters), registered once that part has started.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// The extra parts of `/metrics`.
#[derive(Default)]
pub struct MoreMetrics(std::sync::RwLock<Vec<MetricsSource>>);

impl MoreMetrics {
    pub fn register(&self, source: MetricsSource) {
        if let Ok(mut sources) = self.0.write() {
            sources.push(source);
        }
    }

    fn render(&self) -> String {
        self.0.read().map(|sources| sources.iter().map(|render| render()).collect()).unwrap_or_default()
    }
}

/// Serves admin requests on `socket` until the task is dropped.
pub async fn serve(socket: TcpListener, store: Arc<ConfigStore>, more: Arc<MoreMetrics>) {
    let server = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            // Usually out of file descriptors: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (store, more) = (store.clone(), more.clone());
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (store, more) = (store.clone(), more.clone());
                async move { Ok::<_, Infallible>(answer(&req, &store, &more)) }
            });
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(req: &Request<Incoming>, store: &ConfigStore, more: &MoreMetrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), "text/plain");
    }
    match req.uri().path() {
        "/ready" if store.is_ready() => text(StatusCode::OK, "ready\n".into(), "text/plain"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "no config yet\n".into(), "text/plain"),
        "/metrics" => {
            let body = store.metrics().render() + &more.render();
            text(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
        "/config_dump" => {
            let body = store.read_config(config_dump);
            text(StatusCode::OK, body, "application/json")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// The config as JSON with every private key replaced: the dump is for people and bug
/// reports, and must be safe to paste.
pub fn config_dump(version: u64, config: &Config) -> String {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(certificates) = value.get_mut("certificates").and_then(|c| c.as_object_mut()) {
        for certificate in certificates.values_mut() {
            if let Some(key) = certificate.get_mut("key_pem") {
                *key = serde_json::Value::String("[redacted]".into());
            }
        }
    }
    let dump = serde_json::json!({ "version": version, "config": value });
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds the admin address (port 0 picks one; the bound address is returned).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // During an upgrade the new proxy starts while the old one still serves this port (on the
    // host network both use the node's): both listen (inpod::handover).
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::model::{Certificate, ObjectKey};

    #[test]
    fn private_keys_never_reach_the_dump() {
        let mut config = Config::default();
        config.insert_certificate(Certificate {
            key: ObjectKey::new("ns", "tls"),
            chain_pem: "CHAIN".into(),
            key_pem: "-----BEGIN PRIVATE KEY----- SECRET".into(),
            dns_names: Vec::new(),
        });
        let dump = config_dump(3, &config);
        assert!(!dump.contains("SECRET"), "{dump}");
        assert!(dump.contains("CHAIN") && dump.contains("[redacted]"));
    }
}
