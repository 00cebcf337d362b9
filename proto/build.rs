//! Generates the CRI v1 server and client code from `proto/cri/v1/api.proto`.
//!
//! Needs `protoc` on PATH (Debian: `protobuf-compiler`, installed by
//! `hack/install.sh`) or named by the `PROTOC` environment variable.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/cri/v1/api.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
