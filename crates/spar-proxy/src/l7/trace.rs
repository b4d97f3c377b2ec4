//! Distributed tracing, as Istio's proxies do it: each sidecar (and waypoint) makes one span
//! per request, a child of the caller's span, and passes the context on. Pure here: reading a
//! caller's context (W3C `traceparent`/`tracestate`, B3 single `b3` and multi `x-b3-*`), the
//! sampling decision, writing the context for the next hop, and the span itself. Exporting
//! is `trace/export.rs`.
//!
//! Propagation keeps what the caller used and adds W3C: a request that came with B3 leaves
//! with B3 (single or multi, as it came) and `traceparent`; one that came with nothing
//! leaves with `traceparent` and B3 multi (what Istio's Zipkin and OpenTelemetry tracers
//! each write). An incoming sampling decision is kept; without one, this proxy decides at
//! the configured percentage.

pub mod export;

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::HeaderValue;
use rand::Rng;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// Which B3 form the caller used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum B3 {
    #[default]
    None,
    Single,
    Multi,
}

/// What the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Incoming {
    /// Absent when the caller sent only a sampling decision (`b3: 1`, `x-b3-sampled`).
    pub trace: Option<(TraceId, SpanId)>,
    pub sampled: Option<bool>,
    pub tracestate: Option<String>,
    pub b3: B3,
}

/// This hop's span context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span (none: this span starts the trace).
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub b3: B3,
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 * b.len());
    push_hex(&mut s, b);
    s
}

/// Lower-case hex of `b` appended to `out` (every request writes a few: no formatting).
fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.push(DIGITS[usize::from(x >> 4)] as char);
        out.push(DIGITS[usize::from(x & 15)] as char);
    }
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    (out != [0u8; N]).then_some(out)
}

/// A B3 trace id: 128 bits, or 64 bits (left-padded, as B3 allows).
fn b3_trace_id(s: &str) -> Option<TraceId> {
    match s.len() {
        32 => unhex::<16>(s),
        16 => {
            let low = unhex::<8>(s)?;
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&low);
            Some(t)
        }
        _ => None,
    }
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The caller's context: W3C first (what Istio's OpenTelemetry setup writes), then B3
/// single, then B3 multi. A malformed header is ignored, as if absent.
pub fn extract(h: &HeaderMap) -> Option<Incoming> {
    let tracestate = get(h, "tracestate")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let b3 = if h.contains_key("b3") {
        B3::Single
    } else if h.contains_key("x-b3-traceid") || h.contains_key("x-b3-sampled") {
        B3::Multi
    } else {
        B3::None
    };
    if let Some(tp) = get(h, "traceparent") {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [version, trace, span, flags] = parts[..]
            && version.len() == 2
            && version != "ff"
            && let (Some(t), Some(s), Some(f)) = (
                unhex::<16>(trace),
                unhex::<8>(span),
                u8::from_str_radix(flags, 16)
                    .ok()
                    .filter(|_| flags.len() == 2),
            )
        {
            return Some(Incoming {
                trace: Some((t, s)),
                sampled: Some(f & 1 == 1),
                tracestate,
                b3,
            });
        }
    }
    if let Some(single) = get(h, "b3") {
        let parts: Vec<&str> = single.split('-').collect();
        let incoming = match parts[..] {
            [s] => b3_sampled(s).map(|s| Incoming {
                sampled: Some(s),
                ..Default::default()
            }),
            [t, s, ..] => {
                let sampled = parts.get(2).and_then(|x| b3_sampled(x));
                Some(Incoming {
                    trace: Some((b3_trace_id(t)?, unhex::<8>(s)?)),
                    sampled,
                    ..Default::default()
                })
            }
            _ => None,
        };
        if let Some(mut i) = incoming {
            i.b3 = B3::Single;
            i.tracestate = tracestate;
            return Some(i);
        }
    }
    let sampled = if get(h, "x-b3-flags") == Some("1") {
        Some(true)
    } else {
        get(h, "x-b3-sampled").and_then(b3_sampled)
    };
    let trace = match (get(h, "x-b3-traceid"), get(h, "x-b3-spanid")) {
        (Some(t), Some(s)) => b3_trace_id(t).zip(unhex::<8>(s)),
        _ => None,
    };
    (trace.is_some() || sampled.is_some()).then_some(Incoming {
        trace,
        sampled,
        tracestate,
        b3: B3::Multi,
    })
}

