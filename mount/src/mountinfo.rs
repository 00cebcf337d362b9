//! The kernel's mount table, `/proc/<pid>/mountinfo` (proc(5)).
//!
//! One line per mount, fields separated by single spaces:
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! id parent  root  mount  options   optional - type source  super options
//!    major:minor   point            fields
//! ```
//!
//! The optional fields are zero or more `tag[:value]` (`shared:N`,
//! `master:N`, `propagate_from:N`, `unbindable`), ended by a lone `-`. The
//! kernel escapes space, tab, newline and backslash in paths and options as
//! octal (`\040`, `\011`, `\012`, `\134`), so no field holds a space and no
//! line a newline: [`parse`] splits first and unescapes each field after.
//! Paths stay bytes ([`PathBuf`]); the other text fields are decoded as
//! UTF-8, invalid bytes replaced.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The mount table of this process's mount namespace.
const SELF: &str = "/proc/self/mountinfo";

/// One mount: one line of a mountinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique among the mounts of the namespace (ids may be reused after
    /// an unmount).
    pub id: u32,
    /// The mount this one is mounted on (its own id for the namespace's
    /// root, or one outside the table when the parent is not visible).
    pub parent_id: u32,
    /// The device of the filesystem (`st_dev` of files on it).
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that forms this mount's root (not
    /// `/` for bind mounts of a subdirectory).
    pub root: PathBuf,
    /// Where it is mounted, relative to the process's root.
    pub mount_point: PathBuf,
    /// Per-mount options: `rw`, `nosuid`, `relatime`, ...
    pub options: Vec<String>,
    /// The optional fields: `shared:N`, `master:N`, ...
    pub optional: Vec<String>,
    /// Filesystem type, `type.subtype` for FUSE.
    pub fs_type: String,
    /// Filesystem-specific source (a device, `overlay`, `none`).
    pub source: String,
    /// Per-superblock options: `lowerdir=…`, cgroup controllers, ...
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Parses one line (without its newline); the error says what is wrong.
    pub fn parse_line(line: &[u8]) -> std::result::Result<Self, &'static str> {
        let mut fields = line.split(|&b| b == b' ');
        let mut field = |missing: &'static str| fields.next().ok_or(missing);
        let id = number(field("no mount id")?).ok_or("mount id is not a number")?;
        let parent_id = number(field("no parent id")?).ok_or("parent id is not a number")?;
        let (major, minor) = field("no major:minor")?
            .split(|&b| b == b':')
            .map(number)
            .collect::<Option<Vec<_>>>()
            .and_then(|n| <[u32; 2]>::try_from(n).ok())
            .map(|[major, minor]| (major, minor))
            .ok_or("major:minor is not two numbers")?;
        let root = path(field("no root")?);
        let mount_point = path(field("no mount point")?);
        let options = list(field("no mount options")?);
        let mut optional = Vec::new();
        loop {
            match field("no `-` after the optional fields")? {
                b"-" => break,
                tag => optional.push(text(tag)),
            }
        }
        let fs_type = text(field("no filesystem type")?);
        let source = text(field("no mount source")?);
        let super_options = list(field("no super options")?);
        Ok(Self {
            id,
            parent_id,
            major,
            minor,
            root,
            mount_point,
            options,
            optional,
            fs_type,
            source,
            super_options,
        })
    }

    /// A peer group member: mounts and unmounts here propagate to its
    /// peers and from them (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }

    /// Receives mounts from a peer group (`master:N`).
    pub fn is_slave(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("master:"))
    }
}

