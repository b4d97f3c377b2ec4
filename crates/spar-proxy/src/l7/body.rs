//! Bodies: the engine's boxed body type, a request body kept for replay when small, and
//! response wrappers that hold a circuit-breaker slot or report the size when done.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Bodies up to this size are buffered so that retries and mirrors can replay them.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

pub fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// The request body: kept in memory when small (replayable), streamed otherwise.
pub enum ReqBody {
    Buffered(Bytes),
    Stream(Option<Incoming>),
}

impl ReqBody {
    /// Read the body of a request whose head is `headers`: buffered when it is known to be
    /// small (no body, or a Content-Length within the limit) and no upgrade follows.
    pub async fn read(
        incoming: Incoming,
        headers: &http::HeaderMap,
        upgrade: bool,
    ) -> Result<ReqBody, hyper::Error> {
        let small = incoming.is_end_stream()
            || headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= REPLAY_LIMIT);
        if small && !upgrade {
            Ok(ReqBody::Buffered(incoming.collect().await?.to_bytes()))
        } else {
            Ok(ReqBody::Stream(Some(incoming)))
        }
    }

    /// A body to send: a copy when buffered, the stream itself once.
    pub fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Buffered(b) => Some(full_body(b.clone())),
            ReqBody::Stream(s) => s.take().map(|b| b.map_err(BoxError::from).boxed()),
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }

    /// Bytes held (0 for a stream, whose size is not known yet).
    pub fn buffered_len(&self) -> u64 {
        match self {
            ReqBody::Buffered(b) => b.len() as u64,
            ReqBody::Stream(_) => 0,
        }
    }
}

/// Wrap a response so `done(duration_ms, body_bytes)` runs when its body is finished.
pub fn counted(
    resp: Response<Body>,
    started: Instant,
    done: impl FnOnce(f64, u64) + Send + Sync + 'static,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let done = Box::new(move |sent: u64| done(started.elapsed().as_secs_f64() * 1000.0, sent));
    Response::from_parts(
        parts,
        Counted {
            inner: body,
            bytes: 0,
            done: Some(done),
        }
        .boxed(),
    )
}

/// A response body that reports its size when it is finished (or dropped).
struct Counted {
    inner: Body,
    bytes: u64,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes += d.len() as u64;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.done.take() {
            f(self.bytes);
        }
    }
}

/// A body that holds something (a circuit-breaker slot) while it streams.
pub struct Holding<T: Send + Sync + 'static> {
    pub inner: Body,
    pub _held: T,
}

impl<T: Send + Sync + Unpin + 'static> hyper::body::Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
