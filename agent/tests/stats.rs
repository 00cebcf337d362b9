//! The CRI stats calls through the real socket of an in-process berthd:
//! unknown ids, a container asked about before the collector's first round
//! saw it, the streams, the CRI metrics, and a stopped container. Needs
//! root.

mod common;

use berth_proto::cri::v1 as cri;
use berth_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use common::{
    busybox_registry, container_config, pod_config, pull, remove_pod, run_pod, stop_pod, Daemon,
    Options, BUSYBOX,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

async fn run_container(
    client: &mut Client,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
    id
}

async fn container_stats(
    client: &mut Client,
    id: &str,
) -> Result<cri::ContainerStats, tonic::Status> {
    client
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().stats.expect("stats"))
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_calls_answer_at_once_name_unknown_ids_and_stream() {
    let registry = busybox_registry();
    let daemon = Daemon::start(
        47,
        Options {
            registry_config_path: Some(registry.mirrors_dir()),
            ..Options::default()
        },
    )
    .await;
    pull(&daemon, BUSYBOX).await;
    let client = &mut daemon.client.clone();

    let err = container_stats(client, "0123456789")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains("container_id"), "{err}");
    let err = client
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "0123456789".to_owned(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains("pod_sandbox_id"), "{err}");

    let config = pod_config("stats");
    let pod = run_pod(client, config.clone()).await.expect("run pod");
    let mut sleeper = container_config("sleeper", &["sleep", "1000"]);
    sleeper.labels.insert("role".into(), "sleeper".into());
    let id = run_container(client, &pod, &config, sleeper).await;

    // Asked about right after its start, long before the collector's next
    // round (5 s by default): sampled on demand.
    let stats = container_stats(client, &id[..12]).await.expect("stats");
    assert_eq!(stats.attributes.as_ref().expect("attributes").id, id);
    let cpu = stats.cpu.expect("cpu");
    assert!(
        cpu.timestamp > 0 && cpu.usage_core_nano_seconds.is_some(),
        "{cpu:?}"
    );
    let memory = stats.memory.expect("memory");
    assert!(memory.timestamp > 0, "{memory:?}");
    assert!(memory.working_set_bytes.expect("working set").value > 0);
    let layer = stats.writable_layer.expect("writable layer");
    assert!(layer.inodes_used.expect("inodes").value >= 1, "{layer:?}");

    let listed = client
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                label_selector: [("role".to_owned(), "other".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert!(listed.is_empty(), "the label filter excludes: {listed:?}");

    let mut stream = client
        .stream_container_stats(cri::StreamContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(message) = stream.next().await {
        streamed.extend(message.expect("message").container_stats);
    }
    let ids: Vec<String> = streamed
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    assert_eq!(ids, vec![id.clone()]);

    let mut stream = client
        .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest { filter: None })
        .await
        .expect("stream")
        .into_inner();
    let mut pods = Vec::new();
    while let Some(message) = stream.next().await {
        pods.extend(message.expect("message").pod_sandbox_stats);
    }
    assert_eq!(pods.len(), 1, "{pods:?}");
    let linux = pods[0].linux.as_ref().expect("linux");
    assert_eq!(linux.containers.len(), 1);
    // The pod has no cgroup parent: its numbers are its container's.
    assert!(
        linux.cpu.as_ref().is_some_and(|c| c.timestamp > 0),
        "{linux:?}"
    );
    assert!(linux
        .process
        .as_ref()
        .is_some_and(|p| p.process_count.as_ref().is_some_and(|c| c.value >= 1)));
    let network = linux.network.as_ref().expect("network");
    assert_eq!(
        network.default_interface.as_ref().expect("eth0").name,
        "eth0"
    );

    // The CRI metrics: the pod's interfaces and the container's numbers,
    // each with as many label values as its descriptor has keys.
    let descriptors = client
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("descriptors")
        .into_inner()
        .descriptors;
    let keys: std::collections::HashMap<String, usize> = descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys.len()))
        .collect();
    let metrics = client
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("metrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].pod_sandbox_id, pod);
    let ours = &metrics[0].container_metrics;
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].container_id, id);
    let all: Vec<&cri::Metric> = metrics[0]
        .metrics
        .iter()
        .chain(ours[0].metrics.iter())
        .collect();
    for metric in &all {
        assert_eq!(
            Some(&metric.label_values.len()),
            keys.get(&metric.name),
            "{metric:?}"
        );
    }
    let value = |name: &str| {
        all.iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value.as_ref())
            .map(|v| v.value)
    };
    assert_eq!(value("container_processes"), Some(1), "sleep alone");
    assert!(
        value("container_file_descriptors").is_some_and(|n| n >= 3),
        "stdio at least"
    );
    assert!(value("container_memory_working_set_bytes").is_some_and(|n| n > 0));
    assert!(
        value("container_network_receive_bytes_total").is_some(),
        "eth0"
    );
    let mut stream = client
        .stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = 0;
    while let Some(message) = stream.next().await {
        let chunk = message.expect("message").pod_sandbox_metrics;
        assert!(!chunk.is_empty(), "chunks are never empty");
        streamed += chunk.len();
    }
    assert_eq!(streamed, 1);

    // A stopped container keeps its attributes, without counters.
    client
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    let stats = container_stats(client, &id)
        .await
        .expect("stats of a stopped container");
    assert!(stats.attributes.is_some());
    assert_eq!((stats.cpu, stats.memory), (None, None));
    let listed = client
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert!(
        listed.is_empty(),
        "only created and running containers: {listed:?}"
    );

    stop_pod(client, &pod).await;
    let stats = client
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stats of a stopped pod")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(stats.attributes.expect("attributes").id, pod);
    remove_pod(client, &pod).await;
    daemon.finish().await;
}
