//! `telemetry.istio.io/v1`: Telemetry (tracing, metrics, access logging).

use std::collections::BTreeMap;

use crate::meta::{PolicyTargetReference, WorkloadSelector, model};

model! {
    pub struct Telemetry {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub tracing: Vec<Tracing>,
        pub metrics: Vec<Metrics>,
        pub access_logging: Vec<AccessLogging>,
    }
}

model! {
    pub struct ProviderRef {
        pub name: String,
    }
}

model! {
    pub struct Tracing {
        #[serde(rename = "match")]
        pub matches: Option<TracingSelector>,
        pub providers: Vec<ProviderRef>,
        pub random_sampling_percentage: Option<f64>,
        pub disable_span_reporting: Option<bool>,
        pub custom_tags: BTreeMap<String, CustomTag>,
        pub enable_istio_tags: Option<bool>,
    }
}

model! {
    /// One span tag: a literal, a request header or an environment variable of the proxy.
    pub struct CustomTag {
        pub literal: Option<LiteralTag>,
        pub environment: Option<ValueFrom>,
        pub header: Option<ValueFrom>,
    }
}

model! {
    pub struct LiteralTag {
        pub value: String,
    }
}

model! {
    pub struct ValueFrom {
        pub name: String,
        pub default_value: Option<String>,
    }
}

model! {
    pub struct TracingSelector {
        pub mode: Option<String>,
    }
}

model! {
    pub struct Metrics {
        pub providers: Vec<ProviderRef>,
        pub overrides: Vec<MetricsOverrides>,
        pub reporting_interval: Option<String>,
    }
}

model! {
    pub struct MetricsOverrides {
        #[serde(rename = "match")]
        pub matches: Option<MetricSelector>,
        pub disabled: Option<bool>,
        pub tag_overrides: BTreeMap<String, TagOverride>,
    }
}

model! {
    pub struct MetricSelector {
        pub metric: Option<String>,
        pub custom_metric: Option<String>,
        pub mode: Option<String>,
    }
}

model! {
    pub struct TagOverride {
        pub operation: Option<String>,
        pub value: Option<String>,
    }
}

model! {
    pub struct AccessLogging {
        #[serde(rename = "match")]
        pub matches: Option<TracingSelector>,
        pub providers: Vec<ProviderRef>,
        pub disabled: Option<bool>,
        pub filter: Option<AccessLogFilter>,
    }
}

model! {
    pub struct AccessLogFilter {
        pub expression: String,
    }
}
