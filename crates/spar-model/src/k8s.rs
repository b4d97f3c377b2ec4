//! The Kubernetes kinds the mesh reads: Namespace, ServiceAccount, Service, Deployment, Pod, Node.
//! Only `spec`/`status` fields Spar uses are typed; the rest of a pod template is accepted and
//! reported as unsupported by validation.

use serde::{Deserialize, Serialize};

use crate::meta::{LabelSelector, Labels, Name, ObjectMeta, Unsupported, model};

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
        // Interned: every replica of a workload repeats its account, every pod of a node its name.
        pub service_account_name: Option<Name>,
        pub service_account: Option<Name>,
        pub containers: Vec<Container>,
        pub node_name: Option<Name>,
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

impl PodSpec {
    /// The number of the container port called `name` (a Service's named `targetPort`).
    pub fn port_named(&self, name: &str) -> Option<u32> {
        self.containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|cp| cp.name.as_deref() == Some(name))
            .map(|cp| cp.container_port)
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

/// A Secret: its type and its entries, decoded (`data` is base64, `stringData` plain text).
#[derive(Clone, PartialEq, Default)]
pub struct Secret {
    pub kind: String,
    pub data: std::collections::BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values: a Secret holds keys.
        f.debug_struct("Secret")
            .field("type", &self.kind)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secret {
    pub(crate) fn decode(
        kind: Option<&serde_json::Value>,
        data: Option<&serde_json::Value>,
        string_data: Option<&serde_json::Value>,
    ) -> Result<Secret, (String, String)> {
        use base64::Engine as _;
        let mut out = Secret {
            kind: kind
                .and_then(|k| k.as_str())
                .unwrap_or("Opaque")
                .to_string(),
            data: Default::default(),
        };
        let map = |v: Option<&serde_json::Value>,
                   field: &str|
         -> Result<Vec<(String, String)>, (String, String)> {
            match v {
                None | Some(serde_json::Value::Null) => Ok(Vec::new()),
                Some(serde_json::Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_str()
                            .map(|s| (k.clone(), s.to_string()))
                            .ok_or_else(|| (format!("{field}.{k}"), "expected a string".into()))
                    })
                    .collect(),
                Some(_) => Err((field.into(), "expected a map of strings".into())),
            }
        };
        for (k, v) in map(data, "data")? {
            let clean: String = v.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(clean.as_bytes())
                .map_err(|_| (format!("data.{k}"), "not base64".to_string()))?;
            out.data.insert(k, bytes);
        }
        for (k, v) in map(string_data, "stringData")? {
            out.data.insert(k, v.into_bytes());
        }
        Ok(out)
    }
}
