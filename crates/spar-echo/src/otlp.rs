//! `spar echo otlp`: a trace collector for tests and demos. It receives spans over OTLP
//! gRPC (`TraceService/Export`, default 4317), OTLP HTTP (`POST /v1/traces`, protobuf, default
//! 4318) and Zipkin v2 JSON (`POST /api/v2/spans`, on the HTTP port), keeps the latest ones in
//! memory, and answers `GET /api/spans[?trace_id=HEX]` with them as JSON, so a test can follow
//! one request's spans.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;

/// Spans kept; older ones go first.
const KEEP: usize = 100_000;
const BODY_LIMIT: usize = 16 << 20;

/// One received span, whatever protocol brought it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root.
    pub parent_span_id: String,
    pub name: String,
    /// CLIENT, SERVER, ...
    pub kind: String,
    pub service: String,
    pub start_unix_micros: u64,
    pub duration_micros: u64,
    pub attributes: BTreeMap<String, String>,
    /// otlp-grpc, otlp-http or zipkin.
    pub via: String,
}

/// What the collector received, shared by its listeners.
#[derive(Clone, Default)]
pub struct Store(Arc<Mutex<Vec<StoredSpan>>>);

impl Store {
    pub fn spans(&self) -> Vec<StoredSpan> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, spans: impl IntoIterator<Item = StoredSpan>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(spans);
        let excess = all.len().saturating_sub(KEEP);
        all.drain(..excess);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kind_name(k: i32) -> &'static str {
    match k {
        1 => "INTERNAL",
        2 => "SERVER",
        3 => "CLIENT",
        4 => "PRODUCER",
        5 => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

fn text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// An OTLP export as stored spans.
pub fn from_otlp(req: &ExportTraceServiceRequest, via: &str) -> Vec<StoredSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(StoredSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: kind_name(s.kind).into(),
                    service: service.clone(),
                    start_unix_micros: s.start_time_unix_nano / 1000,
                    duration_micros: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)
                        / 1000,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(text).unwrap_or_default(),
                            )
                        })
                        .collect(),
                    via: via.into(),
                });
            }
        }
    }
    out
}

/// Zipkin v2 JSON spans as stored spans (malformed entries are skipped).
pub fn from_zipkin(v: &serde_json::Value) -> Vec<StoredSpan> {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|z| z["traceId"].is_string() && z["id"].is_string())
        .map(|z| StoredSpan {
            trace_id: s(&z["traceId"]),
            span_id: s(&z["id"]),
            parent_span_id: s(&z["parentId"]),
            name: s(&z["name"]),
            kind: s(&z["kind"]),
            service: s(&z["localEndpoint"]["serviceName"]),
            start_unix_micros: z["timestamp"].as_u64().unwrap_or(0),
            duration_micros: z["duration"].as_u64().unwrap_or(0),
            attributes: z["tags"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), s(v))).collect())
                .unwrap_or_default(),
            via: "zipkin".into(),
        })
        .collect()
}

struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(from_otlp(req.get_ref(), "otlp-grpc"));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serve OTLP gRPC on a bound listener forever.
pub fn serve_grpc(listener: TcpListener, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(store)))
            .serve_with_incoming(incoming)
            .await
        {
            tracing::warn!(error = %e, "OTLP gRPC server stopped");
        }
    })
}

/// Serve OTLP HTTP, Zipkin and the query API on a bound listener forever.
pub fn serve_http(listener: TcpListener, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(http(req, &store).await) }
                });
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Answer clients that half-close after their request (`spar echo tcp`).
                b.http1().half_close(true);
                let _ = b.serve_connection(TokioIo::new(s), svc).await;
            });
        }
    })
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

async fn http(req: Request<hyper::body::Incoming>, store: &Store) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/api/spans") => {
            let want = parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("trace_id="))
                    .map(str::to_string)
            });
            let spans: Vec<StoredSpan> = store
                .spans()
                .into_iter()
                .filter(|s| want.as_ref().is_none_or(|t| &s.trace_id == t))
                .collect();
            answer(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&spans).unwrap_or_default(),
            )
        }
        (&Method::POST, "/v1/traces" | "/api/v2/spans") => {
            let bytes = match Limited::new(body, BODY_LIMIT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return answer(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
            };
            if parts.uri.path() == "/v1/traces" {
                match ExportTraceServiceRequest::decode(bytes) {
                    Ok(r) => {
                        store.add(from_otlp(&r, "otlp-http"));
                        answer(
                            StatusCode::OK,
                            "application/x-protobuf",
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(e) => answer(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
                }
            } else {
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(v) => {
                        store.add(from_zipkin(&v));
                        answer(StatusCode::ACCEPTED, "text/plain", "")
                    }
                    Err(e) => answer(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
                }
            }
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            "text/plain",
            "POST /v1/traces (OTLP), POST /api/v2/spans (Zipkin), GET /api/spans?trace_id=\n",
        ),
    }
}