/// This hop's span: a child of the caller's, in its trace, keeping its sampling decision;
/// a new trace sampled at `percent` otherwise.
pub fn begin(incoming: Option<Incoming>, percent: f64, rng: &mut impl Rng) -> Context {
    let incoming = incoming.unwrap_or_default();
    let sampled = incoming
        .sampled
        .unwrap_or_else(|| rng.random::<f64>() * 100.0 < percent);
    let (trace_id, parent) = match incoming.trace {
        Some((t, s)) => (t, Some(s)),
        None => (nonzero(rng), None),
    };
    Context {
        trace_id,
        span_id: nonzero(rng),
        parent,
        sampled,
        tracestate: incoming.tracestate,
        b3: incoming.b3,
    }
}

fn nonzero<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    loop {
        let mut b = [0u8; N];
        rng.fill_bytes(&mut b);
        if b != [0u8; N] {
            return b;
        }
    }
}

/// Write `cx` for the next hop: its span is the next hop's parent. W3C always; B3 in the
/// form the caller used, or multi when the provider is Zipkin (Envoy's Zipkin tracer's).
pub fn inject(h: &mut HeaderMap, cx: &Context, zipkin: bool) {
    let mut set = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    let mut tp = String::with_capacity(55);
    tp.push_str("00-");
    push_hex(&mut tp, &cx.trace_id);
    tp.push('-');
    push_hex(&mut tp, &cx.span_id);
    tp.push_str(if cx.sampled { "-01" } else { "-00" });
    set("traceparent", &tp);
    if let Some(ts) = &cx.tracestate {
        set("tracestate", ts);
    }
    let sampled = if cx.sampled { "1" } else { "0" };
    // `tp` is `00-TRACE-SPAN-FF`: the ids are slices of it.
    let (trace, span) = (&tp[3..35], &tp[36..52]);
    match cx.b3 {
        B3::Single => {
            let mut v = format!("{trace}-{span}-{sampled}");
            if let Some(p) = cx.parent {
                v.push('-');
                push_hex(&mut v, &p);
            }
            set("b3", &v);
        }
        B3::Multi => b3_multi(h, cx, trace, span, sampled),
        B3::None if zipkin => b3_multi(h, cx, trace, span, sampled),
        B3::None => {}
    }
}

fn b3_multi(h: &mut HeaderMap, cx: &Context, trace: &str, span: &str, sampled: &'static str) {
    for (name, v) in [("x-b3-traceid", trace), ("x-b3-spanid", span)] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    }
    h.insert("x-b3-sampled", HeaderValue::from_static(sampled));
    match cx.parent {
        Some(p) => {
            if let Ok(v) = HeaderValue::from_str(&hex(&p)) {
                h.insert("x-b3-parentspanid", v);
            }
        }
        None => {
            h.remove("x-b3-parentspanid");
        }
    }
    h.remove("x-b3-flags");
}

/// Client (the sidecar of the caller) or server (of the callee, and a waypoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// One finished span, ready to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub cx: Context,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    pub attributes: Vec<(String, Value)>,
    pub error: bool,
    /// The reporting workload, as the resource's `service.name` (`app.namespace`).
    pub service: String,
}

impl Span {
    pub fn trace_hex(&self) -> String {
        hex(&self.cx.trace_id)
    }
    pub fn span_hex(&self) -> String {
        hex(&self.cx.span_id)
    }
    pub fn parent_hex(&self) -> Option<String> {
        self.cx.parent.map(|p| hex(&p))
    }
}

