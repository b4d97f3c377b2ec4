//! The watched config directory, file by file: each file's stamp (size, modification time,
//! inode) and the resources it defines. A poll stats the files and re-parses only those whose
//! stamp changed, then names the resource keys that changed, so editing one file of a hundred
//! costs one file's parse and a publication of what it changed, whatever the mesh's size. The
//! first load parses the files on every core.
//!
//! A change with an error (bad YAML, a resource defined twice) is rejected whole and the last
//! good set stays in force, as with `load_paths`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use spar_model::load::{collect_files, io_problem};
use spar_model::{Limits, Loaded, Origin, Problem, Resource, ResourceKey, Severity};

/// What identifies a file's version: size, modification time, inode and, for a file modified
/// after (or less than two seconds before) the previous poll, a hash of its content.
/// Modification times move at the kernel's tick, so two writes of the same size within one
/// tick leave the same time; like git's "racy" check, such a file is read and hashed until its
/// time is old enough to tell.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    meta: (u64, i64, i64, u64),
    content: Option<u64>,
}

impl PartialEq for Stamp {
    fn eq(&self, o: &Stamp) -> bool {
        self.meta == o.meta
            && match (self.content, o.content) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// How recent a modification must be for the content to be hashed.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct DirFiles {
    root: Option<PathBuf>,
    /// Accepted files and the keys each defines.
    files: BTreeMap<PathBuf, (Stamp, Vec<ResourceKey>)>,
    /// Every stamp of the last poll (accepted or not), to tell a new change from an old one.
    seen: BTreeMap<PathBuf, Stamp>,
    resources: BTreeMap<ResourceKey, (Arc<Resource>, Origin)>,
    /// When the last poll's stamps were taken.
    scanned_at: Option<std::time::SystemTime>,
}

/// The files a poll found changed or removed, before parsing.
#[derive(Debug)]
pub struct Scan {
    at: std::time::SystemTime,
    now: BTreeMap<PathBuf, Stamp>,
    changed: Vec<PathBuf>,
    removed: Vec<PathBuf>,
}

/// A scan with its changed files parsed.
#[derive(Debug)]
pub struct Parsed {
    scan: Scan,
    loaded: Vec<Loaded>,
}

/// What a poll found.
#[derive(Debug, PartialEq)]
pub enum Refresh {
    Unchanged,
    /// Accepted: the keys put or removed.
    Changed(BTreeSet<ResourceKey>),
    /// Rejected (the last good set stays): the errors.
    Rejected(Vec<Problem>),
}

impl DirFiles {
    /// No directory: nothing, ever.
    pub fn none() -> DirFiles {
        DirFiles::default()
    }

    /// Load every file under `root`; the errors when any file has one.
    pub fn load(root: &Path) -> Result<DirFiles, Vec<Problem>> {
        let mut d = DirFiles {
            root: Some(root.to_path_buf()),
            ..Default::default()
        };
        match d.refresh() {
            Refresh::Rejected(p) => Err(p),
            _ => Ok(d),
        }
    }

    pub fn get(&self, k: &ResourceKey) -> Option<&Arc<Resource>> {
        self.resources.get(k).map(|(r, _)| r)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.resources.values().map(|(r, _)| r)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Stat the files and take in what changed.
    pub fn refresh(&mut self) -> Refresh {
        match self.scan() {
            Err(p) => Refresh::Rejected(p),
            Ok(None) => Refresh::Unchanged,
            Ok(Some(scan)) => self.commit(DirFiles::parse(scan)),
        }
    }

    /// What changed since the last poll (None: nothing), without parsing. `scan`, `parse` and
    /// `commit` are apart so that a watcher parses without holding the lock that readers of
    /// the directory's resources take.
    pub fn scan(&self) -> Result<Option<Scan>, Vec<Problem>> {
        let Some(root) = self.root.clone() else {
            return Ok(None);
        };
        let at = std::time::SystemTime::now();
        let listing = collect_files(&root).map_err(|e| vec![io_problem(&root, &e)])?;
        let mut now = BTreeMap::new();
        for f in listing {
            match std::fs::metadata(&f) {
                Ok(m) => {
                    let s = stamp(&f, &m, self.scanned_at);
                    now.insert(f, s);
                }
                // Removed between the listing and the stat: gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(vec![io_problem(&f, &e)]),
            }
        }
        if now == self.seen {
            return Ok(None);
        }
        let changed: Vec<PathBuf> = now
            .iter()
            .filter(|(f, s)| self.files.get(*f).is_none_or(|(old, _)| old != *s))
            .map(|(f, _)| f.clone())
            .collect();
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !now.contains_key(*f))
            .cloned()
            .collect();
        Ok(Some(Scan {
            at,
            now,
            changed,
            removed,
        }))
    }

