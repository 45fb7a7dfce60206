//! Errors the proxy answers itself, said in gRPC to gRPC clients.
//!
//! A gRPC client reads an HTTP error with a text body as a protocol error (it tries to decode
//! the text as a message). So a request with a gRPC content type that the proxy refuses (no
//! route, no backend, a failed backend) gets a trailers-only gRPC answer: HTTP 200 with
//! `grpc-status` and `grpc-message`, the status mapped from the HTTP one as gRPC's own
//! "HTTP to gRPC status code mapping" document does, except that the proxy's 500 (a rule whose
//! backend is invalid) is UNAVAILABLE, as GRPCRoute requires. A route that matched no method is
//! UNIMPLEMENTED, as GRPCRoute asks.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::{Local, ProxyBody, empty_body};

/// Whether the request is gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"))
}

/// gRPC status code for an HTTP status the proxy answered with.
fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13, // INTERNAL
        401 => 16, // UNAUTHENTICATED
        403 => 7,  // PERMISSION_DENIED
        404 => 12, // UNIMPLEMENTED
        // The proxy's 500s are invalid backends (its other 500s, rewrites it cannot represent,
        // are config errors a client can do as little about).
        429 | 500 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                            // UNKNOWN
    }
}

/// Rewrites an error the proxy wrote itself as a trailers-only gRPC response; any other
/// response is returned as it is.
pub fn translate<B: From<ProxyBody>>(response: Response<B>) -> Response<B> {
    let Some(local) = response.extensions().get::<Local>().copied() else { return response };
    if response.status().as_u16() < 400 {
        return response;
    }
    let code = grpc_code(response.status());
    let mut translated = Response::new(B::from(empty_body()));
    let headers = translated.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    // The proxy's own messages are short ASCII without `%`, so they need no percent-encoding.
    if let Ok(message) = HeaderValue::from_str(local.0) {
        headers.insert("grpc-message", message);
    }
    translated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::local;

    #[test]
    fn proxy_errors_become_grpc_statuses() {
        let r = translate(local(StatusCode::NOT_FOUND, "no route"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "no route");
        assert_eq!(translate(local(StatusCode::SERVICE_UNAVAILABLE, "x")).headers()["grpc-status"], "14");
        assert_eq!(translate(local(StatusCode::INTERNAL_SERVER_ERROR, "x")).headers()["grpc-status"], "14");
        assert_eq!(translate(local(StatusCode::IM_A_TEAPOT, "x")).headers()["grpc-status"], "2");
    }

    #[test]
    fn only_the_proxys_own_errors_are_translated() {
        let mut backend = Response::new(empty_body());
        *backend.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(translate(backend).status(), StatusCode::NOT_FOUND);
        assert_eq!(translate(local(StatusCode::NO_CONTENT, "")).status(), StatusCode::NO_CONTENT);
    }

    #[test]
    fn grpc_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert!(is_grpc(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc-web"));
        assert!(!is_grpc(&h));
    }
}
