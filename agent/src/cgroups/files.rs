//! The formats of cgroup interface files, one parser each
//! (Documentation/admin-guide/cgroup-v2.rst, "Interface Files";
//! cgroup-v1/memory.rst, cpuacct.rst and blkio-controller.rst).
//!
//! A missing file reads as `None`: on v2 a controller's files exist only
//! where the parent enables it, and some counters are newer than some
//! kernels. Anything else that goes wrong is an error naming the file.

use super::CgroupError;
use std::path::{Path, PathBuf};

/// Reads a file, `None` when it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn unparsable(path: &Path, line: &str) -> CgroupError {
    CgroupError::Parse {
        path: path.to_owned(),
        line: line.to_owned(),
    }
}

/// A flat-keyed file: `key value` lines (`memory.stat`, `cpu.stat`,
/// `memory.events`, `memory.oom_control`, `cpuacct.stat`).
#[derive(Debug)]
pub(super) struct FlatKeyed {
    path: PathBuf,
    values: Vec<(String, u64)>,
}

impl FlatKeyed {
    /// Reads `dir/name`; `None` when the file does not exist.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Self>, CgroupError> {
        let path = dir.join(name);
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        Self::parse(path, &text).map(Some)
    }

    fn parse(path: PathBuf, text: &str) -> Result<Self, CgroupError> {
        let values = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let mut fields = line.split_whitespace();
                match (fields.next(), fields.next().map(str::parse), fields.next()) {
                    (Some(key), Some(Ok(value)), None) => Ok((key.to_owned(), value)),
                    _ => Err(unparsable(&path, line)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { path, values })
    }

    /// The value of `key`, if the file has it.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values
            .iter()
            .find_map(|(k, v)| (k == key).then_some(*v))
    }

    /// The value of `key`, which this kind of file always has.
    pub fn require(&self, key: &str) -> Result<u64, CgroupError> {
        self.get(key).ok_or_else(|| CgroupError::Parse {
            path: self.path.clone(),
            line: format!("no {key} line"),
        })
    }
}

/// A file of one number, or `max` for "no limit" (v2's `memory.max`,
/// `pids.max`; v1's `pids.max`). `Some(None)` is `max`.
pub(super) fn read_limit(dir: &Path, name: &str) -> Result<Option<Option<u64>>, CgroupError> {
    let path = dir.join(name);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    match text.trim() {
        "max" => Ok(Some(None)),
        value => value
            .parse()
            .map(|v| Some(Some(v)))
            .map_err(|_| unparsable(&path, value)),
    }
}

/// A file of one number (`memory.current`, `cpuacct.usage`, ...).
pub(super) fn read_u64(dir: &Path, name: &str) -> Result<Option<u64>, CgroupError> {
    let path = dir.join(name);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let value = text.trim();
    value
        .parse()
        .map(Some)
        .map_err(|_| unparsable(&path, value))
}

/// Bytes and operations of one block device, summed over reads and writes
/// separately.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoDeviceStats {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// The entry of device `major:minor` in `devices`, created when missing.
fn device(devices: &mut Vec<IoDeviceStats>, major: u32, minor: u32) -> &mut IoDeviceStats {
    let index = match devices
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        Some(index) => index,
        None => {
            devices.push(IoDeviceStats {
                major,
                minor,
                ..Default::default()
            });
            devices.len() - 1
        }
    };
    &mut devices[index]
}

fn parse_device(path: &Path, line: &str, field: &str) -> Result<(u32, u32), CgroupError> {
    field
        .split_once(':')
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
        .ok_or_else(|| unparsable(path, line))
}

/// v2's nested-keyed `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N
/// dbytes=N dios=N` (keys the kernel may add are skipped).
pub(super) fn read_io_stat(dir: &Path) -> Result<Option<Vec<IoDeviceStats>>, CgroupError> {
    let path = dir.join("io.stat");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let mut devices = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (major, minor) = parse_device(&path, line, fields.next().unwrap_or(""))?;
        let entry = device(&mut devices, major, minor);
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .and_then(|(k, v)| Some((k, v.parse::<u64>().ok()?)))
                .ok_or_else(|| unparsable(&path, line))?;
            match key {
                "rbytes" => entry.read_bytes = value,
                "wbytes" => entry.write_bytes = value,
                "rios" => entry.read_ops = value,
                "wios" => entry.write_ops = value,
                _ => {}
            }
        }
    }
    Ok(Some(devices))
}

