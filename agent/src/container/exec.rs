//! What every exec in a container shares, ExecSync's and the streaming
//! server's: the container must run, the process gets the init's OCI
//! process spec (user, groups, capabilities, env, working dir) with the
//! requested argv, an id of its own and a private directory for its FIFOs
//! under `<state>/exec/<exec id>/`.

use super::record::{state_name, ContainerError, ContainerRecord, ContainerState};
use crate::runtime::Runtime;
use crate::shim_client::ShimClient;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A running container found for an exec, and its shim.
#[derive(Debug)]
pub struct ExecTarget {
    pub record: ContainerRecord,
    pub client: ShimClient,
}

/// Checks that `cmd` is not empty and finds the running container
/// `container_id` (an id or a unique prefix).
pub async fn target(
    state: &Arc<Runtime>,
    container_id: &str,
    cmd: &[String],
) -> Result<ExecTarget> {
    if cmd.is_empty() {
        return Err(Error::invalid("cmd", "must not be empty"));
    }
    let record = running(state, container_id)?;
    let client = state
        .containers
        .client(&record)
        .await
        .map_err(ContainerError::from)?;
    Ok(ExecTarget { record, client })
}

/// The container `container_id` if it runs.
pub fn running(state: &Runtime, container_id: &str) -> Result<ContainerRecord> {
    if container_id.is_empty() {
        return Err(Error::invalid("container_id", "must not be empty"));
    }
    let record = state
        .containers
        .find_created(container_id)?
        .ok_or_else(|| ContainerError::NotFound(container_id.to_owned()))?;
    if record.state != ContainerState::Running {
        return Err(ContainerError::WrongState {
            id: record.id.clone(),
            state: state_name(record.state),
            what: "commands run only in a running container",
        }
        .into());
    }
    Ok(record)
}

/// A fresh exec id.
pub fn new_id() -> String {
    format!("exec-{}", &crate::sandbox::random_id()[..16])
}

/// The private directory of exec `exec_id`'s FIFOs.
pub fn dir(state: &Runtime, exec_id: &str) -> PathBuf {
    state.config.state.join("exec").join(exec_id)
}

/// How an exec's process gets a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    None,
    /// A terminal of `width` columns and `height` rows when known.
    Sized(Option<(u16, u16)>),
}

/// The init's process spec from the bundle's `config.json`, with `cmd` as
/// argv, with or without a terminal.
pub fn process_spec(bundle: &Path, cmd: &[String], terminal: Terminal) -> Result<Vec<u8>> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| ContainerError::io(&path, e))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ContainerError::io(&path, std::io::Error::other(e)))?;
    let process = spec
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .ok_or_else(|| {
            ContainerError::io(&path, std::io::Error::other("the spec has no process"))
        })?;
    process.insert("args".to_owned(), serde_json::json!(cmd));
    process.insert(
        "terminal".to_owned(),
        serde_json::Value::Bool(terminal != Terminal::None),
    );
    process.remove("consoleSize");
    if let Terminal::Sized(Some((width, height))) = terminal {
        process.insert(
            "consoleSize".to_owned(),
            serde_json::json!({"width": width, "height": height}),
        );
    }
    Ok(serde_json::to_vec(process).expect("JSON always serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_spec_is_the_inits_with_new_args() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"terminal":true,"consoleSize":{"height":1,"width":1},
                "user":{"uid":1000,"gid":1000,"additionalGids":[5]},"args":["/init"],"cwd":"/srv",
                "env":["A=1"]}}"#,
        )
        .expect("write");
        for terminal in [Terminal::None, Terminal::Sized(None)] {
            let cmd = ["id".to_owned(), "-G".to_owned()];
            let spec = process_spec(dir.path(), &cmd, terminal).expect("spec");
            let spec: serde_json::Value = serde_json::from_slice(&spec).expect("json");
            assert_eq!(spec["args"], serde_json::json!(["id", "-G"]));
            assert_eq!(spec["terminal"], terminal != Terminal::None);
            assert!(spec.get("consoleSize").is_none());
            assert_eq!(spec["user"]["additionalGids"], serde_json::json!([5]));
            assert_eq!(spec["cwd"], "/srv");
        }
        let cmd = ["sh".to_owned()];
        let spec = process_spec(dir.path(), &cmd, Terminal::Sized(Some((80, 24)))).expect("spec");
        let spec: serde_json::Value = serde_json::from_slice(&spec).expect("json");
        assert_eq!(
            spec["consoleSize"],
            serde_json::json!({"width": 80, "height": 24})
        );
    }
}
