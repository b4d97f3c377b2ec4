//! The Kubernetes kinds the mesh reads: Namespace, ServiceAccount, Service, Deployment, Pod, Node.
//! Only `spec`/`status` fields Spar uses are typed; the rest of a pod template is accepted and
//! reported as unsupported by validation.

use serde::{Deserialize, Serialize};

use crate::meta::{LabelSelector, Labels, ObjectMeta, Unsupported, model};

model! {
    pub struct ServiceSpec {
        pub selector: Labels,
        pub ports: Vec<ServicePort>,
        #[serde(rename = "type")]
        pub kind: Option<String>,
        #[serde(rename = "clusterIP")]
        pub cluster_ip: Option<String>,
        #[serde(rename = "clusterIPs")]
        pub cluster_ips: Vec<String>,
        pub ip_families: Vec<String>,
        pub ip_family_policy: Option<String>,
        pub session_affinity: Option<String>,
        pub publish_not_ready_addresses: Option<bool>,
        pub internal_traffic_policy: Option<String>,
    }
}

model! {
    pub struct ServicePort {
        pub name: Option<String>,
        pub port: u32,
        pub target_port: Option<IntOrString>,
        pub protocol: Option<String>,
        pub app_protocol: Option<String>,
        pub node_port: Option<u32>,
    }
}

/// `targetPort` may be a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    String(String),
}

model! {
    pub struct DeploymentSpec {
        pub replicas: Option<u32>,
        pub selector: LabelSelector,
        pub template: PodTemplate,
        pub strategy: Unsupported,
        pub min_ready_seconds: Unsupported,
        pub revision_history_limit: Unsupported,
    }
}

model! {
    /// batch/v1 Job: one pod that runs to completion (`restartPolicy` Never or OnFailure).
    pub struct JobSpec {
        pub template: PodTemplate,
        pub backoff_limit: Option<u32>,
        pub completions: Unsupported,
        pub parallelism: Unsupported,
        pub active_deadline_seconds: Unsupported,
        pub ttl_seconds_after_finished: Unsupported,
        pub selector: Unsupported,
    }
}

model! {
    pub struct PodTemplate {
        pub metadata: ObjectMeta,
        pub spec: PodSpec,
    }
}

model! {
    pub struct PodSpec {
        pub service_account_name: Option<String>,
        pub service_account: Option<String>,
        pub containers: Vec<Container>,
        pub node_name: Option<String>,
        pub termination_grace_period_seconds: Option<u64>,
        pub restart_policy: Option<String>,
        pub init_containers: Unsupported,
        pub volumes: Unsupported,
        pub security_context: Unsupported,
        pub affinity: Unsupported,
        pub tolerations: Unsupported,
        pub node_selector: Unsupported,
    }
}

model! {
    pub struct Container {
        pub name: String,
        /// Not used by the cluster in a box: the command runs on the host, in the pod's netns.
        pub image: Option<String>,
        pub image_pull_policy: Option<String>,
        pub command: Vec<String>,
        pub args: Vec<String>,
        pub ports: Vec<ContainerPort>,
        pub env: Vec<EnvVar>,
        pub readiness_probe: Option<Probe>,
        pub liveness_probe: Unsupported,
        pub startup_probe: Unsupported,
        pub resources: Unsupported,
        pub security_context: Unsupported,
        pub volume_mounts: Unsupported,
        pub working_dir: Option<String>,
    }
}

model! {
    pub struct ContainerPort {
        pub container_port: u32,
        pub name: Option<String>,
        pub protocol: Option<String>,
    }
}

model! {
    pub struct EnvVar {
        pub name: String,
        pub value: Option<String>,
        pub value_from: Unsupported,
    }
}

model! {
    pub struct Probe {
        pub http_get: Option<HttpGetAction>,
        pub tcp_socket: Option<TcpSocketAction>,
        pub initial_delay_seconds: Option<u64>,
        pub period_seconds: Option<u64>,
        pub timeout_seconds: Option<u64>,
        pub failure_threshold: Option<u64>,
        pub success_threshold: Option<u64>,
        pub exec: Unsupported,
    }
}

model! {
    pub struct HttpGetAction {
        pub path: Option<String>,
        pub port: Option<IntOrString>,
    }
}

model! {
    pub struct TcpSocketAction {
        pub port: Option<IntOrString>,
    }
}

model! {
    pub struct PodStatus {
        #[serde(rename = "podIP")]
        pub pod_ip: Option<String>,
        /// Pending, Running, Succeeded, Failed.
        pub phase: Option<String>,
        /// Spar's box sets this; Kubernetes uses conditions.
        pub ready: Option<bool>,
        pub conditions: Unsupported,
        #[serde(rename = "hostIP")]
        pub host_ip: Option<String>,
    }
}

model! {
    pub struct NodeSpec {
        #[serde(rename = "podCIDR")]
        pub pod_cidr: Option<String>,
        #[serde(rename = "podCIDRs")]
        pub pod_cidrs: Vec<String>,
    }
}

model! {
    pub struct NodeStatus {
        pub addresses: Vec<NodeAddress>,
    }
}

model! {
    pub struct NodeAddress {
        #[serde(rename = "type")]
        pub kind: String,
        pub address: String,
    }
}

impl PodSpec {
    /// The pod's service account, `default` when unset (as in Kubernetes).
    pub fn service_account(&self) -> &str {
        self.service_account_name
            .as_deref()
            .or(self.service_account.as_deref())
            .unwrap_or("default")
    }
}
