//! Version, Status and RuntimeConfig: what the runtime says about itself.

use crate::cgroups::CgroupDriver;
use crate::network::cni_config;
use crate::runtime::Runtime;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;

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
    let runtime_ready = cri::RuntimeCondition {
        r#type: "RuntimeReady".to_owned(),
        status: true,
        reason: String::new(),
        message: String::new(),
    };
    let config = state.effective_config();
    let network_ready = match cni_config::load_network(&config.cni.conf_dir, &config.cni.bin_dirs) {
        Ok(_) => cri::RuntimeCondition {
            r#type: "NetworkReady".to_owned(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(e) => cri::RuntimeCondition {
            r#type: "NetworkReady".to_owned(),
            status: false,
            reason: "NetworkPluginNotReady".to_owned(),
            message: format!("network plugin is not ready: {e}"),
        },
    };
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
