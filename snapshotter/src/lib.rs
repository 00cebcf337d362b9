//! berth's overlayfs snapshotter.
//!
//! Layout: not built yet (issue "Image service"). It will hold overlayfs
//! snapshots keyed by chain ID with prepare/view/commit/remove, usage and
//! garbage collection, metadata in redb and data in numbered directories.
#![forbid(unsafe_code)]
