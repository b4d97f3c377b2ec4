//! `spar echo ext-authz`: an external authorization server for CUSTOM policies, answering
//! as Istio's sample does: a request carrying `x-ext-authz: allow` is allowed (and marked
//! `x-ext-authz-check-result: allowed` for the upstream), anything else is denied with 403.
//! HTTP (Envoy's ext_authz HTTP service) and gRPC (`envoy.service.auth.v3.Authorization`).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use spar_xds::ext_authz as xa;
use tokio::net::TcpListener;

use crate::Error;

const HEADER: &str = "x-ext-authz";
const ALLOW: &str = "allow";
const RESULT: &str = "x-ext-authz-check-result";

fn denied_text(got: Option<&str>) -> String {
    format!(
        "denied by ext_authz for not found header `{HEADER}: {ALLOW}` in the request (got {:?})",
        got.unwrap_or("")
    )
}

async fn check_http(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let got = req.headers().get(HEADER).and_then(|v| v.to_str().ok());
    let allowed = got == Some(ALLOW);
    let mut r = Response::new(Full::new(Bytes::from(if allowed {
        String::new()
    } else {
        denied_text(got)
    })));
    *r.status_mut() = if allowed {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    r.headers_mut().insert(
        RESULT,
        http::HeaderValue::from_static(if allowed { "allowed" } else { "denied" }),
    );
    Ok(r)
}

/// Serve the HTTP check on a bound listener forever.
pub fn serve_http(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(check_http))
                    .await;
            });
        }
    })
}

struct Checker;

fn header(k: &str, v: &str) -> xa::HeaderValueOption {
    xa::HeaderValueOption {
        header: Some(xa::HeaderValue {
            key: k.into(),
            value: v.into(),
            raw_value: Vec::new(),
        }),
        append_action: 0,
    }
}

#[tonic::async_trait]
impl xa::authorization_server::Authorization for Checker {
    async fn check(
        &self,
        req: tonic::Request<xa::CheckRequest>,
    ) -> Result<tonic::Response<xa::CheckResponse>, tonic::Status> {
        let headers = req
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .map(|h| h.headers)
            .unwrap_or_default();
        let got = headers.get(HEADER).map(String::as_str);
        let resp = if got == Some(ALLOW) {
            xa::CheckResponse {
                status: Some(xa::RpcStatus {
                    code: 0,
                    message: String::new(),
                }),
                http_response: Some(xa::check_response::HttpResponse::OkResponse(
                    xa::OkHttpResponse {
                        headers: vec![header(RESULT, "allowed")],
                        ..Default::default()
                    },
                )),
            }
        } else {
            xa::CheckResponse {
                status: Some(xa::RpcStatus {
                    code: 7,
                    message: "denied".into(),
                }),
                http_response: Some(xa::check_response::HttpResponse::DeniedResponse(
                    xa::DeniedHttpResponse {
                        status: Some(xa::HttpStatus { code: 403 }),
                        headers: vec![header(RESULT, "denied")],
                        body: denied_text(got),
                    },
                )),
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

/// Serve the gRPC check on a bound listener forever.
pub fn serve_grpc(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(xa::authorization_server::AuthorizationServer::new(Checker))
            .serve_with_incoming(incoming)
            .await
        {
            tracing::warn!(error = %e, "ext_authz gRPC server stopped");
        }
    })
}

/// Bind both on all addresses (`port` 0 picks one); returns (HTTP, gRPC) addresses.
pub async fn bind(
    http_port: u16,
    grpc_port: u16,
) -> Result<(SocketAddr, SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let h = TcpListener::bind(("0.0.0.0", http_port))
        .await
        .map_err(|source| Error::Listen {
            port: http_port,
            source,
        })?;
    let g = TcpListener::bind(("0.0.0.0", grpc_port))
        .await
        .map_err(|source| Error::Listen {
            port: grpc_port,
            source,
        })?;
    let (ha, ga) = (h.local_addr()?, g.local_addr()?);
    let _grpc = serve_grpc(g);
    Ok((ha, ga, serve_http(h)))
}
