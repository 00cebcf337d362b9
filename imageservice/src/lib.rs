//! berth's image service: pulling, listing and removing images for the
//! agent's CRI ImageService.
//!
//! Layout: [`Images`] (`images.rs`) is the service the agent holds: it pulls
//! (resolve, fetch, verify, unpack each layer into a snapshot of
//! `berth-snapshotter`), keeps one [`ImageRecord`] per image in
//! `image_store.rs`, and collects what no image needs. Below it and private
//! to the crate: `reference.rs` parses and normalises image names;
//! `hosts.rs` reads containerd's hosts directory into an ordered list of
//! endpoints (mirrors, then the upstream); `registry/` is the OCI
//! distribution client (auth, mirrors, timeouts) whose session resolves a
//! reference and streams manifests and blobs; `manifest.rs`,
//! `image_config.rs` and `platform.rs` parse what it fetches and pick the
//! host's platform from an index; `content/` is the verified,
//! content-addressed blob store; `decompress.rs` turns a layer blob into a
//! tar stream and checks its diff ID. Errors say their class with
//! [`Error::kind`]; the agent maps classes to gRPC codes.
//!
//! The parts below [`Images`] are reachable from the crate's own tests and
//! fuzz targets through the hidden [`testing`] module only.
//!
//! ```no_run
//! # async fn pull(config: berth_imageservice::ImagesConfig) -> berth_imageservice::Result<()> {
//! let images = berth_imageservice::Images::open(config).await?;
//! let record = images.pull("busybox", None, None).await?;
//! assert!(images.status(&record.id).await?.is_some());
//! images.remove("busybox").await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
// The API is what this file re-exports: every other `pub` is an error.
#![deny(unreachable_pub)]

mod content;
mod decompress;
mod digest;
mod error;
mod hosts;
mod image_config;
mod image_store;
mod images;
mod manifest;
mod platform;
mod reference;
mod registry;

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use image_config::{ContainerConfig, History, ImageConfig, RootFs};
pub use image_store::ImageRecord;
pub use images::{Images, ImagesConfig};
pub use registry::{AuthConfig, AuthFileError};

/// The parts below [`Images`], for this crate's integration tests and fuzz
/// targets; not an API for other crates.
#[doc(hidden)]
pub mod testing {
    pub use crate::content::{Ingest, Store};
    pub use crate::decompress::{decompress, DiffIdReader};
    pub use crate::hosts::{parse_hosts_toml, HostsError};
    pub use crate::manifest::{media_type, Descriptor, ImageManifest, Manifest};
    pub use crate::platform::{Platform, PlatformMatcher};
    pub use crate::reference::Reference;
    pub use crate::registry::{Client, ClientConfig, PullOptions, Session};
}
