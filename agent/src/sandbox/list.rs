//! ListPodSandbox and StreamPodSandboxes: the CRI summaries of sandboxes
//! that match a filter (every set field must match; labels exactly).

use super::status::cri_state;
use super::{SandboxRecord, SandboxState};
use crate::runtime::Runtime;
use berth_proto::cri::v1 as cri;

/// The sandboxes matching `filter`, oldest first.
pub fn list(state: &Runtime, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
    let mut items: Vec<cri::PodSandbox> = state
        .sandboxes
        .list()
        .into_iter()
        .filter(|r| r.state != SandboxState::Creating)
        .filter(|r| filter.is_none_or(|f| matches(r, f)))
        .map(|r| to_cri(&r))
        .collect();
    items.sort_by_key(|s| s.created_at);
    items
}

/// True when the record passes every set field of `filter`. The id
/// matches as a prefix, as crictl's short ids expect.
pub fn matches(record: &SandboxRecord, filter: &cri::PodSandboxFilter) -> bool {
    if !filter.id.is_empty() && !record.id.starts_with(&filter.id) {
        return false;
    }
    if let Some(state) = &filter.state {
        if cri_state(record.effective_state()) as i32 != state.state {
            return false;
        }
    }
    filter
        .label_selector
        .iter()
        .all(|(k, v)| record.config.labels.get(k) == Some(v))
}

/// The listing entry of a record.
pub fn to_cri(record: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: record.id.clone(),
        metadata: Some(record.metadata()),
        state: cri_state(record.effective_state()) as i32,
        created_at: record.created_at,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NamespacePaths, SANDBOX_RECORD_VERSION};
    use super::*;

    fn record(id: &str, state: SandboxState, labels: &[(&str, &str)]) -> SandboxRecord {
        SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: id.into(),
            name: id.into(),
            config: cri::PodSandboxConfig {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            state,
            created_at: 1,
            dir: "/x".into(),
            namespaces: NamespacePaths::default(),
            init_pid: None,
            network: None,
            resources: Default::default(),
        }
    }

    #[test]
    fn filter_table() {
        let ready = record(
            "abc1",
            SandboxState::Ready,
            &[("app", "web"), ("tier", "a")],
        );
        let state = |s: cri::PodSandboxState| Some(cri::PodSandboxStateValue { state: s as i32 });
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let cases = [
            ("empty", cri::PodSandboxFilter::default(), true),
            (
                "id prefix",
                cri::PodSandboxFilter {
                    id: "ab".into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "other id",
                cri::PodSandboxFilter {
                    id: "b".into(),
                    ..Default::default()
                },
                false,
            ),
            (
                "ready",
                cri::PodSandboxFilter {
                    state: state(cri::PodSandboxState::SandboxReady),
                    ..Default::default()
                },
                true,
            ),
            (
                "not ready",
                cri::PodSandboxFilter {
                    state: state(cri::PodSandboxState::SandboxNotready),
                    ..Default::default()
                },
                false,
            ),
            (
                "label subset",
                cri::PodSandboxFilter {
                    label_selector: labels(&[("app", "web")]),
                    ..Default::default()
                },
                true,
            ),
            (
                "label mismatch",
                cri::PodSandboxFilter {
                    label_selector: labels(&[("app", "db")]),
                    ..Default::default()
                },
                false,
            ),
            (
                "missing label",
                cri::PodSandboxFilter {
                    label_selector: labels(&[("zone", "x")]),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (name, filter, want) in cases {
            assert_eq!(matches(&ready, &filter), want, "{name}");
        }
        let stopped = record("d", SandboxState::NotReady, &[]);
        assert_eq!(
            to_cri(&stopped).state,
            cri::PodSandboxState::SandboxNotready as i32
        );
    }
}