/// A request's span while the request runs: its context (propagated whether sampled or
/// not) and, only when sampled, what the span will say (an unsampled request allocates
/// nothing for its span).
pub struct Pending {
    pub cx: Context,
    /// Propagate B3 multi when the caller sent no context (the provider is Zipkin).
    pub zipkin: bool,
    sampled: Option<Box<Sampled>>,
}

struct Sampled {
    cfg: spar_xds::l7::Tracing,
    kind: Kind,
    start: SystemTime,
    name: String,
    attributes: Vec<(String, Value)>,
}

impl Pending {
    /// The span of a request with head `h` to `host:port`, when `cfg` traces this side
    /// (`kind`); the caller's context, if any, is its parent.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: Option<&spar_xds::l7::Tracing>,
        kind: Kind,
        h: &HeaderMap,
        method: &http::Method,
        (host, port): (&str, u16),
        path: &str,
        request_id: Option<&str>,
    ) -> Option<Pending> {
        let cfg = cfg.filter(|c| match kind {
            Kind::Client => c.client,
            Kind::Server => c.server,
        })?;
        let cx = begin(extract(h), cfg.sampling_percent, &mut rand::rng());
        let zipkin = cfg.protocol == "zipkin";
        if !cx.sampled {
            return Some(Pending {
                cx,
                zipkin,
                sampled: None,
            });
        }
        let s = |v: &str| Value::Str(v.to_string());
        let mut attributes = vec![
            ("http.method".to_string(), s(method.as_str())),
            ("http.url".into(), s(&format!("http://{host}:{port}{path}"))),
            ("component".into(), s("proxy")),
        ];
        if let Some(id) = request_id.or(get(h, "x-request-id")) {
            attributes.push(("guid:x-request-id".into(), s(id)));
        }
        if let Some(ua) = get(h, "user-agent") {
            attributes.push(("user_agent".into(), s(ua)));
        }
        attributes.extend(custom_tags(&cfg.custom_tags, h));
        Some(Pending {
            cx,
            zipkin,
            sampled: Some(Box::new(Sampled {
                cfg: cfg.clone(),
                kind,
                start: SystemTime::now(),
                name: format!("{host}:{port}/*"),
                attributes,
            })),
        })
    }

    /// Write this span's context for the next hop.
    pub fn inject(&self, h: &mut HeaderMap) {
        inject(h, &self.cx, self.zipkin);
    }

    pub fn is_sampled(&self) -> bool {
        self.sampled.is_some()
    }

    /// The finished span, when sampled: `more` adds what the response told (status,
    /// cluster, flags, sizes); `service` names the reporting workload.
    pub fn finish(
        self,
        status: u16,
        flags: &str,
        more: Vec<(String, Value)>,
        service: String,
    ) -> Option<(spar_xds::l7::Tracing, Span)> {
        let s = self.sampled?;
        let mut attributes = s.attributes;
        attributes.push(("http.status_code".into(), Value::Str(status.to_string())));
        attributes.push(("response_flags".into(), Value::Str(flags.to_string())));
        attributes.extend(more);
        Some((
            s.cfg,
            Span {
                cx: self.cx,
                name: s.name,
                kind: s.kind,
                duration: s.start.elapsed().unwrap_or_default(),
                start: s.start,
                attributes,
                error: status >= 500 || flags != "-",
                service,
            },
        ))
    }
}

/// The value of each custom tag for a request with headers `h`.
pub fn custom_tags(tags: &[spar_xds::l7::CustomTag], h: &HeaderMap) -> Vec<(String, Value)> {
    tags.iter()
        .map(|t| {
            let v = if !t.literal.is_empty() {
                t.literal.clone()
            } else if !t.header.is_empty() {
                get(h, &t.header.to_ascii_lowercase())
                    .map(str::to_string)
                    .unwrap_or_else(|| t.default_value.clone())
            } else if !t.environment.is_empty() {
                std::env::var(&t.environment).unwrap_or_else(|_| t.default_value.clone())
            } else {
                t.default_value.clone()
            };
            (t.tag.clone(), Value::Str(v))
        })
        .collect()
}

#[cfg(test)]
mod tests;
