//! `spar proxy-config KIND POD`: what the proxy serving a box pod holds (its sidecar,
//! waypoint or gateway; an ambient pod's node proxy), from its config dump, as tables like
//! `istioctl proxy-config`, or `-o json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;
use spar_box::state::{BoxState, DEFAULT_STATE_DIR, Paths};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Workloads,
    Services,
    Endpoints,
    Clusters,
    Routes,
    Listeners,
    Secrets,
    /// The whole config dump.
    All,
}

#[derive(Args)]
pub struct ProxyConfigArgs {
    section: Section,
    /// A pod name, or deploy/NAME for a deployment's first replica.
    pod: String,
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// Output: a table, or the dump's section as JSON.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn run(args: ProxyConfigArgs) -> anyhow::Result<()> {
    let (who, addr, uid) = locate(&args.state_dir, &args.namespace, &args.pod)?;
    let (code, body) = spar_box::admin::get(&addr, "/config_dump")
        .with_context(|| format!("cannot reach the {who} at {addr}"))?;
    anyhow::ensure!(code == 200, "the {who} answered {code}: {body}");
    let dump: Value = serde_json::from_str(&body).context("the config dump is not JSON")?;
    let key = match args.section {
        Section::All => None,
        Section::Secrets => Some("certificates"),
        Section::Workloads => Some("workloads"),
        Section::Services => Some("services"),
        Section::Endpoints => Some("endpoints"),
        Section::Clusters => Some("clusters"),
        Section::Routes => Some("routes"),
        Section::Listeners => Some("listeners"),
    };
    let mut part = key.map(|k| dump[k].clone()).unwrap_or(dump);
    if args.section == Section::Listeners {
        part = serde_json::json!({ &uid: part[&uid].clone() });
    }
    if args.output == "json" || args.section == Section::All {
        println!("{}", serde_json::to_string_pretty(&part)?);
    } else {
        eprintln!("# {who} at {addr}");
        print!("{}", table(args.section, &part, &uid));
    }
    Ok(())
}

