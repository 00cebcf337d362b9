//! The container's user: uid, gid and supplementary groups, resolved against
//! the image's `/etc/passwd` and `/etc/group`.
//!
//! Which user: `run_as_username`, else `run_as_user`, else the image's
//! `User`, else root; `run_as_group` adds a group, and is refused without a
//! user (critest checks for the error). A user string is `uid`, `name`,
//! `uid:gid`, `name:group`, `uid:group` or `name:gid`.
//!
//! - A numeric uid need not exist in `/etc/passwd`; its gid is the passwd
//!   entry's, or 0 without one. A name must exist, or the request fails
//!   naming the user and the field it came from.
//! - Supplementary groups (policy `Merge`, the default): the groups of
//!   `/etc/group` that list the user as a member (except a group named like
//!   the user, as containerd), plus the CRI's `supplemental_groups` of the
//!   container and of the pod. Policy `Strict` keeps only the CRI's. Sorted,
//!   without duplicates.
//!
//! The files are parsed leniently, like libc: blank lines, comments, NIS
//! `+`/`-` lines and lines whose ids are not numbers are skipped (a garbled
//! uid must not become root).

use super::SpecError;
use berth_proto::cri::v1 as cri;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Largest `/etc/passwd` or `/etc/group` berth reads from an image.
const MAX_FILE_SIZE: u64 = 16 << 20;

/// Largest id runc accepts (it stores ids as Go `int` and checks `MaxInt32`).
const MAX_ID: i64 = i32::MAX as i64;

const FIELD_USERNAME: &str = "linux.security_context.run_as_username";
const FIELD_USER: &str = "linux.security_context.run_as_user";
const FIELD_GROUP: &str = "linux.security_context.run_as_group";
const FIELD_IMAGE_USER: &str = "image config User";

/// The users and groups of an image, from its `/etc/passwd` and
/// `/etc/group` (either may be missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUsers {
    users: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

impl ImageUsers {
    /// Parses the text of `/etc/passwd` and `/etc/group`.
    pub fn parse(passwd: Option<&str>, group: Option<&str>) -> Self {
        let users = records(passwd.unwrap_or(""))
            .filter_map(|fields| {
                // name:password:uid:gid:gecos:home:shell
                Some(PasswdEntry {
                    name: (*fields.first()?).to_owned(),
                    uid: fields.get(2)?.parse().ok()?,
                    gid: fields.get(3)?.parse().ok()?,
                })
            })
            .collect();
        let groups = records(group.unwrap_or(""))
            .filter_map(|fields| {
                // name:password:gid:member,member
                Some(GroupEntry {
                    name: (*fields.first()?).to_owned(),
                    gid: fields.get(2)?.parse().ok()?,
                    members: fields
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .map(str::trim)
                                .filter(|m| !m.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect();
        Self { users, groups }
    }

    /// Reads `etc/passwd` and `etc/group` of a mounted root filesystem.
    /// Symlinks are resolved inside `rootfs` (`openat2` with
    /// `RESOLVE_IN_ROOT`), so an image cannot make berth read host files.
    pub fn read(rootfs: &Path) -> Result<Self, SpecError> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
        use nix::sys::stat::Mode;
        let host_error = |path: &Path, source: std::io::Error| SpecError::Host {
            path: path.to_owned(),
            source,
        };
        let root = nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| host_error(rootfs, e.into()))?;
        let read = |name: &str| -> Result<Option<String>, SpecError> {
            let path = rootfs.join(name);
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            let fd: OwnedFd = match nix::fcntl::openat2(&root, name, how) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Ok(None),
                Err(e) => return Err(host_error(&path, e.into())),
            };
            let file = std::fs::File::from(fd);
            let mut bytes = Vec::new();
            file.take(MAX_FILE_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| host_error(&path, e))?;
            if bytes.len() as u64 > MAX_FILE_SIZE {
                return Err(host_error(
                    &path,
                    std::io::Error::other(format!("larger than {MAX_FILE_SIZE} bytes")),
                ));
            }
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let passwd = read("etc/passwd")?;
        let group = read("etc/group")?;
        Ok(Self::parse(passwd.as_deref(), group.as_deref()))
    }

    fn user_by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.uid == uid)
    }

    fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// The `:`-separated fields of each meaningful line.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(['+', '-']))
        .map(|l| l.split(':').collect())
}

/// The ids of the container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// A user or group as written: an id or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ref {
    Id(u32),
    Name(String),
}

