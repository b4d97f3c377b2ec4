//! Command-line interface: argument parsing and dispatch to the subcommands.

mod admin_client;
mod analyze;
mod control;
mod dashboard;
mod echo;
mod jwt;
mod mesh;
mod proxy;
mod proxy_config;
mod validate;
mod waypoint;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "spar",
    version,
    about = "Spar: a service mesh in one binary (Istio's APIs, sidecar and ambient modes)"
)]
struct Cli {
    /// Log filter (e.g. info, debug, spar_control=debug); also read from SPAR_LOG.
    #[arg(long, global = true, env = "SPAR_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: config, registry, CA, delta xDS and the admin API.
    Control(Box<control::ControlArgs>),
    /// Check Istio and Kubernetes YAML files or directories; exit non-zero on errors.
    Validate {
        /// Files or directories (searched recursively for .yaml, .yml and .json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Create or update resources in the running control plane.
    Apply(admin_client::FileArgs),
    /// Delete resources from the running control plane.
    Delete(admin_client::FileArgs),
    /// Start a whole mesh on this machine (cluster in a box): nodes, pods, services, control plane.
    Up(mesh::UpArgs),
    /// Stop the running mesh and remove everything it created.
    Down(mesh::StateArgs),
    /// List nodes and pods of the running mesh.
    Status(mesh::StateArgs),
    /// Run a command inside a pod: spar exec [-n NS] POD|deploy/NAME -- CMD...
    Exec(mesh::ExecArgs),
    /// Print a pod's output.
    Logs(mesh::PodArgs),
    /// Change namespace labels live: spar label namespace NS KEY=VALUE|KEY-
    Label(mesh::LabelArgs),
    /// Run a data-plane proxy.
    #[command(subcommand)]
    Proxy(Box<proxy::ProxyCommand>),
    /// The test workload: echo server, load client, TCP and server-first exchanges.
    #[command(subcommand)]
    Echo(echo::EchoCommand),
    /// A local JWT issuer for RequestAuthentication: signing keys, their JWKS, tokens.
    #[command(subcommand)]
    Jwt(jwt::JwtCommand),
    /// Ambient waypoints: deploy one for a namespace (like istioctl waypoint apply).
    #[command(subcommand)]
    Waypoint(waypoint::WaypointCommand),
    /// A web page for the running box: topology with rates, errors, latency and mTLS;
    /// proxies, certificates, connections; config problems.
    Dashboard(dashboard::DashboardArgs),
    /// Find config problems across resources, like istioctl analyze (files, or --box).
    Analyze(analyze::AnalyzeArgs),
    /// What the proxy of a box pod holds: proxy-config
    /// workloads|services|endpoints|clusters|routes|listeners|secrets|all POD.
    ProxyConfig(proxy_config::ProxyConfigArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // The box sends proxies' stderr to log files: colour codes only for a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Control(args) => control::run(*args),
        Command::Validate { paths } => return validate::run(&paths),
        Command::Apply(args) => admin_client::apply(&args, "/apply"),
        Command::Delete(args) => admin_client::apply(&args, "/delete"),
        Command::Echo(cmd) => echo::run(cmd),
        Command::Jwt(cmd) => jwt::run(cmd),
        Command::Waypoint(cmd) => waypoint::run(cmd),
        Command::Proxy(cmd) => proxy::run(*cmd),
        Command::Up(args) => mesh::up(args),
        Command::Down(args) => mesh::down(args),
        Command::Status(args) => mesh::status(args),
        Command::Exec(args) => return mesh::exec(args),
        Command::Logs(args) => mesh::logs(args),
        Command::Label(args) => mesh::label(args),
        Command::ProxyConfig(args) => proxy_config::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Analyze(args) => match analyze::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
