//! What the crash suites share: whether the berthd under test has the
//! test-only failpoints (`BERTH_FAILPOINT`, `failpoint/`), checking that it
//! died at the one named, and the files a test compares before and after.

use crate::{ensure, Berthd, TestResult};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

/// The environment variable that arms a failpoint.
pub const ENV: &str = "BERTH_FAILPOINT";

/// True when the berthd binary has the failpoints compiled in (it names
/// their environment variable only then).
pub fn compiled_in(binary: &Path) -> bool {
    std::process::Command::new("grep")
        .args(["-q", "-a", "-F", ENV])
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails at once, naming the build command, when the berthd under test
/// lacks the failpoints (rather than waiting for crashes that cannot come).
pub fn require() -> TestResult {
    ensure(compiled_in(&crate::berthd_binary()), || {
        format!(
            "{} was built without failpoints: cargo build -p berth-agent -p berth-shim \
             --features berth-agent/failpoints",
            crate::berthd_binary().display()
        )
    })
}

/// The environment that arms `failpoint`.
pub fn armed(failpoint: &str) -> Vec<(String, String)> {
    vec![(ENV.to_owned(), failpoint.to_owned())]
}

/// Checks that berthd killed itself at `failpoint` while serving the
/// request that `request` was the client of, and reaps it.
pub fn died_at(berthd: &mut Berthd, failpoint: &str, request: &std::process::Output) -> TestResult {
    let status = berthd.wait_exit(Duration::from_secs(30))?;
    let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
    ensure(status.signal() == Some(sigkill), || {
        format!(
            "berthd did not die at {failpoint} (was it built with --features \
             berth-agent/failpoints?): {status}; client: {}\n{}",
            String::from_utf8_lossy(&request.stdout),
            berthd.log()
        )
    })?;
    ensure(
        berthd
            .log()
            .contains(&format!("failpoint {failpoint} reached")),
        || {
            format!(
                "berthd died elsewhere than at {failpoint}:\n{}",
                berthd.log()
            )
        },
    )?;
    ensure(!request.status.success(), || {
        "the request succeeded although berthd died".to_owned()
    })
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
