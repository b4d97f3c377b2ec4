//! Loading configuration from files, directories and strings: parse, decode, validate,
//! and locate every problem as `file:line`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::problem::{Problem, Severity};
use crate::resource::{Resource, ResourceKey, decode};
use crate::validate::validate;
use crate::yaml::parse_documents_within;

/// How much one file may hold. YAML parsers bound their input so that a hostile file cannot
/// take the process down; a mesh's config directory is trusted but large (a file of 100,000
/// pods is normal at scale), so the bounds are generous and can be raised from the
/// environment of the process that loads (`spar control`, `spar validate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// YAML documents in one file (`SPAR_MAX_DOCUMENTS_PER_FILE`).
    pub documents_per_file: usize,
    /// YAML nodes (maps, lists, scalars) in one file, all documents together
    /// (`SPAR_MAX_NODES_PER_FILE`).
    pub nodes_per_file: usize,
}

impl Limits {
    pub const DOCUMENTS_ENV: &'static str = "SPAR_MAX_DOCUMENTS_PER_FILE";
    pub const NODES_ENV: &'static str = "SPAR_MAX_NODES_PER_FILE";
    pub const DEFAULT_DOCUMENTS: usize = 200_000;
    pub const DEFAULT_NODES: usize = 20_000_000;

    /// The limits from the environment, else the defaults. A value that is not a number is
    /// ignored (with the default in force), so a typo cannot lower a limit to zero.
    pub fn from_env() -> Limits {
        let get = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        Limits {
            documents_per_file: get(Self::DOCUMENTS_ENV, Self::DEFAULT_DOCUMENTS),
            nodes_per_file: get(Self::NODES_ENV, Self::DEFAULT_NODES),
        }
    }

    /// What a breach of the parser's budget means, naming the limit and how to raise it.
    pub fn explain(&self, breach: &serde_saphyr::budget::BudgetBreach) -> String {
        use serde_saphyr::budget::BudgetBreach as B;
        match breach {
            B::Documents { .. } => format!(
                "the file holds more than {} YAML documents (limit: documents per file; raise it with {}=N or split the file)",
                self.documents_per_file,
                Self::DOCUMENTS_ENV
            ),
            B::Nodes { .. } | B::Events { .. } => format!(
                "the file holds more than {} YAML nodes (limit: nodes per file; raise it with {}=N or split the file)",
                self.nodes_per_file,
                Self::NODES_ENV
            ),
            other => format!("the YAML exceeds a parser limit: {other:?}"),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_env()
    }
}

/// Where a resource came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: u64,
}

/// The outcome of a load: the resources that decoded and every problem found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub resources: Vec<(Resource, Origin)>,
    pub problems: Vec<Problem>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    fn merge(&mut self, other: Loaded) {
        self.resources.extend(other.resources);
        self.problems.extend(other.problems);
    }

    /// Two documents defining the same object is an error (the later one names the earlier).
    fn check_duplicates(&mut self) {
        let mut seen: BTreeMap<ResourceKey, Origin> = BTreeMap::new();
        for (r, origin) in &self.resources {
            if let Some(first) = seen.get(&r.key()) {
                self.problems.push(Problem {
                    file: origin.file.clone(),
                    line: origin.line,
                    resource: format!("{}/{}", r.kind, r.name()),
                    field: "metadata.name".into(),
                    message: format!(
                        "{} is already defined at {}:{}",
                        r.key(),
                        first.file,
                        first.line
                    ),
                    severity: Severity::Error,
                });
            } else {
                seen.insert(r.key(), origin.clone());
            }
        }
    }
}

/// Load YAML text (possibly several documents) named `source` in messages.
pub fn load_str(source: &str, text: &str) -> Loaded {
    load_str_within(source, text, &Limits::default())
}

/// `load_str` within `limits`.
pub fn load_str_within(source: &str, text: &str, limits: &Limits) -> Loaded {
    let mut out = Loaded::default();
    let docs = match parse_documents_within(text, limits) {
        Ok(d) => d,
        Err(e) => {
            out.problems.push(Problem {
                file: source.to_string(),
                line: e.line,
                resource: String::new(),
                field: String::new(),
                message: format!("invalid YAML: {}", e.message),
                severity: Severity::Error,
            });
            return out;
        }
    };
    for doc in docs {
        match decode(&doc.value) {
            Err(e) => out.problems.push(Problem {
                file: source.to_string(),
                line: doc.line_of(&e.path),
                resource: match (e.kind, e.name.as_str()) {
                    (Some(k), n) => format!("{k}/{n}"),
                    (None, "") => String::new(),
                    (None, n) => n.to_string(),
                },
                field: e.path,
                message: e.message,
                severity: Severity::Error,
            }),
            Ok(r) => {
                for issue in validate(&r) {
                    out.problems.push(Problem {
                        file: source.to_string(),
                        line: doc.line_of(&issue.path),
                        resource: format!("{}/{}", r.kind, r.name()),
                        field: issue.path,
                        message: issue.message,
                        severity: issue.severity,
                    });
                }
                let origin = Origin {
                    file: source.to_string(),
                    line: doc.line,
                };
                out.resources.push((r, origin));
            }
        }
    }
    out.check_duplicates();
    out
}

