//! The optional HTTP listener of `[metrics] listen`: `GET /metrics` (the
//! same text as `syncd metrics`) and `GET /health` (200 "ok", or 503 with
//! the hint: the judgement of `syncd status --check`, from
//! [`crate::ipc::health`]).
//!
//! Exists so that Prometheus and load balancers can watch syncd without a
//! socket client. It is read-only, unauthenticated, and binds loopback
//! unless the config explicitly allows otherwise
//! ([`crate::metrics::MetricsSection`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ipc::context::Ctx;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` (done before the daemon says it is ready, so a taken port
/// stops startup with a clear error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| answer(ctx.clone(), req));
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "metrics connection ended with error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

async fn answer(
    ctx: Arc<Ctx>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => match crate::ipc::cmd::metrics::text(&ctx).await {
            Ok(t) => reply(StatusCode::OK, OPENMETRICS, t),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/health" => health(&ctx).await,
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /health\n".into(),
        ),
    })
}

/// 200 "ok" when healthy, else 503 with the hint.
async fn health(ctx: &Ctx) -> Response<Full<Bytes>> {
    let s = match crate::ipc::cmd::status::status(ctx).await {
        Ok(s) => s,
        Err(e) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n"),
            )
        }
    };
    match crate::ipc::health::trouble(&s) {
        None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Some(_) => {
            let hint = s.hint.unwrap_or_else(|| s.state.clone());
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{}: {hint}\n", s.state),
            )
        }
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}
