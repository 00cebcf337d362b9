//! Test-only crash points, compiled in with the `enabled` feature (the
//! agent's `failpoints` feature turns it on, for berthd and the image
//! service it pulls with) and never into release builds.
//!
//! `BERTH_FAILPOINT=<name>` makes berthd log `failpoint <name> reached`
//! and kill itself with SIGKILL when it gets there, so a test can crash it
//! at an exact step and check what recovery makes of it. Without the
//! feature every function is empty and [`reader`] returns its reader.
//!
//! Layout: [`hit`] at a step of berthd's own code, [`hit_when`] for a
//! step another process takes, [`reader`] part-way through a stream.
//! Names are `<operation>:<step>`; `docs/reliability.md` lists them all.

#![forbid(unsafe_code)]

use std::io::Read;

/// The environment variable naming the one failpoint to fire.
#[cfg(feature = "enabled")]
pub const ENV: &str = "BERTH_FAILPOINT";

#[cfg(feature = "enabled")]
fn armed(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|wanted| wanted == name)
}

#[cfg(feature = "enabled")]
fn crash(name: &str) {
    // stderr, not tracing: the line must be written before the kill.
    eprintln!("failpoint {name} reached: killing berthd with SIGKILL");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

/// Crashes berthd here when `BERTH_FAILPOINT` names `name`.
#[cfg(feature = "enabled")]
pub fn hit(name: &str) {
    if armed(name) {
        crash(name);
    }
}

/// Crashes berthd as soon as `reached` turns true (polled every
/// millisecond from a thread of its own), when `BERTH_FAILPOINT` names
/// `name`: for a point inside work another process does, such as the
/// OCI runtime's create while the shim's `create` call is in flight.
#[cfg(feature = "enabled")]
pub fn hit_when(name: &'static str, reached: impl Fn() -> bool + Send + 'static) {
    if armed(name) {
        std::thread::spawn(move || loop {
            if reached() {
                crash(name);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
    }
}

/// `inner`, crashing berthd once `after` bytes have been read from it
/// when `BERTH_FAILPOINT` names `name`: for a point in the middle of a
/// stream (a layer half applied). A stream shorter than `after` reaches
/// no crash.
#[cfg(feature = "enabled")]
pub fn reader<R: Read>(name: &'static str, after: u64, inner: R) -> impl Read {
    CrashingReader {
        name,
        left: armed(name).then_some(after),
        inner,
    }
}

#[cfg(feature = "enabled")]
struct CrashingReader<R> {
    name: &'static str,
    /// Bytes until the crash; `None` when not armed.
    left: Option<u64>,
    inner: R,
}

#[cfg(feature = "enabled")]
impl<R: Read> Read for CrashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if let Some(left) = self.left.as_mut() {
            *left = left.saturating_sub(read as u64);
            if *left == 0 {
                crash(self.name);
            }
        }
        Ok(read)
    }
}

/// Crashes berthd here when `BERTH_FAILPOINT` names `name`.
#[cfg(not(feature = "enabled"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Crashes berthd when `reached` turns true, if `BERTH_FAILPOINT` names
/// `name`.
#[cfg(not(feature = "enabled"))]
#[inline(always)]
pub fn hit_when(_name: &'static str, _reached: impl Fn() -> bool + Send + 'static) {}

/// `inner` itself: without the feature nothing crashes.
#[cfg(not(feature = "enabled"))]
#[inline(always)]
pub fn reader<R: Read>(_name: &'static str, _after: u64, inner: R) -> R {
    inner
}
