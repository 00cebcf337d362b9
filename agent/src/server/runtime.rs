//! `RuntimeService`: pods, containers, streaming, stats, runtime status.

use super::{runtime_status, unimplemented_rpcs, CriService, ResponseStream};
use crate::{container, sandbox, stats};
use berth_proto::cri::v1 as cri;
use berth_proto::cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(runtime_status::version()))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        Ok(Response::new(runtime_status::status(&self.state, verbose)))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_status::runtime_config(&self.state)))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let pod_cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        runtime_status::update_pod_cidr(&self.state, &pod_cidr).await?;
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let pod_sandbox_id = sandbox::run::run(&self.state, request.into_inner()).await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        sandbox::stop::stop(&self.state, &request.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        sandbox::remove::remove(&self.state, &request.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let status = sandbox::status::status(
            &self.state.sandboxes,
            &request.pod_sandbox_id,
            request.verbose,
        )?;
        Ok(Response::new(status))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        let items = sandbox::list::list(&self.state, filter.as_ref());
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let container_id = container::create::create(&self.state, request.into_inner()).await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        container::start::start(&self.state, &request.into_inner().container_id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        container::stop::stop(&self.state, &request.container_id, request.timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        container::remove::remove(&self.state, &request.into_inner().container_id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        let containers = container::list::list(&self.state, filter.as_ref());
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let status = container::status::status(
            &self.state.containers,
            &request.container_id,
            request.verbose,
        )?;
        Ok(Response::new(status))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        container::update::update_resources(&self.state, request.into_inner()).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        sandbox::update::update_resources(&self.state, request.into_inner()).await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        container::reopen_log::reopen_log(&self.state, &request.into_inner().container_id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let response = container::exec_sync::exec_sync(&self.state, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let response = self.streaming.exec(&self.state, request.into_inner())?;
        Ok(Response::new(response))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let response = self.streaming.attach(&self.state, request.into_inner())?;
        Ok(Response::new(response))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let response = self
            .streaming
            .port_forward(&self.state, request.into_inner())?;
        Ok(Response::new(response))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let stats = stats::container::stats(&self.state, &id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        let stats = stats::container::list(&self.state, filter.as_ref()).await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let stats = stats::pod::stats(&self.state, &id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        let stats = stats::pod::list(&self.state, filter.as_ref()).await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: stats::cri_metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = stats::cri_metrics::list(&self.state).await;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    unimplemented_rpcs! {
        checkpoint_container(cri::CheckpointContainerRequest) -> cri::CheckpointContainerResponse;
        checkpoint_pod(cri::CheckpointPodRequest) -> cri::CheckpointPodResponse;
        restore_pod(cri::RestorePodRequest) -> cri::RestorePodResponse;
    }

    type StreamPodSandboxesStream = ResponseStream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = request.into_inner().filter;
        let items = sandbox::list::list(&self.state, filter.as_ref());
        let pages = pages(items, |pod_sandboxes| cri::StreamPodSandboxesResponse {
            pod_sandboxes,
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    type StreamContainersStream = ResponseStream<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = request.into_inner().filter;
        let items = container::list::list(&self.state, filter.as_ref());
        let pages = pages(items, |containers| cri::StreamContainersResponse {
            containers,
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    type StreamContainerStatsStream = ResponseStream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let items = stats::container::list(&self.state, filter.as_ref()).await;
        let pages = pages(items, |container_stats| cri::StreamContainerStatsResponse {
            container_stats,
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    type StreamPodSandboxStatsStream = ResponseStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let items = stats::pod::list(&self.state, filter.as_ref()).await;
        let pages = pages(items, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    type StreamPodSandboxMetricsStream = ResponseStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let items = stats::cri_metrics::list(&self.state).await;
        // Non-empty chunks: an empty listing is a stream without messages.
        let pages: Vec<_> = items
            .chunks(STREAM_PAGE)
            .map(|page| {
                Ok(cri::StreamPodSandboxMetricsResponse {
                    pod_sandbox_metrics: page.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    type GetContainerEventsStream = ResponseStream<cri::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        use tokio_stream::StreamExt;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.state.events.subscribe())
            .filter_map(|event| match event {
                Ok(event) => Some(Ok(event)),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(lost)) => {
                    tracing::warn!(lost, "a GetContainerEvents client fell behind");
                    None
                }
            });
        Ok(Response::new(Box::pin(events)))
    }
}

/// Items per message of the streaming list RPCs: a few hundred summaries
/// stay far below gRPC's message size cap, however many a node holds.
const STREAM_PAGE: usize = 200;

/// Splits a listing into stream messages; an empty listing is one empty
/// message, so the client still sees an answer.
fn pages<T: Clone, M>(items: Vec<T>, message: impl Fn(Vec<T>) -> M) -> Vec<Result<M, Status>> {
    if items.is_empty() {
        return vec![Ok(message(Vec::new()))];
    }
    items
        .chunks(STREAM_PAGE)
        .map(|page| Ok(message(page.to_vec())))
        .collect()
}
