//! The mount crate's error type.

use std::path::PathBuf;

/// Why a mount, an unmount or reading the mount table failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mount(2) limits the option string to one page, and the options
    /// could not be shortened (not an overlay, or its lower directories
    /// share no parent).
    #[error("mount options for {target} are {len} bytes, mount(2) takes at most {max}", target = target.display())]
    OptionsTooLong {
        target: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("mount {fs_type} {src} on {target}: {source}", target = target.display())]
    Mount {
        fs_type: String,
        src: String,
        target: PathBuf,
        source: std::io::Error,
    },
    /// Mounting a deep overlay from its lower directories' parent.
    #[error("change to the lower directories' parent {dir}: {source}", dir = dir.display())]
    Chdir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("unmount {target}: {source}", target = target.display())]
    Unmount {
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("read {path}: {source}", path = path.display())]
    ReadMountinfo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line that is not in proc(5)'s format.
    #[error("mountinfo line {line}: {problem}")]
    Malformed { line: usize, problem: &'static str },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
