//! The cluster-in-a-box commands: up, down, status, exec, logs, label.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use spar_box::state::{BoxState, DEFAULT_STATE_DIR, Paths, alive};

#[derive(Args)]
pub struct UpArgs {
    /// Kubernetes-shaped YAML (Namespaces, ServiceAccounts, Services, Deployments) and Istio resources.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Return once every pod is running and ready, leaving the mesh running.
    #[arg(short = 'd', long)]
    detach: bool,
    /// A box file naming the nodes and their pod CIDRs (default: two nodes).
    #[arg(long = "box")]
    box_file: Option<PathBuf>,
    /// How long `-d` waits for readiness.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Workload certificate lifetime issued by the box's CA (default 24h; e.g. 30s to watch rotation).
    #[arg(long)]
    cert_ttl: Option<String>,
    /// Lifetime of the bearer tokens the box mints for its proxies; each is minted again at
    /// half its life (e.g. 20s to watch it happen).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// Also run Istio's Prometheus addon (istio-system/prometheus, Debian's `prometheus`)
    /// scraping every pod and node proxy; `spar status` prints its address.
    #[arg(long)]
    observability: bool,
}

#[derive(Args)]
pub struct StateArgs {
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct PodArgs {
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// A pod name, or deploy/NAME for a deployment's first replica.
    pod: String,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pod: PodArgs,
    /// The command, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct LabelArgs {
    /// Only `namespace` (or `ns`) is supported.
    kind: String,
    name: String,
    /// KEY=VALUE to set, KEY- to remove.
    #[arg(required = true)]
    changes: Vec<String>,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    spar_model::duration::parse_duration(s)
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let spar_bin = std::env::current_exe().context("cannot find the spar binary")?;
    let opts = spar_box::up::UpOptions {
        paths: args.paths.clone(),
        box_file: args.box_file.clone(),
        state_dir: args.state_dir.clone(),
        spar_bin: spar_bin.clone(),
        cert_ttl: args.cert_ttl.clone(),
        token_ttl: args.token_ttl,
        observability: args.observability,
    };
    if !args.detach {
        eprintln!("spar up: starting the mesh; Ctrl-C stops it and removes everything");
        return Ok(spar_box::up::run(opts)?);
    }
    // Check everything we can before detaching, so mistakes are reported here.
    spar_box::up::preflight(&opts)?;
    let paths = Paths::new(&args.state_dir);
    std::fs::create_dir_all(&args.state_dir)?;
    let _ = std::fs::remove_file(paths.state());
    let log = std::fs::File::create(paths.daemon_log())?;
    let mut cmd = std::process::Command::new(&spar_bin);
    cmd.arg("up").arg("--state-dir").arg(&args.state_dir);
    if let Some(b) = &args.box_file {
        cmd.arg("--box").arg(b);
    }
    if let Some(t) = &args.cert_ttl {
        cmd.arg("--cert-ttl").arg(t);
    }
    if args.observability {
        cmd.arg("--observability");
    }
    cmd.arg("--token-ttl")
        .arg(format!("{}s", args.token_ttl.as_secs().max(1)));
    cmd.args(&args.paths)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .context("cannot start the mesh in the background")?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + args.timeout;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if !alive(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            let log = std::fs::read_to_string(paths.daemon_log()).unwrap_or_default();
            anyhow::bail!("the mesh did not start:\n{log}");
        }
        if let Ok(s) = BoxState::read(&paths)
            && s.ready
            && !s.pods.is_empty()
        {
            print!("{}", spar_box::commands::status(&args.state_dir)?);
            println!(
                "\nThe mesh is running. Try:\n  spar exec -n <ns> deploy/<name> -- spar echo client http://<service>:<port>/ --count 10\n  spar status\n  spar down"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            let st = spar_box::commands::status(&args.state_dir).unwrap_or_default();
            anyhow::bail!(
                "pods not ready within {:?} (the mesh keeps running; `spar down` stops it):\n{st}",
                args.timeout
            );
        }
    }
}

pub fn down(args: StateArgs) -> anyhow::Result<()> {
    print!("{}", spar_box::commands::down(&args.state_dir)?);
    Ok(())
}

pub fn status(args: StateArgs) -> anyhow::Result<()> {
    print!("{}", spar_box::commands::status(&args.state_dir)?);
    Ok(())
}

pub fn exec(args: ExecArgs) -> ExitCode {
    match spar_box::commands::exec(
        &args.pod.state_dir,
        &args.pod.namespace,
        &args.pod.pod,
        &args.command,
    ) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("spar: {e}");
            ExitCode::from(125)
        }
    }
}

pub fn logs(args: PodArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        spar_box::commands::logs(&args.state_dir, &args.namespace, &args.pod)?
    );
    Ok(())
}

pub fn label(args: LabelArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.kind.as_str(), "namespace" | "ns" | "namespaces"),
        "only `spar label namespace NAME KEY=VALUE` is supported"
    );
    print!(
        "{}",
        spar_box::commands::label_namespace(&args.state_dir, &args.name, &args.changes)?
    );
    Ok(())
}