/// Parses a whole mountinfo file, in its order: parents before their
/// children, and of mounts stacked on one mount point the top one last.
pub fn parse(text: &[u8]) -> Result<Vec<MountInfo>> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            MountInfo::parse_line(line).map_err(|problem| Error::Malformed {
                line: i + 1,
                problem,
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn read_self() -> Result<Vec<MountInfo>> {
    read(Path::new(SELF))
}

/// The mounts of the mount namespace of process `pid`, as seen from its
/// root.
pub fn read_process(pid: nix::unistd::Pid) -> Result<Vec<MountInfo>> {
    read(&PathBuf::from(format!("/proc/{pid}/mountinfo")))
}

fn read(path: &Path) -> Result<Vec<MountInfo>> {
    let text = std::fs::read(path).map_err(|source| Error::ReadMountinfo {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// The mounts at or below `dir` (by whole components), in table order.
pub fn under<'a>(
    table: &'a [MountInfo],
    dir: &'a Path,
) -> impl DoubleEndedIterator<Item = &'a MountInfo> {
    table.iter().filter(move |m| m.mount_point.starts_with(dir))
}

/// The mount that `path` (absolute, symlinks resolved) lives on: the
/// deepest mount point above it, and of several mounts stacked there the
/// top one (listed last).
pub fn containing<'a>(table: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let depth = |m: &MountInfo| m.mount_point.components().count();
    let mut best: Option<&MountInfo> = None;
    for m in table.iter().filter(|m| path.starts_with(&m.mount_point)) {
        if best.is_none_or(|b| depth(m) >= depth(b)) {
            best = Some(m);
        }
    }
    best
}

fn number(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// A comma-separated option list; an escaped comma (`\054`) stays inside
/// its option.
fn list(field: &[u8]) -> Vec<String> {
    field
        .split(|&b| b == b',')
        .filter(|o| !o.is_empty())
        .map(text)
        .collect()
}

/// Undoes the kernel's `\ooo` escapes; a backslash not followed by three
/// octal digits of at most `\377` is kept as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let byte = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match byte {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_field_of_a_line() {
        let line =
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            MountInfo::parse_line(line).expect("parses"),
            MountInfo {
                id: 36,
                parent_id: 35,
                major: 98,
                minor: 0,
                root: PathBuf::from("/mnt1"),
                mount_point: PathBuf::from("/mnt2"),
                options: strings(&["rw", "noatime"]),
                optional: strings(&["master:1"]),
                fs_type: "ext3".into(),
                source: "/dev/root".into(),
                super_options: strings(&["rw", "errors=continue"]),
            }
        );
    }

    #[test]
    fn optional_fields_up_to_the_separator() {
        let table = parse(
            b"\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
40 22 0:40 / /a rw shared:12 master:3 propagate_from:2 - tmpfs tmpfs rw
41 22 0:41 / /b rw - tmpfs tmpfs rw
42 22 0:42 / /c rw unbindable - tmpfs - rw
",
        )
        .expect("parses");
        let optional: Vec<_> = table.iter().map(|m| m.optional.clone()).collect();
        assert_eq!(
            optional,
            [
                strings(&["shared:1"]),
                strings(&["shared:12", "master:3", "propagate_from:2"]),
                vec![],
                strings(&["unbindable"]),
            ]
        );
        assert!(table[1].is_shared() && table[1].is_slave());
        assert!(!table[2].is_shared() && !table[2].is_slave());
        assert_eq!(table[3].fs_type, "tmpfs");
        assert_eq!(table[3].source, "-", "a source named - is no separator");
    }

    #[test]
    fn escapes_are_undone_in_paths_source_and_options() {
        let line = br"50 22 0:50 /sub\040dir /mnt/a\040b\011c\012d\134e rw - fuse.x src\040\134x rw,lowerdir=/l\040x,a\054b";
        let m = MountInfo::parse_line(line).expect("parses");
        assert_eq!(m.root, Path::new("/sub dir"));
        assert_eq!(m.mount_point, Path::new("/mnt/a b\tc\nd\\e"));
        assert_eq!(m.fs_type, "fuse.x");
        assert_eq!(m.source, r"src \x");
        assert_eq!(m.super_options, strings(&["rw", "lowerdir=/l x", "a,b"]));
    }

    #[test]
    fn bad_escapes_are_kept() {
        assert_eq!(unescape(br"a\040b\011c\012d\134e"), b"a b\tc\nd\\e");
        assert_eq!(unescape(br"a\04"), br"a\04");
        assert_eq!(unescape(br"a\999"), br"a\999");
        assert_eq!(unescape(br"a\400"), br"a\400", "more than a byte");
        assert_eq!(unescape(br"trailing\\"), br"trailing\\");
        assert_eq!(unescape(br"a\134b\0"), br"a\b\0");
    }

    #[test]
    fn non_utf8_paths_stay_bytes() {
        let m = MountInfo::parse_line(b"1 0 0:1 / /x\xff rw - tmpfs tmpfs rw").expect("parses");
        assert_eq!(m.mount_point.as_os_str().as_encoded_bytes(), b"/x\xff");
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"x 1 0:1 / / rw - tmpfs tmpfs rw",
                "mount id is not a number",
            ),
            (
                b"1 1 0 / / rw - tmpfs tmpfs rw",
                "major:minor is not two numbers",
            ),
            (
                b"1 1 0:1:2 / / rw - tmpfs tmpfs rw",
                "major:minor is not two numbers",
            ),
            (
                b"1 1 0:1 / / rw shared:1 tmpfs tmpfs rw",
                "no `-` after the optional fields",
            ),
            (b"1 1 0:1 / / rw - tmpfs tmpfs", "no super options"),
            (b"1 1 0:1 /", "no mount point"),
        ];
        for (line, want) in cases {
            let mut text = b"22 1 259:2 / / rw - ext4 /dev/vda rw\n\n".to_vec();
            text.extend_from_slice(line);
            match parse(&text) {
                Err(Error::Malformed { line: 3, problem }) => assert_eq!(problem, *want),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
    }

    const TABLE: &[u8] = b"\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
40 27 0:40 / /mnt/shared rw shared:12 - tmpfs tmpfs rw
41 40 0:41 / /mnt/shared/slave rw master:12 - tmpfs tmpfs rw
42 27 0:42 / /mnt/with\\040space rw - tmpfs tmpfs rw
43 40 0:43 / /mnt/shared rw - tmpfs tmpfs rw
";

    #[test]
    fn the_deepest_topmost_mount_contains_a_path() {
        let table = parse(TABLE).expect("parses");
        let at = |p: &str| containing(&table, Path::new(p)).map(|m| m.id);
        assert_eq!(at("/etc/hosts"), Some(27));
        assert_eq!(at("/"), Some(27));
        assert_eq!(at("/mnt/shared/slave/x"), Some(41));
        assert_eq!(at("/mnt/with space/dir"), Some(42));
        assert_eq!(at("/mnt/sharedx"), Some(27), "prefix by component");
        assert_eq!(at("/mnt/shared/a"), Some(43), "stacked: the top one");
        assert_eq!(containing(&[], Path::new("/")), None);
    }

    #[test]
    fn mounts_under_a_directory() {
        let table = parse(TABLE).expect("parses");
        let ids = |dir: &str| {
            under(&table, Path::new(dir))
                .map(|m| m.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("/mnt/shared"), [40, 41, 43]);
        assert_eq!(ids("/mnt/shared/"), [40, 41, 43]);
        assert_eq!(ids("/mnt/with space"), [42]);
        assert_eq!(ids("/mnt/with"), Vec::<u32>::new());
        assert_eq!(ids("/srv"), Vec::<u32>::new());
    }

    #[test]
    fn this_process_and_its_pid_see_the_same_table() {
        let own = read_self().expect("read");
        assert!(own.iter().any(|m| m.mount_point == Path::new("/")));
        let by_pid = read_process(nix::unistd::getpid()).expect("read by pid");
        assert_eq!(
            own.iter().map(|m| m.id).collect::<Vec<_>>(),
            by_pid.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        assert!(matches!(
            read_process(nix::unistd::Pid::from_raw(i32::MAX)),
            Err(Error::ReadMountinfo { .. })
        ));
    }
}
