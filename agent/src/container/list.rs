//! ListContainers and StreamContainers: the CRI summaries of containers
//! that match a filter (every set field must match; labels exactly).

use super::record::{ContainerRecord, ContainerState};
use super::status::{cri_state, image_fields};
use crate::runtime::Runtime;
use berth_proto::cri::v1 as cri;

/// The containers matching `filter`, oldest first.
pub fn list(state: &Runtime, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
    let mut items: Vec<cri::Container> = state
        .containers
        .list()
        .into_iter()
        .filter(|r| r.state != ContainerState::Creating)
        .filter(|r| filter.is_none_or(|f| matches(r, f)))
        .map(|r| to_cri(&r))
        .collect();
    items.sort_by_key(|c| c.created_at);
    items
}

/// True when the record passes every set field of `filter`; ids match as
/// prefixes, as crictl's short ids expect.
pub fn matches(record: &ContainerRecord, filter: &cri::ContainerFilter) -> bool {
    if !record.id.starts_with(&filter.id) {
        return false;
    }
    if !record.sandbox_id.starts_with(&filter.pod_sandbox_id) {
        return false;
    }
    if let Some(state) = &filter.state {
        if cri_state(record.state) as i32 != state.state {
            return false;
        }
    }
    filter
        .label_selector
        .iter()
        .all(|(k, v)| record.config.labels.get(k) == Some(v))
}

/// The listing entry of a record.
pub fn to_cri(record: &ContainerRecord) -> cri::Container {
    let (image, image_ref) = image_fields(record);
    cri::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.sandbox_id.clone(),
        metadata: Some(record.metadata()),
        image: Some(image),
        image_ref,
        state: cri_state(record.state) as i32,
        created_at: record.created_at,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        image_id: record.image.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{ImageInfo, ProcessUser, CONTAINER_RECORD_VERSION};
    use super::*;

    fn record(id: &str, sandbox: &str, state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.into(),
            sandbox_id: sandbox.into(),
            name: id.into(),
            config: cri::ContainerConfig {
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            },
            image: ImageInfo {
                name: "busybox".into(),
                id: "sha256:1".into(),
                repo_tag: Some("docker.io/library/busybox:latest".into()),
                repo_digest: None,
            },
            bundle: "/b".into(),
            log_path: String::new(),
            runtime: "runc".into(),
            shim: None,
            task_api: Default::default(),
            cgroup_path: String::new(),
            stop_signal: "SIGTERM".into(),
            user: ProcessUser::default(),
            state,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            pid: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            resources: Default::default(),
        }
    }

    #[test]
    fn filter_table() {
        let running = record("c0ffee", "pod1", ContainerState::Running);
        let state = |s: cri::ContainerState| Some(cri::ContainerStateValue { state: s as i32 });
        let cases = [
            ("empty", cri::ContainerFilter::default(), true),
            (
                "id prefix",
                cri::ContainerFilter {
                    id: "c0f".into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "other id",
                cri::ContainerFilter {
                    id: "d".into(),
                    ..Default::default()
                },
                false,
            ),
            (
                "pod",
                cri::ContainerFilter {
                    pod_sandbox_id: "pod1".into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "other pod",
                cri::ContainerFilter {
                    pod_sandbox_id: "pod2".into(),
                    ..Default::default()
                },
                false,
            ),
            (
                "running",
                cri::ContainerFilter {
                    state: state(cri::ContainerState::ContainerRunning),
                    ..Default::default()
                },
                true,
            ),
            (
                "exited",
                cri::ContainerFilter {
                    state: state(cri::ContainerState::ContainerExited),
                    ..Default::default()
                },
                false,
            ),
            (
                "labels",
                cri::ContainerFilter {
                    label_selector: [("app".to_owned(), "web".to_owned())].into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "other labels",
                cri::ContainerFilter {
                    label_selector: [("app".to_owned(), "db".to_owned())].into(),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (name, filter, want) in cases {
            assert_eq!(matches(&running, &filter), want, "{name}");
        }
        let listed = to_cri(&running);
        assert_eq!(
            listed.image.expect("image").image,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(listed.image_ref, "sha256:1");
        assert_eq!(listed.state, cri::ContainerState::ContainerRunning as i32);
    }
}
