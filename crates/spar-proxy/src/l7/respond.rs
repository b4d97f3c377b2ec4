//! Every failure becomes a response here, and nowhere else: the status and body an Envoy
//! sidecar would send for it (`no healthy upstream`, `upstream request timeout`,
//! `RBAC: access denied`, a gRPC status for a gRPC fault abort, ...).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::{Body, full_body};
use crate::Error;

/// A response the proxy makes itself.
pub fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The response for an error.
pub fn error(e: &Error) -> Response<Body> {
    match e {
        Error::FaultAbort { grpc: Some(g), .. } => {
            let mut r = local(StatusCode::OK, "");
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r.headers_mut().insert("grpc-status", HeaderValue::from(*g));
            r
        }
        Error::Denied(_) => local(e.status(), "RBAC: access denied"),
        Error::NoHealthyUpstream(_) => local(e.status(), "no healthy upstream"),
        _ => local(e.status(), format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(r: Response<Body>) -> (u16, String, Option<String>) {
        let status = r.status().as_u16();
        let grpc = r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let b = r.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&b).into_owned(), grpc)
    }

    #[tokio::test]
    async fn errors_become_envoy_like_responses() {
        let (s, b, _) = text(error(&Error::Timeout)).await;
        assert_eq!((s, b.as_str()), (504, "upstream request timeout\n"));
        let (s, b, _) = text(error(&Error::Denied("policy ns/x".into()))).await;
        assert_eq!((s, b.as_str()), (403, "RBAC: access denied"));
        let (s, b, _) = text(error(&Error::NoHealthyUpstream("ns/a".into()))).await;
        assert_eq!((s, b.as_str()), (503, "no healthy upstream"));
        let (s, _, g) = text(error(&Error::FaultAbort {
            status: 200,
            grpc: Some(14),
        }))
        .await;
        assert_eq!((s, g.as_deref()), (200, Some("14")));
        let (s, b, _) = text(error(&Error::Overflow)).await;
        assert_eq!(s, 503);
        assert!(b.contains("overflow"), "{b}");
    }
}
