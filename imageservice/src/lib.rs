//! berth's image service.
//!
//! Layout: not built yet (issue "Image service"). It will hold the OCI
//! distribution client, the content store with digest verification and the
//! unpacking of layers into the snapshotter.
#![forbid(unsafe_code)]