/// Which proxy serves the pod: (what it is, its admin address, the pod's workload uid).
fn locate(state_dir: &Path, ns: &str, pod: &str) -> anyhow::Result<(String, String, String)> {
    let paths = Paths::new(state_dir);
    let s = BoxState::read(&paths)?;
    let p = s.find_pod(ns, pod)?;
    let key = format!("{}-{}", p.namespace, p.name);
    let (who, file) = if p.sidecar {
        ("sidecar", format!("sidecar-{key}.json"))
    } else if spar_box::waypoint::gateway_of(p).is_some() {
        ("waypoint", format!("waypoint-{key}.json"))
    } else if spar_box::ingress::is_ingress(p) {
        ("gateway", format!("gateway-{key}.json"))
    } else {
        ("node proxy", format!("{}.json", p.node))
    };
    let f = paths.proxies().join(&file);
    let addr = std::fs::read_to_string(&f)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["admin"].as_str().map(str::to_string))
        .with_context(|| {
            format!(
                "the {who} of {}/{} has not started (no {})",
                p.namespace,
                p.name,
                f.display()
            )
        })?;
    let uid = format!("Kubernetes//Pod/{}/{}", p.namespace, p.name);
    Ok((format!("{who} of {}/{}", p.namespace, p.name), addr, uid))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn render(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn table(section: Section, v: &Value, uid: &str) -> String {
    match section {
        Section::Workloads => render(
            &[
                "NAME",
                "NAMESPACE",
                "IP",
                "NODE",
                "PROTOCOL",
                "SERVICE-ACCOUNT",
                "WAYPOINT",
            ],
            list(v)
                .map(|w| {
                    vec![
                        s(&w["name"]),
                        s(&w["namespace"]),
                        list(&w["addresses"]).map(s).collect::<Vec<_>>().join(","),
                        s(&w["node"]),
                        if w["tunnel_protocol"] == 1 {
                            "HBONE"
                        } else {
                            "TCP"
                        }
                        .into(),
                        s(&w["service_account"]),
                        waypoint(&w["waypoint"]),
                    ]
                })
                .collect(),
        ),
        Section::Services => render(
            &["NAME", "NAMESPACE", "VIP", "PORTS", "WAYPOINT"],
            list(v)
                .map(|sv| {
                    vec![
                        s(&sv["name"]),
                        s(&sv["namespace"]),
                        list(&sv["addresses"])
                            .map(|a| s(&a["address"]))
                            .collect::<Vec<_>>()
                            .join(","),
                        list(&sv["ports"])
                            .map(|p| format!("{}->{}", s(&p["service_port"]), s(&p["target_port"])))
                            .collect::<Vec<_>>()
                            .join(","),
                        waypoint(&sv["waypoint"]),
                    ]
                })
                .collect(),
        ),
        Section::Endpoints => render(
            &["ENDPOINT", "STATUS", "SERVICE", "WORKLOAD"],
            list(v)
                .flat_map(|e| {
                    let ports: Vec<(u64, u64)> = list(&e["ports"])
                        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
                        .collect();
                    ports.into_iter().map(move |(sp, tp)| {
                        let port = if tp == 0 { sp } else { tp };
                        vec![
                            format!("{}:{port}", s(&e["address"])),
                            if e["healthy"] == true {
                                "HEALTHY"
                            } else {
                                "UNHEALTHY"
                            }
                            .into(),
                            format!("{}:{sp}", s(&e["service"])),
                            s(&e["workload"]),
                        ]
                    })
                })
                .collect(),
        ),
        Section::Clusters => render(
            &["SERVICE", "PORTS", "DESTINATION-RULE", "SUBSETS", "BALANCE"],
            list(v)
                .map(|c| {
                    let ports = c["ports"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(p, proto)| format!("{p}/{}", s(proto)))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    let subsets = c["subsets"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(n, m)| format!("{n}({m})"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        s(&c["service"]),
                        ports,
                        dash(s(&c["destination_rule"])),
                        dash(subsets),
                        s(&c["balance"]),
                    ]
                })
                .collect(),
        ),
        Section::Routes => render(
            &["SERVICE", "VIRTUAL-SERVICE", "ROUTE", "MATCH", "TO"],
            list(v)
                .flat_map(|r| {
                    let (svc, vs) = (s(&r["service"]), dash(s(&r["virtual_service"])));
                    let http = list(&r["http"]).map({
                        let (svc, vs) = (svc.clone(), vs.clone());
                        move |h| {
                            vec![
                                svc.clone(),
                                vs.clone(),
                                dash(s(&h["name"])),
                                s(&h["match"]),
                                s(&h["to"]),
                            ]
                        }
                    });
                    let tcp = list(&r["tcp"]).map(move |t| {
                        vec![
                            svc.clone(),
                            vs.clone(),
                            "(tcp)".into(),
                            format!("ports {}", s(&t["ports"])),
                            list(&t["to"]).map(s).collect::<Vec<_>>().join(", "),
                        ]
                    });
                    http.chain(tcp).collect::<Vec<_>>()
                })
                .collect(),
        ),
        Section::Listeners => render(
            &["ADDRESS", "SERVES"],
            list(&v[uid]).map(|l| vec![s(&l[0]), s(&l[1])]).collect(),
        ),
        Section::Secrets => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            render(
                &["IDENTITY", "EXPIRES (unix)", "VALID FOR"],
                list(v)
                    .map(|c| {
                        let exp = c["expires_unix"].as_u64();
                        vec![
                            s(&c["identity"]),
                            exp.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
                            match exp {
                                Some(e) if e > now => format!("{}s", e - now),
                                Some(_) => "EXPIRED".into(),
                                None => "not issued yet".into(),
                            },
                        ]
                    })
                    .collect(),
            )
        }
        Section::All => String::new(),
    }
}

fn dash(v: String) -> String {
    if v.is_empty() { "-".into() } else { v }
}

fn waypoint(w: &Value) -> String {
    if w.is_null() {
        return "-".into();
    }
    let host = &w["hostname"];
    if !host.is_null() {
        return format!("{}/{}", s(&host["namespace"]), s(&host["hostname"]));
    }
    s(&w["address"]["address"])
}
