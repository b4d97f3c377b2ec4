//! `spar control`: run the control plane in the foreground, `spar control token` to mint a
//! bearer token from the control plane's state directory, and `spar control cert` to issue a
//! workload certificate from its CA into files (for proxies Spar does not run, such as the
//! Envoy baseline of the benchmarks).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use spar_control::Options;
use spar_control::registry::MeshSettings;
use spar_identity::{Subject, TokenIssuer};

#[derive(Args)]
pub struct ControlArgs {
    #[command(subcommand)]
    action: Option<ControlAction>,
    /// Where the CA root, the token key and applied resources are kept.
    #[arg(long, default_value = "/run/spar/control", global = true)]
    state_dir: PathBuf,
    /// Directory of YAML config to load and watch.
    #[arg(long)]
    config: Option<PathBuf>,
    /// xDS and CA (gRPC over TLS), like istiod's 15012.
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// Admin API (plain HTTP; keep it on a local address).
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin: SocketAddr,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace whose selector-less policies apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Default workload certificate lifetime (e.g. 24h, 30s).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Operator-supplied CA certificate (PEM); needs --ca-key.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Operator-supplied CA key (PEM); needs --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Extra IP addresses proxies use to reach this control plane (server certificate SANs).
    #[arg(long = "san-ip")]
    san_ips: Vec<IpAddr>,
    /// Istio's MeshConfig as a YAML file (what istiod reads from /etc/istio/config/mesh):
    /// `extensionProviders` for CUSTOM authorization. An `istio` ConfigMap in the root
    /// namespace overrides it.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ControlAction {
    /// Mint a bearer token for a pod (`pod NS/NAME --service-account SA`) or a node proxy (`node NAME`).
    Token {
        /// `pod` or `node`.
        kind: String,
        /// `NS/NAME` for a pod, the node name for a node.
        name: String,
        #[arg(long, default_value = "default")]
        service_account: String,
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Issue a workload certificate: writes cert-chain.pem, key.pem (0600) and root-cert.pem.
    Cert {
        /// The SPIFFE identity, e.g. spiffe://cluster.local/ns/bench/sa/server.
        identity: String,
        /// Directory for the three files.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    spar_model::duration::parse_duration(s)
}

pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    if let Some(ControlAction::Token {
        kind,
        name,
        service_account,
        ttl,
    }) = &args.action
    {
        return mint(&args.state_dir, kind, name, service_account, *ttl);
    }
    if let Some(ControlAction::Cert { identity, out, ttl }) = &args.action {
        return cert(&args.state_dir, &args.trust_domain, identity, out, *ttl);
    }
    let mut opts = Options::new(args.state_dir.clone());
    opts.config_dir = args.config.clone();
    opts.grpc_addr = args.listen;
    opts.admin_addr = args.admin;
    let mesh_config = match &args.mesh_config {
        Some(path) => Some(read_mesh_config(path)?),
        None => None,
    };
    opts.mesh = MeshSettings {
        trust_domain: args.trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
        mesh_config,
        ..MeshSettings::default()
    };
    opts.cert_ttl = args.cert_ttl;
    opts.ca_files = args.ca_cert.clone().zip(args.ca_key.clone());
    opts.server_ips = args.san_ips.clone();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let running = spar_control::start(opts).await?;
        write_endpoints(&args.state_dir, &running)?;
        println!(
            "spar control: xDS and CA on {} (TLS), admin on http://{}",
            running.grpc_addr, running.admin_addr
        );
        tokio::select! {
            _ = running.wait() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
        }
        anyhow::Ok(())
    })
}

/// A MeshConfig file, checked as `spar validate` checks the `istio` ConfigMap: errors stop
/// the start, warnings (fields Spar does not act on) are printed.
fn read_mesh_config(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the mesh config {}", path.display()))?;
    let as_configmap = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": spar_model::istio::mesh::CONFIGMAP, "namespace": "istio-system"},
        "data": {spar_model::istio::mesh::KEY: text},
    });
    let r = spar_model::resource::decode(&as_configmap)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path, e.message))?;
    let mut errors = Vec::new();
    for i in spar_model::validate::validate(&r) {
        let line = format!(
            "{}: {}: {}",
            path.display(),
            i.path.trim_start_matches("data.mesh."),
            i.message
        );
        match i.severity {
            spar_model::Severity::Error => errors.push(line),
            spar_model::Severity::Warning => eprintln!("warning: {line}"),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("the mesh config is invalid:\n{}", errors.join("\n"));
    }
    Ok(text)
}

/// Record where this control plane listens, so other commands (`spar apply`) find it.
fn write_endpoints(
    state_dir: &std::path::Path,
    running: &spar_control::Running,
) -> anyhow::Result<()> {
    let info = serde_json::json!({ "grpc": running.grpc_addr.to_string(), "admin": running.admin_addr.to_string() });
    let path = state_dir.join("endpoints.json");
    std::fs::write(&path, info.to_string())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn mint(
    state_dir: &std::path::Path,
    kind: &str,
    name: &str,
    sa: &str,
    ttl: Duration,
) -> anyhow::Result<()> {
    let subject = match kind {
        "node" => Subject::Node {
            name: name.to_string(),
        },
        "pod" => {
            let (ns, pod) = name
                .split_once('/')
                .context("a pod is named NAMESPACE/NAME")?;
            Subject::Pod {
                namespace: ns.into(),
                name: pod.into(),
                service_account: sa.into(),
            }
        }
        other => anyhow::bail!("unknown token kind {other:?}: use `pod` or `node`"),
    };
    let key = state_dir.join("ca");
    anyhow::ensure!(
        key.join("token-key.pem").exists(),
        "no token key in {}: start `spar control --state-dir {}` first",
        key.display(),
        state_dir.display()
    );
    let issuer = TokenIssuer::load_or_create(&key)?;
    println!("{}", issuer.mint(subject, ttl)?);
    Ok(())
}

fn cert(
    state_dir: &std::path::Path,
    trust_domain: &str,
    identity: &str,
    out: &std::path::Path,
    ttl: Duration,
) -> anyhow::Result<()> {
    let id: spar_identity::Identity = identity
        .parse()
        .map_err(|e| anyhow::anyhow!("{identity:?} is not a SPIFFE workload identity: {e}"))?;
    let dir = state_dir.join("ca");
    anyhow::ensure!(
        dir.join("root-cert.pem").exists(),
        "no CA in {}: start `spar control --state-dir {}` first",
        dir.display(),
        state_dir.display()
    );
    let ca = spar_identity::CertificateAuthority::load_or_create(&dir, trust_domain)?;
    let (csr_pem, key_pem) = spar_identity::make_csr(Some(&id))?;
    let issued = ca.sign_csr(&csr_pem, &id, ttl)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("cert-chain.pem"), issued.chain.join(""))?;
    spar_identity::write_private_file(&out.join("key.pem"), &key_pem)?;
    std::fs::write(out.join("root-cert.pem"), ca.root_pem())?;
    println!("{}", out.display());
    Ok(())
}
