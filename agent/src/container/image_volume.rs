//! Image volumes (CRI `Mount.image`, Kubernetes' ImageVolume feature): an
//! image's filesystem mounted read-only into a container.
//!
//! Each volume is a read-only view snapshot of the image's top layer (key
//! [`snapshot_key`]), mounted under the bundle at `volumes/<index>`; the
//! container bind-mounts that directory, or its `image_sub_path`, like a
//! host path. A view stands on the image, so RemoveImage refuses the image
//! while the container exists; RemoveContainer unmounts everything under
//! the bundle and removes the views with the container's own snapshot.

use super::record::ContainerError;
use super::spec::SpecError;
use crate::runtime::Runtime;
use crate::{Error, Result};
use berth_proto::cri::v1 as cri;
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

/// An image mount of a container, its image resolved.
#[derive(Debug, Clone)]
pub struct ImageVolume {
    /// The mount's index in `ContainerConfig.mounts`.
    pub index: usize,
    /// The image's top chain ID, the view's parent (`None`: no layers).
    pub top: Option<String>,
    /// The directory inside the image to mount ("" for its root).
    pub sub_path: String,
}

/// The view snapshot of volume `index` of container `container_id`.
pub fn snapshot_key(container_id: &str, index: usize) -> String {
    format!("{container_id}-volume-{index}")
}

/// True for the key of a view of one of the container's image volumes.
pub fn is_volume_of(key: &str, container_id: &str) -> bool {
    key.strip_prefix(container_id)
        .and_then(|rest| rest.strip_prefix("-volume-"))
        .is_some_and(|index| index.parse::<usize>().is_ok())
}

/// Finds the image of every image mount of `config`, which must be
/// read-only and have no host path; records each image's ID in the mount's
/// `image.image_ref`, where ContainerStatus reports it.
pub async fn resolve(
    state: &Runtime,
    config: &mut cri::ContainerConfig,
) -> Result<Vec<ImageVolume>> {
    let mut volumes = Vec::new();
    for (index, mount) in config.mounts.iter_mut().enumerate() {
        let Some(spec) = mount.image.as_mut().filter(|i| !i.image.is_empty()) else {
            continue;
        };
        let field = format!("mounts[{index}]");
        if !mount.readonly {
            return Err(Error::invalid(
                format!("{field}.readonly"),
                "an image volume is read-only: set readonly",
            ));
        }
        if !mount.host_path.is_empty() {
            return Err(Error::invalid(
                format!("{field}.host_path"),
                "an image volume has no host path",
            ));
        }
        validate_sub_path(&mount.image_sub_path)
            .map_err(|reason| Error::invalid(format!("{field}.image_sub_path"), reason))?;
        let image = state
            .images
            .status(&spec.image)
            .await?
            .ok_or_else(|| ContainerError::ImageNotFound(spec.image.clone()))?;
        spec.image_ref = image.id.clone();
        volumes.push(ImageVolume {
            index,
            top: image.top_chain_id().map(str::to_owned),
            sub_path: mount.image_sub_path.clone(),
        });
    }
    Ok(volumes)
}

/// A sub path is relative and stays inside the image: no `..`, no root.
fn validate_sub_path(sub_path: &str) -> std::result::Result<(), String> {
    let path = Path::new(sub_path);
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(())
    } else {
        Err(format!(
            "{sub_path:?} must be a relative path without \"..\""
        ))
    }
}

/// Mounts each volume's view under `<bundle>/volumes/<index>`; returns the
/// directory each mount binds, by mount index. Runs on the blocking pool.
/// What it mounted stays mounted on error: the container's rollback
/// unmounts everything under the bundle and removes the views.
pub fn mount_all(
    snapshotter: &berth_snapshotter::Snapshotter,
    bundle: &Path,
    container_id: &str,
    volumes: &[ImageVolume],
) -> std::result::Result<BTreeMap<usize, PathBuf>, ContainerError> {
    let mut sources = BTreeMap::new();
    for volume in volumes {
        let target = bundle.join("volumes").join(volume.index.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&target)
            .map_err(|e| ContainerError::io(&target, e))?;
        let mounts = snapshotter
            .view(
                &snapshot_key(container_id, volume.index),
                volume.top.as_deref(),
            )
            .map_err(ContainerError::from)?;
        berth_mount::mount_all(&mounts, &target).map_err(ContainerError::from)?;
        sources.insert(volume.index, sub_path_inside(&target, volume)?);
    }
    Ok(sources)
}

/// The sub path's directory inside the mounted image; a symlink on the way
/// must not lead out of it.
fn sub_path_inside(root: &Path, volume: &ImageVolume) -> Result<PathBuf, ContainerError> {
    if volume.sub_path.is_empty() {
        return Ok(root.to_owned());
    }
    let field = format!("mounts[{}].image_sub_path", volume.index);
    let root = std::fs::canonicalize(root).map_err(|e| ContainerError::io(root, e))?;
    let resolved = std::fs::canonicalize(root.join(&volume.sub_path)).map_err(|e| {
        SpecError::invalid(
            field.clone(),
            format!("{:?} is not in the image: {e}", volume.sub_path),
        )
    })?;
    if !resolved.starts_with(&root) {
        return Err(SpecError::invalid(
            field,
            format!("{:?} leads out of the image", volume.sub_path),
        )
        .into());
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_keys_belong_to_their_container() {
        let key = snapshot_key("abc", 2);
        assert!(is_volume_of(&key, "abc"));
        assert!(!is_volume_of(&key, "ab"));
        assert!(!is_volume_of("abc", "abc"));
        assert!(!is_volume_of("abc-volume-x", "abc"));
    }

    #[test]
    fn sub_paths_stay_inside() {
        for ok in ["", "etc", "usr/share", "./etc"] {
            assert!(validate_sub_path(ok).is_ok(), "{ok}");
        }
        for bad in ["/etc", "../etc", "etc/../../x"] {
            assert!(validate_sub_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlinked_sub_paths_must_not_escape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("/", root.join("out")).expect("symlink");
        std::os::unix::fs::symlink("etc", root.join("inside")).expect("symlink");
        let volume = |sub_path: &str| ImageVolume {
            index: 0,
            top: None,
            sub_path: sub_path.to_owned(),
        };
        assert_eq!(
            sub_path_inside(&root, &volume("inside")).expect("inside"),
            root.join("etc")
        );
        let err = sub_path_inside(&root, &volume("out")).expect_err("escapes");
        assert!(err.to_string().contains("leads out"), "{err}");
        let err = sub_path_inside(&root, &volume("missing")).expect_err("missing");
        assert!(err.to_string().contains("not in the image"), "{err}");
    }
}
