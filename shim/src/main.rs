//! containerd-shim-berth-v2: the per-container shim.
//!
//! Layout: not built yet. The shim will speak the containerd shim v2 task API
//! over ttrpc, drive runc or crun, write CRI-format logs and reap exits
//! (issue "Pods and containers"). Until then it refuses to run, so nothing
//! mistakes it for a working shim.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("containerd-shim-berth-v2: not implemented yet");
    std::process::exit(1);
}
