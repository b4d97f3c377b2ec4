//! The client side of `bench/control-scale/run`: K delta-xDS clients against a running
//! `spar control`, as node proxies of different nodes and as sidecars of different pods, then
//! one-pod changes (through a config file and through the admin API), timing each from the
//! change to the last client's ACK of it. Prints one JSON object.
//!
//! The clients speak the protocol as Spar's proxies do (wildcard subscriptions to the same
//! types, ACK per response, nodes: addresses and authorizations; sidecars: all five types) but
//! keep only counts, not decoded resources: a thousand full copies of a 100,000-pod mesh in one
//! process would measure the benchmark, not the control plane.
//!
//! usage: xds_load --grpc HOST:PORT --admin HOST:PORT --admin-token FILE --root PEM --config DIR
//!        --nodes N1,N2.. --sidecars NS/POD,.. [--changes 20] [--probe-ns ns-0 --probe-node node-0]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use spar_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use spar_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use spar_xds::workload::{Address, address};
use spar_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, POLICY_TYPE, TELEMETRY_TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    grpc: SocketAddr,
    admin: SocketAddr,
    /// The control plane's admin token (its `<state>/admin-token`).
    admin_token: String,
    root: String,
    config: String,
    nodes: Vec<String>,
    sidecars: Vec<(String, String)>,
    changes: usize,
    probe_ns: String,
    probe_node: String,
}

fn args() -> Result<Args, Error> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        m.insert(k.trim_start_matches("--").to_string(), v);
    }
    let get = |k: &str| m.get(k).cloned().ok_or(format!("--{k} is required"));
    let list = |k: &str| -> Vec<String> {
        m.get(k)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Args {
        grpc: get("grpc")?.parse()?,
        admin: get("admin")?.parse()?,
        admin_token: std::fs::read_to_string(get("admin-token")?)?
            .trim()
            .to_string(),
        root: std::fs::read_to_string(get("root")?)?,
        config: get("config")?,
        nodes: list("nodes"),
        sidecars: list("sidecars")
            .into_iter()
            .filter_map(|s| s.split_once('/').map(|(a, b)| (a.into(), b.into())))
            .collect(),
        changes: m.get("changes").and_then(|v| v.parse().ok()).unwrap_or(20),
        probe_ns: m.get("probe-ns").cloned().unwrap_or_else(|| "ns-0".into()),
        probe_node: m
            .get("probe-node")
            .cloned()
            .unwrap_or_else(|| "node-0".into()),
    })
}

async fn http(a: &Args, method: &str, path: &str, body: &str) -> Result<(u16, String), Error> {
    let mut s = tokio::net::TcpStream::connect(a.admin).await?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        a.admin_token,
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// What the clients report to the driver: (client, when the named probe version arrived).
type Seen = mpsc::UnboundedSender<(usize, String, Instant)>;

/// One client: subscribe, ACK everything, report when the initial state is complete and when
/// a probe resource version (the `version` label in the workload) arrives.
async fn client(
    i: usize,
    a: Arc<Args>,
    subject: serde_json::Value,
    types: &'static [&'static str],
    ready: mpsc::UnboundedSender<(usize, Instant)>,
    seen: Seen,
    probe: String,
) -> Result<(), Error> {
    let (_, body) = http(&a, "POST", "/token", &subject.to_string()).await?;
    let token: serde_json::Value = serde_json::from_str(&body)?;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token["token"].as_str().unwrap_or_default()).parse()?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&a.root))
        .domain_name("localhost");
    let ch = Endpoint::from_shared(format!("https://localhost:{}", a.grpc.port()))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut c =
        AggregatedDiscoveryServiceClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        })
        .max_decoding_message_size(1 << 30);
    let (tx, rx) = mpsc::channel(16);
    for t in types {
        tx.send(DeltaDiscoveryRequest {
            type_url: t.to_string(),
            ..Default::default()
        })
        .await?;
    }
    let mut stream = c
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut first: std::collections::BTreeSet<String> = Default::default();
    while let Some(resp) = stream.message().await? {
        let DeltaDiscoveryResponse {
            type_url,
            nonce,
            resources,
            system_version_info,
            ..
        } = resp;
        for r in resources.iter().filter(|r| r.name == probe) {
            // The round is the workload's canonical revision (its `version` label).
            let rev = r
                .resource
                .as_ref()
                .and_then(|b| Address::decode(b.value.as_slice()).ok())
                .and_then(|a| match a.r#type {
                    Some(address::Type::Workload(w)) => Some(w.canonical_revision),
                    _ => None,
                })
                .unwrap_or_default();
            let _ = seen.send((i, rev, Instant::now()));
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce,
            ..Default::default()
        })
        .await?;
        // A split initial state is whole at its last part.
        let complete = !system_version_info.ends_with(spar_xds::MORE_FOLLOWS);
        if complete && first.insert(type_url) && first.len() == types.len() {
            let _ = ready.send((i, Instant::now()));
        }
    }
    Ok(())
}