    /// Parse the changed files of `scan` (on every core).
    pub fn parse(scan: Scan) -> Parsed {
        let loaded = parse_all(&scan.changed);
        Parsed { scan, loaded }
    }

    /// Take in what was parsed, or reject it whole.
    pub fn commit(&mut self, parsed: Parsed) -> Refresh {
        let Parsed {
            scan:
                Scan {
                    at,
                    now,
                    changed,
                    removed,
                },
            loaded: parsed,
        } = parsed;
        self.seen = now.clone();
        self.scanned_at = Some(at);
        let mut errors: Vec<Problem> = Vec::new();
        for l in &parsed {
            for p in l
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Warning)
            {
                tracing::warn!("{p}");
            }
            errors.extend(l.errors().cloned());
        }
        // Defined twice: in two changed files, or in a changed file and one that stays.
        // Origins name files as `parse_one` displayed them (lossy for names that are not UTF-8,
        // so compared as displayed, not turned back into paths).
        let leaving: BTreeSet<String> = changed
            .iter()
            .chain(&removed)
            .map(|f| f.display().to_string())
            .collect();
        let mut incoming: BTreeMap<ResourceKey, &Origin> = BTreeMap::new();
        for (r, origin) in parsed.iter().flat_map(|l| &l.resources) {
            let k = r.key();
            let earlier = incoming.get(&k).copied().or_else(|| {
                self.resources
                    .get(&k)
                    .map(|(_, o)| o)
                    .filter(|o| !leaving.contains(&o.file))
            });
            if let Some(first) = earlier {
                errors.push(Problem {
                    file: origin.file.clone(),
                    line: origin.line,
                    resource: format!("{}/{}", r.kind, r.name()),
                    field: "metadata.name".into(),
                    message: format!("{k} is already defined at {}:{}", first.file, first.line),
                    severity: Severity::Error,
                });
            } else {
                incoming.insert(k, origin);
            }
        }
        if !errors.is_empty() {
            return Refresh::Rejected(errors);
        }
        let mut keys = BTreeSet::new();
        for f in changed.iter().chain(&removed) {
            if let Some((_, old)) = self.files.remove(f) {
                for k in old {
                    self.resources.remove(&k);
                    keys.insert(k);
                }
            }
        }
        for (f, l) in changed.iter().zip(parsed) {
            let mut defined = Vec::with_capacity(l.resources.len());
            for (r, origin) in l.resources {
                let k = r.key();
                defined.push(k.clone());
                keys.insert(k.clone());
                self.resources.insert(k, (Arc::new(r), origin));
            }
            self.files.insert(f.clone(), (now[f], defined));
        }
        Refresh::Changed(keys)
    }
}

fn stamp(f: &Path, m: &std::fs::Metadata, last_scan: Option<std::time::SystemTime>) -> Stamp {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    // Racy: modified after (or within a tick before) the last poll took its stamps, as git
    // judges its index entries; a file older than that cannot share a tick with a new write.
    let recent = match (m.modified(), last_scan) {
        (Ok(t), Some(last)) => t + RACY > last,
        _ => true,
    };
    let content = recent.then(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(f).unwrap_or_default().hash(&mut h);
        h.finish()
    });
    Stamp {
        meta: (m.len(), m.mtime(), m.mtime_nsec(), m.ino()),
        content,
    }
}

