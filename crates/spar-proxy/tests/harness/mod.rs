//! The in-process harness: a real control plane (CA, tokens, delta xDS over TLS) and real
//! proxies (sidecars, node proxies) in this test process, with every pod on loopback through
//! the `net::loopback` seam, so whole request paths run without root or namespaces: the
//! application's connection is captured to its sidecar, HBONE with mTLS crosses to the
//! destination's sidecar, which calls the echo application.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use spar_identity::token::Subject;
use spar_proxy::control::ControlPlane;
use spar_proxy::l4::inbound::Deliver;
use spar_proxy::l7::Engine;
use spar_proxy::net::loopback::LoopbackNet;
use spar_proxy::net::{Capture, Network};
use spar_proxy::proxy::{Proxy, ProxyOptions};
use spar_proxy::role::{NodeRole, Role, SidecarRole, WaypointRole};
use tokio::task::JoinHandle;

/// A pod to be: its namespace, name, labels, service account and node.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub node: String,
}

#[derive(Clone, Debug)]
struct ServiceSpec {
    namespace: String,
    name: String,
    vip: IpAddr,
    ports: Vec<u16>,
    selector: BTreeMap<String, String>,
}

fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Builds a mesh's config: namespaces, services with VIPs, pods with loopback addresses.
pub struct Builder {
    docs: Vec<serde_json::Value>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceSpec>,
    /// A /16 of 127/8 per mesh, so meshes of parallel tests never share an address.
    base: [u8; 2],
    cert_ttl: Option<Duration>,
    limits: spar_proxy::limits::Limits,
}

static NEXT_MESH: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);

impl Builder {
    pub fn new() -> Builder {
        let n = NEXT_MESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = (std::process::id() % 200) as u16;
        // 127.(pid-based).(mesh).x: distinct across test binaries and tests in each.
        Builder {
            docs: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            base: [(20 + pid % 200) as u8, (n % 250) as u8],
            cert_ttl: None,
            limits: spar_proxy::limits::Limits::default(),
        }
    }

    /// The proxies' connection caps and handshake timeouts.
    #[allow(dead_code)]
    pub fn limits(mut self, limits: spar_proxy::limits::Limits) -> Builder {
        self.limits = limits;
        self
    }

    pub fn cert_ttl(mut self, ttl: Duration) -> Builder {
        self.cert_ttl = Some(ttl);
        self
    }

    pub fn namespace(mut self, ns: &str, l: &[(&str, &str)]) -> Builder {
        self.docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels(l)}
        }));
        self
    }

    /// A Service named `name` selecting `selector`, with ports `(number, name)`.
    pub fn service(
        mut self,
        ns: &str,
        name: &str,
        ports: &[(u16, &str)],
        selector: &[(&str, &str)],
    ) -> Builder {
        let vip = IpAddr::V4(Ipv4Addr::new(
            10,
            96,
            self.base[1],
            self.services.len() as u8 + 10,
        ));
        self.docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterIP": vip.to_string(),
                "selector": labels(selector),
                "ports": ports.iter().map(|(p, n)| serde_json::json!({"name": n, "port": p})).collect::<Vec<_>>(),
            }
        }));
        self.services.push(ServiceSpec {
            namespace: ns.into(),
            name: name.into(),
            vip,
            ports: ports.iter().map(|(p, _)| *p).collect(),
            selector: labels(selector),
        });
        self
    }

    /// A pod on `node-1` with service account `sa` (label `sa`, else `default`).
    pub fn pod(self, ns: &str, name: &str, l: &[(&str, &str)]) -> Builder {
        self.pod_on(ns, name, "node-1", l)
    }

    pub fn pod_on(mut self, ns: &str, name: &str, node: &str, l: &[(&str, &str)]) -> Builder {
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            self.base[0],
            self.base[1],
            self.pods.len() as u8 + 2,
        ));
        let mut l = labels(l);
        let sa = l.remove("sa").unwrap_or_else(|| "default".into());
        self.docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": l},
            "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "app", "command": ["app"]}]},
            "status": {"podIP": ip.to_string(), "phase": "Running"},
        }));
        if !self
            .pods
            .iter()
            .any(|p| p.namespace == ns && p.service_account == sa)
        {
            self.docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": ns}
            }));
        }
        self.pods.push(PodSpec {
            namespace: ns.into(),
            name: name.into(),
            ip,
            labels: l,
            service_account: sa,
            node: node.into(),
        });
        self
    }

    /// Any other resource, as YAML.
    pub fn yaml(mut self, text: &str) -> Builder {
        let loaded = spar_model::yaml::parse_documents(text).expect("test YAML parses");
        self.docs.extend(loaded.into_iter().map(|d| d.value));
        self
    }

    pub async fn start(self) -> Mesh {
        let _ = tracing_subscriber_init();
        let dir = tempfile::tempdir().expect("tmp");
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        let text: Vec<String> = self
            .docs
            .iter()
            .map(|d| serde_json::to_string(d).expect("json"))
            .collect();
        std::fs::write(config_dir.join("mesh.yaml"), text.join("\n---\n")).expect("write");
        let mut opts = spar_control::Options::new(dir.path().join("state"));
        opts.config_dir = Some(config_dir);
        opts.grpc_addr = "127.0.0.1:0".parse().expect("addr");
        opts.admin_addr = "127.0.0.1:0".parse().expect("addr");
        if let Some(t) = self.cert_ttl {
            opts.cert_ttl = t;
        }
        let control = spar_control::start(opts)
            .await
            .expect("control plane starts");
        Mesh {
            dir,
            control,
            net: LoopbackNet::new(),
            pods: self.pods,
            services: self.services,
            sidecars: BTreeMap::new(),
            nodes: BTreeMap::new(),
            waypoints: BTreeMap::new(),
            tasks: Vec::new(),
            limits: self.limits,
        }
    }
}

