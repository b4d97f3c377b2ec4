//! `spar proxy node`: run the ambient node proxy for one node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use spar_proxy::control::ControlPlane;
use spar_proxy::node::{self, NodeOptions};

#[derive(Subcommand)]
pub enum ProxyCommand {
    /// The per-node L4 proxy (ambient mode): HBONE mTLS, in-pod capture, L4 policy, TCP metrics.
    Node(NodeArgs),
}

#[derive(Args)]
pub struct NodeArgs {
    /// The node this proxy serves.
    #[arg(long)]
    node: String,
    /// The control plane's xDS/CA address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    xds: String,
    /// The name in the control plane's certificate for that address.
    #[arg(long, default_value = "localhost")]
    xds_name: String,
    /// The mesh root certificate (PEM).
    #[arg(long)]
    root_cert: PathBuf,
    /// The node's bearer token (from `spar control token node NAME`).
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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    spar_model::duration::parse_duration(s)
}

pub fn run(cmd: ProxyCommand) -> anyhow::Result<()> {
    let ProxyCommand::Node(a) = cmd;
    spar_identity::install_crypto_provider();
    let root_pem = std::fs::read_to_string(&a.root_cert)
        .with_context(|| format!("cannot read the root certificate {}", a.root_cert.display()))?;
    let opts = NodeOptions {
        node: a.node.clone(),
        control: ControlPlane {
            addr: a.xds.clone(),
            server_name: a.xds_name.clone(),
            root_pem,
            token_file: a.token_file.clone(),
        },
        trust_domain: a.trust_domain.clone(),
        cert_ttl: a.cert_ttl,
        netns_template: a.netns_template.clone(),
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (node_state, gen_tx) = node::Node::new(&opts)?;
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
        eprintln!(
            "spar proxy node {}: metrics, readiness and config dump on http://{bound}",
            a.node
        );
        tokio::spawn(spar_proxy::admin::serve(listener, node_state.clone()));
        tokio::select! {
            _ = node::run(opts, node_state, gen_tx) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })
}
