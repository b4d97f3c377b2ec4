//! `spar proxy node` runs the ambient node proxy for one node; `spar proxy sidecar` runs the
//! L4+L7 proxy of one injected pod; `spar proxy waypoint` runs an ambient waypoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use spar_proxy::admin::{Admin, AppMetrics, Surface};
use spar_proxy::control::ControlPlane;
use spar_proxy::l7::Engine;
use spar_proxy::l7::telemetry::LogFormat;
use spar_proxy::limits::Limits;
use spar_proxy::net::{Capture, Network};
use spar_proxy::proxy::{Proxy, ProxyOptions};
use spar_proxy::role::{GatewayListener, GatewayRole, NodeRole, Role, SidecarRole, WaypointRole};

#[derive(Subcommand)]
pub enum ProxyCommand {
    /// The per-node L4 proxy (ambient mode): HBONE mTLS, in-pod capture, L4 policy, TCP metrics.
    Node(NodeArgs),
    /// The per-pod L4+L7 proxy (sidecar mode): captures one pod's traffic, HBONE mTLS with
    /// the pod's own certificate, VirtualService/DestinationRule routing, request metrics.
    Sidecar(SidecarArgs),
    /// An ambient waypoint (a Gateway of class istio-waypoint): HBONE in on 15008 from the
    /// clients' node proxies, L7 routing and policy, HBONE out with its own identity.
    Waypoint(WaypointArgs),
    /// An ingress gateway (a Gateway of class istio, or the pods an Istio Gateway selects):
    /// HTTP and HTTPS from outside the mesh, routed by the gateway's routes into the mesh.
    Gateway(GatewayArgs),
}

#[derive(Args)]
pub struct GatewayArgs {
    /// The gateway pod's namespace.
    #[arg(long)]
    namespace: String,
    /// The gateway pod's name.
    #[arg(long)]
    pod: String,
    /// A listener: `PORT` (HTTP), `PORT:CERT.pem:KEY.pem[:HOST,...]` (HTTPS, TLS terminated
    /// with that credential; repeat it for a port with one credential per set of host names,
    /// chosen by the client's SNI) or `PORT:passthrough` (TLS routed by SNI to a backend that
    /// terminates it). Repeatable.
    #[arg(long = "listen", required = true)]
    listeners: Vec<String>,
    /// Access log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    access_log_format: String,
    #[arg(long, env = "SPAR_GATEWAY_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    #[command(flatten)]
    common: CommonArgs,
}

/// `--listen` values -> listeners, one per port: `PORT` (HTTP), `PORT:CERT:KEY[:HOSTS]`
/// (HTTPS; repeated for a port, one credential each, chosen by the client's SNI among the
/// comma-separated HOSTS it is for; the keys read here, kept only in this process) or
/// `PORT:passthrough` (TLS routed by SNI, not terminated).
fn gateway_listeners(specs: &[String]) -> anyhow::Result<Vec<GatewayListener>> {
    const FORMS: &str = "PORT, PORT:CERT:KEY[:HOSTS] or PORT:passthrough";
    type Creds = Vec<(Vec<String>, Arc<rustls::sign::CertifiedKey>)>;
    let mut ports: std::collections::BTreeMap<u16, (bool, bool, Creds)> = Default::default();
    for spec in specs {
        let mut parts = spec.splitn(4, ':');
        let port: u16 = parts
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("listener {spec:?}: {FORMS}"))?;
        let (plain, passthrough, creds) = ports.entry(port).or_default();
        match (parts.next(), parts.next(), parts.next()) {
            (None, None, None) => *plain = true,
            (Some("passthrough"), None, None) => *passthrough = true,
            (Some(cert), Some(key), hosts) => {
                let hosts = hosts
                    .unwrap_or_default()
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect();
                creds.push((hosts, certified_key(cert, key)?));
            }
            _ => anyhow::bail!("listener {spec:?}: {FORMS}"),
        }
        if usize::from(*plain) + usize::from(*passthrough) + usize::from(!creds.is_empty()) > 1 {
            anyhow::bail!(
                "listener {spec:?}: port {port} is given as more than one of HTTP, HTTPS and passthrough"
            );
        }
    }
    ports
        .into_iter()
        .map(|(port, (_, passthrough, creds))| {
            let tls = (!creds.is_empty())
                .then(|| server_tls(creds))
                .transpose()?
                .map(Arc::new);
            Ok(GatewayListener {
                port,
                tls,
                passthrough,
            })
        })
        .collect()
}

