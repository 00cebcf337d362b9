//! Test-only crash points, compiled in with the `failpoints` feature and
//! never into release builds.
//!
//! `BERTH_FAILPOINT=<name>` makes berthd log `failpoint <name> reached`
//! and kill itself with SIGKILL when it gets there, so a test can crash it
//! at an exact step and check what recovery makes of it. Without the
//! feature both functions are empty.

/// The environment variable naming the one failpoint to fire.
#[cfg(feature = "failpoints")]
pub const ENV: &str = "BERTH_FAILPOINT";

#[cfg(feature = "failpoints")]
fn armed(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|wanted| wanted == name)
}

#[cfg(feature = "failpoints")]
fn crash(name: &str) {
    // stderr, not tracing: the line must be written before the kill.
    eprintln!("failpoint {name} reached: killing berthd with SIGKILL");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

/// Crashes berthd here when `BERTH_FAILPOINT` names `name`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if armed(name) {
        crash(name);
    }
}

/// Crashes berthd as soon as `reached` turns true (polled every
/// millisecond from a thread of its own), when `BERTH_FAILPOINT` names
/// `name`: for a point inside work another process does, such as the
/// OCI runtime's create while the shim's `create` call is in flight.
#[cfg(feature = "failpoints")]
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

/// Crashes berthd here when `BERTH_FAILPOINT` names `name`.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Crashes berthd when `reached` turns true, if `BERTH_FAILPOINT` names
/// `name`.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit_when(_name: &'static str, _reached: impl Fn() -> bool + Send + 'static) {}
