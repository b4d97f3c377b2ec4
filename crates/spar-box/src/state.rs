//! What a running box records in its state directory, so that commands in other shells
//! (`spar status`, `spar exec`, `spar down`) agree with it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::plan::Plan;
use crate::supervise::ContainerState;

pub const DEFAULT_STATE_DIR: &str = "/run/spar";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoxState {
    /// The `spar up` process that owns the mesh.
    pub pid: i32,
    pub plan: Plan,
    /// Namespace labels, as applied to the control plane.
    pub namespaces: std::collections::BTreeMap<String, spar_model::Labels>,
    pub pods: Vec<PodStatus>,
    pub ready: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: String,
    pub ready: bool,
    pub containers: Vec<ContainerState>,
}

pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Self {
        Paths {
            root: root.to_path_buf(),
        }
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("box.json")
    }
    pub fn control(&self) -> PathBuf {
        self.root.join("control")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn pod_log(&self, ns: &str, pod: &str) -> PathBuf {
        self.logs().join(format!("{ns}_{pod}.log"))
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("up.log")
    }
    pub fn proxies(&self) -> PathBuf {
        self.root.join("proxies")
    }
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }

    /// Remove what a box leaves in its state directory that a later box must not inherit: the
    /// control plane's state (applied resources, CA and token keys), the tokens minted for its
    /// proxies and pods, the proxies' endpoint files and Prometheus' config and targets. Logs stay for reading after `down`;
    /// the next `spar up` starts new ones.
    pub fn clear_box_state(&self) -> std::io::Result<()> {
        for dir in [
            self.control(),
            self.proxies(),
            self.tokens(),
            crate::observability::dir(&self.root),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::remove_file(self.state()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl BoxState {
    pub fn read(paths: &Paths) -> Result<BoxState, Error> {
        let text = std::fs::read_to_string(paths.state())
            .map_err(|_| Error::NotRunning(paths.root.display().to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", paths.state().display())))
    }

    /// Hold the state file's lock: `spar up` and `spar label` both read, change and write it,
    /// and without the lock one could write back a state the other just replaced.
    pub fn lock(paths: &Paths) -> Result<std::fs::File, Error> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.root.join("box.lock"))?;
        f.lock()?;
        Ok(f)
    }

    /// Write atomically (temp file + rename), so readers never see half a file.
    pub fn write(&self, paths: &Paths) -> Result<(), Error> {
        let tmp = paths
            .state()
            .with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, paths.state())?;
        Ok(())
    }

    /// The data-plane mode of a namespace, from its labels (Istio's label names).
    pub fn mode(&self, namespace: &str) -> &'static str {
        let labels = self.namespaces.get(namespace);
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(|v| v.as_str());
        if get("istio-injection") == Some("enabled") {
            "sidecar"
        } else if get("istio.io/dataplane-mode") == Some("ambient") {
            "ambient"
        } else {
            "none"
        }
    }

    /// Find a pod by name or `deploy/NAME` (the first replica).
    pub fn find_pod(&self, namespace: &str, name: &str) -> Result<&crate::plan::PodPlan, Error> {
        let found = match name
            .strip_prefix("deploy/")
            .or_else(|| name.strip_prefix("deployment/"))
        {
            Some(d) => self
                .plan
                .pods
                .iter()
                .find(|p| p.namespace == namespace && p.deployment == d),
            None => self
                .plan
                .pods
                .iter()
                .find(|p| p.namespace == namespace && p.name == name),
        };
        found.ok_or_else(|| Error::NoPod(format!("{namespace}/{name}")))
    }
}

/// True when a process with this pid exists.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_leaves_nothing_a_later_box_would_inherit_but_its_logs() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = Paths::new(dir.path());
        let obs = crate::observability::dir(&p.root);
        for d in [
            p.control(),
            p.proxies(),
            p.tokens(),
            obs.join("targets"),
            p.logs(),
        ] {
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("f"), "x").expect("write");
        }
        std::fs::write(p.state(), "{}").expect("write");
        p.clear_box_state().expect("clear");
        for gone in [p.control(), p.proxies(), p.tokens(), obs, p.state()] {
            assert!(!gone.exists(), "{} outlived its box", gone.display());
        }
        assert!(
            p.logs().join("f").exists(),
            "logs stay for reading after down"
        );
        p.clear_box_state().expect("clearing twice is fine");
    }
}