/// Resolves the user of a container; see the module doc.
pub(crate) fn resolve(
    sc: &cri::LinuxContainerSecurityContext,
    pod_sc: &cri::LinuxSandboxSecurityContext,
    image_user: &str,
    users: &ImageUsers,
) -> Result<ResolvedUser, SpecError> {
    // Which user, and which field to blame for it.
    let (user, group, field) = if !sc.run_as_username.is_empty() {
        let group = sc
            .run_as_group
            .map(|g| cri_id(FIELD_GROUP, g.value))
            .transpose()?;
        (
            Some(Ref::Name(sc.run_as_username.clone())),
            group.map(Ref::Id),
            FIELD_USERNAME,
        )
    } else if let Some(uid) = sc.run_as_user {
        let group = sc
            .run_as_group
            .map(|g| cri_id(FIELD_GROUP, g.value))
            .transpose()?;
        (
            Some(Ref::Id(cri_id(FIELD_USER, uid.value)?)),
            group.map(Ref::Id),
            FIELD_USER,
        )
    } else if sc.run_as_group.is_some() {
        return Err(SpecError::GroupWithoutUser);
    } else if image_user.is_empty() {
        (None, None, FIELD_IMAGE_USER)
    } else {
        let (user, group) = parse_user_string(image_user)?;
        (Some(user), group, FIELD_IMAGE_USER)
    };

    let (uid, gid) = match (&user, &group) {
        (None, _) => (0, 0),
        (Some(Ref::Id(uid)), None) => (*uid, users.user_by_uid(*uid).map_or(0, |u| u.gid)),
        (Some(Ref::Name(name)), None) => {
            let entry = users
                .user_by_name(name)
                .ok_or_else(|| SpecError::UserNotFound {
                    field,
                    name: name.clone(),
                })?;
            (entry.uid, entry.gid)
        }
        (Some(user), Some(group)) => {
            let uid = match user {
                Ref::Id(uid) => *uid,
                Ref::Name(name) => {
                    users
                        .user_by_name(name)
                        .ok_or_else(|| SpecError::UserNotFound {
                            field,
                            name: name.clone(),
                        })?
                        .uid
                }
            };
            let gid = match group {
                Ref::Id(gid) => *gid,
                Ref::Name(name) => {
                    users
                        .group_by_name(name)
                        .ok_or_else(|| SpecError::GroupNotFound {
                            field,
                            name: name.clone(),
                        })?
                        .gid
                }
            };
            (uid, gid)
        }
    };

    let policy =
        cri::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy).map_err(|_| {
            SpecError::invalid(
                "linux.security_context.supplemental_groups_policy",
                format!("unknown policy {}", sc.supplemental_groups_policy),
            )
        })?;
    let mut additional_gids = Vec::new();
    if policy == cri::SupplementalGroupsPolicy::Merge {
        // The member name to look for: the name given, or the passwd name of the uid.
        let member = match user.unwrap_or(Ref::Id(0)) {
            Ref::Name(name) => Some(name),
            Ref::Id(uid) => users.user_by_uid(uid).map(|u| u.name.clone()),
        };
        if let Some(member) = member {
            additional_gids.extend(
                users
                    .groups
                    .iter()
                    .filter(|g| g.name != member && g.members.contains(&member))
                    .map(|g| g.gid),
            );
        }
    }
    for gid in &sc.supplemental_groups {
        additional_gids.push(cri_id("linux.security_context.supplemental_groups", *gid)?);
    }
    for gid in &pod_sc.supplemental_groups {
        additional_gids.push(cri_id(
            "linux.security_context.supplemental_groups (pod)",
            *gid,
        )?);
    }
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// A uid or gid from the CRI, which carries them as `int64`.
fn cri_id(field: &'static str, value: i64) -> Result<u32, SpecError> {
    if (0..=MAX_ID).contains(&value) {
        Ok(value as u32)
    } else {
        Err(SpecError::invalid(
            field,
            format!("id {value} is out of range 0..={MAX_ID}"),
        ))
    }
}

