//! Pod sandboxes. So far: the files a pod gives its containers
//! ([`files`]); the lifecycle (run, stop, remove, status) comes with the
//! shim.

pub mod files;
