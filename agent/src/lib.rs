//! berthd, the berth CRI node agent, as a library so tests can run it
//! in-process.
//!
//! Layout: [`config`] reads the TOML file; [`daemon::run`] opens the
//! [`runtime`] (the [`store`], cgroups, images, sandboxes and containers),
//! binds the CRI [`socket`] and the [`metrics`] endpoint, every listener
//! behind the [`accept`] backoff, and serves the CRI services of [`server`]
//! until shutdown; `server` only converts requests and calls into the
//! runtime. [`cgroups`] detects
//! the cgroup layout and driver, [`network`] pinned namespaces and CNI,
//! [`sandbox`] pod sandboxes, [`container`] containers and the CRI to OCI
//! spec translation, [`shim_client`] their shims, [`recovery`] what
//! start-up repairs, [`doctor`] the node checks, [`notify`] sd_notify, [`reload`] what SIGHUP applies, [`binaries`] where
//! the helper binaries are. Errors
//! are [`Error`], mapped to gRPC codes in one place (`error.rs`).
#![deny(unsafe_code)]

pub mod accept;
pub mod authority;
pub mod binaries;
pub mod cgroups;
pub mod config;
pub mod container;
pub mod daemon;
pub mod doctor;
mod error;
pub mod events;
pub mod failpoint;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod notify;
pub mod recovery;
pub mod reload;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod shim_client;
pub mod socket;
pub mod store;

pub use error::{Error, ErrorKind, Result};
