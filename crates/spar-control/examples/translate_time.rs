//! Times each stage of building a snapshot from a config directory (load, first snapshot),
//! then one change of each kind through `Snapshot::apply` (a Pod, a Service and an
//! AuthorizationPolicy are translated incrementally, a Namespace's labels retranslate the
//! mesh), for profiling the control plane at scale: `cargo run --release -p spar-control
//! --example translate_time -- DIR` (a directory from `bench/control-scale/gen.py`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use spar_control::dir_files::DirFiles;
use spar_control::registry::MeshSettings;
use spar_control::snapshot::Snapshot;
use spar_model::{Kind, Resource, Spec};

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: translate_time DIR");
        std::process::exit(2);
    };
    let t = Instant::now();
    let files = match DirFiles::load(std::path::Path::new(&dir)) {
        Ok(f) => f,
        Err(problems) => {
            eprintln!("{} problems, first: {:?}", problems.len(), problems.first());
            std::process::exit(1);
        }
    };
    println!(
        "load (every core): {:?} ({} resources), RSS {} MB",
        t.elapsed(),
        files.len(),
        rss_mb()
    );
    let mesh = MeshSettings::default();
    let t = Instant::now();
    let all = files.all().map(|r| (r.key(), Some(r.clone())));
    let mut snap = Snapshot::apply(&Snapshot::default(), 1, &mesh, all, |_| BTreeMap::new());
    println!(
        "first snapshot (registry, translation, encoding): {:?} ({} addresses), RSS {} MB",
        t.elapsed(),
        snap.xds.addresses.len(),
        rss_mb()
    );
    let first = |kind: Kind| {
        files
            .all()
            .find(|r| r.kind == kind)
            .map(|r| (**r).clone())
            .unwrap_or_else(|| panic!("the directory has no {kind}"))
    };
    let mut pod = first(Kind::Pod);
    pod.meta.labels.insert("version".into(), "v2".into());
    let mut svc = first(Kind::Service);
    if let Spec::Service(s) = &mut svc.spec
        && let Some(p) = s.ports.first_mut()
    {
        p.port += 1;
    }
    let mut ap = first(Kind::AuthorizationPolicy);
    if let Spec::AuthorizationPolicy(a) = &mut ap.spec {
        a.action = Some("DENY".into());
    }
    let mut ns = first(Kind::Namespace);
    ns.meta.labels.insert("spar.io/bench".into(), "1".into());
    let changes: [(&str, Resource); 4] = [
        ("one Pod's labels (incremental)", pod),
        ("one Service's port (incremental)", svc),
        ("one AuthorizationPolicy's action (incremental)", ap),
        ("one Namespace's labels (full translation)", ns),
    ];
    for (i, (what, r)) in changes.into_iter().enumerate() {
        let t = Instant::now();
        let next = Snapshot::apply(
            &snap,
            i as u64 + 2,
            &mesh,
            [(r.key(), Some(Arc::new(r)))],
            |_| BTreeMap::new(),
        );
        let took = t.elapsed();
        let changed = next.changes_since(snap.generation).unwrap_or_default();
        println!(
            "{what}: {took:?} ({} addresses, {} authorizations, {} L7 hosts changed)",
            changed.names.addresses.len(),
            changed.names.authorizations.len(),
            changed.names.l7.len()
        );
        snap = next;
    }
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
