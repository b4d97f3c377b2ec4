//! How a container's command is confined, so a compromised pod gets no mesh keys: inside
//! its pod's network namespace (`ip netns exec`, which also gives it a mount namespace of
//! its own with the pod's /etc/hosts), with fresh, empty `/run` and `/tmp` and the box's
//! state directory (CA key, token key, tokens) covered by an empty tmpfs, `/proc` showing
//! only its own processes, and the command run as `nobody` (65534) with no capabilities,
//! or as the `runAsUser` the Deployment asks for. Even as root it keeps no `CAP_NET_ADMIN`
//! (it cannot flush its capture table), `CAP_SYS_ADMIN` (it cannot unmount what hides the
//! keys) or `CAP_SYS_PTRACE` (it cannot read the proxies' memory).
//!
//! The `spar` binary is bound read-only at `/run/spar-bin/spar`, first on `PATH`, so the
//! examples' `spar echo` runs whatever directory the box was built in.

use std::path::Path;

/// The user a container runs as without `runAsUser`.
pub const NOBODY: u32 = 65534;

/// Where the `spar` binary appears inside a pod.
pub const SPAR_BIN_DIR: &str = "/run/spar-bin";

/// Capabilities a root container loses (a root container keeps the rest, as in a
/// Kubernetes runtime's default set, minus what reaches past its own pod).
const DROPPED_FROM_ROOT: &str = "-net_admin,-sys_admin,-sys_ptrace,-sys_module,-sys_rawio,-bpf,-perfmon,-sys_boot,-mac_admin,-mac_override,-sys_time";

/// The set-up run as root inside the pod's mount namespace before dropping to the user.
/// `$1` is the spar binary, `$2` and `$3` a read-only volume's source and target (empty for
/// none; the target under /run), then how many directories to hide and those directories,
/// then the command. The volume's source is held as the working directory while /run and
/// /tmp are covered (the box's state, where the source lives, is often under one of them)
/// and bound from there without resolving its path again (`mount -c`).
const SCRIPT: &str = r#"set -e
bin="$1"; src="$2"; dst="$3"; shift 3
if [ -n "$src" ]; then cd "$src"; else cd /; fi
mount -t tmpfs -o mode=0755,size=4m spar-run /run
mkdir -p /run/spar-bin
: > /run/spar-bin/spar
mount --bind "$bin" /run/spar-bin/spar
mount -o remount,bind,ro /run/spar-bin/spar
mount -t tmpfs -o mode=1777,size=256m spar-tmp /tmp
if [ -n "$src" ]; then
  mkdir -p "$dst"
  mount -c --bind . "$dst"
  mount -c -o remount,bind,ro "$dst"
fi
cd /
n="$1"; shift
while [ "$n" -gt 0 ]; do
  if [ -d "$1" ]; then mount -t tmpfs -o mode=0700,size=64k spar-hidden "$1"; fi
  shift; n=$((n - 1))
done
mount -t proc -o hidepid=2 proc /proc 2>/dev/null || true
exec "$@"
"#;

/// Who a container runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn of(run_as_user: Option<u32>, run_as_group: Option<u32>) -> User {
        let uid = run_as_user.unwrap_or(NOBODY);
        User {
            uid,
            gid: run_as_group.unwrap_or(if uid == 0 { 0 } else { NOBODY }),
        }
    }
}

/// A read-only view of a host directory inside one pod (under `/run`), like a ConfigMap
/// volume: the box's Prometheus reads its config and targets through one. A pod has at
/// most one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: std::path::PathBuf,
    /// Must be under `/run` (a fresh tmpfs where the target can be made).
    pub target: String,
}

/// The program and arguments that run `argv` confined in pod network namespace `netns` as
/// `user`, with `volume` mounted and `hide` covered.
pub fn argv(
    netns: &str,
    user: User,
    spar_bin: &Path,
    volume: Option<&Bind>,
    hide: &[&Path],
    argv: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = [
        "ip",
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        SCRIPT,
        "spar-sandbox",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push(spar_bin.display().to_string());
    match volume {
        Some(b) => out.extend([b.source.display().to_string(), b.target.clone()]),
        None => out.extend([String::new(), String::new()]),
    }
    out.push(hide.len().to_string());
    out.extend(hide.iter().map(|p| p.display().to_string()));
    out.push("setpriv".into());
    if user.uid == 0 {
        out.push(format!("--bounding-set={DROPPED_FROM_ROOT}"));
    } else {
        out.extend([
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
        ]);
    }
    out.push("--no-new-privs".into());
    out.push("--".into());
    out.extend(argv.iter().cloned());
    out
}

/// The `PATH` a pod's processes get (the host's would point into directories a pod's user
/// cannot read, such as a root-only `~/.pyenv`).
pub const POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `PATH` inside a pod: the bound `spar` first.
pub fn path_env(rest: &str) -> String {
    if rest.is_empty() {
        SPAR_BIN_DIR.to_string()
    } else {
        format!("{SPAR_BIN_DIR}:{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_by_default_root_only_when_asked_and_never_with_net_admin() {
        assert_eq!(
            User::of(None, None),
            User {
                uid: NOBODY,
                gid: NOBODY
            }
        );
        assert_eq!(
            User::of(Some(1000), None),
            User {
                uid: 1000,
                gid: NOBODY
            }
        );
        let cmd = |u| {
            argv(
                "spar-ns-pod",
                u,
                Path::new("/x/spar"),
                None,
                &[Path::new("/state")],
                &["sleep".into(), "1".into()],
            )
        };
        let nobody = cmd(User::of(None, None));
        assert_eq!(&nobody[..4], ["ip", "netns", "exec", "spar-ns-pod"]);
        assert!(nobody.contains(&"--reuid=65534".to_string()), "{nobody:?}");
        assert!(nobody.contains(&"--bounding-set=-all".to_string()));
        assert_eq!(
            nobody[nobody.len() - 2..],
            ["sleep".to_string(), "1".into()]
        );
        let hide = nobody.iter().position(|a| a == "/state").expect("hidden");
        assert_eq!(nobody[hide - 1], "1", "one directory to hide");
        let root = cmd(User::of(Some(0), None));
        assert!(!root.iter().any(|a| a.starts_with("--reuid")));
        assert!(
            root.iter()
                .any(|a| a.contains("-net_admin") && a.contains("-sys_admin"))
        );
        assert!(root.contains(&"--no-new-privs".to_string()));
    }
}
