//! hosts.toml (containerd's registry hosts format, berth's mirrors): any
//! text parses or fails with an error naming the file, never panics, and
//! a file that parses gives at least the server's endpoint.
#![no_main]

use berth_imageservice::testing::{parse_hosts_toml, HostsError};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/etc/berth/certs.d/registry.example");
    match parse_hosts_toml(dir, text) {
        Ok(endpoints) => assert!(endpoints >= 1, "no server endpoint"),
        Err(HostsError::Parse { path, .. }) => assert!(path.starts_with(dir)),
        Err(_) => {}
    }
});
