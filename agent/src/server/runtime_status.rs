//! Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the
//! runtime says about itself, and the one setting kubelet gives it.

use crate::cgroups::CgroupDriver;
use crate::doctor;
use crate::network::pod_cidr;
use crate::runtime::Runtime;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use std::sync::Arc;

/// The name berth reports as `runtime_name`.
pub const RUNTIME_NAME: &str = "berth";
/// The CRI version berth speaks.
pub const RUNTIME_API_VERSION: &str = "v1";

pub(super) fn version() -> cri::VersionResponse {
    cri::VersionResponse {
        // kubelet's own API version field: "0.1.0" is what every runtime sends.
        version: "0.1.0".to_owned(),
        runtime_name: RUNTIME_NAME.to_owned(),
        runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime_api_version: RUNTIME_API_VERSION.to_owned(),
    }
}

pub(super) fn status(state: &Runtime, verbose: bool) -> cri::StatusResponse {
    let config = state.effective_config();
    let findings = doctor::quick(&doctor::Host::real(), &config);
    let condition =
        |kind: &str, affects: doctor::Affects| match doctor::condition(&findings, affects) {
            None => cri::RuntimeCondition {
                r#type: kind.to_owned(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Some(problem) => cri::RuntimeCondition {
                r#type: kind.to_owned(),
                status: false,
                reason: problem.reason.to_owned(),
                message: format!("{} (fix: {})", problem.message, problem.fix),
            },
        };
    let runtime_ready = condition("RuntimeReady", doctor::Affects::Runtime);
    let network_ready = condition("NetworkReady", doctor::Affects::Network);
    let mut info = HashMap::new();
    if verbose {
        info.insert(
            "config".to_owned(),
            serde_json::to_string(&*config).expect("the config is plain data"),
        );
        info.insert(
            "cgroupLayout".to_owned(),
            serde_json::to_string(&state.cgroup_layout).expect("the layout is plain data"),
        );
        // An object, as crictl shows only objects as JSON.
        info.insert(
            "runtimeConfig".to_owned(),
            serde_json::json!({ "podCIDRs": state.pod_cidrs.get() }).to_string(),
        );
    }
    // The default handler is reported under the empty name too, as kubelet
    // looks it up that way for pods without a RuntimeClass.
    let handler_names =
        std::iter::once(String::new()).chain(state.config.runtime.handlers.keys().cloned());
    let runtime_handlers = handler_names
        .map(|name| cri::RuntimeHandler {
            name,
            features: Some(cri::RuntimeHandlerFeatures::default()),
        })
        .collect();
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime_ready, network_ready],
        }),
        info,
        runtime_handlers,
        features: Some(cri::RuntimeFeatures::default()),
    }
}

pub(super) fn runtime_config(state: &Runtime) -> cri::RuntimeConfigResponse {
    let cgroup_driver = match state.cgroup_driver {
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: cgroup_driver as i32,
        }),
    }
}

/// Records the pod CIDRs of an UpdateRuntimeConfig (an empty field changes
/// nothing); pods made afterwards get them (`network::pod_cidr`).
pub(super) async fn update_pod_cidr(state: &Arc<Runtime>, text: &str) -> crate::Result<()> {
    if text.trim().is_empty() {
        return Ok(());
    }
    let cidrs = pod_cidr::parse(text)?;
    state
        .write(move |runtime| runtime.pod_cidrs.set(&runtime.store, cidrs))
        .await?;
    Ok(())
}