/// A certificate chain and its key, read from PEM files.
fn certified_key(cert: &str, key: &str) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {cert}"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{cert} is not a PEM certificate chain"))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {key} (PEM)"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let ck = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .context("the certificate and key do not go together")?;
    Ok(Arc::new(ck))
}

/// The TLS config of an HTTPS port: its credentials, chosen by SNI.
fn server_tls(
    creds: Vec<(Vec<String>, Arc<rustls::sign::CertifiedKey>)>,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(spar_proxy::tls::BySni::new(creds)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[derive(Args)]
pub struct WaypointArgs {
    /// The waypoint pod's namespace (the Gateway's).
    #[arg(long)]
    namespace: String,
    /// The waypoint pod's name.
    #[arg(long)]
    pod: String,
    /// The Gateway it runs for.
    #[arg(long)]
    gateway: String,
    /// Access log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    access_log_format: String,
    /// Runtime worker threads. One by default: on the bench's 2-core machine one worker cost
    /// 10% less CPU per request than two, with a lower p99 and the same peak rate (BENCHMARKS.md);
    /// raise it where a waypoint has cores of its own.
    #[arg(long, env = "SPAR_WAYPOINT_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct SidecarArgs {
    /// The pod's namespace.
    #[arg(long)]
    namespace: String,
    /// The pod's name.
    #[arg(long)]
    pod: String,
    /// Inbound ports that bypass the proxy (`traffic.sidecar.istio.io/excludeInboundPorts`).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound ports that bypass the proxy (`traffic.sidecar.istio.io/excludeOutboundPorts`).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Access log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    access_log_format: String,
    /// The application's metrics port in the pod: merged into `:15020/stats/prometheus`
    /// (what the pod's `prometheus.io/port` said before injection moved it to 15020).
    #[arg(long)]
    app_metrics_port: Option<u16>,
    /// The application's metrics path (its `prometheus.io/path`).
    #[arg(long, default_value = "/metrics")]
    app_metrics_path: String,
    /// Runtime worker threads. One by default, as Linkerd does: a sidecar serves one pod, and
    /// a single worker spares the cross-thread wake-ups (the bench measured about a quarter
    /// less CPU per request than with two).
    #[arg(long, env = "SPAR_SIDECAR_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct NodeArgs {
    /// The node this proxy serves.
    #[arg(long)]
    node: String,
    /// The node's network namespace (under /var/run/netns): `:15020/metrics` and
    /// `:15021/healthz/ready` are served on the node's addresses there, as ztunnel's are.
    #[arg(long)]
    node_netns: Option<String>,
    /// Runtime worker threads: a node proxy serves every pod of its node (ztunnel runs two).
    #[arg(long, env = "SPAR_NODE_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct CommonArgs {
    /// The control plane's xDS/CA address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    xds: String,
    /// The name in the control plane's certificate for that address.
    #[arg(long, default_value = "localhost")]
    xds_name: String,
    /// The mesh root certificate (PEM).
    #[arg(long)]
    root_cert: PathBuf,
    /// The proxy's bearer token (a node token for the node role, the pod's for a sidecar).
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Workload certificate lifetime to ask for (default: the CA's).
    #[arg(long, value_parser = parse_duration)]
    cert_ttl: Option<Duration>,
    /// Metrics, readiness and config dump (Istio uses 15020/15021; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    /// Where to record the bound admin address (JSON), for tools and tests.
    #[arg(long)]
    endpoints_file: Option<PathBuf>,
    /// A pod's network namespace name (under /var/run/netns).
    #[arg(long, default_value = "spar-{namespace}-{name}")]
    netns_template: String,
    /// Connections one listener (one pod's port) holds at once; more are closed at accept.
    #[arg(long, default_value_t = 16_384)]
    max_connections_per_listener: usize,
    /// Connections one source address holds at one listener.
    #[arg(long, default_value_t = 512)]
    max_connections_per_source: usize,
    /// TLS and HTTP/2 handshakes (HBONE in and out), and a CONNECT's answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// An HTTP/1 request head (slowloris protection).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    spar_model::duration::parse_duration(s)
}

/// What `spar proxy` was asked to run.
enum Which {
    Node {
        netns: Option<String>,
    },
    Gateway {
        namespace: String,
        pod: String,
        listeners: Vec<GatewayListener>,
        log_format: LogFormat,
    },
    Waypoint {
        namespace: String,
        pod: String,
        gateway: String,
        log_format: LogFormat,
    },
    Sidecar {
        namespace: String,
        pod: String,
        capture: Capture,
        log_format: LogFormat,
        app: Option<AppMetrics>,
    },
}

pub fn run(cmd: ProxyCommand) -> anyhow::Result<()> {
    spar_identity::install_crypto_provider();
    let (which, name, workers, a) = match cmd {
        ProxyCommand::Node(n) => (
            Which::Node {
                netns: n.node_netns,
            },
            n.node,
            n.workers,
            n.common,
        ),
        ProxyCommand::Gateway(g) => (
            Which::Gateway {
                namespace: g.namespace.clone(),
                pod: g.pod.clone(),
                listeners: gateway_listeners(&g.listeners)?,
                log_format: if g.access_log_format == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
            },
            format!("{}/{}", g.namespace, g.pod),
            g.workers,
            g.common,
        ),
        ProxyCommand::Waypoint(w) => (
            Which::Waypoint {
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                gateway: w.gateway,
                log_format: if w.access_log_format == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
            },
            format!("{}/{}", w.namespace, w.pod),
            w.workers,
            w.common,
        ),
        ProxyCommand::Sidecar(s) => (
            Which::Sidecar {
                namespace: s.namespace.clone(),
                pod: s.pod.clone(),
                capture: Capture {
                    exclude_inbound: s.exclude_inbound_ports,
                    exclude_outbound: s.exclude_outbound_ports,
                },
                log_format: if s.access_log_format == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
                app: s.app_metrics_port.map(|port| AppMetrics {
                    port,
                    path: s.app_metrics_path.clone(),
                }),
            },
            format!("{}/{}", s.namespace, s.pod),
            s.workers,
            s.common,
        ),
    };
    let root_pem = std::fs::read_to_string(&a.root_cert)
        .with_context(|| format!("cannot read the root certificate {}", a.root_cert.display()))?;
    let opts = ProxyOptions {
        name: name.clone(),
        control: ControlPlane {
            addr: a.xds.clone(),
            server_name: a.xds_name.clone(),
            root_pem,
            token_file: a.token_file.clone(),
        },
        trust_domain: a.trust_domain.clone(),
        cert_ttl: a.cert_ttl,
        network: Network::Netns {
            template: a.netns_template.clone(),
        },
        limits: Limits {
            per_listener: a.max_connections_per_listener,
            per_source: a.max_connections_per_source,
            handshake: a.handshake_timeout,
            header_read: a.header_read_timeout,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(workers))
        .on_thread_park(crate::alloc::on_worker_park)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    crate::alloc::watch_runtime(rt.handle().clone(), usize::from(workers));
    rt.block_on(async move {
        let proxy = Proxy::new(opts)?;
        match which {
            Which::Node { netns } => {
                let role = Arc::new(NodeRole { proxy });
                let admin = Admin::new(&*role, None);
                if let Some(ns) = netns {
                    spar_proxy::admin::open_node_ports(&admin, &ns)
                        .await
                        .with_context(|| {
                            format!("cannot open :15020 and :15021 in the node's namespace {ns}")
                        })?;
                }
                serve(role, admin, "node", &name, &a).await
            }
            Which::Gateway {
                namespace,
                pod,
                listeners,
                log_format,
            } => {
                let role = GatewayRole {
                    proxy,
                    engine: Arc::new(Engine::new(log_format)),
                    namespace,
                    pod,
                    listeners,
                };
                let role = Arc::new(role);
                let admin = Admin::new(&*role, None);
                serve(role, admin, "gateway", &name, &a).await
            }
            Which::Waypoint {
                namespace,
                pod,
                gateway,
                log_format,
            } => {
                let role = WaypointRole {
                    proxy,
                    engine: Arc::new(Engine::new(log_format)),
                    namespace,
                    pod,
                    gateway,
                };
                let role = Arc::new(role);
                let admin = Admin::new(&*role, None);
                serve(role, admin, "waypoint", &name, &a).await
            }
            Which::Sidecar {
                namespace,
                pod,
                capture,
                log_format,
                app,
            } => {
                let role = SidecarRole {
                    proxy,
                    engine: Arc::new(Engine::new(log_format)),
                    namespace,
                    pod,
                    capture,
                };
                let role = Arc::new(role);
                let admin = Admin::new(&*role, app);
                serve(role, admin, "sidecar", &name, &a).await
            }
        }
    })
}

/// The admin endpoints, then the role until a signal stops it.
async fn serve<R: Role>(
    role: Arc<R>,
    admin: Arc<Admin>,
    what: &str,
    name: &str,
    a: &CommonArgs,
) -> anyhow::Result<()> {
    let listener = spar_proxy::admin::bind(a.admin)
        .await
        .with_context(|| format!("cannot listen on {}", a.admin))?;
    let bound = listener.local_addr()?;
    if let Some(f) = &a.endpoints_file {
        std::fs::write(
            f,
            serde_json::json!({ "admin": bound.to_string() }).to_string(),
        )
        .with_context(|| format!("cannot write {}", f.display()))?;
    }
    eprintln!("spar proxy {what} {name}: metrics, readiness and config dump on http://{bound}");
    tokio::spawn(spar_proxy::admin::serve(
        listener,
        admin.clone(),
        Surface::Full,
        None,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = spar_proxy::role::run(role, Some(admin)) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `host`, written as PEM files into `dir`.
    fn credential(dir: &std::path::Path, host: &str) -> (String, String, Vec<u8>) {
        let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("a cert");
        let (cert, key) = (
            dir.join(format!("{host}.crt")),
            dir.join(format!("{host}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).expect("write");
        std::fs::write(&key, c.signing_key.serialize_pem()).expect("write");
        let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
        (s(cert), s(key), c.cert.der().to_vec())
    }

    /// Whether a client trusting only `root` completes a handshake with `cfg` for `sni`.
    async fn handshake(cfg: Arc<rustls::ServerConfig>, root: &[u8], sni: &str) -> bool {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let _ = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await;
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(root.to_vec()))
            .expect("a root");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("a name");
        let ok = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, s)
            .await
            .is_ok();
        let _ = server.await;
        ok
    }

    #[tokio::test]
    async fn one_https_port_serves_each_host_its_own_certificate() {
        spar_identity::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tmp");
        let (c1, k1, root1) = credential(dir.path(), "httpbin.example.com");
        let (c2, k2, root2) = credential(dir.path(), "helloworld.example.com");
        let listeners = gateway_listeners(&[
            format!("443:{c1}:{k1}:httpbin.example.com"),
            format!("443:{c2}:{k2}:helloworld.example.com"),
            "80".into(),
        ])
        .expect("listeners");
        assert_eq!(listeners.len(), 2, "one listener per port");
        let tls = listeners[1].tls.clone().expect("443 is HTTPS");
        assert!(handshake(tls.clone(), &root1, "httpbin.example.com").await);
        assert!(handshake(tls.clone(), &root2, "helloworld.example.com").await);
        assert!(
            !handshake(tls.clone(), &root2, "httpbin.example.com").await,
            "each name gets its own certificate, not the other's"
        );
        // Ports given twice as different kinds are refused by name.
        let mixed = gateway_listeners(&["443".into(), format!("443:{c1}:{k1}")]);
        assert!(
            mixed.is_err_and(|e| e.to_string().contains("port 443")),
            "HTTP and HTTPS on one port"
        );
    }
}
