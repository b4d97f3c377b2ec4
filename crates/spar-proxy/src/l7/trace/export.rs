//! Sending finished spans to the collector the mesh config names: OTLP over gRPC
//! (`TraceService/Export`) or HTTP (`/v1/traces`, protobuf), with the OpenTelemetry project's
//! own message types (`opentelemetry-proto`), or Zipkin's v2 JSON. Spans queue per collector
//! (bounded: when the collector is slow, spans are dropped and counted, never the request
//! held) and leave in batches, through the L7 engine's connection pool as any upstream
//! (HBONE when the collector is in the mesh).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Version};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, span, status};
use prost::Message;
use tokio::sync::mpsc;

use super::{Kind, Span, Value};
use crate::l4::plan::Upstream;
use crate::l7::Engine;
use crate::l7::body::full_body;
use crate::l7::plan::ClusterPlan;
use crate::l7::upstream::Dialer;
use crate::proxy::{Pod, Proxy};

/// Spans waiting per collector; beyond, new ones are dropped (and counted).
const QUEUE: usize = 4096;
/// The most spans one export carries, and how long a batch waits to fill.
const BATCH: usize = 512;
const LINGER: Duration = Duration::from_millis(200);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    protocol: String,
    service: String,
    port: u16,
    path: String,
}

/// One proxy's exporters, one per collector.
#[derive(Default)]
pub struct Tracer {
    queues: Mutex<HashMap<Key, mpsc::Sender<Span>>>,
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
}

/// What an exporter needs to reach its collector: the proxy's pool and the pod it dials
/// from.
#[derive(Clone)]
pub struct Reach {
    pub engine: Arc<Engine>,
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
}

impl Tracer {
    /// Queue `span` for the collector `cfg` names.
    pub fn report(&self, cfg: &spar_xds::l7::Tracing, reach: &Reach, span: Span) {
        let Ok(port) = u16::try_from(cfg.port) else {
            return;
        };
        let key = Key {
            protocol: cfg.protocol.clone(),
            service: cfg.service.clone(),
            port,
            path: cfg.path.clone(),
        };
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queues.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(key, reach.clone(), rx));
            tx
        });
        if tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(key: Key, reach: Reach, mut rx: mpsc::Receiver<Span>) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(EXPORT_TIMEOUT, export(&key, &reach, &batch)).await {
            Ok(Ok(())) => {
                reach.engine.tracer.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                reach.engine.tracer.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(collector = %format!("{}:{}", key.service, key.port), protocol = %key.protocol, error = %e, spans = n, "cannot export spans");
            }
            Err(_) => {
                reach.engine.tracer.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(collector = %format!("{}:{}", key.service, key.port), spans = n, "span export timed out");
            }
        }
    }
}

/// Where the collector is: a mesh service's endpoint (HBONE when it is in the mesh), or a
/// literal address.
fn upstream(key: &Key, reach: &Reach) -> Result<Upstream, String> {
    let snap = reach.proxy.snapshot.load_full();
    if let Some(service) = snap.service_by_host(&key.service) {
        let plan = ClusterPlan {
            service: service.clone(),
            port: key.port,
            subset: None,
        };
        let eps = plan.endpoints();
        if eps.is_empty() {
            return Err(format!("{} has no endpoint on {}", key.service, key.port));
        }
        let (addr, ep) = eps[rand::random_range(0..eps.len())];
        return Ok(Upstream::to(&ep.workload, addr));
    }
    let ip: std::net::IpAddr = key
        .service
        .parse()
        .map_err(|_| format!("no service {} in the mesh", key.service))?;
    let addr = SocketAddr::new(ip, key.port);
    Ok(match snap.by_ip.get(&ip) {
        Some(w) => Upstream::to(w, addr),
        None => Upstream::Direct {
            addr,
            workload: None,
        },
    })
}

