//! Mounts: describing them as containerd does, mounting and unmounting
//! them, and reading the kernel's mount table.
//!
//! Layout: [`Mount`] (`mount.rs`) is containerd's `mount.Mount` (type,
//! source, options): the snapshotter returns it, the agent mounts it and
//! the shim receives it over the task API. [`Mount::mount`] splits options
//! into `MS_*` flags and filesystem data, remounts read-only binds and
//! shortens the `lowerdir` of overlays too deep for one page of options.
//! [`unmount`], [`unmount_recursive`] and [`detach_recursive`] take mounts
//! down again. [`mountinfo`] is the one parser of `/proc/<pid>/mountinfo`
//! (proc(5)), octal escapes included; everything that needs to know what is
//! mounted where reads the table through it. `error.rs` has [`Error`].
//!
//! All functions block (mount(2), reading `/proc`): call them from
//! `spawn_blocking` in async code.
#![forbid(unsafe_code)]

mod error;
mod mount;
pub mod mountinfo;

pub use error::{Error, Result};
pub use mount::{detach_recursive, mount_all, unmount, unmount_recursive, Mount};
pub use mountinfo::MountInfo;