fn tracing_subscriber_init() -> Option<()> {
    None
}

/// A running mesh.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub control: spar_control::Running,
    pub net: Arc<LoopbackNet>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceSpec>,
    pub sidecars: BTreeMap<String, Arc<SidecarRole>>,
    pub nodes: BTreeMap<String, Arc<NodeRole>>,
    pub waypoints: BTreeMap<String, Arc<WaypointRole>>,
    tasks: Vec<JoinHandle<()>>,
    limits: spar_proxy::limits::Limits,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A request as a scripted application saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub version: http::Version,
    pub peer: SocketAddr,
    pub body: usize,
}

pub type Recorder = Arc<std::sync::Mutex<Vec<Seen>>>;

pub fn seen(r: &Recorder) -> Vec<Seen> {
    r.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// An answer as a client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The pod that answered (echo's `pod`).
    pub fn pod(&self) -> String {
        self.json()["pod"].as_str().unwrap_or("").to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Wait until `f` holds, up to `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Mesh {
    pub fn pod(&self, name: &str) -> &PodSpec {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `name` (in `ns`) to its VIP.
    pub fn vip(&self, ns: &str, name: &str) -> IpAddr {
        self.services
            .iter()
            .find(|s| s.name == name && s.namespace == ns)
            .unwrap_or_else(|| panic!("no service {ns}/{name}"))
            .vip
    }

    /// Serve `spar echo` (HTTP/1.1 and h2c) as the application of `pod` on `ports`.
    pub async fn echo(&mut self, pod: &str, ports: &[u16]) {
        let p = self.pod(pod).clone();
        for port in ports {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(p.ip, 0))
                .await
                .expect("bind app");
            self.net.serve(p.ip, *port, l.local_addr().expect("addr"));
            let info = spar_echo::PodInfo {
                hostname: p.name.clone(),
                pod: p.name.clone(),
                namespace: p.namespace.clone(),
                version: p.labels.get("version").cloned().unwrap_or_default(),
                ..Default::default()
            };
            self.tasks.push(spar_echo::server::serve_http(l, info));
        }
    }

    /// Serve a scripted application on `pod`'s `port`: every request is recorded, then
    /// answered `status` after `delay` with `{"pod": NAME}`.
    pub async fn app(&mut self, pod: &str, port: u16, status: u16, delay: Duration) -> Recorder {
        let p = self.pod(pod).clone();
        let l = tokio::net::TcpListener::bind(SocketAddr::new(p.ip, 0))
            .await
            .expect("bind app");
        self.net.serve(p.ip, port, l.local_addr().expect("addr"));
        let seen: Recorder = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (rec, name) = (seen.clone(), p.name.clone());
        self.tasks.push(tokio::spawn(async move {
            while let Ok((s, peer)) = l.accept().await {
                let (rec, name) = (rec.clone(), name.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (rec, name) = (rec.clone(), name.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().len())
                                    .unwrap_or(0);
                                rec.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                                    method: parts.method.to_string(),
                                    path: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    version: parts.version,
                                    peer,
                                    body,
                                });
                                tokio::time::sleep(delay).await;
                                let mut r = http::Response::new(Full::new(Bytes::from(
                                    serde_json::json!({"pod": name}).to_string(),
                                )));
                                *r.status_mut() =
                                    http::StatusCode::from_u16(status).unwrap_or_default();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                });
            }
        }));
        seen
    }

    /// Serve the gRPC echo as the application of `pod` on `port`.
    pub async fn grpc_echo(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let l = tokio::net::TcpListener::bind(SocketAddr::new(p.ip, 0))
            .await
            .expect("bind app");
        self.net.serve(p.ip, port, l.local_addr().expect("addr"));
        let info = spar_echo::PodInfo {
            pod: p.name.clone(),
            namespace: p.namespace.clone(),
            ..Default::default()
        };
        self.tasks.push(spar_echo::grpc::serve_grpc(l, info));
    }

    /// Serve `spar echo ext-authz` (HTTP on `http_port`, gRPC on `grpc_port`) as `pod`'s app.
    pub async fn ext_authz(&mut self, pod: &str, http_port: u16, grpc_port: u16) {
        let p = self.pod(pod).clone();
        for (port, grpc) in [(http_port, false), (grpc_port, true)] {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(p.ip, 0))
                .await
                .expect("bind app");
            self.net.serve(p.ip, port, l.local_addr().expect("addr"));
            self.tasks.push(if grpc {
                spar_echo::ext_authz::serve_grpc(l)
            } else {
                spar_echo::ext_authz::serve_http(l)
            });
        }
    }

    /// Serve a TCP echo as the application of `pod` on `port`.
    pub async fn tcp_echo(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod).clone();
        let l = tokio::net::TcpListener::bind(SocketAddr::new(p.ip, 0))
            .await
            .expect("bind app");
        self.net.serve(p.ip, port, l.local_addr().expect("addr"));
        self.tasks.push(spar_echo::tcp::serve_tcp_echo(l));
    }

    fn control_plane(&self, token: &str, name: &str) -> ControlPlane {
        let token_file = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, token).expect("token");
        ControlPlane {
            addr: self.control.grpc_addr.to_string(),
            server_name: "localhost".into(),
            root_pem: self.control.root_pem.clone(),
            token_file,
        }
    }

    fn proxy(&self, name: &str, subject: Subject, file: &str) -> Arc<Proxy> {
        let token = self
            .control
            .tokens
            .mint(subject, Duration::from_secs(3600))
            .expect("token");
        Proxy::new(ProxyOptions {
            name: name.into(),
            control: self.control_plane(&token, file),
            trust_domain: "cluster.local".into(),
            cert_ttl: None,
            network: Network::Loopback(self.net.clone()),
            limits: self.limits.clone(),
        })
        .expect("proxy")
    }

    /// Start the sidecar of `pod`, and wait until it captures the pod and holds its
    /// certificate.
    pub async fn sidecar(&mut self, pod: &str) -> Arc<SidecarRole> {
        self.sidecar_with_app_metrics(pod, None).await
    }

    /// A sidecar whose pod asked for its application's metrics to be merged into the
    /// proxy's `:15020/stats/prometheus` (Istio's `prometheus.io/*` annotations).
    pub async fn sidecar_with_app_metrics(
        &mut self,
        pod: &str,
        app: Option<spar_proxy::admin::AppMetrics>,
    ) -> Arc<SidecarRole> {
        let p = self.pod(pod).clone();
        let proxy = self.proxy(
            &format!("{}/{}", p.namespace, p.name),
            Subject::Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                service_account: p.service_account.clone(),
            },
            &format!("sidecar-{}", p.name),
        );
        let role = Arc::new(SidecarRole {
            proxy: proxy.clone(),
            engine: Arc::new(Engine::default()),
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            capture: Capture::default(),
        });
        let admin = spar_proxy::admin::Admin::new(&*role, app);
        self.tasks.push(tokio::spawn(spar_proxy::role::run(
            role.clone(),
            Some(admin),
        )));
        self.wait_enrolled(&proxy, &p).await;
        self.sidecars.insert(p.name.clone(), role.clone());
        role
    }

    pub async fn sidecars(&mut self, pods: &[&str]) {
        for p in pods {
            self.sidecar(p).await;
        }
    }

    /// Start the waypoint in `pod` for the Gateway `gateway` (the pod runs as its service
    /// account and carries its label); wait until it serves its pod and holds its
    /// certificate.
    #[allow(dead_code)]
    pub async fn waypoint(&mut self, pod: &str, gateway: &str) -> Arc<WaypointRole> {
        let p = self.pod(pod).clone();
        let proxy = self.proxy(
            &format!("{}/{}", p.namespace, p.name),
            Subject::Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                service_account: p.service_account.clone(),
            },
            &format!("waypoint-{}", p.name),
        );
        let role = Arc::new(WaypointRole {
            proxy: proxy.clone(),
            engine: Arc::new(Engine::default()),
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            gateway: gateway.into(),
        });
        let admin = spar_proxy::admin::Admin::new(&*role, None);
        self.tasks.push(tokio::spawn(spar_proxy::role::run(
            role.clone(),
            Some(admin),
        )));
        let uid = format!("Kubernetes//Pod/{}/{}", p.namespace, p.name);
        eventually(
            &format!("the waypoint serves {}", p.name),
            Duration::from_secs(10),
            || {
                let (proxy, uid) = (proxy.clone(), uid.clone());
                async move {
                    proxy
                        .enrolled
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(&uid)
                }
            },
        )
        .await;
        let id = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            p.namespace, p.service_account
        );
        proxy.certs.get(&id).await.expect("certificate");
        self.waypoints.insert(p.name.clone(), role.clone());
        role
    }

    /// Start the node proxy of `node`; it enrols the ambient pods placed there.
    pub async fn node_proxy(&mut self, node: &str) -> Arc<NodeRole> {
        let proxy = self.proxy(
            node,
            Subject::Node { name: node.into() },
            &format!("node-{node}"),
        );
        let role = Arc::new(NodeRole {
            proxy: proxy.clone(),
        });
        self.tasks
            .push(tokio::spawn(spar_proxy::role::run(role.clone(), None)));
        eventually("the node proxy has config", Duration::from_secs(10), || {
            let proxy = proxy.clone();
            async move { proxy.ready() }
        })
        .await;
        self.nodes.insert(node.into(), role.clone());
        role
    }

    /// Wait until the proxy holding `p` has enrolled it (captured, with its outbound and
    /// inbound listeners in the pod: capture comes first, and a connection in between found
    /// no listener) and has its certificate.
    pub async fn wait_enrolled(&self, proxy: &Arc<Proxy>, p: &PodSpec) {
        let (net, ip) = (self.net.clone(), p.ip);
        eventually(
            &format!("{} is enrolled", p.name),
            Duration::from_secs(10),
            || {
                let net = net.clone();
                async move {
                    net.is_captured(ip)
                        && net.listening(ip, 15001).is_some()
                        && net.listening(ip, 15006).is_some()
                }
            },
        )
        .await;
        let id = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            p.namespace, p.service_account
        );
        proxy.certs.get(&id).await.expect("certificate");
    }

    /// Apply YAML to the control plane (as `spar apply`), and wait until it is published.
    pub async fn apply(&self, yaml: &str) {
        let before = self.control.config.current().generation;
        self.control
            .config
            .apply("test.yaml", yaml, None)
            .unwrap_or_else(|p| panic!("apply refused: {p:?}"));
        self.published_after(before).await;
    }

    pub async fn delete(&self, yaml: &str) {
        let before = self.control.config.current().generation;
        self.control
            .config
            .delete("test.yaml", yaml, None)
            .unwrap_or_else(|p| panic!("delete refused: {p:?}"));
        self.published_after(before).await;
    }

    async fn published_after(&self, before: u64) {
        let cfg = self.control.config.clone();
        eventually("the change is published", Duration::from_secs(5), || {
            let cfg = cfg.clone();
            async move { cfg.current().generation > before }
        })
        .await;
        // Pushes follow the publish; give the proxies a moment to apply it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Open a connection from `from`'s application to `host:port` (a service name in the
    /// pod's namespace, `name.ns`, or an IP), captured as the kernel would.
    pub async fn connect(&self, from: &str, host: &str, port: u16) -> tokio::net::TcpStream {
        self.try_connect(from, host, port)
            .await
            .unwrap_or_else(|e| panic!("connect {from} -> {host}:{port}: {e}"))
    }

    /// As `connect`, for connections that may be refused.
    pub async fn try_connect(
        &self,
        from: &str,
        host: &str,
        port: u16,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let p = self.pod(from);
        let ip: IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) => {
                let (name, ns) = host.split_once('.').unwrap_or((host, p.namespace.as_str()));
                self.vip(ns, name)
            }
        };
        self.net.app_connect(p.ip, SocketAddr::new(ip, port)).await
    }

    /// One HTTP/1.1 request from `from` on its own connection.
    pub async fn send(
        &self,
        from: &str,
        host: &str,
        port: u16,
        req: Request<Full<Bytes>>,
    ) -> Reply {
        let mut c = self.client(from, host, port).await;
        c.send(req).await
    }

    /// `GET path` from `from` to `host:port`, with extra headers.
    pub async fn get(
        &self,
        from: &str,
        host: &str,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.send(
            from,
            host,
            port,
            request(Method::GET, host, port, path, headers, ""),
        )
        .await
    }

    /// A keep-alive HTTP/1.1 client from `from`'s application to `host:port`.
    pub async fn client(&self, from: &str, host: &str, port: u16) -> Client {
        let s = self.connect(from, host, port).await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("HTTP/1.1 handshake");
        let task = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Client {
            sender,
            _task: task,
        }
    }

    /// An HTTP/2 (prior knowledge) client from `from`'s application to `host:port`.
    pub async fn h2_client(&self, from: &str, host: &str, port: u16) -> H2Client {
        let s = self.connect(from, host, port).await;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(s),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        H2Client { sender }
    }

    /// Prometheus text of a sidecar's metrics.
    /// The metrics of the sidecar or waypoint in `pod`.
    pub fn metrics(&self, pod: &str) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        if let Some(w) = self.waypoints.get(pod) {
            w.proxy().metrics.register(&mut r);
            w.register_metrics(&mut r);
        } else {
            let role = self
                .sidecars
                .get(pod)
                .unwrap_or_else(|| panic!("no sidecar or waypoint {pod}"));
            role.proxy().metrics.register(&mut r);
            role.register_metrics(&mut r);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
        out
    }
}

/// A request to `host:port` (the Host header) for `path`.
pub fn request(
    method: Method,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    _task: JoinHandle<()>,
}

async fn reply(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

impl Client {
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("response");
        reply(resp).await
    }

    /// Whether the connection can still carry a request.
    pub async fn usable(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }
}

pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Client {
    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Reply {
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or("/".into());
        *req.uri_mut() = format!("http://{host}{pq}").parse().expect("uri");
        req.headers_mut().remove("host");
        *req.version_mut() = http::Version::HTTP_2;
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("response");
        reply(resp).await
    }
}

/// A Service per version of reviews, as Istio's Gateway API tasks have.
pub const VERSION_SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: mesh}
spec: {clusterIP: 10.96.251.1, selector: {app: reviews, version: v1}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: mesh}
spec: {clusterIP: 10.96.251.2, selector: {app: reviews, version: v2}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v3, namespace: mesh}
spec: {clusterIP: 10.96.251.3, selector: {app: reviews, version: v3}, ports: [{name: http, port: 9080}]}
";

/// Requests `n` times and counts the answers by pod (`-` for failures) and status.
pub async fn spread(
    mesh: &Mesh,
    from: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> (BTreeMap<String, usize>, BTreeMap<u16, usize>) {
    let mut pods = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    let mut c = mesh.client(from, host, port).await;
    for _ in 0..n {
        let r = c
            .send(request(Method::GET, host, port, path, headers, ""))
            .await;
        let pod = if r.status == 200 { r.pod() } else { "-".into() };
        *pods.entry(pod).or_insert(0) += 1;
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    (pods, statuses)
}

/// The Bookinfo `reviews` service (v1, v2, v3 on port 9080, HTTP) and a `client`, all in
/// namespace `mesh` with sidecars and echo applications, plus `extra` config.
pub async fn reviews(extra: &str) -> Mesh {
    let mut mesh = reviews_bare(extra).await;
    for v in ["v1", "v2", "v3"] {
        mesh.echo(&format!("reviews-{v}"), &[9080]).await;
    }
    mesh.sidecars(&["reviews-v1", "reviews-v2", "reviews-v3", "client"])
        .await;
    mesh
}

/// As `reviews`, but without applications or sidecars: the test starts its own.
pub async fn reviews_bare(extra: &str) -> Mesh {
    let mut b = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service("mesh", "reviews", &[(9080, "http")], &[("app", "reviews")])
        .pod("mesh", "client", &[("app", "client"), ("sa", "client")]);
    for v in ["v1", "v2", "v3"] {
        b = b.pod(
            "mesh",
            &format!("reviews-{v}"),
            &[("app", "reviews"), ("version", v), ("sa", "reviews")],
        );
    }
    if !extra.is_empty() {
        b = b.yaml(extra);
    }
    b.start().await
}

/// DestinationRule subsets v1, v2, v3 of `reviews` (Istio's destination-rule-all).
pub const SUBSETS: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: mesh}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
";
