//! Creating and removing the box's network: a namespace per node (with a bridge) and per pod
//! (with a veth on its node's bridge), a fabric namespace joining the nodes, service VIPs as
//! nftables DNAT inside each pod, and per-pod `/etc/hosts`. Everything lives inside namespaces
//! named `spar-*`, so teardown is "delete those namespaces".

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use crate::Error;
use crate::plan::{Plan, PodPlan, ServicePlan};

pub const FABRIC_NETNS: &str = "spar-fabric";
const ETC_NETNS: &str = "/etc/netns";

/// Run a command; its stderr becomes the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<(), Error> {
    run("ip", args).map(|_| ())
}

/// Build the whole network of `plan`. On error the caller tears down what exists.
pub fn create(plan: &Plan) -> Result<(), Error> {
    ip(&["netns", "add", FABRIC_NETNS])?;
    ip(&["-n", FABRIC_NETNS, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", FABRIC_NETNS, "link", "set", "br0", "up"])?;
    for (i, n) in plan.nodes.iter().enumerate() {
        let ns = n.netns.as_str();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        sysctl(ns, "net.ipv4.ip_forward=1")?;
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        let gw = format!(
            "{}/{}",
            n.gateway,
            n.pod_cidr.split('/').nth(1).unwrap_or("24")
        );
        ip(&["-n", ns, "addr", "add", &gw, "dev", "br0"])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        // The node's uplink: one end on the fabric bridge, one end in the node.
        let fab = format!("n{i}");
        ip(&[
            "-n",
            FABRIC_NETNS,
            "link",
            "add",
            &fab,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            ns,
        ])?;
        ip(&[
            "-n",
            FABRIC_NETNS,
            "link",
            "set",
            &fab,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", n.fabric_ip),
            "dev",
            "uplink",
        ])?;
        ip(&["-n", ns, "link", "set", "uplink", "up"])?;
    }
    for n in &plan.nodes {
        for other in plan.nodes.iter().filter(|o| o.name != n.name) {
            ip(&[
                "-n",
                &n.netns,
                "route",
                "add",
                &other.pod_cidr,
                "via",
                &other.fabric_ip.to_string(),
            ])?;
        }
    }
    for pod in &plan.pods {
        create_pod(plan, pod)?;
    }
    // Ingress gateways are reached from the host.
    for (n, pod) in plan
        .pods
        .iter()
        .filter(|p| crate::ingress::is_ingress(p))
        .enumerate()
    {
        crate::ingress::link_to_host(pod, n)?;
    }
    Ok(())
}

fn sysctl(ns: &str, kv: &str) -> Result<(), Error> {
    run("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", kv]).map(|_| ())
}

pub(crate) fn create_pod(plan: &Plan, pod: &PodPlan) -> Result<(), Error> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.name == pod.node)
        .ok_or_else(|| Error::Invalid(format!("pod {} has no node", pod.name)))?;
    let ns = pod.netns.as_str();
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // Capture is IPv4 only (no dual stack yet): a pod's interface gets no IPv6 address, so
    // no pod can reach another over link-local IPv6 around mTLS and policy. Loopback keeps
    // ::1 for applications that bind it.
    sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1")?;
    // Containers run as `nobody` (see `sandbox`): low ports stay bindable, as in Docker.
    sysctl(ns, "net.ipv4.ip_unprivileged_port_start=0")?;
    ip(&[
        "-n",
        &node.netns,
        "link",
        "add",
        &pod.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ])?;
    ip(&[
        "-n",
        &node.netns,
        "link",
        "set",
        &pod.host_veth,
        "master",
        "br0",
        "up",
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{}/{}", pod.ip, pod.prefix),
        "dev",
        "eth0",
    ])?;
    // The veth was created in the node's namespace, so the pod's default did not apply.
    sysctl(ns, "net.ipv6.conf.eth0.disable_ipv6=1")?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &node.gateway.to_string(),
    ])?;
    write_etc(plan, pod)?;
    apply_services(pod, &plan.services)
}

/// Per-pod `/etc/hosts` and `/etc/resolv.conf`; `ip netns exec` mounts them over `/etc`.
fn write_etc(plan: &Plan, pod: &PodPlan) -> Result<(), Error> {
    let dir = PathBuf::from(ETC_NETNS).join(&pod.netns);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hosts"), hosts_file(pod, &plan.services))?;
    let resolv = format!(
        "# spar cluster in a box: names come from /etc/hosts\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        ns = pod.namespace
    );
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    Ok(())
}

