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
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
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
