//! Conformance suite: the snapshotter against real overlayfs, as root.
//!
//! Modelled on containerd's `core/snapshots/testsuite`: snapshots are
//! prepared, written through their real mounts, committed, stacked and
//! mounted again, and the merged trees are checked. Every test runs in its own
//! temporary directory, unmounts what it mounted, and checks that no mount
//! below that directory is left in `/proc/self/mountinfo`. The suite needs
//! root and overlayfs and fails (never skips) without them: CI runs as root.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_mount::{mount_all, mountinfo, unmount, Mount};
use berth_snapshotter::{apply_layer, Committed, Error, Kind, Snapshotter};
use nix::mount::{umount2, MntFlags};
use tar::{EntryType, Header};

/// A temporary root, the snapshotter on it, and the mounts made below it.
struct Fixture {
    sn: Snapshotter,
    mounted: Vec<PathBuf>,
    next: usize,
    /// Last, so it is removed after the snapshotter is closed.
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the conformance suite mounts overlayfs and must run as root"
        );
        let filesystems = fs::read_to_string("/proc/filesystems").expect("read /proc/filesystems");
        assert!(
            filesystems.lines().any(|l| l.ends_with("\toverlay")),
            "overlayfs is not available (modprobe overlay)"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = Snapshotter::open(tmp.path().join("root")).expect("open snapshotter");
        Fixture {
            tmp,
            sn,
            mounted: Vec::new(),
            next: 0,
        }
    }

    /// Mounts `mounts` on a fresh directory and returns it.
    fn mount(&mut self, mounts: &[Mount]) -> PathBuf {
        self.next += 1;
        let target = self.tmp.path().join(format!("mnt-{}", self.next));
        fs::create_dir(&target).expect("create mount point");
        mount_all(mounts, &target).unwrap_or_else(|e| panic!("mount {mounts:?}: {e}"));
        self.mounted.push(target.clone());
        target
    }

    fn unmount(&mut self, target: &Path) {
        unmount(target).expect("unmount");
        self.mounted.retain(|t| t != target);
    }

    /// Unmounts everything and checks that no mount is left below the
    /// temporary directory.
    fn finish(mut self) {
        for target in std::mem::take(&mut self.mounted).iter().rev() {
            unmount(target).expect("unmount at the end");
        }
        let left = mounts_below(self.tmp.path());
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test: do not leave mounts behind either.
        for target in self.mounted.iter().rev() {
            let _ = umount2(target, MntFlags::MNT_DETACH);
        }
    }
}

fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let table = mountinfo::read_self().expect("read mountinfo");
    mountinfo::under(&table, dir)
        .map(|m| m.mount_point.clone())
        .collect()
}

/// `find DIR | sort`, relative to DIR.
fn find(dir: &Path) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
            let e = e.expect("entry");
            let path = e.path();
            out.insert(
                path.strip_prefix(dir)
                    .expect("below dir")
                    .to_str()
                    .expect("utf-8")
                    .to_owned(),
            );
            if e.file_type().expect("file type").is_dir() {
                stack.push(path);
            }
        }
    }
    out.into_iter().collect()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn errno(result: io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// Builds layer tar streams in memory (PAX long names like Python's tarfile).
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    /// Writes a PAX `path` record when the name does not fit the header.
    fn name(&mut self, h: &mut Header, path: &str) {
        if h.set_path(path).is_err() {
            // "<len> path=<path>\n", where <len> counts its own digits.
            let body = format!(" path={path}\n");
            let mut len = body.len() + 1;
            while len != body.len() + len.to_string().len() {
                len = body.len() + len.to_string().len();
            }
            let data = format!("{len}{body}");
            let mut x = Self::header(EntryType::XHeader, 0o644, 0, 0);
            x.set_path("PaxHeader").expect("pax header name");
            x.set_size(data.len() as u64);
            x.set_cksum();
            self.b.append(&x, data.as_bytes()).expect("append pax");
            h.set_path("long-name-in-pax").expect("placeholder name");
        }
        h.set_cksum();
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Directory, 0o755, 0, 0);
        self.name(&mut h, path);
        self.b.append(&h, io::empty()).expect("append dir");
        self
    }

    fn file(&mut self, path: &str, data: &str) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0)
    }

    fn file_with(&mut self, path: &str, data: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.name(&mut h, path);
        self.b.append(&h, data.as_bytes()).expect("append file");
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0);
        h.set_link_name(target).expect("link name");
        self.name(&mut h, path);
        self.b.append(&h, io::empty()).expect("append symlink");
        self
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Link, 0o755, 0, 0);
        h.set_link_name(target).expect("link name");
        self.name(&mut h, path);
        self.b.append(&h, io::empty()).expect("append hard link");
        self
    }

    fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        let name = if dir.is_empty() {
            format!(".wh.{base}")
        } else {
            format!("{dir}/.wh.{base}")
        };
        self.file(&name, "")
    }

    fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), "")
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().expect("finish tar")
    }
}

