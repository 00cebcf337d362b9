//! berth's protocol definitions.
//!
//! Layout: `proto/cri/v1/api.proto` is the CRI v1 API (package `runtime.v1`)
//! as kubelet speaks it, written for berth and wire-compatible with upstream
//! cri-api: same package, services, messages, field names and numbers.
//! `build.rs` turns it into prost messages and tonic servers and clients,
//! re-exported here as [`cri::v1`]. No logic lives in this crate.
#![forbid(unsafe_code)]

/// The Container Runtime Interface.
pub mod cri {
    /// CRI v1 (`runtime.v1`): `RuntimeService` and `ImageService`.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}
