//! berthd, the berth CRI node agent, as a library so tests can run it
//! in-process.
//!
//! Layout: [`config`] reads the TOML file; [`daemon::run`] opens the
//! [`runtime`] (the [`store`], cgroups, images, sandboxes and containers),
//! binds the CRI [`socket`], the [`metrics`] endpoint and the
//! [`streaming`] server (Exec, Attach, PortForward), every listener
//! behind the [`accept`] backoff, and serves the CRI services of [`server`]
//! until shutdown; `server` only converts requests and calls into the
//! runtime. [`cgroups`] detects
//! the cgroup layout and driver, [`network`] pinned namespaces and CNI,
//! [`sandbox`] pod sandboxes, [`container`] containers and the CRI to OCI
//! spec translation, [`shim_client`] their shims, [`recovery`] what
//! start-up repairs, [`doctor`] the node checks, [`notify`] sd_notify,
//! [`reload`] what SIGHUP applies, [`binaries`] where the helper binaries
//! are, [`telemetry`] the OTLP export of tracing spans. Errors
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
pub mod stats;
pub mod store;
pub mod streaming;
pub mod telemetry;

pub use error::{Error, ErrorKind, Result};

/// Test-only crash points (the `failpoints` feature).
use berth_failpoint as failpoint;
