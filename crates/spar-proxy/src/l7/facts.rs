//! What the L7 engine knows about a request before deciding anything: read once from the
//! request head and the connection, then handed to the pure planners.

use std::net::SocketAddr;

use http::{HeaderMap, Request, Version, header};

use crate::snapshot::ServiceKey;

pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// The `:authority`, or the `Host` header of an HTTP/1.1 request.
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The service port the client called.
    pub port: u16,
    /// The service the client called (by its VIP).
    pub service: &'a ServiceKey,
    pub peer: SocketAddr,
    /// The downstream speaks HTTP/2 (so must the upstream).
    pub h2: bool,
}

/// The authority of a request: its URI's, else its `Host` header.
pub fn authority<B>(req: &Request<B>) -> &str {
    authority_of(req.uri(), req.headers())
}

/// The authority of a request head (as `authority`), for callers holding its parts.
pub fn authority_of<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

impl<'a> RequestFacts<'a> {
    pub fn of<B>(
        req: &'a Request<B>,
        service: &'a ServiceKey,
        port: u16,
        peer: SocketAddr,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method: req.method().as_str(),
            scheme: "http",
            authority: authority(req),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            port,
            service,
            peer,
            h2: req.version() == Version::HTTP_2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_authority_wins_over_the_host_header() {
        // Routing and authorization both read this: an absolute URI (or `:authority`) that
        // disagrees with `Host` is judged and routed by the same name.
        let req = Request::builder()
            .uri("http://admin.example.com/x")
            .header(header::HOST, "public.example.com")
            .body(())
            .expect("request");
        assert_eq!(authority(&req), "admin.example.com");
        let (parts, ()) = req.into_parts();
        assert_eq!(
            authority_of(&parts.uri, &parts.headers),
            "admin.example.com"
        );
        let req = Request::builder()
            .uri("/x")
            .header(header::HOST, "public.example.com")
            .body(())
            .expect("request");
        assert_eq!(authority(&req), "public.example.com");
    }
}
