//! `spar control`: run the control plane in the foreground, and `spar control token` to mint
//! a bearer token from the control plane's state directory.

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
    let mut opts = Options::new(args.state_dir.clone());
    opts.config_dir = args.config.clone();
    opts.grpc_addr = args.listen;
    opts.admin_addr = args.admin;
    opts.mesh = MeshSettings {
        trust_domain: args.trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
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