/// `NAME` (own namespace), `NAME.NS` and `NAME.NS.svc.cluster.local` for every Service.
pub fn hosts_file(pod: &PodPlan, services: &[ServicePlan]) -> String {
    let mut s = format!(
        "127.0.0.1 localhost\n::1 localhost\n{} {}\n",
        pod.ip, pod.name
    );
    for svc in services {
        let _ = write!(
            s,
            "{} {n}.{ns} {n}.{ns}.svc {n}.{ns}.svc.cluster.local",
            svc.vip,
            n = svc.name,
            ns = svc.namespace
        );
        if svc.namespace == pod.namespace {
            let _ = write!(s, " {}", svc.name);
        }
        s.push('\n');
    }
    s
}

/// kube-proxy's role for a pod outside the mesh: VIP:port -> a random ready endpoint, as one
/// nftables table replaced atomically.
pub fn service_rules(services: &[ServicePlan]) -> String {
    let mut s = String::from(
        "table ip spar_services {\n  chain output {\n    type nat hook output priority -100; policy accept;\n",
    );
    for svc in services {
        for p in &svc.ports {
            if p.endpoints.is_empty() {
                // No endpoints: refuse quickly rather than time out.
                let _ = writeln!(
                    s,
                    "    ip daddr {} tcp dport {} reject with tcp reset",
                    svc.vip, p.port
                );
                continue;
            }
            let map: Vec<String> = p
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                .collect();
            let _ = writeln!(
                s,
                "    ip daddr {} tcp dport {} dnat ip to numgen random mod {} map {{ {} }}",
                svc.vip,
                p.port,
                p.endpoints.len(),
                map.join(", ")
            );
        }
    }
    s.push_str("  }\n}\n");
    s
}

pub fn apply_services(pod: &PodPlan, services: &[ServicePlan]) -> Result<(), Error> {
    // add + delete + define in one transaction: replaces the table whether or not it exists.
    let text = format!(
        "add table ip spar_services\ndelete table ip spar_services\n{}",
        service_rules(services)
    );
    nft(&pod.netns, &text)
}

/// Feed a ruleset to `nft -f -` inside a namespace.
pub fn nft(netns: &str, text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("nft -f - (in {netns})"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Every network namespace the box made (`spar-*`), from `ip netns list`.
pub fn box_namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("spar-"))
        .map(str::to_string)
        .collect()
}

/// Remove every namespace (and with it every veth, bridge and nftables table) and every
/// `/etc/netns/spar-*` directory. Safe to run twice, and after a crash.
pub fn destroy() {
    for ns in box_namespaces() {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            tracing::warn!(%ns, error = %e, "could not delete network namespace");
        }
    }
    if let Ok(entries) = std::fs::read_dir(ETC_NETNS) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("spar-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ServicePortPlan;

    fn svc(ns: &str, name: &str, vip: [u8; 4], eps: Vec<([u8; 4], u32)>) -> ServicePlan {
        ServicePlan {
            namespace: ns.into(),
            name: name.into(),
            vip: vip.into(),
            ports: vec![ServicePortPlan {
                port: 80,
                endpoints: eps.into_iter().map(|(ip, p)| (ip.into(), p)).collect(),
            }],
        }
    }

    #[test]
    fn rules_and_hosts() {
        let services = vec![
            svc(
                "a",
                "web",
                [10, 96, 0, 10],
                vec![([10, 244, 1, 2], 8080), ([10, 244, 2, 2], 8080)],
            ),
            svc("b", "db", [10, 96, 0, 11], vec![]),
        ];
        let rules = service_rules(&services);
        assert!(rules.contains("ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.2.2 . 8080 }"), "{rules}");
        assert!(
            rules.contains("ip daddr 10.96.0.11 tcp dport 80 reject with tcp reset"),
            "{rules}"
        );
        let pod = PodPlan {
            namespace: "a".into(),
            name: "client-0".into(),
            deployment: "client".into(),
            node: "node-1".into(),
            netns: "spar-a-client-0".into(),
            ip: [10, 244, 1, 9].into(),
            prefix: 24,
            host_veth: "v0".into(),
            labels: Default::default(),
            service_account: "default".into(),
            containers: vec![],
            annotations: Default::default(),
            restart_policy: "Always".into(),
            sidecar: false,
            app_metrics: None,
        };
        let hosts = hosts_file(&pod, &services);
        assert!(
            hosts.contains("10.96.0.10 web.a web.a.svc web.a.svc.cluster.local web\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("10.96.0.11 db.b db.b.svc db.b.svc.cluster.local\n"),
            "{hosts}"
        );
    }
}
