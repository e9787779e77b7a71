//! The daemon's HTTP side: `GET /metrics` and `GET /health`, HTTP/1.1 on
//! hyper over the daemon's tokio runtime. Answers come from the shared
//! [`State`] only; nothing here touches the repository.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::health;
use super::metrics::{self, State};

/// The content type of the OpenMetrics text that `prometheus-client` writes.
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                crate::log_warn!("metrics: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &state);
                async move { Ok::<_, Infallible>(answer) }
            });
            // A client that never finishes its request headers is dropped.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The answer to one request.
pub fn answer(req: &Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    route(req.method(), req.uri().path(), state)
}

fn route(method: &Method, path: &str, state: &Mutex<State>) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    let now = chrono::Utc::now();
    let state = state.lock().unwrap_or_else(PoisonError::into_inner);
    match path {
        "/metrics" => response(StatusCode::OK, METRICS_TYPE, metrics::render(&state, now)),
        "/health" => match health::check(&state, now) {
            Ok(line) => response(StatusCode::OK, "text/plain", format!("{line}\n")),
            Err(reason) => response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{reason}\n")),
        },
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /health\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let state = Mutex::new(State::default());
        assert_eq!(route(&Method::GET, "/metrics", &state).status(), StatusCode::OK);
        assert_eq!(route(&Method::GET, "/health", &state).status(), StatusCode::OK, "no ages configured");
        assert_eq!(route(&Method::GET, "/", &state).status(), StatusCode::NOT_FOUND);
        assert_eq!(route(&Method::POST, "/metrics", &state).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