/// Splits an image's `User` into a user and an optional group.
fn parse_user_string(value: &str) -> Result<(Ref, Option<Ref>), SpecError> {
    let invalid =
        |reason: &str| SpecError::invalid(FIELD_IMAGE_USER, format!("{value:?}: {reason}"));
    let one = |part: &str, what: &str| -> Result<Ref, SpecError> {
        if part.is_empty() {
            return Err(invalid(&format!("empty {what}")));
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            match part.parse::<i64>() {
                Ok(id) if id <= MAX_ID => Ok(Ref::Id(id as u32)),
                _ => Err(invalid(&format!("{what} out of range"))),
            }
        } else {
            Ok(Ref::Name(part.to_owned()))
        }
    };
    let parts: Vec<&str> = value.split(':').collect();
    match parts.as_slice() {
        [user] => Ok((one(user, "user")?, None)),
        [user, group] => Ok((one(user, "user")?, Some(one(group, "group")?))),
        _ => Err(invalid("expected user or user:group")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bob:x:1000:1000:Bob:/home/bob:/bin/sh
broken:x:notanumber:0::/:/bin/sh
+nisuser::::::
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,bob
bob:x:1000:bob
audio:x:29:bob, daemon
group-defined-in-image:x:50000:bob
staff:x:50:
";

    fn users() -> ImageUsers {
        ImageUsers::parse(Some(PASSWD), Some(GROUP))
    }

    fn sc() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    fn id(value: i64) -> Option<cri::Int64Value> {
        Some(cri::Int64Value { value })
    }

    #[test]
    fn parse_skips_comments_nis_and_garbled_lines() {
        let users = users();
        let names: Vec<&str> = users.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "bob", "nobody"]);
        assert_eq!(
            users.group_by_name("audio").map(|g| g.members.clone()),
            Some(vec!["bob".to_owned(), "daemon".to_owned()])
        );
    }

    #[test]
    fn user_resolution_table() {
        struct Case {
            name: &'static str,
            sc: cri::LinuxContainerSecurityContext,
            image_user: &'static str,
            want: Result<(u32, u32, Vec<u32>), &'static str>,
        }
        let cases = vec![
            Case {
                name: "nothing set: root and root's groups",
                sc: sc(),
                image_user: "",
                want: Ok((0, 0, vec![10])),
            },
            Case {
                name: "run_as_user in passwd takes its gid and groups",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_user: id(1000),
                    ..sc()
                },
                image_user: "daemon",
                want: Ok((1000, 1000, vec![10, 29, 50000])),
            },
            Case {
                name: "run_as_user not in passwd is fine, gid 0",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_user: id(4242),
                    ..sc()
                },
                image_user: "",
                want: Ok((4242, 0, vec![])),
            },
            Case {
                name: "run_as_username wins over run_as_user",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_username: "daemon".into(),
                    run_as_user: id(1000),
                    ..sc()
                },
                image_user: "",
                want: Ok((1, 1, vec![29])),
            },
            Case {
                name: "run_as_user with run_as_group",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_user: id(1000),
                    run_as_group: id(3000),
                    ..sc()
                },
                image_user: "",
                want: Ok((1000, 3000, vec![10, 29, 50000])),
            },
            Case {
                name: "run_as_username with run_as_group",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_username: "bob".into(),
                    run_as_group: id(7),
                    ..sc()
                },
                image_user: "",
                want: Ok((1000, 7, vec![10, 29, 50000])),
            },
            Case {
                name: "unknown run_as_username",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_username: "alice".into(),
                    ..sc()
                },
                image_user: "",
                want: Err("linux.security_context.run_as_username: user \"alice\" not found in the image's /etc/passwd"),
            },
            Case {
                name: "run_as_group alone",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_group: id(1000),
                    ..sc()
                },
                image_user: "bob",
                want: Err("linux.security_context.run_as_group: set without run_as_user or run_as_username"),
            },
            Case {
                name: "negative run_as_user",
                sc: cri::LinuxContainerSecurityContext {
                    run_as_user: id(-1),
                    ..sc()
                },
                image_user: "",
                want: Err("linux.security_context.run_as_user: id -1 is out of range 0..=2147483647"),
            },
            Case {
                name: "image user by name",
                sc: sc(),
                image_user: "bob",
                want: Ok((1000, 1000, vec![10, 29, 50000])),
            },
            Case {
                name: "image user uid:gid needs no passwd entry",
                sc: sc(),
                image_user: "5000:6000",
                want: Ok((5000, 6000, vec![])),
            },
            Case {
                name: "image user name:group",
                sc: sc(),
                image_user: "bob:staff",
                want: Ok((1000, 50, vec![10, 29, 50000])),
            },
            Case {
                name: "image user uid:group",
                sc: sc(),
                image_user: "1:wheel",
                want: Ok((1, 10, vec![29])),
            },
            Case {
                name: "image user with unknown group",
                sc: sc(),
                image_user: "bob:nogroup",
                want: Err("image config User: group \"nogroup\" not found in the image's /etc/group"),
            },
            Case {
                name: "image user unknown name",
                sc: sc(),
                image_user: "carol",
                want: Err("image config User: user \"carol\" not found in the image's /etc/passwd"),
            },
            Case {
                name: "image user with too many parts",
                sc: sc(),
                image_user: "a:b:c",
                want: Err("image config User: \"a:b:c\": expected user or user:group"),
            },
            Case {
                name: "image uid out of range",
                sc: sc(),
                image_user: "4294967296",
                want: Err("image config User: \"4294967296\": user out of range"),
            },
        ];
        for case in cases {
            let got = resolve(&case.sc, &Default::default(), case.image_user, &users())
                .map(|u| (u.uid, u.gid, u.additional_gids))
                .map_err(|e| e.to_string());
            assert_eq!(got, case.want.map_err(str::to_owned), "{}", case.name);
        }
    }

    #[test]
    fn supplemental_groups_merge_strict_and_pod() {
        let merged = cri::LinuxContainerSecurityContext {
            run_as_user: id(1000),
            supplemental_groups: vec![1234, 10],
            ..sc()
        };
        let pod = cri::LinuxSandboxSecurityContext {
            supplemental_groups: vec![5678],
            ..Default::default()
        };
        let got = resolve(&merged, &pod, "", &users()).expect("resolves");
        assert_eq!(got.additional_gids, [10, 29, 1234, 5678, 50000]);

        let strict = cri::LinuxContainerSecurityContext {
            supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
            ..merged.clone()
        };
        let got = resolve(&strict, &pod, "", &users()).expect("resolves");
        assert_eq!(got.additional_gids, [10, 1234, 5678]);

        let negative = cri::LinuxContainerSecurityContext {
            supplemental_groups: vec![-5],
            ..sc()
        };
        assert!(resolve(&negative, &pod, "", &users()).is_err());
    }

    #[test]
    fn no_passwd_file() {
        let empty = ImageUsers::parse(None, None);
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: id(33),
            ..sc()
        };
        let got =
            resolve(&sc, &Default::default(), "", &empty).expect("numeric uid needs no passwd");
        assert_eq!((got.uid, got.gid), (33, 0));
        let err = resolve(&Default::default(), &Default::default(), "www", &empty)
            .expect_err("a name needs passwd");
        assert!(matches!(err, SpecError::UserNotFound { .. }));
    }

    #[test]
    fn read_resolves_symlinks_inside_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("data")).expect("mkdir");
        std::fs::write(root.join("data/passwd"), "app:x:7:8::/:/bin/sh\n").expect("write");
        // An absolute link must resolve inside the rootfs, not on the host.
        std::os::unix::fs::symlink("/data/passwd", root.join("etc/passwd")).expect("symlink");
        std::os::unix::fs::symlink("/etc/shadow-of-the-host", root.join("etc/group"))
            .expect("symlink");
        let users = ImageUsers::read(&root).expect("reads");
        assert_eq!(
            users.user_by_name("app").map(|u| (u.uid, u.gid)),
            Some((7, 8))
        );
        assert!(users.groups.is_empty());

        let bare = dir.path().join("bare");
        std::fs::create_dir_all(&bare).expect("mkdir");
        assert_eq!(
            ImageUsers::read(&bare).expect("reads"),
            ImageUsers::default()
        );
    }
}
