//! `ImageService`: pull, list, status, remove, filesystem usage.

use super::{unimplemented, unimplemented_rpcs, CriService, ResponseStream};
use berth_proto::cri::v1 as cri;
use berth_proto::cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl ImageService for CriService {
    unimplemented_rpcs! {
        list_images(cri::ListImagesRequest) -> cri::ListImagesResponse;
        image_status(cri::ImageStatusRequest) -> cri::ImageStatusResponse;
        pull_image(cri::PullImageRequest) -> cri::PullImageResponse;
        remove_image(cri::RemoveImageRequest) -> cri::RemoveImageResponse;
        image_fs_info(cri::ImageFsInfoRequest) -> cri::ImageFsInfoResponse;
    }

    type StreamImagesStream = ResponseStream<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        _request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        Err(unimplemented("stream_images"))
    }
}
