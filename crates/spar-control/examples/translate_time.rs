//! Times each stage of building a snapshot from a config directory (load, registry,
//! translation), for profiling the control plane at scale: `cargo run --release -p
//! spar-control --example translate_time -- DIR`.

use std::time::Instant;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: translate_time DIR");
        std::process::exit(2);
    };
    let t = Instant::now();
    let loaded = spar_model::load_paths(&[&dir]);
    println!(
        "load: {:?} ({} resources, {} problems)",
        t.elapsed(),
        loaded.resources.len(),
        loaded.problems.len()
    );
    let t = Instant::now();
    let reg = spar_control::registry::Registry::new(
        Default::default(),
        loaded.resources.into_iter().map(|(r, _)| r),
    );
    println!("registry: {:?}", t.elapsed());
    let t = Instant::now();
    let tr = spar_control::translate::translate(&reg);
    println!(
        "translate: {:?} ({} addresses)",
        t.elapsed(),
        tr.addresses.len()
    );
}
