//! `spar dashboard`: a web page for the running box (assets embedded, nothing fetched from
//! elsewhere): the mesh as a graph (workloads, and who calls whom with request rate, error
//! rate, p50/p99 latency and mTLS, from the proxies' Istio metrics), each proxy (the config
//! it holds, its certificates and their expiry, its connections), and config problems
//! (`spar analyze --box`). It scrapes every proxy of the box on its admin address every
//! `--interval`; `/api/graph`, `/api/proxies` and `/api/problems` serve the same as JSON.

mod graph;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, Json};
use axum::routing::get;
use clap::Args;
use serde::Serialize;
use spar_box::state::{BoxState, DEFAULT_STATE_DIR, Paths};

use graph::{Graph, Node, Sample};

const PAGE: &str = include_str!("dashboard/index.html");

#[derive(Args)]
pub struct DashboardArgs {
    /// Where to serve the page (Kiali's port by default).
    #[arg(long, default_value = "127.0.0.1:20001")]
    listen: SocketAddr,
    /// How often the proxies are scraped (rates are over this interval).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    spar_model::duration::parse_duration(s)
}

/// One proxy as the page shows it.
#[derive(Debug, Clone, Serialize, Default)]
struct ProxyView {
    name: String,
    kind: String,
    admin: String,
    reachable: bool,
    generation: u64,
    pods: usize,
    workloads: usize,
    services: usize,
    routes: usize,
    policies: usize,
    /// (identity, seconds left).
    certificates: Vec<(String, Option<i64>)>,
    connections_open: f64,
    connections_refused: f64,
}

#[derive(Default)]
struct Shared {
    graph: Graph,
    proxies: Vec<ProxyView>,
    problems: Vec<String>,
    scraped: Option<String>,
}

type Dash = Arc<Mutex<Shared>>;

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        BoxState::read(&Paths::new(&args.state_dir)).with_context(|| {
            format!(
                "no running box in {} (start one with `spar up -d`)",
                args.state_dir.display()
            )
        })?;
        let dash: Dash = Arc::default();
        // The first picture before serving, so the page never opens empty.
        let mut prev = refresh(&dash, &args.state_dir, None).await;
        let poller = {
            let (dash, dir, every) = (dash.clone(), args.state_dir.clone(), args.interval);
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    prev = refresh(&dash, &dir, Some(prev)).await;
                }
            }
        };
        tokio::spawn(poller);
        let app = Router::new()
            .route("/", get(page))
            .route("/api/graph", get(api_graph))
            .route("/api/proxies", get(api_proxies))
            .route("/api/problems", get(api_problems))
            .with_state(dash);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "spar dashboard: http://{} (Ctrl-C stops it)",
            listener.local_addr()?
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the dashboard's server stopped")
    })
}

/// The page, with the current data embedded so it draws at load (no round trip first).
async fn page(State(d): State<Dash>) -> Html<String> {
    let data = {
        let s = d.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "graph": s.graph, "proxies": s.proxies, "problems": s.problems, "scraped": s.scraped,
        })
    };
    // `</` cannot end the script element from inside the JSON.
    let json = data.to_string().replace("</", "<\\/");
    Html(PAGE.replace("/*INITIAL*/null", &json))
}

async fn api_graph(State(d): State<Dash>) -> Json<serde_json::Value> {
    let s = d.lock().unwrap_or_else(|e| e.into_inner());
    Json(serde_json::json!({ "graph": s.graph, "scraped": s.scraped }))
}

async fn api_proxies(State(d): State<Dash>) -> Json<Vec<ProxyView>> {
    Json(d.lock().unwrap_or_else(|e| e.into_inner()).proxies.clone())
}

async fn api_problems(State(d): State<Dash>) -> Json<Vec<String>> {
    Json(d.lock().unwrap_or_else(|e| e.into_inner()).problems.clone())
}

/// What one scrape of the box gave: its workloads, every proxy's samples and views.
struct Scrape {
    at: Instant,
    nodes: Vec<Node>,
    /// (Service node, workload node) for each workload a Service selects.
    serves: Vec<(String, String)>,
    samples: Vec<Sample>,
    proxies: Vec<ProxyView>,
    problems: Vec<String>,
}

