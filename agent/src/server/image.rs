//! `ImageService`: pull, list, status, remove, filesystem usage. The work
//! is done by `berth_imageservice::Images`; this file converts.

use super::{CriService, ResponseStream};
use crate::Error;
use berth_imageservice::ImageRecord;
use berth_proto::cri::v1 as cri;
use berth_proto::cri::v1::image_service_server::ImageService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tonic::{Request, Response, Status};
use tracing::Instrument;

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let images = self.listed_images(request.into_inner().filter).await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    type StreamImagesStream = ResponseStream<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.listed_images(request.into_inner().filter).await?;
        // One message per page keeps each under gRPC's size cap however
        // many images a node holds.
        let pages: Vec<Result<cri::StreamImagesResponse, Status>> = images
            .chunks(STREAM_PAGE)
            .map(|page| {
                Ok(cri::StreamImagesResponse {
                    images: page.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "image.image")?;
        let images = &self.state.images;
        // An unknown image is an empty answer, not an error: kubelet asks
        // before every pull.
        let Some(record) = images.status(name).await.map_err(Error::from)? else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let details = serde_json::json!({
                "id": record.id,
                "chainIDs": record.chain_ids,
                "user": record.user,
                "blobs": record.blobs,
            });
            info.insert("info".to_owned(), details.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(self.cri_image(&record)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let deadline = request_deadline(request.metadata());
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "image.image")?;
        let auth = request.auth.map(|auth| berth_imageservice::AuthConfig {
            username: auth.username,
            password: auth.password,
            auth: auth.auth,
            server_address: auth.server_address,
            identity_token: auth.identity_token,
            registry_token: auth.registry_token,
        });
        let started = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let pulled = self
            .state
            .images
            .pull_counted(name, auth, deadline, received.clone())
            .instrument(tracing::debug_span!("image_pull", image = name))
            .await;
        let received = received.load(Ordering::Relaxed);
        self.state.metrics.record_pull(started, received, &pulled);
        tokio::task::spawn_blocking(crate::memory::release_free_heap);
        // Past the client's deadline the answer is DeadlineExceeded whatever
        // the pull's outcome: a layer task may have seen its siblings
        // cancelled first, and a late success reaches nobody.
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return Err(Error::DeadlinePassed {
                action: format!("pulling {name}"),
            }
            .into());
        }
        let record = pulled.map_err(Error::from)?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "image.image")?;
        // Removing an image that is gone already succeeds (CRI contract).
        self.state.images.remove(name).await.map_err(Error::from)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.state.images.fs_usage().await.map_err(Error::from)?;
        let timestamp = usage
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let filesystem = cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.used_inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![filesystem],
            container_filesystems: Vec::new(),
        }))
    }
}

/// Images per message of `StreamImages`.
const STREAM_PAGE: usize = 256;

impl CriService {
    async fn listed_images(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, Status> {
        let images = &self.state.images;
        let wanted = filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|name| !name.is_empty());
        let records = match wanted {
            Some(name) => images
                .status(&name)
                .await
                .map_err(Error::from)?
                .into_iter()
                .collect(),
            None => images.list().await.map_err(Error::from)?,
        };
        Ok(records.iter().map(|r| self.cri_image(r)).collect())
    }

    fn cri_image(&self, record: &ImageRecord) -> cri::Image {
        let (uid, username) = image_user_fields(record.user.as_deref());
        cri::Image {
            id: record.id.clone(),
            repo_tags: record.repo_tags.clone(),
            repo_digests: record.repo_digests.clone(),
            size: record.size,
            uid,
            username,
            spec: Some(cri::ImageSpec {
                image: record.id.clone(),
                ..cri::ImageSpec::default()
            }),
            pinned: self.state.images.is_pinned(record),
        }
    }
}

/// The image name of a request, or InvalidArgument naming the field.
fn image_name<'a>(spec: Option<&'a cri::ImageSpec>, field: &str) -> Result<&'a str, Error> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Error::invalid(field, "must name an image")),
    }
}

/// CRI `uid`/`username` from an image's `User`: a numeric user is a uid,
/// anything else a name; a group after `:` is not reported.
fn image_user_fields(user: Option<&str>) -> (Option<cri::Int64Value>, String) {
    let user = user.unwrap_or("").split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

/// The client's deadline, from gRPC's `grpc-timeout` header.
fn request_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (amount, unit) = value.split_at(split);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_fields_follow_containerd() {
        assert_eq!(image_user_fields(None), (None, String::new()));
        assert_eq!(
            image_user_fields(Some("1002")),
            (Some(cri::Int64Value { value: 1002 }), String::new())
        );
        assert_eq!(
            image_user_fields(Some("1003:1004")),
            (Some(cri::Int64Value { value: 1003 }), String::new())
        );
        assert_eq!(
            image_user_fields(Some("www-data")),
            (None, "www-data".to_owned())
        );
        assert_eq!(
            image_user_fields(Some("www-data:1004")),
            (None, "www-data".to_owned())
        );
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert!(request_deadline(&metadata).is_none());
        metadata.insert("grpc-timeout", "1500m".parse().expect("ascii"));
        let deadline = request_deadline(&metadata).expect("deadline");
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1400) && left <= Duration::from_millis(1500));
        metadata.insert("grpc-timeout", "2x".parse().expect("ascii"));
        assert!(request_deadline(&metadata).is_none());
    }
}
