//! Pod networking: pinned namespaces ([`netns`]), the CNI network
//! configuration that decides NetworkReady ([`cni_config`]), running CNI
//! plugins ([`cni`]), and the node's pod CIDRs kubelet sends ([`pod_cidr`]).

pub mod cni;
pub mod cni_config;
pub mod netns;
pub mod pod_cidr;
