//! AppArmor and SELinux: apply what the request asks for where the host
//! enforces it, refuse it where the host does not (a request for
//! confinement must never run unconfined with OK).
//!
//! AppArmor, containerd's rules where berth can follow them:
//!
//! - `apparmor` set: `RuntimeDefault` is [`DEFAULT_APPARMOR_PROFILE`],
//!   `Unconfined` none, `Localhost` the profile `localhost_ref` (a
//!   `localhost/` prefix is stripped). Unset: the deprecated
//!   `apparmor_profile` string of older kubelets (`runtime/default`,
//!   `unconfined`, `localhost/<name>`; empty means not asked).
//! - AppArmor not enabled on the host: anything but unconfined or not asked
//!   is refused with containerd's "apparmor is not supported".
//! - Enabled: the profile must be loaded in the kernel, since berth loads
//!   none itself (runc would fail with a bare error at start otherwise).
//!   Departure from containerd: a container that asks for nothing runs
//!   unconfined, where containerd loads and applies its default profile;
//!   berth ships no profile, so it only uses the default one when asked
//!   for and the host has it loaded (e.g. by a containerd on the node or
//!   the distribution's package).
//! - Privileged containers get no profile, once the request is valid.
//!
//! SELinux: the container's `selinux_options`, else the pod's (as
//! containerd). Not enabled on the host: options that set anything are
//! refused (containerd ignores them there; berth refuses, as for AppArmor,
//! so a pod never believes it is labelled when it is not). Enabled: the
//! process label is `user:role:type:level`, parts not given taken from
//! the usual container context `system_u:system_r:container_t:s0`, and the
//! mount label is the same user and level with `object_r:container_file_t`.
//! berth does not pick per-container MCS categories; a level without them
//! shares `s0` with other such containers.

use super::host::SecurityModules;
use super::SpecError;
use berth_proto::cri::v1 as cri;

/// The profile `RuntimeDefault` means, named as containerd names its own
/// so that a profile loaded for containerd serves berth too.
pub const DEFAULT_APPARMOR_PROFILE: &str = "cri-containerd.apparmor.d";

/// The defaults of a container's SELinux process label.
const SELINUX_DEFAULT_USER: &str = "system_u";
const SELINUX_DEFAULT_ROLE: &str = "system_r";
const SELINUX_DEFAULT_TYPE: &str = "container_t";
const SELINUX_DEFAULT_LEVEL: &str = "s0";
/// The role and type of the files of a container (its mount label).
const SELINUX_FILE_ROLE: &str = "object_r";
const SELINUX_FILE_TYPE: &str = "container_file_t";

/// What a request asks of AppArmor, once the deprecated form is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppArmorChoice {
    NotAsked,
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// Checks a pod's AppArmor and SELinux options against the host. berth has
/// no sandbox process to confine, so a valid request changes nothing at
/// the pod level (kubelet copies the pod's profile into each container's).
pub fn check_pod(
    sc: &cri::LinuxSandboxSecurityContext,
    host: &SecurityModules,
) -> Result<(), SpecError> {
    const FIELD: &str = "config.linux.security_context";
    apparmor_profile(
        &format!("{FIELD}.apparmor"),
        sc.apparmor.as_ref(),
        None,
        false,
        host,
    )?;
    selinux_labels(
        &format!("{FIELD}.selinux_options"),
        sc.selinux_options.as_ref(),
        false,
        host,
    )?;
    Ok(())
}

/// The container's `process.apparmorProfile`.
pub(crate) fn container_apparmor(
    sc: &cri::LinuxContainerSecurityContext,
    host: &SecurityModules,
) -> Result<Option<String>, SpecError> {
    #[allow(deprecated)]
    let deprecated = (
        "linux.security_context.apparmor_profile",
        sc.apparmor_profile.as_str(),
    );
    apparmor_profile(
        "linux.security_context.apparmor",
        sc.apparmor.as_ref(),
        Some(deprecated),
        sc.privileged,
        host,
    )
}

/// The SELinux labels of a container: (process label, mount label).
pub(crate) struct SelinuxLabels {
    pub process: String,
    pub mount: String,
}

/// The container's SELinux labels: its own options, else the pod's.
pub(crate) fn container_selinux(
    sc: &cri::LinuxContainerSecurityContext,
    pod_sc: &cri::LinuxSandboxSecurityContext,
    host: &SecurityModules,
) -> Result<Option<SelinuxLabels>, SpecError> {
    let own = sc.selinux_options.as_ref().filter(|o| !is_empty(o));
    let (field, options) = match own {
        Some(options) => ("linux.security_context.selinux_options", Some(options)),
        None => (
            "sandbox_config.linux.security_context.selinux_options",
            pod_sc.selinux_options.as_ref(),
        ),
    };
    selinux_labels(field, options, sc.privileged, host)
}

fn apparmor_profile(
    field: &str,
    profile: Option<&cri::SecurityProfile>,
    deprecated: Option<(&str, &str)>,
    privileged: bool,
    host: &SecurityModules,
) -> Result<Option<String>, SpecError> {
    let (field, choice) = match (profile, deprecated) {
        (Some(profile), _) => (field.to_owned(), apparmor_choice(field, profile)?),
        (None, Some((old_field, value))) => {
            (old_field.to_owned(), deprecated_choice(old_field, value)?)
        }
        (None, None) => (field.to_owned(), AppArmorChoice::NotAsked),
    };
    let Some(loaded) = &host.apparmor else {
        return match choice {
            AppArmorChoice::NotAsked | AppArmorChoice::Unconfined => Ok(None),
            _ => Err(SpecError::invalid(
                field,
                "apparmor is not supported (AppArmor is not enabled on this host)",
            )),
        };
    };
    let name = match choice {
        _ if privileged => return Ok(None),
        AppArmorChoice::NotAsked | AppArmorChoice::Unconfined => return Ok(None),
        AppArmorChoice::RuntimeDefault => DEFAULT_APPARMOR_PROFILE.to_owned(),
        AppArmorChoice::Localhost(name) => name,
    };
    if !loaded.contains(&name) {
        return Err(SpecError::invalid(
            field,
            format!("AppArmor profile {name:?} is not loaded on this host"),
        ));
    }
    Ok(Some(name))
}

