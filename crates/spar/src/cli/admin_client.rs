//! `spar apply -f FILE` / `spar delete -f FILE`: send YAML to the control plane's admin API.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct FileArgs {
    /// YAML file (or - for standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Namespace for resources that name none (like `kubectl apply -n`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Admin address of the control plane (default: from the state directory, else 127.0.0.1:15014).
    #[arg(long)]
    admin: Option<String>,
    /// File holding the control plane's admin token (default: `admin-token` in its state
    /// directory).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// A box's state directory, or a control plane's own (`spar control --state-dir`).
    #[arg(long, default_value = "/run/spar")]
    state_dir: PathBuf,
}

pub fn apply(args: &FileArgs, path: &str) -> anyhow::Result<()> {
    let admin = control(args)?;
    let mut failed = false;
    for f in &args.files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read standard input")?;
            ("stdin".to_string(), s)
        } else {
            (
                f.display().to_string(),
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?,
            )
        };
        let (code, body) = admin
            .post(
                &format!(
                    "{path}?source={}{}",
                    encode(&name),
                    args.namespace
                        .as_deref()
                        .map(|n| format!("&namespace={}", encode(n)))
                        .unwrap_or_default()
                ),
                &text,
            )
            .with_context(|| {
                format!(
                    "cannot reach the control plane's admin API at {}; is `spar control` running?",
                    admin.addr
                )
            })?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        for key in ["applied", "deleted"] {
            for k in v[key].as_array().into_iter().flatten() {
                println!(
                    "{} {}",
                    k.as_str().unwrap_or_default(),
                    if key == "applied" {
                        "configured"
                    } else {
                        "deleted"
                    }
                );
            }
        }
        for p in v["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(v["problems"].as_array().into_iter().flatten())
        {
            eprintln!("{}", p.as_str().unwrap_or_default());
        }
        failed |= code != 200;
    }
    anyhow::ensure!(
        !failed,
        "the control plane rejected the request; nothing from the rejected file was changed"
    );
    Ok(())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The control plane to talk to: a box's (`<state>/control`) or a `spar control`'s own state
/// directory, unless `--admin` and `--admin-token-file` say otherwise.
fn control(args: &FileArgs) -> anyhow::Result<spar_box::admin::Control> {
    use spar_box::admin::Control;
    let found = Control::locate(&args.state_dir.join("control"))
        .or_else(|| Control::locate(&args.state_dir));
    let addr = args
        .admin
        .clone()
        .or_else(|| found.as_ref().map(|c| c.addr.clone()))
        .unwrap_or_else(|| "127.0.0.1:15014".into());
    let token = match &args.admin_token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the admin token {}", f.display()))?
            .trim()
            .to_string(),
        None => found.map(|c| c.token).with_context(|| {
            format!(
                "no control plane state in {} (its admin-token is needed); pass --state-dir or --admin-token-file",
                args.state_dir.display()
            )
        })?,
    };
    Ok(Control { addr, token })
}
