//! Releasing what a sandbox holds. Shared by StopPodSandbox,
//! RemovePodSandbox, the rollback of a failed RunPodSandbox and recovery,
//! so every step tolerates what is already gone and may run again after a
//! crash.

use super::{files, network, pid_init, SandboxError, SandboxRecord};
use crate::failpoint;
use crate::network::netns;
use crate::runtime::Runtime;
use std::path::Path;
use std::sync::Arc;

/// Stops the pod's init, detaches its network, unmounts its `/dev/shm` and
/// removes its namespaces. The network is detached only once (the record
/// says whether it was); everything else is idempotent.
pub async fn release(
    plugins: crate::network::cni::Plugins<'_>,
    record: &SandboxRecord,
) -> Result<(), SandboxError> {
    pid_init::stop(&record.dir, record.init_pid).await;
    failpoint::hit("sandbox-release:after-pid-init");
    if let (Some(net), Some(netns)) = (&record.network, &record.namespaces.net) {
        if !net.detached {
            network::detach(record, netns, plugins).await;
            failpoint::hit("sandbox-release:after-cni-del");
        }
    }
    let paths = record.file_paths();
    let namespaces = record.namespaces.clone();
    tokio::task::spawn_blocking(move || -> Result<(), SandboxError> {
        files::unmount_shm(&paths.shm)?;
        for ns in [
            namespaces.net,
            namespaces.ipc,
            namespaces.uts,
            namespaces.pid,
        ]
        .into_iter()
        .flatten()
        {
            netns::remove(&ns)?;
        }
        failpoint::hit("sandbox-release:after-namespaces");
        Ok(())
    })
    .await
    .expect("releasing mounts does not panic")
}

/// Releases the sandbox, removes its directory and deletes its record:
/// the end of RemovePodSandbox, of a failed RunPodSandbox and of a sandbox
/// that a crash interrupted while it was being created.
pub async fn discard(state: &Arc<Runtime>, record: &SandboxRecord) -> crate::Result<()> {
    release(state.config.cni.plugins(), record).await?;
    remove_dir(&record.dir).await?;
    failpoint::hit("sandbox-discard:before-record-delete");
    let id = record.id.clone();
    state
        .write(move |s| s.sandboxes.delete(&s.store, &id))
        .await?;
    Ok(())
}

/// Unmounts everything at or below `dir`, deepest first, detaching busy
/// mounts: for directories berth finds without a record.
pub async fn unmount_all_under(dir: &Path) {
    let dir = dir.to_owned();
    let unmounted = tokio::task::spawn_blocking(move || {
        // What cannot be unmounted stays, and remove_dir refuses then.
        let _ = berth_mount::detach_recursive(&dir);
    })
    .await;
    unmounted.expect("unmounting does not panic");
}

/// Removes the sandbox directory; refuses while anything is still mounted
/// below it, so a mount is never deleted through.
pub async fn remove_dir(dir: &Path) -> Result<(), SandboxError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let refuse = |source| SandboxError::RemoveDir {
            path: dir.clone(),
            source,
        };
        let table =
            berth_mount::mountinfo::read_self().map_err(|e| refuse(std::io::Error::other(e)))?;
        if let Some(mount) = berth_mount::mountinfo::under(&table, &dir).next() {
            let mounted = format!("{} is still mounted", mount.mount_point.display());
            return Err(refuse(std::io::Error::other(mounted)));
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SandboxError::RemoveDir { path: dir, source }),
        }
    })
    .await
    .expect("removing a directory does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remove_dir_refuses_mounted_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = dir.path().join("sb");
        std::fs::create_dir(&sandbox).expect("mkdir");
        let shm = sandbox.join("shm");
        files::mount_shm(&shm, 1024 * 1024).expect("mount");
        std::fs::write(shm.join("keep"), b"x").expect("write");
        let err = remove_dir(&sandbox).await.expect_err("mounted");
        assert!(err.to_string().contains("still mounted"), "{err}");
        assert!(
            shm.join("keep").exists(),
            "nothing deleted through the mount"
        );
        files::unmount_shm(&shm).expect("unmount");
        remove_dir(&sandbox).await.expect("remove");
        assert!(!sandbox.exists());
        remove_dir(&sandbox).await.expect("again");
    }
}
