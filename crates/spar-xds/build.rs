//! Compile Spar's .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/discovery.proto",
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/ca.proto",
        "proto/l7.proto",
        "proto/ext_authz.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Deterministic map order, so that equal resources encode to equal bytes (versions).
        .btree_map(".")
        // Config dumps show exactly what each proxy was sent: serialize the resource types,
        // with IP bytes written as addresses.
        .type_attribute(".istio.workload", "#[derive(serde::Serialize)]")
        .type_attribute(".istio.security", "#[derive(serde::Serialize)]")
        .type_attribute(".spar.l7", "#[derive(serde::Serialize)]")
        .field_attribute(
            ".istio.workload.Workload.addresses",
            "#[serde(serialize_with = \"crate::ser::ip_list\")]",
        )
        .field_attribute(
            ".istio.workload.NetworkAddress.address",
            "#[serde(serialize_with = \"crate::ser::ip\")]",
        )
        .field_attribute(
            ".istio.security.Address.address",
            "#[serde(serialize_with = \"crate::ser::ip\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
