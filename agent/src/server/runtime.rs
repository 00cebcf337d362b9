//! `RuntimeService`: pods, containers, streaming, stats, runtime status.

use super::{runtime_status, unimplemented, unimplemented_rpcs, CriService, ResponseStream};
use crate::{container, sandbox};
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

    unimplemented_rpcs! {
        container_stats(cri::ContainerStatsRequest) -> cri::ContainerStatsResponse;
        list_container_stats(cri::ListContainerStatsRequest) -> cri::ListContainerStatsResponse;
        pod_sandbox_stats(cri::PodSandboxStatsRequest) -> cri::PodSandboxStatsResponse;
        list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse;
        update_runtime_config(cri::UpdateRuntimeConfigRequest) -> cri::UpdateRuntimeConfigResponse;
        checkpoint_container(cri::CheckpointContainerRequest) -> cri::CheckpointContainerResponse;
        checkpoint_pod(cri::CheckpointPodRequest) -> cri::CheckpointPodResponse;
        restore_pod(cri::RestorePodRequest) -> cri::RestorePodResponse;
        list_metric_descriptors(cri::ListMetricDescriptorsRequest) -> cri::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest) -> cri::ListPodSandboxMetricsResponse;
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
        _request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        Err(unimplemented("stream_container_stats"))
    }

    type StreamPodSandboxStatsStream = ResponseStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        _request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        Err(unimplemented("stream_pod_sandbox_stats"))
    }

    type StreamPodSandboxMetricsStream = ResponseStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        Err(unimplemented("stream_pod_sandbox_metrics"))
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
