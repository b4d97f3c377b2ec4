//! The mesh as a graph, from what the proxies report (Istio's metrics): workloads are
//! nodes, who-calls-whom are edges with request rate, error rate, latency percentiles and
//! mTLS, computed from two scrapes some seconds apart. Pure: text in, graph out.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse Prometheus (or OpenMetrics) text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (name, labels, rest) = match line.find('{') {
        None => {
            let (n, r) = line.split_once(' ')?;
            (n, BTreeMap::new(), r)
        }
        Some(open) => {
            let b = line.as_bytes();
            let mut i = open + 1;
            let mut labels = BTreeMap::new();
            loop {
                while b.get(i).is_some_and(|c| *c == b',' || *c == b' ') {
                    i += 1;
                }
                if *b.get(i)? == b'}' {
                    i += 1;
                    break;
                }
                let eq = i + line.get(i..)?.find('=')?;
                let key = line.get(i..eq)?.trim().to_string();
                i = eq + 1;
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                i += 1;
                let mut value = String::new();
                loop {
                    match *b.get(i)? {
                        b'\\' => {
                            let n = *b.get(i + 1)?;
                            value.push(if n == b'n' { '\n' } else { n as char });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => {
                            let ch = line.get(i..)?.chars().next()?;
                            value.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                labels.insert(key, value);
            }
            (&line[..open], labels, line.get(i..)?)
        }
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value: rest.split_whitespace().next()?.parse().ok()?,
    })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Node {
    /// `namespace/workload`.
    pub id: String,
    pub namespace: String,
    pub workload: String,
    /// sidecar, ambient, none, waypoint, gateway, service (a Service), unknown.
    pub mode: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Edge {
    pub source: String,
    pub target: String,
    /// http, grpc or tcp.
    pub protocol: String,
    /// Requests (HTTP) or connections (TCP) per second over the last interval.
    pub rate: f64,
    /// Since the proxies started.
    pub total: f64,
    /// Share of 5xx answers (HTTP), 0-1.
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mtls: bool,
}

impl Edge {
    /// A Service's link to a workload it selects (no traffic of its own: the traffic edges
    /// go from caller to workload).
    pub fn serves(service: &str, workload: &str) -> Edge {
        Edge {
            source: service.to_string(),
            target: workload.to_string(),
            protocol: "service".into(),
            rate: 0.0,
            total: 0.0,
            error_rate: 0.0,
            p50_ms: None,
            p99_ms: None,
            mtls: true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// Which report of an edge counts: the destination's, else the waypoint's, else the
/// source's (each request is counted once).
fn rank(reporter: &str) -> u8 {
    match reporter {
        "destination" => 0,
        "waypoint" => 1,
        _ => 2,
    }
}

fn key(l: &BTreeMap<String, String>, side: &str) -> String {
    let get = |k: &str| {
        l.get(&format!("{side}_{k}"))
            .map(String::as_str)
            .unwrap_or("unknown")
    };
    format!("{}/{}", get("workload_namespace"), get("workload"))
}

#[derive(Default)]
struct Acc {
    reporter: u8,
    protocol: String,
    total: f64,
    errors: f64,
    mtls: bool,
    buckets: BTreeMap<u64, f64>,
}

fn edges(samples: &[Sample], http: bool) -> BTreeMap<(String, String), Acc> {
    let metric = if http {
        "istio_requests_total"
    } else {
        "istio_tcp_connections_opened_total"
    };
    let mut out: BTreeMap<(String, String), Acc> = BTreeMap::new();
    // Keep only each edge's best reporter.
    let mut best: BTreeMap<(String, String), u8> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == metric) {
        let k = (key(&s.labels, "source"), key(&s.labels, "destination"));
        let r = rank(s.labels.get("reporter").map(String::as_str).unwrap_or(""));
        let b = best.entry(k).or_insert(r);
        *b = (*b).min(r);
    }
    let is_best = |s: &Sample| {
        let k = (key(&s.labels, "source"), key(&s.labels, "destination"));
        let r = rank(s.labels.get("reporter").map(String::as_str).unwrap_or(""));
        best.get(&k) == Some(&r)
    };
    for s in samples.iter().filter(|s| s.name == metric && is_best(s)) {
        let k = (key(&s.labels, "source"), key(&s.labels, "destination"));
        let a = out.entry(k).or_insert_with(|| Acc {
            mtls: true,
            ..Default::default()
        });
        a.reporter = rank(s.labels.get("reporter").map(String::as_str).unwrap_or(""));
        a.protocol = s
            .labels
            .get("request_protocol")
            .cloned()
            .unwrap_or_else(|| "tcp".into());
        a.total += s.value;
        if s.labels
            .get("response_code")
            .is_some_and(|c| c.starts_with('5'))
        {
            a.errors += s.value;
        }
        if s.value > 0.0
            && s.labels
                .get("connection_security_policy")
                .is_none_or(|p| p != "mutual_tls")
        {
            a.mtls = false;
        }
    }
    if http {
        for s in samples
            .iter()
            .filter(|s| s.name == "istio_request_duration_milliseconds_bucket" && is_best(s))
        {
            let k = (key(&s.labels, "source"), key(&s.labels, "destination"));
            let Some(a) = out.get_mut(&k) else { continue };
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => u64::MAX,
                Some(v) => match v.parse::<f64>() {
                    Ok(f) => (f * 1000.0) as u64,
                    Err(_) => continue,
                },
                None => continue,
            };
            *a.buckets.entry(le).or_default() += s.value;
        }
    }
    out
}

/// The `q` quantile (0-1) of cumulative buckets (upper bound in µs -> count): the bound of
/// the first bucket that holds it, as Prometheus' histogram_quantile does without
/// interpolation.
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = buckets
        .get(&u64::MAX)
        .copied()
        .or(buckets.values().last().copied())?;
    if total <= 0.0 {
        return None;
    }
    let want = total * q;
    let (le, _) = buckets.iter().find(|(_, c)| **c >= want)?;
    if *le == u64::MAX {
        // Above the last finite bound: report that bound.
        return buckets
            .keys()
            .rfind(|k| **k != u64::MAX)
            .map(|k| *k as f64 / 1000.0);
    }
    Some(*le as f64 / 1000.0)
}

/// The graph: `nodes` as the box knows them; edges from the scrape `now`, with rates from
/// the difference to `before`, taken `seconds` earlier.
pub fn build(nodes: Vec<Node>, before: &[Sample], now: &[Sample], seconds: f64) -> Graph {
    let mut graph = Graph {
        nodes,
        edges: Vec::new(),
    };
    let (http_now, http_before) = (edges(now, true), edges(before, true));
    let (tcp_now, tcp_before) = (edges(now, false), edges(before, false));
    for (http, cur, prev) in [
        (true, &http_now, &http_before),
        (false, &tcp_now, &tcp_before),
    ] {
        for ((src, dst), a) in cur {
            if !http && http_now.contains_key(&(src.clone(), dst.clone())) {
                continue; // the HTTP edge says more
            }
            let p = prev.get(&(src.clone(), dst.clone()));
            let delta = (a.total - p.map(|p| p.total).unwrap_or(0.0)).max(0.0);
            let errors = (a.errors - p.map(|p| p.errors).unwrap_or(0.0)).max(0.0);
            // Latency and errors over the interval when there was traffic, else overall.
            let window: BTreeMap<u64, f64> = a
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = p.and_then(|p| p.buckets.get(le)).copied().unwrap_or(0.0);
                    (*le, (c - before).max(0.0))
                })
                .collect();
            let use_window = delta > 0.0;
            let buckets = if use_window { &window } else { &a.buckets };
            let error_rate = if use_window {
                errors / delta
            } else if a.total > 0.0 {
                a.errors / a.total
            } else {
                0.0
            };
            graph.edges.push(Edge {
                source: src.clone(),
                target: dst.clone(),
                protocol: a.protocol.clone(),
                rate: if seconds > 0.0 { delta / seconds } else { 0.0 },
                total: a.total,
                error_rate,
                p50_ms: if http { quantile(buckets, 0.5) } else { None },
                p99_ms: if http { quantile(buckets, 0.99) } else { None },
                mtls: a.mtls,
            });
        }
    }
    // Peers the box does not list (outside callers, unknown) still appear.
    for e in &graph.edges.clone() {
        for id in [&e.source, &e.target] {
            if !graph.nodes.iter().any(|n| &n.id == id) {
                let (ns, w) = id.split_once('/').unwrap_or(("unknown", id));
                graph.nodes.push(Node {
                    id: id.clone(),
                    namespace: ns.into(),
                    workload: w.into(),
                    mode: "unknown".into(),
                });
            }
        }
    }
    graph
}

#[cfg(test)]
mod tests;