/// Parse `files` on every core (a 100,000-pod directory is mostly YAML parsing).
fn parse_all(files: &[PathBuf]) -> Vec<Loaded> {
    let limits = Limits::default();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Loaded>> = (0..files.len()).map(|_| None).collect();
    let done: Vec<Vec<(usize, Loaded)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        mine.push((i, parse_one(f, &limits)));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for (i, l) in done.into_iter().flatten() {
        out[i] = Some(l);
    }
    files
        .iter()
        .zip(out)
        .map(|(f, l)| {
            // A worker that panicked (a parser bug) leaves its files unparsed: an error, not
            // a silent gap.
            l.unwrap_or_else(|| Loaded {
                problems: vec![Problem {
                    message: "internal error while parsing this file".into(),
                    ..io_problem(f, &std::io::Error::other("parser"))
                }],
                ..Default::default()
            })
        })
        .collect()
}

fn parse_one(f: &Path, limits: &Limits) -> Loaded {
    match std::fs::read_to_string(f) {
        Ok(text) => {
            let mut l = spar_model::load::load_str_within(&f.display().to_string(), &text, limits);
            // Duplicates are checked over the whole directory (`refresh`).
            l.problems
                .retain(|p| !p.message.contains("is already defined at"));
            l
        }
        Err(e) => Loaded {
            problems: vec![io_problem(f, &e)],
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: u8) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: 10.0.0.{ip}}}\n---\n"
        )
    }

    fn names(keys: &BTreeSet<ResourceKey>) -> Vec<String> {
        keys.iter().map(|k| k.name.to_string()).collect()
    }

    /// Steps as an operator makes them; after each, what the poll says and what the
    /// directory holds.
    #[test]
    fn a_poll_reparses_only_changed_files_and_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |f: &str, text: &str| std::fs::write(dir.path().join(f), text).expect("write");
        write("1.yaml", &(pod("p1", 1) + &pod("p2", 2)));
        write("2.yaml", &pod("p3", 3));
        let mut d = DirFiles::load(dir.path()).expect("loads");
        assert_eq!(d.len(), 3);
        assert_eq!(d.refresh(), Refresh::Unchanged);

        // One file edited: only its keys.
        write("2.yaml", &(pod("p3", 9) + &pod("p4", 4)));
        let Refresh::Changed(k) = d.refresh() else {
            panic!("changed")
        };
        assert_eq!(names(&k), ["p3", "p4"]);
        assert_eq!(d.len(), 4);
        // Rewritten at once with the same size (likely within one tick of the file clock).
        write("2.yaml", &(pod("p3", 8) + &pod("p4", 4)));
        let Refresh::Changed(k) = d.refresh() else {
            panic!("same-size rewrite missed")
        };
        assert_eq!(names(&k), ["p3", "p4"]);

        // A resource defined twice: rejected, the last good set stays, and the same bad
        // state is not reported again until a file changes.
        write("3.yaml", &pod("p1", 7));
        let Refresh::Rejected(p) = d.refresh() else {
            panic!("rejected")
        };
        assert!(p[0].message.contains("is already defined at"), "{p:?}");
        assert!(p[0].message.contains("1.yaml"), "{p:?}");
        assert_eq!(d.len(), 4);
        assert_eq!(d.refresh(), Refresh::Unchanged);

        // Moved from 1.yaml to 3.yaml in one change: accepted, still defined.
        write("1.yaml", &pod("p2", 2));
        let Refresh::Changed(k) = d.refresh() else {
            panic!("changed")
        };
        assert_eq!(names(&k), ["p1", "p2"]);
        let p1 = d
            .get(&k.iter().next().expect("p1").clone())
            .expect("p1 still defined");
        assert!(format!("{:?}", p1.spec).contains("10.0.0.7"));

        // Bad YAML: rejected, nothing lost.
        write("2.yaml", "kind: [\n");
        assert!(matches!(d.refresh(), Refresh::Rejected(_)));
        assert_eq!(d.len(), 4);

        // A file removed: its keys go.
        std::fs::remove_file(dir.path().join("2.yaml")).expect("rm");
        let Refresh::Changed(k) = d.refresh() else {
            panic!("changed")
        };
        assert_eq!(names(&k), ["p3", "p4"]);
        assert_eq!(d.len(), 2);
    }
}