async fn refresh(dash: &Dash, dir: &Path, prev: Option<Scrape>) -> Scrape {
    let d = dir.to_path_buf();
    let now = tokio::task::spawn_blocking(move || scrape(&d))
        .await
        .unwrap_or_else(|_| Scrape {
            at: Instant::now(),
            nodes: Vec::new(),
            serves: Vec::new(),
            samples: Vec::new(),
            proxies: Vec::new(),
            problems: Vec::new(),
        });
    let (before, secs): (&[Sample], f64) = match &prev {
        Some(p) => (&p.samples, now.at.duration_since(p.at).as_secs_f64()),
        None => (&[], 0.0),
    };
    let mut g = graph::build(now.nodes.clone(), before, &now.samples, secs);
    g.edges
        .extend(now.serves.iter().map(|(s, w)| graph::Edge::serves(s, w)));
    let mut s = dash.lock().unwrap_or_else(|e| e.into_inner());
    s.graph = g;
    s.proxies = now.proxies.clone();
    s.problems = now.problems.clone();
    s.scraped = Some(spar_proxy::l7::telemetry::now());
    now
}

fn scrape(dir: &Path) -> Scrape {
    let at = Instant::now();
    let paths = Paths::new(dir);
    let mut nodes = Vec::new();
    let mut serves = Vec::new();
    if let Ok(state) = BoxState::read(&paths) {
        for p in &state.plan.pods {
            let mode = if p.sidecar {
                "sidecar"
            } else if spar_box::waypoint::gateway_of(p).is_some() {
                "waypoint"
            } else if spar_box::ingress::is_ingress(p) {
                "gateway"
            } else if p
                .labels
                .get("istio.io/dataplane-mode")
                .is_some_and(|m| m == "none")
            {
                "none"
            } else {
                state.mode(&p.namespace)
            };
            let id = format!("{}/{}", p.namespace, p.deployment);
            if !nodes.iter().any(|n: &Node| n.id == id) {
                nodes.push(Node {
                    id,
                    namespace: p.namespace.clone(),
                    workload: p.deployment.clone(),
                    mode: mode.into(),
                });
            }
        }
        // Services, each linked to the workloads behind its endpoints.
        for s in &state.plan.services {
            let id = format!("service:{}/{}", s.namespace, s.name);
            let mut behind: Vec<String> = s
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .filter_map(|(ip, _)| state.plan.pods.iter().find(|p| p.ip == *ip))
                .map(|p| format!("{}/{}", p.namespace, p.deployment))
                .collect();
            behind.sort();
            behind.dedup();
            nodes.push(Node {
                id: id.clone(),
                namespace: s.namespace.clone(),
                workload: s.name.clone(),
                mode: "service".into(),
            });
            serves.extend(behind.into_iter().map(|w| (id.clone(), w)));
        }
    }
    let mut samples = Vec::new();
    let mut proxies = Vec::new();
    let files = std::fs::read_dir(paths.proxies())
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        let Some(admin) = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["admin"].as_str().map(str::to_string))
        else {
            continue;
        };
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (kind, name) = match stem.split_once('-') {
            Some((k @ ("sidecar" | "waypoint" | "gateway"), rest)) => {
                (k.to_string(), rest.to_string())
            }
            _ => ("node proxy".to_string(), stem.clone()),
        };
        let mut view = ProxyView {
            name,
            kind,
            admin: admin.clone(),
            ..Default::default()
        };
        if let Ok((200, text)) = spar_box::admin::get(&admin, "/stats/prometheus") {
            view.reachable = true;
            let s = graph::parse(&text);
            let sum = |name: &str| {
                s.iter()
                    .filter(|x| x.name == name)
                    .map(|x| x.value)
                    .sum::<f64>()
            };
            view.connections_open = sum("spar_connections_open");
            view.connections_refused = sum("spar_connections_refused_total");
            samples.extend(s);
        }
        if let Ok((200, body)) = spar_box::admin::get(&admin, "/config_dump")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
        {
            let n = |k: &str| {
                v[k].as_array()
                    .map(Vec::len)
                    .or(v[k].as_object().map(|o| o.len()))
                    .unwrap_or(0)
            };
            view.generation = v["generation"].as_u64().unwrap_or(0);
            view.pods = n("enrolled");
            view.workloads = n("workloads");
            view.services = n("services");
            view.routes = n("routes");
            view.policies = n("policies");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            view.certificates = v["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["identity"].as_str().unwrap_or_default().to_string(),
                        c["expires_unix"].as_i64().map(|e| e - now),
                    )
                })
                .collect();
        }
        proxies.push(view);
    }
    proxies.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let problems = super::analyze::from_box(dir)
        .map(|resources| {
            let r: Vec<_> = resources.into_iter().map(|r| (r, None)).collect();
            spar_model::analyze::analyze(&r)
                .iter()
                .map(|m| m.to_string())
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("cannot read the box's config: {e:#}")]);
    Scrape {
        at,
        nodes,
        serves,
        samples,
        proxies,
        problems,
    }
}
