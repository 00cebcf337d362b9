//! The shim's command line, as containerd passes it:
//! `-namespace NS -id ID -address ADDR [-publish-binary B] [-bundle DIR]
//! [-debug] [-socket S] [-v|-version] [start|delete]`.
//!
//! The syntax is Go's `flag` package, which containerd's shims use: one or
//! two dashes, a value as the next argument or after `=`, booleans take
//! only the `=` form (`-debug=false`). Parsing stops at the first
//! non-flag, the action, or after `--`; later arguments are ignored.

use std::ffi::OsString;

/// What containerd asked the binary to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub debug: bool,
    /// The namespace that owns the shim.
    pub namespace: String,
    /// The container (task) id.
    pub id: String,
    /// The socket to serve; set only for the server `start` spawns.
    pub socket: String,
    /// The bundle directory, if not the working directory.
    pub bundle: String,
    /// The caller's socket; names the shim's socket, nothing more.
    pub address: String,
    /// containerd's event publisher binary; accepted and unused, events
    /// go over ttrpc (`TTRPC_ADDRESS`).
    pub publish_binary: String,
    /// `start`, `delete`, or empty for the server.
    pub action: String,
    /// `-v` or `-version`: print the version and exit.
    pub version: bool,
    /// `-info`: containerd's shim info query, which berth does not answer.
    pub info: bool,
}

/// Why the command line is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    NotBool { flag: String, value: String },
    #[error("bad flag syntax: {0}")]
    Syntax(String),
    #[error("argument {0:?} is not UTF-8")]
    NotUtf8(OsString),
}

impl Flags {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, FlagError> {
        let mut flags = Flags::default();
        let mut args = args
            .into_iter()
            .map(|a| a.into_string().map_err(FlagError::NotUtf8));
        while let Some(arg) = args.next() {
            let arg = arg?;
            let Some(body) = flag_body(&arg) else {
                flags.action = arg;
                break;
            };
            let Some(body) = body else { break }; // `--`
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            if name.is_empty() || name.starts_with('-') {
                return Err(FlagError::Syntax(arg.clone()));
            }
            if let Some(b) = flags.bool_flag(name) {
                *b = match inline {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| FlagError::NotBool {
                        flag: name.to_string(),
                        value: v.to_string(),
                    })?,
                };
                continue;
            }
            let Some(slot) = flags.string_flag(name) else {
                return Err(FlagError::Unknown(name.to_string()));
            };
            *slot = match inline {
                Some(v) => v.to_string(),
                None => args
                    .next()
                    .ok_or_else(|| FlagError::MissingValue(name.to_string()))??,
            };
        }
        Ok(flags)
    }

    fn bool_flag(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "debug" => Some(&mut self.debug),
            "v" | "version" => Some(&mut self.version),
            "info" => Some(&mut self.info),
            _ => None,
        }
    }

    fn string_flag(&mut self, name: &str) -> Option<&mut String> {
        match name {
            "namespace" => Some(&mut self.namespace),
            "id" => Some(&mut self.id),
            "socket" => Some(&mut self.socket),
            "bundle" => Some(&mut self.bundle),
            "address" => Some(&mut self.address),
            "publish-binary" => Some(&mut self.publish_binary),
            _ => None,
        }
    }
}

/// `None`: not a flag. `Some(None)`: the `--` terminator. `Some(Some(b))`:
/// a flag without its dashes. A lone `-` is an argument, as in Go.
fn flag_body(arg: &str) -> Option<Option<&str>> {
    if arg == "--" {
        return Some(None);
    }
    let body = arg.strip_prefix('-').filter(|b| !b.is_empty())?;
    Some(Some(body.strip_prefix('-').unwrap_or(body)))
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, FlagError> {
        Flags::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_containerd_command_lines() {
        let all = parse(&[
            "-namespace",
            "k8s.io",
            "-id",
            "c1",
            "-address",
            "/run/berth/berthd.sock",
            "-publish-binary",
            "/bin/true",
            "--bundle=/b",
            "-debug",
            "-socket",
            "unix:///run/berth/s/x",
            "start",
            "-ignored",
        ])
        .expect("parse");
        assert_eq!(
            all,
            Flags {
                debug: true,
                namespace: "k8s.io".into(),
                id: "c1".into(),
                socket: "unix:///run/berth/s/x".into(),
                bundle: "/b".into(),
                address: "/run/berth/berthd.sock".into(),
                publish_binary: "/bin/true".into(),
                action: "start".into(),
                ..Default::default()
            }
        );
        let cases: &[(&[&str], Flags)] = &[
            (&[], Flags::default()),
            (
                &["-namespace", "ns", "delete"],
                Flags {
                    namespace: "ns".into(),
                    action: "delete".into(),
                    ..Default::default()
                },
            ),
            (
                &["-v"],
                Flags {
                    version: true,
                    ..Default::default()
                },
            ),
            (
                &["--version", "-debug=false", "-id=a=b"],
                Flags {
                    version: true,
                    id: "a=b".into(),
                    ..Default::default()
                },
            ),
            (
                &["-debug=1", "--", "-id", "x"],
                Flags {
                    debug: true,
                    ..Default::default()
                },
            ),
            (
                &["-id", "-debug"],
                Flags {
                    id: "-debug".into(),
                    ..Default::default()
                },
            ),
            (
                &["-", "-id", "x"],
                Flags {
                    action: "-".into(),
                    ..Default::default()
                },
            ),
        ];
        for (args, want) in cases {
            assert_eq!(&parse(args).expect("parse"), want, "{args:?}");
        }
    }

    #[test]
    fn rejects_bad_command_lines() {
        let cases: &[(&[&str], FlagError)] = &[
            (&["-nope"], FlagError::Unknown("nope".into())),
            (&["-id"], FlagError::MissingValue("id".into())),
            (
                &["-debug=yes"],
                FlagError::NotBool {
                    flag: "debug".into(),
                    value: "yes".into(),
                },
            ),
            (&["---id", "x"], FlagError::Syntax("---id".into())),
            (&["-=x"], FlagError::Syntax("-=x".into())),
        ];
        for (args, want) in cases {
            assert_eq!(&parse(args).expect_err("must fail"), want, "{args:?}");
        }
    }
}
