//! Pod networking. So far: finding the CNI network configuration, which
//! decides the NetworkReady condition.

pub mod cni_config;
