//! Checks of the Kubernetes kinds the box reads: Service, Deployment.

use super::Checker;

impl Checker {
    pub(super) fn service(&mut self, s: &crate::k8s::ServiceSpec) {
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in s.ports.iter().enumerate() {
            self.port(format!("spec.ports[{i}].port"), p.port);
            if s.ports.len() > 1 && p.name.is_none() {
                self.err(
                    format!("spec.ports[{i}].name"),
                    "ports must be named when a Service has more than one",
                );
            }
            if let Some(n) = &p.name
                && !names.insert(n)
            {
                self.err(
                    format!("spec.ports[{i}].name"),
                    format!("duplicate port name {n:?}"),
                );
            }
            if let Some(crate::k8s::IntOrString::Int(t)) = &p.target_port {
                self.port(format!("spec.ports[{i}].targetPort"), *t);
            }
            self.one_of(
                format!("spec.ports[{i}].protocol"),
                &p.protocol,
                &["TCP", "UDP", "SCTP"],
            );
        }
        if let Some(ip) = &s.cluster_ip
            && ip != "None"
        {
            self.ip("spec.clusterIP", ip);
        }
    }

    /// A pod's service account names its identity (`.../ns/NS/sa/SA`): it must be a plain
    /// Kubernetes name, so no name can pose as another identity's path.
    pub(super) fn pod_spec(&mut self, path: &str, s: &crate::k8s::PodSpec) {
        for (field, v) in [
            ("serviceAccountName", &s.service_account_name),
            ("serviceAccount", &s.service_account),
        ] {
            if let Some(sa) = v {
                self.name(&format!("{path}.{field}"), sa);
            }
        }
        if let Some(n) = &s.node_name {
            self.name(&format!("{path}.nodeName"), n);
        }
    }

    pub(super) fn job(&mut self, s: &crate::k8s::JobSpec) {
        self.pod_spec("spec.template.spec", &s.template.spec);
        match s.template.spec.restart_policy.as_deref() {
            Some("Never" | "OnFailure") => {}
            other => self.err(
                "spec.template.spec.restartPolicy",
                format!("a Job's pods need restartPolicy Never or OnFailure, not {other:?}"),
            ),
        }
        self.containers(&s.template.spec.containers);
    }

    pub(super) fn deployment(&mut self, s: &crate::k8s::DeploymentSpec) {
        self.pod_spec("spec.template.spec", &s.template.spec);
        let labels = &s.template.metadata.labels;
        if s.selector.match_labels.is_empty() && s.selector.match_expressions.is_empty() {
            self.err("spec.selector", "a selector is required");
        } else if !s.selector.matches(labels) {
            self.err(
                "spec.template.metadata.labels",
                "the pod template's labels do not match spec.selector",
            );
        }
        // A waypoint Gateway's Deployment (made by the box) runs the waypoint proxy alone.
        let gateway = labels.contains_key(crate::gateway_api::GATEWAY_NAME_LABEL)
            || labels.contains_key("spar.io/gateway-role");
        if !(gateway && s.template.spec.containers.is_empty()) {
            self.containers(&s.template.spec.containers);
        }
        if let Some(p) = s
            .template
            .spec
            .restart_policy
            .as_deref()
            .filter(|p| *p != "Always")
        {
            self.err(
                "spec.template.spec.restartPolicy",
                format!(
                    "a Deployment's pods restart Always, not {p:?}; use a Job to run to completion"
                ),
            );
        }
    }

    fn containers(&mut self, containers: &[crate::k8s::Container]) {
        if containers.is_empty() {
            self.err(
                "spec.template.spec.containers",
                "at least one container is required",
            );
        }
        for (i, c) in containers.iter().enumerate() {
            if c.command.is_empty() && c.args.is_empty() {
                self.err(
                    format!("spec.template.spec.containers[{i}].command"),
                    "the cluster in a box runs containers[].command on the host; set it",
                );
            }
        }
    }
}
