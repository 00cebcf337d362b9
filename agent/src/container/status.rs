//! ContainerStatus: the CRI view of a container record.

use super::record::{ContainerError, ContainerRecord, ContainerState, Containers};
use crate::Result;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;

/// The status of container `id` (an id or a unique prefix).
pub fn status(
    containers: &Containers,
    id: &str,
    verbose: bool,
) -> Result<cri::ContainerStatusResponse> {
    let record = containers
        .find_created(id)?
        .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
    let mut info = HashMap::new();
    if verbose {
        info.insert("info".to_owned(), verbose_info(&record).to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(to_cri_status(&record)),
        info,
    })
}

/// The CRI state of a container.
pub fn cri_state(state: ContainerState) -> cri::ContainerState {
    match state {
        ContainerState::Creating | ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }
}

/// The image as ContainerStatus and ListContainers report it: the first
/// repo tag (else the name the client used) and the first repo digest (else
/// the image ID), as containerd does.
pub fn image_fields(record: &ContainerRecord) -> (cri::ImageSpec, String) {
    let mut spec = record.config.image.clone().unwrap_or_default();
    spec.image = record
        .image
        .repo_tag
        .clone()
        .unwrap_or_else(|| record.image.name.clone());
    let image_ref = record
        .image
        .repo_digest
        .clone()
        .unwrap_or_else(|| record.image.id.clone());
    (spec, image_ref)
}

/// The CRI status of a record.
pub fn to_cri_status(record: &ContainerRecord) -> cri::ContainerStatus {
    let (image, image_ref) = image_fields(record);
    let stop_signal = cri::Signal::from_str_name(&format!("SIGNAL_{}", record.stop_signal))
        .unwrap_or(cri::Signal::RuntimeDefault);
    cri::ContainerStatus {
        id: record.id.clone(),
        metadata: Some(record.metadata()),
        state: cri_state(record.state) as i32,
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        exit_code: record.exit_code,
        image: Some(image),
        image_ref,
        reason: record.reason.clone(),
        message: record.message.clone(),
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        mounts: record.config.mounts.clone(),
        log_path: record.log_path.clone(),
        resources: Some(cri::ContainerResources {
            linux: Some(record.resources.clone()),
            windows: None,
        }),
        image_id: record.image.id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(record.user.uid),
                gid: i64::from(record.user.gid),
                supplemental_groups: record
                    .user
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
        stop_signal: stop_signal as i32,
    }
}

/// What `crictl inspect` shows under `info`.
fn verbose_info(record: &ContainerRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "sandboxID": record.sandbox_id,
        "name": record.name,
        "pid": record.pid,
        "state": record.state,
        "bundle": record.bundle,
        "runtime": record.runtime,
        "cgroupsPath": record.cgroup_path,
        "snapshotKey": record.id,
        "image": record.image.id,
        "stopSignal": record.stop_signal,
        "shimAddress": std::fs::read_to_string(record.address_file()).ok(),
    })
}
