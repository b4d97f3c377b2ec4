//! `spar analyze [PATH...] [--box]`: Istio's analyzers that matter most, over files or over
//! the running box's config (`spar_model::analyze`), printed as `istioctl analyze` prints
//! them. Exits 79 when a message reaches `--failure-threshold`, as `istioctl analyze` does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use spar_box::state::DEFAULT_STATE_DIR;
use spar_model::analyze::{Level, analyze};
use spar_model::{Origin, Resource};

/// `istioctl analyze`'s exit code when it found messages at or above the threshold.
const FOUND: u8 = 79;

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Files or directories of YAML (with --box: added to the box's config, as
    /// `istioctl analyze FILE` adds files to the cluster's).
    paths: Vec<PathBuf>,
    /// Analyze the running box's config (what `spar up` and `spar apply` gave its control
    /// plane).
    #[arg(long = "box")]
    in_box: bool,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The lowest level that makes the exit code 79.
    #[arg(long, default_value = "error", value_parser = ["error", "warning", "info"])]
    failure_threshold: String,
    /// Output: text (one line per message) or json.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.in_box || !args.paths.is_empty(),
        "nothing to analyze: give files or directories, or --box for the running box"
    );
    let mut resources: Vec<(Resource, Option<Origin>)> = Vec::new();
    if args.in_box {
        resources.extend(from_box(&args.state_dir)?.into_iter().map(|r| (r, None)));
    }
    if !args.paths.is_empty() {
        let loaded = spar_model::load_paths(&args.paths);
        for p in &loaded.problems {
            eprintln!("{p}");
        }
        anyhow::ensure!(
            !loaded.has_errors(),
            "the files do not load (see above); `spar validate` says more"
        );
        // A file's resource replaces the box's of the same kind, namespace and name.
        for (r, o) in loaded.resources {
            resources.retain(|(b, _)| b.key() != r.key());
            resources.push((r, Some(o)));
        }
    }
    let messages = analyze(&resources);
    if args.output == "json" {
        let list: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "level": format!("{:?}", m.level),
                    "code": m.code,
                    "kind": m.kind.name(),
                    "namespace": m.namespace,
                    "name": m.name,
                    "origin": m.origin,
                    "message": m.text,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if messages.is_empty() {
        println!(
            "No validation issues found when analyzing {} resources.",
            resources.len()
        );
    } else {
        for m in &messages {
            println!("{m}");
        }
    }
    let threshold = match args.failure_threshold.as_str() {
        "info" => Level::Info,
        "warning" => Level::Warning,
        _ => Level::Error,
    };
    Ok(if messages.iter().any(|m| m.level <= threshold) {
        ExitCode::from(FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

/// The resources the box's control plane holds now (its `/debug/registry`).
pub(crate) fn from_box(state_dir: &std::path::Path) -> anyhow::Result<Vec<Resource>> {
    let control = spar_box::admin::Control::locate(&state_dir.join("control"))
        .or_else(|| spar_box::admin::Control::locate(state_dir))
        .with_context(|| {
            format!(
                "no running box or control plane in {} (start one with `spar up -d`, or pass --state-dir)",
                state_dir.display()
            )
        })?;
    let (code, body) = control
        .get("/debug/registry")
        .with_context(|| format!("cannot reach the control plane at {}", control.addr))?;
    anyhow::ensure!(code == 200, "the control plane answered {code}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the control plane's registry is not JSON")?;
    let mut out = Vec::new();
    for item in v["items"].as_array().into_iter().flatten() {
        match spar_model::resource::decode(item) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("skipping a resource the analyzers cannot read: {e:?}"),
        }
    }
    Ok(out)
}
