//! Starting the control plane: state directory, CA, tokens, config sources, the TLS gRPC
//! server (xDS and CA on one port, like istiod's 15012) and the admin API.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spar_identity::{CertificateAuthority, TokenIssuer};
use spar_xds::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use spar_xds::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};

use crate::Error;
use crate::admin::{AdminState, router};
use crate::ca_server::CaService;
use crate::config::ConfigState;
use crate::dir_files::DirFiles;
use crate::registry::MeshSettings;
use crate::store::Store;
use crate::xds_server::{Proxies, XdsService};

#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    pub config_dir: Option<PathBuf>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub mesh: MeshSettings,
    pub cert_ttl: Duration,
    pub max_cert_ttl: Duration,
    /// Operator-supplied CA certificate and key (instead of the persisted self-signed root).
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Extra names and addresses for the server certificate (how proxies dial us).
    pub server_dns: Vec<String>,
    pub server_ips: Vec<IpAddr>,
}

impl Options {
    pub fn new(state_dir: PathBuf) -> Self {
        Options {
            state_dir,
            config_dir: None,
            grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 15012)),
            admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 15014)),
            mesh: MeshSettings::default(),
            cert_ttl: Duration::from_secs(24 * 3600),
            max_cert_ttl: spar_identity::ca::MAX_CERT_TTL,
            ca_files: None,
            server_dns: Vec::new(),
            server_ips: Vec::new(),
        }
    }
}

/// A running control plane.
pub struct Running {
    /// What admin API callers present (`Authorization: Bearer`); also in `<state>/admin-token`.
    pub admin_token: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub root_pem: String,
    pub config: Arc<ConfigState>,
    pub tokens: Arc<TokenIssuer>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Run until one of the servers stops (they only stop on error).
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.pop() {
            let _ = t.await;
        }
    }

    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub async fn start(opts: Options) -> Result<Running, Error> {
    spar_identity::install_crypto_provider();
    let ca_dir = opts.state_dir.join("ca");
    let ca = match &opts.ca_files {
        Some((cert, key)) => CertificateAuthority::from_files(cert, key, &opts.mesh.trust_domain)?,
        None => CertificateAuthority::load_or_create(&ca_dir, &opts.mesh.trust_domain)?,
    };
    let ca = Arc::new(ca);
    let tokens = Arc::new(TokenIssuer::load_or_create(&ca_dir)?);

    let dir_files = match &opts.config_dir {
        Some(dir) => DirFiles::load(dir).map_err(|problems| Error::InvalidConfig {
            dir: dir.clone(),
            problems: problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        })?,
        None => DirFiles::none(),
    };
    let store = Store::open(&opts.state_dir.join("applied"))?;
    let config = ConfigState::new(opts.mesh.clone(), opts.config_dir.clone(), dir_files, store);
    let proxies: Proxies = Arc::new(Mutex::new(BTreeMap::new()));

    // The server certificate: localhost, the listen address and whatever the operator adds.
    let mut dns: Vec<&str> = vec!["localhost", "spar-control", "istiod.istio-system.svc"];
    dns.extend(opts.server_dns.iter().map(String::as_str));
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    ips.extend(opts.server_ips.iter().copied());
    if !opts.grpc_addr.ip().is_unspecified() && !ips.contains(&opts.grpc_addr.ip()) {
        ips.push(opts.grpc_addr.ip());
    }
    let (chain, key) = ca.issue_server_cert(&dns, &ips, Duration::from_secs(365 * 24 * 3600))?;

    let grpc = TcpListener::bind(opts.grpc_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: opts.grpc_addr.to_string(),
            source,
        })?;
    let admin = TcpListener::bind(opts.admin_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: opts.admin_addr.to_string(),
            source,
        })?;
    let grpc_addr = grpc.local_addr().map_err(|source| Error::Listen {
        addr: opts.grpc_addr.to_string(),
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| Error::Listen {
        addr: opts.admin_addr.to_string(),
        source,
    })?;

    let xds = XdsService::new(tokens.clone(), config.clone(), proxies.clone());
    let ca_svc = CaService {
        ca: ca.clone(),
        tokens: tokens.clone(),
        config: config.clone(),
        default_ttl: opts.cert_ttl,
        max_ttl: opts.max_cert_ttl,
    };
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain, key)))
        .map_err(|e| Error::Tls(e.to_string()))?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(
            AggregatedDiscoveryServiceServer::new(xds)
                .max_decoding_message_size(spar_xds::MAX_MESSAGE),
        )
        .add_service(IstioCertificateServiceServer::new(ca_svc));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
    let grpc_task = tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let admin_token = new_admin_token(&opts.state_dir)?;
    let admin_state = AdminState {
        config: config.clone(),
        proxies,
        tokens: tokens.clone(),
        root_pem: ca.root_pem().to_string(),
        admin_token: admin_token.clone().into(),
    };
    let admin_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(admin, router(admin_state)).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    let tasks = vec![
        tokio::spawn(config.clone().run_publisher()),
        tokio::spawn(config.clone().run_dir_watch()),
        admin_task,
        grpc_task,
    ];
    tracing::info!(%grpc_addr, %admin_addr, trust_domain = %opts.mesh.trust_domain, "control plane ready");
    Ok(Running {
        admin_token,
        grpc_addr,
        admin_addr,
        root_pem: ca.root_pem().to_string(),
        config,
        tokens,
        tasks,
    })
}

/// The admin token, written owner-only where local tools find it: kept across restarts
/// (as the CA root is), so a client that read it once still gets in after one.
fn new_admin_token(state_dir: &std::path::Path) -> Result<String, Error> {
    use std::io::Read;
    if let Ok(t) = std::fs::read_to_string(state_dir.join("admin-token"))
        && t.len() == 64
        && t.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(t);
    }
    let mut raw = [0u8; 32];
    let state = |source| Error::State {
        path: state_dir.to_path_buf(),
        source,
    };
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(state)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(state_dir).map_err(state)?;
    spar_identity::write_private_file(&state_dir.join("admin-token"), &token)?;
    Ok(token)
}
