//! The controller's admin endpoint: `/ready` (a config has been published), `/metrics`
//! (Prometheus text: the published version, every proxy's ACK/NACK state, certificates signed
//! and refused), and
//! `/config_dump` (the published config as JSON, private keys redacted).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use std::sync::Arc;

use crate::ca::CaMetrics;
use crate::config_server::Publisher;

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct Sources {
    pub publisher: Publisher,
    /// Present when this controller runs the certificate authority.
    pub ca: Option<Arc<CaMetrics>>,
}

pub async fn serve(sources: Sources, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(answer(&sources, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn bind_and_serve(sources: Sources, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint");
    serve(sources, listener).await;
    Ok(())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn answer(sources: &Sources, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let publisher = &sources.publisher;
    // Never a copy of the config here: /metrics is polled (every 2 ms by the control bench),
    // and cloning 100k endpoints per scrape cost a core and held up publishing.
    match req.uri().path() {
        "/ready" if publisher.version() > 0 => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "no config resolved yet\n".into()),
        "/metrics" => {
            let (version, resources) = publisher.with_config(|version, config| (version, config.len()));
            let mut body = format!(
                "# HELP weft_controller_config_version Version of the config published to proxies.\n\
                 # TYPE weft_controller_config_version gauge\nweft_controller_config_version {}\n\
                 # HELP weft_controller_config_resources Resources in the published config.\n\
                 # TYPE weft_controller_config_resources gauge\nweft_controller_config_resources {}\n",
                version, resources
            );
            body.push_str(&publisher.proxies.metrics());
            if let Some(ca) = &sources.ca {
                body.push_str(&ca.render());
            }
            text(StatusCode::OK, body)
        }
        "/config_dump" => {
            let mut config = publisher.with_config(|_, config| config.clone());
            for cert in config.certificates.values_mut() {
                cert.key_pem = "(redacted)".into();
            }
            match serde_json::to_string_pretty(&config) {
                Ok(json) => text(StatusCode::OK, json),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode config: {e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "try /ready, /metrics or /config_dump\n".into()),
    }
}