/// v1's `blkio.throttle.io_service_bytes` and `blkio.throttle.io_serviced`
/// (`MAJ:MIN Read|Write|Sync|Async|Discard|Total N` lines, then `Total N`):
/// `bytes` fills the byte counts, `ops` the operation counts.
pub(super) fn read_blkio(
    dir: &Path,
    bytes: &str,
    ops: &str,
) -> Result<Option<Vec<IoDeviceStats>>, CgroupError> {
    let mut devices = Vec::new();
    let mut found = false;
    for (name, is_bytes) in [(bytes, true), (ops, false)] {
        let path = dir.join(name);
        let Some(text) = read_optional(&path)? else {
            continue;
        };
        found = true;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [dev, op, value] = fields[..] else {
                // The closing `Total N` line sums every device.
                if fields.first() == Some(&"Total") && fields.len() == 2 {
                    continue;
                }
                return Err(unparsable(&path, line));
            };
            let (major, minor) = parse_device(&path, line, dev)?;
            let value: u64 = value.parse().map_err(|_| unparsable(&path, line))?;
            let entry = device(&mut devices, major, minor);
            match (op, is_bytes) {
                ("Read", true) => entry.read_bytes = value,
                ("Write", true) => entry.write_bytes = value,
                ("Read", false) => entry.read_ops = value,
                ("Write", false) => entry.write_ops = value,
                _ => {}
            }
        }
    }
    Ok(found.then_some(devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn flat_keyed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n",
        );
        let events = FlatKeyed::read(dir.path(), "memory.events")
            .expect("read")
            .expect("present");
        assert_eq!(events.get("oom"), Some(2));
        assert_eq!(events.get("oom_kill"), Some(1));
        assert_eq!(events.get("oom_group_kill"), None);
        assert!(events.require("oom_group_kill").is_err());
        assert!(FlatKeyed::read(dir.path(), "memory.stat")
            .expect("a missing file is no error")
            .is_none());
        write(dir.path(), "cpu.stat", "usage_usec 12\nnr_periods many\n");
        let err = FlatKeyed::read(dir.path(), "cpu.stat").expect_err("bad value");
        assert!(err.to_string().contains("nr_periods many"), "{err}");
    }

    #[test]
    fn limits_and_single_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "memory.max", "max\n");
        write(dir.path(), "pids.max", "128\n");
        write(dir.path(), "memory.current", "4096\n");
        write(dir.path(), "broken", "12k\n");
        assert_eq!(
            read_limit(dir.path(), "memory.max").expect("max"),
            Some(None)
        );
        assert_eq!(
            read_limit(dir.path(), "pids.max").expect("pids"),
            Some(Some(128))
        );
        assert_eq!(read_limit(dir.path(), "absent").expect("absent"), None);
        assert_eq!(
            read_u64(dir.path(), "memory.current").expect("u64"),
            Some(4096)
        );
        assert!(read_u64(dir.path(), "broken").is_err());
    }

    #[test]
    fn io_stat_of_v2() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "io.stat",
            "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
             8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n",
        );
        let devices = read_io_stat(dir.path()).expect("read").expect("present");
        assert_eq!(
            devices[0],
            IoDeviceStats {
                major: 8,
                minor: 16,
                read_bytes: 1459200,
                write_bytes: 314773504,
                read_ops: 192,
                write_ops: 353
            }
        );
        assert_eq!(devices[1].read_ops, 8950);
        write(dir.path(), "io.stat", "8:0 rbytes=lots\n");
        assert!(read_io_stat(dir.path()).is_err());
    }

    #[test]
    fn blkio_of_v1() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "bytes",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n8:0 Discard 0\n8:0 Total 12288\nTotal 12288\n",
        );
        write(
            dir.path(),
            "ops",
            "8:0 Read 1\n8:0 Write 2\n8:0 Sync 2\n8:0 Async 1\n8:0 Discard 0\n8:0 Total 3\nTotal 3\n",
        );
        let devices = read_blkio(dir.path(), "bytes", "ops")
            .expect("read")
            .expect("present");
        assert_eq!(
            devices,
            vec![IoDeviceStats {
                major: 8,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                read_ops: 1,
                write_ops: 2
            }]
        );
        // A cgroup that did no IO has only the total line.
        write(dir.path(), "bytes", "Total 0\n");
        write(dir.path(), "ops", "Total 0\n");
        assert_eq!(
            read_blkio(dir.path(), "bytes", "ops").expect("read"),
            Some(Vec::new())
        );
        assert_eq!(
            read_blkio(dir.path(), "none", "neither").expect("read"),
            None
        );
    }
}
