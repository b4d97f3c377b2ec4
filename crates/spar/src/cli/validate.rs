//! `spar validate PATH...`: print every problem as `file:line: kind/name: field: what is wrong`.
//! Each file is checked on its own (as `istioctl validate` does): alternative versions of one
//! resource in separate files are fine here, while the control plane's config directory,
//! which is one configuration, rejects them as duplicates.

use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(paths: &[PathBuf]) -> ExitCode {
    let (mut resources, mut errors, mut warnings) = (0, 0, 0);
    for path in paths {
        let files = match spar_model::load::collect_files(path) {
            Ok(f) => f,
            Err(e) => {
                println!("{}:0: cannot read: {e}", path.display());
                errors += 1;
                continue;
            }
        };
        for f in files {
            let loaded = spar_model::load_paths(&[&f]);
            for p in &loaded.problems {
                println!("{p}");
            }
            let e = loaded.errors().count();
            errors += e;
            warnings += loaded.problems.len() - e;
            resources += loaded.resources.len();
        }
    }
    eprintln!("{resources} resources checked: {errors} errors, {warnings} warnings");
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
