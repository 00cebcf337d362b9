//! Pod networking: pinned namespaces ([`netns`]), the CNI network
//! configuration that decides NetworkReady ([`cni_config`]), and running
//! CNI plugins ([`cni`]).

pub mod cni;
pub mod cni_config;
pub mod netns;