async fn export(key: &Key, reach: &Reach, batch: &[Span]) -> Result<(), String> {
    let up = upstream(key, reach)?;
    let h2 = key.protocol == "otlp_grpc";
    let plan_service = reach
        .proxy
        .snapshot
        .load_full()
        .service_by_host(&key.service)
        .cloned();
    let (content_type, path, body) = match key.protocol.as_str() {
        "zipkin" => (
            "application/json",
            key.path.clone(),
            Bytes::from(zipkin(batch).to_string()),
        ),
        "otlp_http" => (
            "application/x-protobuf",
            key.path.clone(),
            Bytes::from(otlp(batch).encode_to_vec()),
        ),
        _ => {
            let msg = otlp(batch).encode_to_vec();
            let mut framed = BytesMut::with_capacity(msg.len() + 5);
            framed.put_u8(0);
            framed.put_u32(msg.len() as u32);
            framed.put_slice(&msg);
            (
                "application/grpc",
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export".to_string(),
                framed.freeze(),
            )
        }
    };
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("http://{}:{}{path}", key.service, key.port))
        .header(header::CONTENT_TYPE, content_type)
        .body(full_body(body))
        .map_err(|e| e.to_string())?;
    if h2 {
        req.headers_mut()
            .insert("te", HeaderValue::from_static("trailers"));
        *req.version_mut() = Version::HTTP_2;
    }
    let dialer = Dialer {
        proxy: &reach.proxy,
        pod: &reach.pod,
        src: SocketAddr::new(reach.pod.ip, 0),
        connect_timeout: EXPORT_TIMEOUT,
    };
    let resp = match plan_service {
        Some(service) => {
            let cluster = reach.engine.cluster(
                &ClusterPlan {
                    service,
                    port: key.port,
                    subset: None,
                },
                h2,
            );
            cluster.pool.send(&dialer, &up, req).await
        }
        None => {
            let cluster = reach.engine.direct_cluster(h2);
            cluster.pool.send(&dialer, &up, req).await
        }
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status();
    let collected = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("the collector answered {status}"));
    }
    if h2 {
        let grpc = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_string();
        if grpc != "0" {
            return Err(format!("the collector answered grpc-status {grpc}"));
        }
    }
    Ok(())
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn kv(k: &str, v: &Value) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(match v {
                Value::Str(s) => any_value::Value::StringValue(s.clone()),
                Value::Int(i) => any_value::Value::IntValue(*i),
            }),
        }),
        ..Default::default()
    }
}

/// A batch as one OTLP export: one resource per reporting service.
pub fn otlp(batch: &[Span]) -> ExportTraceServiceRequest {
    let mut by_service: Vec<(String, Vec<opentelemetry_proto::tonic::trace::v1::Span>)> =
        Vec::new();
    for s in batch {
        let start = nanos(s.start);
        let otel = opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: s.cx.trace_id.to_vec(),
            span_id: s.cx.span_id.to_vec(),
            trace_state: s.cx.tracestate.clone().unwrap_or_default(),
            parent_span_id: s.cx.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 1,
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Client => span::SpanKind::Client,
                Kind::Server => span::SpanKind::Server,
            } as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + s.duration.as_nanos() as u64,
            attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                message: String::new(),
                code: if s.error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
            }),
            ..Default::default()
        };
        match by_service.iter_mut().find(|(n, _)| *n == s.service) {
            Some((_, spans)) => spans.push(otel),
            None => by_service.push((s.service.clone(), vec![otel])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", &Value::Str(service))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(
                        opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                            name: "spar".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        },
                    ),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// A batch in Zipkin's v2 JSON.
pub fn zipkin(batch: &[Span]) -> serde_json::Value {
    serde_json::Value::Array(
        batch
            .iter()
            .map(|s| {
                let tags: serde_json::Map<String, serde_json::Value> = s
                    .attributes
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::Str(s) => s.clone(),
                            Value::Int(i) => i.to_string(),
                        };
                        (k.clone(), serde_json::Value::String(v))
                    })
                    .collect();
                let mut j = serde_json::json!({
                    "traceId": s.trace_hex(),
                    "id": s.span_hex(),
                    "name": s.name,
                    "kind": match s.kind { Kind::Client => "CLIENT", Kind::Server => "SERVER" },
                    "timestamp": nanos(s.start) / 1000,
                    "duration": s.duration.as_micros() as u64,
                    "localEndpoint": { "serviceName": s.service },
                    "tags": tags,
                });
                if let Some(p) = s.parent_hex() {
                    j["parentId"] = p.into();
                }
                j
            })
            .collect(),
    )
}