/// Load files and directories (recursively: `*.yaml`, `*.yml`, `*.json`, in name order).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    load_paths_within(paths, &Limits::default())
}

/// `load_paths` within `limits`.
pub fn load_paths_within<P: AsRef<Path>>(paths: &[P], limits: &Limits) -> Loaded {
    let mut out = Loaded::default();
    for p in paths {
        let p = p.as_ref();
        let files = match collect_files(p) {
            Ok(f) => f,
            Err(e) => {
                out.problems.push(io_problem(p, &e));
                continue;
            }
        };
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    let mut one = load_str_within(&f.display().to_string(), &text, limits);
                    // Duplicates are checked once over everything, below.
                    one.problems
                        .retain(|p| !p.message.contains("is already defined at"));
                    out.merge(one);
                }
                Err(e) => out.problems.push(io_problem(&f, &e)),
            }
        }
    }
    out.check_duplicates();
    out
}

/// A file that cannot be read, as a problem naming it.
pub fn io_problem(p: &Path, e: &std::io::Error) -> Problem {
    Problem {
        file: p.display().to_string(),
        line: 0,
        resource: String::new(),
        field: String::new(),
        message: format!("cannot read: {e}"),
        severity: Severity::Error,
    }
}

/// The config files under `p` (or `p` itself when it is a file), sorted.
pub fn collect_files(p: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(p)?;
    if meta.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if e.is_dir() {
            out.extend(collect_files(&e)?);
        } else if [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Name;

    #[test]
    fn problems_carry_file_line_kind_and_field() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n      weight: 60\n    - destination:\n        host: reviews\n      weight: 60\n";
        let l = load_str("vs.yaml", text);
        let errs: Vec<String> = l.errors().map(|p| p.to_string()).collect();
        assert_eq!(
            errs,
            vec![
                "vs.yaml:8: VirtualService/reviews: spec.http[0].route: weights add up to 120; they must add up to 100"
            ]
        );
    }

    #[test]
    fn unknown_field_line() {
        let text = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n    colour: blue\n";
        let l = load_str("s.yaml", text);
        let e = l.errors().next().expect("an error");
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn a_file_past_a_limit_is_refused_naming_the_limit() {
        let doc = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n---\n";
        // The old parser default (1,024 documents) no longer applies.
        let many: String = (0..1500)
            .map(|i| doc.replace("name: n", &format!("name: n{i}")))
            .collect();
        let l = load_str("big.yaml", &many);
        assert!(!l.has_errors(), "{:?}", l.problems.first());
        assert_eq!(l.resources.len(), 1500);
        let small = Limits {
            documents_per_file: 100,
            nodes_per_file: 1_000_000,
        };
        let l = load_str_within("big.yaml", &many, &small);
        let e = l.errors().next().expect("refused");
        assert!(
            e.message.contains("more than 100 YAML documents")
                && e.message.contains("documents per file")
                && e.message.contains(Limits::DOCUMENTS_ENV),
            "{e}"
        );
        let few_nodes = Limits {
            documents_per_file: 10_000,
            nodes_per_file: 500,
        };
        let e = load_str_within("big.yaml", &many, &few_nodes)
            .errors()
            .next()
            .map(|p| p.message.clone())
            .expect("refused");
        assert!(
            e.contains("more than 500 YAML nodes") && e.contains("nodes per file"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_errors() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
        let l = load_str("n.yaml", text);
        assert!(
            l.errors()
                .any(|p| p.message.contains("already defined at n.yaml:1")),
            "{:?}",
            l.problems
        );
    }

    #[test]
    fn namespaces_and_labels_of_loaded_pods_are_shared() {
        // Every pod of a workload repeats its namespace and labels: loaded, they are one
        // allocation each, and the resource key shares the metadata's.
        let pod = |n: u32| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}, namespace: shared-ns, labels: {{app: shared-app}}}}\nspec: {{containers: [{{name: c}}]}}\n---\n"
            )
        };
        let l = load_str("p.yaml", &(pod(1) + &pod(2)));
        assert!(!l.has_errors(), "{:?}", l.problems);
        let [(a, _), (b, _)] = &l.resources[..] else {
            panic!("two pods: {:?}", l.resources.len())
        };
        let ns = |r: &Resource| r.meta.namespace.clone().expect("a namespace");
        assert!(Name::ptr_eq(&ns(a), &ns(b)));
        let (ka, va) = a.meta.labels.first_key_value().expect("a label");
        let (kb, vb) = b.meta.labels.first_key_value().expect("a label");
        assert!(Name::ptr_eq(ka, kb) && Name::ptr_eq(va, vb));
        assert!(Name::ptr_eq(&a.key().namespace, &ns(a)));
        assert!(Name::ptr_eq(&a.key().name, &a.meta.name));
    }
}
