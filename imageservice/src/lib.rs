//! berth's image service: the network and content half of pulling images.
//!
//! Layout: [`reference`](mod@reference) parses and normalises image names; [`hosts`] reads
//! containerd's hosts directory into an ordered list of endpoints (mirrors,
//! then the upstream); [`registry`] is the OCI distribution client (auth,
//! mirrors, timeouts) whose [`Session`] resolves a reference and streams
//! manifests and blobs; [`manifest`], [`image_config`] and [`platform`] parse
//! what it fetches and pick the host's platform from an index; [`content`]
//! is the verified, content-addressed blob store; [`decompress`](mod@decompress) turns a
//! layer blob into a tar stream and checks its diff ID. Unpacking into
//! snapshots belongs to the pull orchestration, which uses
//! `berth-snapshotter`.
//!
//! A pull, as the orchestration will drive it:
//!
//! ```no_run
//! # async fn pull(store: &berth_imageservice::Store) -> berth_imageservice::Result<()> {
//! use berth_imageservice::*;
//! let client = Client::new(ClientConfig::default());
//! let reference: Reference = "busybox".parse()?;
//! let session = client.session(&reference, PullOptions::default()).await?;
//! let mut descriptor = session.resolve().await?;
//! let image = loop {
//!     let bytes = session.fetch_manifest(&descriptor).await?;
//!     store.write_all(&descriptor.digest, &bytes).await?;
//!     match Manifest::parse(&descriptor.media_type, &descriptor.digest, &bytes)? {
//!         Manifest::Index(index) => {
//!             descriptor = index.select(&PlatformMatcher::host(), &descriptor.digest)?.clone()
//!         }
//!         Manifest::Image(image) => break image,
//!     }
//! };
//! session.fetch_to_store(store, &image.config).await?;
//! let config = ImageConfig::parse(&image.config.digest, &store.read(&image.config.digest, 1 << 22).await?)?;
//! for (layer, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
//!     // Or stream: Blob::chunk -> Writer::write and PipeSender::send, with
//!     // decompress(PipeReader) unpacked on a blocking thread meanwhile.
//!     session.fetch_to_store(store, layer).await?;
//!     let file = std::fs::File::open(store.blob_path(&layer.digest)).expect("committed");
//!     let tar = DiffIdReader::new(decompress(&layer.media_type, &layer.digest, file)?);
//!     // ... apply_layer(&mut tar, dir) in spawn_blocking, then:
//!     tar.verify(diff_id)?;
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod content;
pub mod decompress;
pub mod digest;
mod error;
pub mod hosts;
pub mod image_config;
pub mod image_store;
mod images;
pub mod manifest;
pub mod platform;
pub mod reference;
pub mod registry;

pub use content::{Info, Ingest, Store, Writer};
pub use decompress::{decompress, pipe, Compression, DiffIdReader, PipeReader, PipeSender};
pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use hosts::{Endpoint, Hosts};
pub use image_config::{chain_ids, ImageConfig};
pub use images::{Images, ImagesConfig};
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Manifest};
pub use platform::{Platform, PlatformMatcher};
pub use reference::Reference;
pub use registry::{AuthConfig, Blob, Client, ClientConfig, PullOptions, Session};