fn apparmor_choice(
    field: &str,
    profile: &cri::SecurityProfile,
) -> Result<AppArmorChoice, SpecError> {
    use cri::security_profile::ProfileType;
    let kind = ProfileType::try_from(profile.profile_type).map_err(|_| {
        SpecError::invalid(
            format!("{field}.profile_type"),
            format!("unknown profile type {}", profile.profile_type),
        )
    })?;
    let reference = &profile.localhost_ref;
    match kind {
        ProfileType::Localhost => {
            let name = reference.strip_prefix("localhost/").unwrap_or(reference);
            if name.is_empty() {
                return Err(SpecError::invalid(
                    format!("{field}.localhost_ref"),
                    "a Localhost profile needs a profile name",
                ));
            }
            Ok(AppArmorChoice::Localhost(name.to_owned()))
        }
        _ if !reference.is_empty() => Err(SpecError::invalid(
            format!("{field}.localhost_ref"),
            "set, but the profile type is not Localhost",
        )),
        ProfileType::RuntimeDefault => Ok(AppArmorChoice::RuntimeDefault),
        ProfileType::Unconfined => Ok(AppArmorChoice::Unconfined),
    }
}

fn deprecated_choice(field: &str, value: &str) -> Result<AppArmorChoice, SpecError> {
    match value {
        "" => Ok(AppArmorChoice::NotAsked),
        "unconfined" => Ok(AppArmorChoice::Unconfined),
        "runtime/default" => Ok(AppArmorChoice::RuntimeDefault),
        _ => match value.strip_prefix("localhost/") {
            Some(name) if !name.is_empty() => Ok(AppArmorChoice::Localhost(name.to_owned())),
            _ => Err(SpecError::invalid(
                field,
                format!("unknown AppArmor profile {value:?}"),
            )),
        },
    }
}

fn is_empty(options: &cri::SeLinuxOption) -> bool {
    [
        &options.user,
        &options.role,
        &options.r#type,
        &options.level,
    ]
    .iter()
    .all(|part| part.is_empty())
}

fn selinux_labels(
    field: &str,
    options: Option<&cri::SeLinuxOption>,
    privileged: bool,
    host: &SecurityModules,
) -> Result<Option<SelinuxLabels>, SpecError> {
    let Some(options) = options.filter(|o| !is_empty(o)) else {
        return Ok(None);
    };
    if !host.selinux {
        return Err(SpecError::invalid(
            field,
            "selinux is not supported (SELinux is not enabled on this host)",
        ));
    }
    for (part, value) in [
        ("user", &options.user),
        ("role", &options.role),
        ("type", &options.r#type),
        ("level", &options.level),
    ] {
        // A label is colon-separated; only the level may hold colons
        // (`s0:c1,c2`).
        let bad = value.chars().any(|c| c.is_whitespace() || c.is_control())
            || (part != "level" && value.contains(':'));
        if bad {
            return Err(SpecError::invalid(
                format!("{field}.{part}"),
                format!("{value:?} is not a valid SELinux {part}"),
            ));
        }
    }
    if privileged {
        return Ok(None);
    }
    let or = |value: &str, default: &'static str| {
        if value.is_empty() {
            default.to_owned()
        } else {
            value.to_owned()
        }
    };
    let user = or(&options.user, SELINUX_DEFAULT_USER);
    let level = or(&options.level, SELINUX_DEFAULT_LEVEL);
    Ok(Some(SelinuxLabels {
        process: format!(
            "{user}:{}:{}:{level}",
            or(&options.role, SELINUX_DEFAULT_ROLE),
            or(&options.r#type, SELINUX_DEFAULT_TYPE),
        ),
        mount: format!("{user}:{SELINUX_FILE_ROLE}:{SELINUX_FILE_TYPE}:{level}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_options_follow_the_host() {
        let none = SecurityModules::default();
        let sc = cri::LinuxSandboxSecurityContext {
            apparmor: Some(cri::SecurityProfile::default()),
            ..Default::default()
        };
        let err = check_pod(&sc, &none).expect_err("refused").to_string();
        assert!(
            err.starts_with("config.linux.security_context.apparmor: apparmor is not supported"),
            "{err}"
        );
        let sc = cri::LinuxSandboxSecurityContext {
            selinux_options: Some(cri::SeLinuxOption {
                level: "s0:c1,c2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = check_pod(&sc, &none).expect_err("refused").to_string();
        assert!(
            err.starts_with("config.linux.security_context.selinux_options: selinux is not"),
            "{err}"
        );
        let enabled = SecurityModules {
            apparmor: Some([DEFAULT_APPARMOR_PROFILE.to_owned()].into()),
            selinux: true,
        };
        check_pod(&sc, &enabled).expect("valid where SELinux is enabled");
        check_pod(&Default::default(), &none).expect("nothing asked");
    }
}