/// Unpacks `layers` the way the image service does: every layer into its own
/// snapshot at the same time, then commits in chain order. Returns the chain
/// IDs (`<image>-<n>`; real ones are digests).
fn unpack(sn: &Snapshotter, image: &str, layers: Vec<Vec<u8>>) -> Vec<String> {
    let chain: Vec<String> = (0..layers.len())
        .map(|i| format!("chain:{image}-{i}"))
        .collect();
    std::thread::scope(|s| {
        for (i, layer) in layers.into_iter().enumerate() {
            let chain = &chain;
            s.spawn(move || {
                let key = format!("extract-{image}-{i}");
                let dir = sn.prepare_layer(&key).expect("prepare layer");
                apply_layer(layer.as_slice(), &dir).expect("apply layer");
                let parent = i.checked_sub(1).map(|p| chain[p].as_str());
                wait_for(sn, parent);
                sn.commit_layer(&key, &chain[i], parent)
                    .expect("commit layer");
            });
        }
    });
    chain
}

/// Waits until `parent` is committed (the image service orders commits).
fn wait_for(sn: &Snapshotter, parent: Option<&str>) {
    let Some(parent) = parent else { return };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sn.stat(parent).is_ok_and(|i| i.kind == Kind::Committed) {
        assert!(
            Instant::now() < deadline,
            "parent {parent} was never committed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn chains_written_through_mounts_stack_and_hide_deleted_files() {
    let mut f = Fixture::new();

    // Layer 1, written through a bind mount of a parentless active snapshot.
    let m = f.sn.prepare("active-1", None).expect("prepare 1");
    let t = f.mount(&m);
    fs::write(t.join("a.txt"), "a1").expect("write");
    fs::create_dir_all(t.join("dir/sub")).expect("mkdir");
    fs::write(t.join("dir/x.txt"), "x1").expect("write");
    fs::write(t.join("dir/sub/deep.txt"), "deep").expect("write");
    fs::create_dir(t.join("keep")).expect("mkdir");
    fs::write(t.join("keep/k.txt"), "k1").expect("write");
    f.unmount(&t);
    f.sn.commit("layer-1", "active-1").expect("commit 1");

    // Layer 2, through overlay: overlayfs itself makes the whiteout and the
    // opaque directory in the upper directory.
    let m =
        f.sn.prepare("active-2", Some("layer-1"))
            .expect("prepare 2");
    assert_eq!(m[0].fs_type, "overlay");
    let t = f.mount(&m);
    assert_eq!(read(&t.join("a.txt")), "a1");
    fs::remove_file(t.join("a.txt")).expect("delete a.txt");
    fs::remove_dir_all(t.join("dir")).expect("delete dir");
    fs::create_dir(t.join("dir")).expect("recreate dir");
    fs::write(t.join("dir/y.txt"), "y2").expect("write");
    fs::write(t.join("b.txt"), "b2").expect("write");
    f.unmount(&t);
    f.sn.commit("layer-2", "active-2").expect("commit 2");

    // Layer 3.
    let m =
        f.sn.prepare("active-3", Some("layer-2"))
            .expect("prepare 3");
    let t = f.mount(&m);
    fs::write(t.join("c.txt"), "c3").expect("write");
    fs::write(t.join("keep/k.txt"), "k3").expect("overwrite");
    f.unmount(&t);
    f.sn.commit("layer-3", "active-3").expect("commit 3");

    // A read-only view of all three.
    let m = f.sn.view("view", Some("layer-3")).expect("view");
    assert_eq!(m[0].fs_type, "overlay");
    assert!(m[0].options.iter().all(|o| !o.starts_with("upperdir=")));
    let v = f.mount(&m);
    assert_eq!(
        find(&v),
        ["b.txt", "c.txt", "dir", "dir/y.txt", "keep", "keep/k.txt"]
    );
    assert_eq!(read(&v.join("keep/k.txt")), "k3");
    assert_eq!(errno(fs::write(v.join("new"), "x")), Some(libc_erofs()));

    // A container on top: writable, and the layers below stay as they were.
    let m =
        f.sn.prepare("container", Some("layer-3"))
            .expect("prepare container");
    let c = f.mount(&m);
    fs::write(c.join("b.txt"), "changed by the container").expect("copy-up write");
    fs::write(c.join("new.txt"), "new").expect("write");
    assert_eq!(read(&v.join("b.txt")), "b2");
    assert!(!v.join("new.txt").exists());
    f.unmount(&c);
    f.unmount(&v);

    assert!(matches!(
        f.sn.remove("layer-2"),
        Err(Error::HasChildren { children, .. }) if children == ["layer-3"]
    ));
    assert!(matches!(
        f.sn.remove("layer-3"),
        Err(Error::HasChildren { children, .. }) if children == ["container", "view"]
    ));
    for key in ["container", "view", "layer-3", "layer-2", "layer-1"] {
        f.sn.remove(key).expect("remove");
    }
    assert!(f.sn.list().expect("list").is_empty());
    assert_eq!(
        fs::read_dir(f.sn.root().join("snapshots"))
            .expect("read")
            .count(),
        0
    );
    f.finish();
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[test]
fn applied_whiteouts_and_opaque_directories_hide_lower_files() {
    let mut f = Fixture::new();
    let l0 = Layer::new()
        .dir("etc")
        .file("etc/os-release", "berth\n")
        .dir("srv")
        .file("srv/one", "1")
        .file("srv/two", "2")
        .dir("srv/sub")
        .file("srv/sub/three", "3")
        .dir("var")
        .file("var/gone", "g")
        .bytes();
    let l1 = Layer::new()
        .dir("srv")
        .whiteout("srv/one")
        .opaque("srv/sub")
        .file("srv/sub/four", "4")
        .whiteout("var")
        .bytes();
    let l2 = Layer::new()
        .dir("var")
        .file("var/new", "n")
        .whiteout("etc/os-release")
        .bytes();
    let chain = unpack(&f.sn, "wh", vec![l0, l1, l2]);

    let m = f.sn.view("view", Some(&chain[2])).expect("view");
    let v = f.mount(&m);
    assert_eq!(
        find(&v),
        [
            "etc",
            "srv",
            "srv/sub",
            "srv/sub/four",
            "srv/two",
            "var",
            "var/new"
        ]
    );
    // The single-layer view is a read-only bind mount of the layer itself.
    let m0 = f.sn.view("view-0", Some(&chain[0])).expect("view 0");
    assert_eq!(m0[0].fs_type, "bind");
    let v0 = f.mount(&m0);
    assert_eq!(read(&v0.join("srv/sub/three")), "3");
    assert_eq!(
        errno(fs::remove_file(v0.join("srv/one"))),
        Some(libc_erofs())
    );
    f.unmount(&v0);
    f.unmount(&v);
    f.finish();
}

/// `bench/whiteout:1` from shared/testimages (ocibuild.py), built the same
/// way, unpacked in parallel, and checked against its `/data/EXPECTED`.
#[test]
fn the_bench_whiteout_image_unpacks_to_its_expected_tree() {
    let mut f = Fixture::new();
    let long_dir = format!("data/{}", "long-directory-name-".repeat(4));
    let long_name = format!("{long_dir}/{}.txt", "f".repeat(120));
    assert!(long_name.len() > 100);

    let base = Layer::new()
        .dir("bin")
        .file_with("bin/busybox", "#!busybox stand-in\n", 0o755, 0, 0)
        .hardlink("bin/sh", "bin/busybox")
        .dir("etc")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .dir("lib64")
        .symlink(
            "lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        )
        .bytes();
    let mut l1 = Layer::new();
    l1.dir("data")
        .dir("data/dir")
        .dir("data/keep")
        .dir(&long_dir);
    l1.file("data/a.txt", "a from layer 1\n")
        .file("data/b.txt", "b from layer 1\n");
    l1.file("data/dir/x.txt", "x from layer 1\n")
        .file("data/keep/k.txt", "k from layer 1\n");
    l1.symlink("data/link-to-a", "a.txt")
        .hardlink("data/hard-b", "data/b.txt");
    l1.file_with("data/suid-file", "suid\n", 0o4755, 0, 0)
        .file(&long_name, "long name\n");
    l1.file_with("data/owned-by-1234", "owned\n", 0o600, 1234, 5678);
    let l1 = l1.bytes();
    let l2 = Layer::new()
        .dir("data")
        .dir("data/dir")
        .whiteout("data/a.txt")
        .opaque("data/dir")
        .file("data/dir/y.txt", "y from layer 2\n")
        .file("data/b.txt", "b from layer 2\n")
        .bytes();
    let mut expected: Vec<String> = [
        "/data",
        "/data/EXPECTED",
        "/data/b.txt",
        "/data/c.txt",
        "/data/dir",
        "/data/dir/y.txt",
        "/data/hard-b",
        "/data/keep",
        "/data/keep/k.txt",
        "/data/suid-file",
        "/data/owned-by-1234",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("/{long_dir}"), format!("/{long_name}")])
    .collect();
    expected.sort();
    let expected_file = format!(
        "# files under /data after all layers are applied (find /data | sort)\n{}\n\
         # contents: b.txt='b from layer 2', hard-b='b from layer 1' (hard link made in layer 1),\n\
         # suid-file mode 4755, owned-by-1234 uid 1234 gid 5678 mode 600\n",
        expected.join("\n")
    );
    let l3 = Layer::new()
        .dir("data")
        .whiteout("data/link-to-a")
        .file("data/c.txt", "c from layer 3\n")
        .file("data/EXPECTED", &expected_file)
        .bytes();

    let chain = unpack(&f.sn, "bench-whiteout", vec![base, l1, l2, l3]);
    let m =
        f.sn.prepare("container", Some(&chain[3]))
            .expect("prepare container");
    let root = f.mount(&m);

    // find /data | sort equals the list in /data/EXPECTED.
    let listed: Vec<String> = read(&root.join("data/EXPECTED"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut found: Vec<String> = std::iter::once("/data".to_owned())
        .chain(
            find(&root.join("data"))
                .into_iter()
                .map(|p| format!("/data/{p}")),
        )
        .collect();
    found.sort();
    assert_eq!(found, listed);
    assert_eq!(found, expected);

    let data = root.join("data");
    assert_eq!(read(&data.join("b.txt")), "b from layer 2\n");
    assert_eq!(read(&data.join("hard-b")), "b from layer 1\n");
    assert_eq!(read(&data.join("c.txt")), "c from layer 3\n");
    assert_eq!(read(&data.join("dir/y.txt")), "y from layer 2\n");
    assert_eq!(read(&data.join("keep/k.txt")), "k from layer 1\n");
    assert_eq!(read(&root.join(&long_name)), "long name\n");
    assert!(fs::symlink_metadata(data.join("a.txt")).is_err());
    assert!(fs::symlink_metadata(data.join("link-to-a")).is_err());
    assert!(fs::symlink_metadata(data.join("dir/x.txt")).is_err());
    let suid = fs::metadata(data.join("suid-file")).expect("stat");
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    let owned = fs::metadata(data.join("owned-by-1234")).expect("stat");
    assert_eq!(
        (
            owned.uid(),
            owned.gid(),
            owned.permissions().mode() & 0o7777
        ),
        (1234, 5678, 0o600)
    );
    // The base layer is there too: its hard link and absolute symlink.
    assert_eq!(
        fs::metadata(root.join("bin/sh")).expect("stat").ino(),
        fs::metadata(root.join("bin/busybox")).expect("stat").ino()
    );
    assert_eq!(
        fs::read_link(root.join("lib64/ld-linux-x86-64.so.2")).expect("readlink"),
        Path::new("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    );
    // The container can write; the image layers do not change.
    fs::write(data.join("b.txt"), "container").expect("write");
    f.unmount(&root);
    let v = f.mount(&f.sn.view("check", Some(&chain[3])).expect("view"));
    assert_eq!(read(&v.join("data/b.txt")), "b from layer 2\n");
    f.unmount(&v);
    f.finish();
}

#[test]
fn views_are_read_only() {
    let mut f = Fixture::new();
    let chain = unpack(
        &f.sn,
        "ro",
        vec![
            Layer::new().file("one", "1").bytes(),
            Layer::new().file("two", "2").bytes(),
        ],
    );
    let cases: [(&str, Option<&str>, &str); 3] = [
        ("empty", None, "bind"),
        ("single", Some(&chain[0]), "bind"),
        ("stacked", Some(&chain[1]), "overlay"),
    ];
    for (key, parent, fs_type) in cases {
        let m = f.sn.view(key, parent).expect("view");
        assert_eq!(m[0].fs_type, fs_type, "{key}");
        let v = f.mount(&m);
        assert_eq!(
            errno(fs::write(v.join("new"), "x")),
            Some(libc_erofs()),
            "{key}"
        );
        assert_eq!(
            errno(fs::create_dir(v.join("newdir"))),
            Some(libc_erofs()),
            "{key}"
        );
        if parent.is_some() {
            assert_eq!(
                errno(fs::OpenOptions::new().append(true).open(v.join("one"))),
                Some(libc_erofs()),
                "{key}"
            );
            assert_eq!(
                errno(fs::remove_file(v.join("one"))),
                Some(libc_erofs()),
                "{key}"
            );
        }
        f.unmount(&v);
    }
    // An active snapshot's mounts are writable, even with no parent.
    let m = f.sn.prepare("rw", None).expect("prepare");
    let t = f.mount(&m);
    fs::write(t.join("new"), "x").expect("write to an active snapshot");
    f.unmount(&t);
    f.finish();
}

#[test]
fn parents_with_children_cannot_be_removed() {
    let f = Fixture::new();
    let chain = unpack(
        &f.sn,
        "p",
        vec![
            Layer::new().file("a", "a").bytes(),
            Layer::new().file("b", "b").bytes(),
        ],
    );
    f.sn.view("v", Some(&chain[1])).expect("view");
    f.sn.prepare("c", Some(&chain[1])).expect("prepare");
    for key in [&chain[0], &chain[1]] {
        assert!(
            matches!(f.sn.remove(key), Err(Error::HasChildren { .. })),
            "{key}"
        );
    }
    assert_eq!(f.sn.list().expect("list").len(), 4);
    f.sn.remove("v").expect("remove view");
    assert!(
        matches!(f.sn.remove(&chain[1]), Err(Error::HasChildren { children, .. }) if children == ["c"])
    );
    f.sn.remove("c").expect("remove container");
    f.sn.remove(&chain[1]).expect("remove top");
    f.sn.remove(&chain[0]).expect("remove base");
    f.finish();
}

#[test]
fn usage_numbers_are_plausible() {
    let mut f = Fixture::new();
    let chain = unpack(&f.sn, "u", vec![Layer::new().file("base", "b").bytes()]);
    let m = f.sn.prepare("ctr", Some(&chain[0])).expect("prepare");
    let t = f.mount(&m);
    let n: usize = 3 << 20;
    let files = 5;
    for i in 0..files {
        // Incompressible enough, and not sparse.
        let data: Vec<u8> = (0..n / files).map(|j| (j * 31 + i) as u8).collect();
        fs::write(t.join(format!("blob-{i}")), data).expect("write");
    }
    f.unmount(&t);
    let usage = f.sn.usage("ctr").expect("usage");
    assert!(usage.bytes >= n as u64, "{usage:?} < {n}");
    assert!(usage.bytes < 2 * n as u64, "{usage:?}");
    assert!(usage.inodes > files as u64, "{usage:?}");
    let base = f.sn.usage(&chain[0]).expect("usage of the layer");
    assert!(base.inodes >= 2 && base.bytes < n as u64, "{base:?}");

    f.sn.commit("ctr-image", "ctr").expect("commit");
    assert_eq!(f.sn.usage("ctr-image").expect("usage"), usage);

    let total = f.sn.fs_usage().expect("fs usage");
    assert!(total.used_bytes >= usage.bytes + base.bytes, "{total:?}");
    assert!(total.used_inodes >= usage.inodes + base.inodes, "{total:?}");
    assert!(f.sn.root().starts_with(&total.mountpoint), "{total:?}");
    let table = mountinfo::read_self().expect("mountinfo");
    assert!(
        table.iter().any(|m| m.mount_point == total.mountpoint),
        "{total:?}"
    );
    assert!(total.available_bytes <= total.total_bytes && total.free_inodes <= total.total_inodes);
    f.finish();
}

#[test]
fn reopening_sweeps_what_a_crash_left() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let layer_dir;
    {
        let sn = Snapshotter::open(&root).expect("open");
        let chain = unpack(&sn, "crash", vec![Layer::new().file("f", "kept").bytes()]);
        assert_eq!(chain, ["chain:crash-0"]);
        layer_dir = sn.prepare_layer("half-unpacked").expect("prepare");
        fs::write(layer_dir.join("partial"), "p").expect("write");
    }
    // What crashes leave: a staged directory, a directory renamed into place
    // whose transaction never committed, one being deleted.
    let snapshots = root.join("snapshots");
    for leftover in [
        "new-4242-0/fs/usr",
        "new-4242-0/work",
        "77/fs/etc",
        "77/work",
        "rm-3/fs/x",
    ] {
        fs::create_dir_all(snapshots.join(leftover)).expect("plant leftover");
    }
    fs::write(snapshots.join("77/fs/etc/passwd"), "orphan").expect("plant file");

    let mut f = Fixture {
        sn: Snapshotter::open(&root).expect("reopen"),
        tmp,
        mounted: Vec::new(),
        next: 0,
    };
    for leftover in ["new-4242-0", "77", "rm-3"] {
        assert!(
            !snapshots.join(leftover).exists(),
            "{leftover} was not swept"
        );
    }
    // Complete snapshots survive, with their data.
    assert_eq!(read(&layer_dir.join("partial")), "p");
    let m = f.sn.view("v", Some("chain:crash-0")).expect("view");
    let v = f.mount(&m);
    assert_eq!(read(&v.join("f")), "kept");
    f.unmount(&v);
    assert!(f.sn.cleanup().expect("cleanup").is_empty());
    f.finish();
}

#[test]
fn layers_unpack_and_commit_concurrently() {
    let mut f = Fixture::new();
    // Two images share their first two layers; every layer of both is
    // unpacked at once, in its own thread, and the duplicates race.
    let layer = |i: usize| {
        let mut l = Layer::new();
        l.dir(&format!("layer-{i}"));
        for j in 0..50 {
            l.file(&format!("layer-{i}/file-{j}"), &format!("{i}/{j}\n"));
        }
        l.file("top", &format!("{i}\n")).bytes()
    };
    let images: [(&str, Vec<usize>); 2] = [("a", vec![0, 1, 2, 3]), ("b", vec![0, 1, 4])];
    let chain_of = |layers: &[usize]| -> Vec<String> {
        (1..=layers.len())
            .map(|n| {
                let ids: Vec<String> = layers[..n].iter().map(|i| i.to_string()).collect();
                format!("chain:{}", ids.join("-"))
            })
            .collect()
    };
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (image, layers) in &images {
            let chain = chain_of(layers);
            for (pos, &i) in layers.iter().enumerate() {
                let chain = chain.clone();
                let (sn, outcomes) = (&f.sn, &outcomes);
                let bytes = layer(i);
                s.spawn(move || {
                    let key = format!("extract-{image}-{pos}");
                    let dir = sn.prepare_layer(&key).expect("prepare layer");
                    let stats = apply_layer(bytes.as_slice(), &dir).expect("apply");
                    assert_eq!(stats.entries, 52);
                    let parent = pos.checked_sub(1).map(|p| chain[p].as_str());
                    wait_for(sn, parent);
                    let outcome = sn
                        .commit_layer(&key, &chain[pos], parent)
                        .expect("commit layer");
                    outcomes
                        .lock()
                        .expect("lock")
                        .push((chain[pos].clone(), outcome));
                });
            }
        }
    });
    let outcomes = outcomes.into_inner().expect("lock");
    assert_eq!(outcomes.len(), 7);
    for shared in ["chain:0", "chain:0-1"] {
        let mut o: Vec<Committed> = outcomes
            .iter()
            .filter(|(c, _)| c == shared)
            .map(|(_, o)| *o)
            .collect();
        o.sort_by_key(|o| *o == Committed::AlreadyExists);
        assert_eq!(
            o,
            [Committed::Created, Committed::AlreadyExists],
            "{shared}"
        );
    }
    // Five distinct layers, no extract snapshots or directories left over.
    let keys: Vec<String> =
        f.sn.list()
            .expect("list")
            .into_iter()
            .map(|i| i.key)
            .collect();
    assert_eq!(
        keys,
        [
            "chain:0",
            "chain:0-1",
            "chain:0-1-2",
            "chain:0-1-2-3",
            "chain:0-1-4"
        ]
    );
    assert_eq!(
        fs::read_dir(f.sn.root().join("snapshots"))
            .expect("read")
            .count(),
        5
    );

    for (image, layers) in &images {
        let chain = chain_of(layers);
        let top = chain.last().expect("a chain");
        let v = f.mount(
            &f.sn
                .view(&format!("view-{image}"), Some(top))
                .expect("view"),
        );
        for &i in layers {
            assert_eq!(
                read(&v.join(format!("layer-{i}/file-49"))),
                format!("{i}/49\n")
            );
        }
        assert_eq!(
            read(&v.join("top")),
            format!("{}\n", layers.last().expect("layers"))
        );
        f.unmount(&v);
    }
    f.finish();
}

#[test]
fn gc_keeps_what_containers_use() {
    let f = Fixture::new();
    let chain = unpack(
        &f.sn,
        "gc",
        vec![
            Layer::new().file("a", "a").bytes(),
            Layer::new().file("b", "b").bytes(),
        ],
    );
    f.sn.prepare("container", Some(&chain[1])).expect("prepare");
    assert!(f.sn.gc(Vec::<String>::new()).expect("gc").is_empty());
    f.sn.remove("container").expect("remove");
    assert!(
        f.sn.gc([&chain[1]]).expect("gc").is_empty(),
        "the image is referenced"
    );
    assert_eq!(
        f.sn.gc(Vec::<String>::new()).expect("gc"),
        [chain[1].clone(), chain[0].clone()]
    );
    assert!(f.sn.list().expect("list").is_empty());
    assert_eq!(
        fs::read_dir(f.sn.root().join("snapshots"))
            .expect("read")
            .count(),
        0
    );
    f.finish();
}

/// More layers than one page of absolute lower directories can name (the
/// temp root is long): the mounts still work, with `lowerdir` shortened.
#[test]
fn images_deeper_than_one_page_of_options_mount() {
    let mut f = Fixture::new();
    const LAYERS: usize = 150;
    let mut parent: Option<String> = None;
    for i in 0..LAYERS {
        let key = format!("extract-{i}");
        let dir = f.sn.prepare_layer(&key).expect("prepare layer");
        fs::write(dir.join(format!("layer-{i}")), i.to_string()).expect("write");
        fs::write(dir.join("top"), i.to_string()).expect("write");
        let name = format!("chain-{i}");
        f.sn.commit_layer(&key, &name, parent.as_deref())
            .expect("commit layer");
        parent = Some(name);
    }
    let top = parent.expect("layers");
    let view = f.sn.view("view", Some(&top)).expect("view");
    let lowerdir = view[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .expect("an overlay");
    assert!(lowerdir.len() > 4096, "{} bytes", lowerdir.len());
    let v = f.mount(&view);
    assert_eq!(read(&v.join("layer-0")), "0");
    assert_eq!(read(&v.join("top")), (LAYERS - 1).to_string());
    let container = f.sn.prepare("container", Some(&top)).expect("prepare");
    let c = f.mount(&container);
    fs::write(c.join("top"), "container").expect("copy-up write");
    assert_eq!(read(&v.join("top")), (LAYERS - 1).to_string());
    f.unmount(&c);
    f.unmount(&v);
    f.finish();
}