fn probe_yaml(a: &Args, round: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bench-probe, namespace: {}, labels: {{app: probe, version: r{round}}}}}\n\
         spec: {{serviceAccountName: probe, nodeName: {}, containers: [{{name: app, command: [x]}}]}}\nstatus: {{podIP: 10.255.255.254}}\n",
        a.probe_ns, a.probe_node
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    spar_identity::install_crypto_provider();
    let a = Arc::new(args()?);
    let probe = format!("Kubernetes//Pod/{}/bench-probe", a.probe_ns);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    const NODE: &[&str] = &[ADDRESS_TYPE, AUTHORIZATION_TYPE];
    const SIDECAR: &[&str] = &[
        ADDRESS_TYPE,
        AUTHORIZATION_TYPE,
        L7_TYPE,
        TELEMETRY_TYPE,
        POLICY_TYPE,
    ];
    let mut subjects: Vec<(serde_json::Value, &'static [&'static str])> = a
        .nodes
        .iter()
        .map(|n| (serde_json::json!({"kind": "node", "name": n}), NODE))
        .collect();
    subjects.extend(a.sidecars.iter().map(|(ns, p)| {
        (serde_json::json!({"kind": "pod", "namespace": ns, "name": p, "service_account": "default"}), SIDECAR)
    }));
    let k = subjects.len();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    for (i, (subject, types)) in subjects.into_iter().enumerate() {
        let (a, r, s, p, errors) = (
            a.clone(),
            ready_tx.clone(),
            seen_tx.clone(),
            probe.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = client(i, a, subject, types, r, s, p).await {
                errors.lock().await.push(e.to_string());
            }
        });
    }
    let mut last_ready = start;
    for _ in 0..k {
        match tokio::time::timeout(Duration::from_secs(600), ready_rx.recv()).await {
            Ok(Some((_, t))) => last_ready = t,
            _ => {
                return Err(format!(
                    "not every client got its initial state: {:?}",
                    errors.lock().await.first()
                )
                .into());
            }
        }
    }
    let initial = last_ready - start;
    // Changes: half through the config directory, half through the admin API.
    let mut by = BTreeMap::<&str, Vec<f64>>::new();
    let file = std::path::Path::new(&a.config).join("zz-bench-probe.yaml");
    for round in 0..a.changes {
        let via = if round % 2 == 0 { "file" } else { "admin" };
        while seen_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let yaml = probe_yaml(&a, round);
        if via == "file" {
            std::fs::write(&file, &yaml)?;
        } else {
            let (code, body) = http(&a, "POST", "/apply", &yaml).await?;
            if code != 200 {
                return Err(format!("apply: {code} {body}").into());
            }
        }
        // Wait until every client holds this round's version (a new version string each round).
        let mut got = std::collections::BTreeSet::new();
        let want = format!("r{round}");
        let mut last = t0;
        while got.len() < k {
            match tokio::time::timeout(Duration::from_secs(120), seen_rx.recv()).await {
                Ok(Some((i, v, t))) => {
                    if v == want && got.insert(i) {
                        last = t;
                    }
                }
                _ => {
                    return Err(format!(
                        "round {round} ({via}): {} of {k} clients got it",
                        got.len()
                    )
                    .into());
                }
            }
        }
        by.entry(via)
            .or_default()
            .push((last - t0).as_secs_f64() * 1000.0);
        // The admin-applied probe wins over the file one; remove it so files count again.
        if via == "admin" {
            let _ = http(&a, "POST", "/delete", &yaml).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = std::fs::remove_file(&file);
    let mut out = serde_json::json!({
        "clients": k,
        "initial_state_s": initial.as_secs_f64(),
    });
    for (via, mut v) in by {
        out[format!("change_{via}_p50_ms")] = pct(&mut v, 0.5).into();
        out[format!("change_{via}_p99_ms")] = pct(&mut v, 0.99).into();
        out[format!("change_{via}_n")] = v.len().into();
    }
    println!("{out}");
    Ok(())
}
