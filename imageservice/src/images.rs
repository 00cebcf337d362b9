//! [`Images`]: the image service as the agent uses it — pull, look up,
//! list, remove, filesystem usage — over the content store, the image
//! records and the snapshotter.
//!
//! A pull resolves the reference through the hosts directory, keeps the
//! index, manifest and config in the content store, and streams every
//! missing layer from the registry through decompression straight into its
//! own snapshot directory, several layers at once (`max_concurrent_downloads`).
//! The compressed digest is checked as the bytes arrive and the diff ID
//! after decompression; compressed layers are never stored, so an image
//! costs its disk space once. Layers are committed in chain order, then the
//! image record is written: until that last step nothing of the pull is
//! visible, and whatever a failed or killed pull leaves (`extract-*`
//! snapshots, unreferenced layers, partial blobs) is removed at the next
//! [`Images::open`].
//!
//! Concurrent pulls share work per layer: the first pull that needs a chain
//! ID leads its flight (downloads, unpacks, commits); others wait for it.
//! Chain IDs encode the whole layer prefix, so pulls commit shared layers
//! in the same order and never wait on each other in a cycle.

use crate::content::Store;
use crate::decompress::{decompress, pipe, DiffIdReader};
use crate::digest::{Digest, Hasher};
use crate::image_config::{chain_ids, ImageConfig};
use crate::image_store::{ImageRecord, ImageStore, RECORD_VERSION};
use crate::manifest::{Descriptor, Manifest};
use crate::platform::PlatformMatcher;
use crate::reference::Reference;
use crate::registry::{AuthConfig, Client, ClientConfig, PullOptions, Session};
use crate::{Error, Result};
use berth_snapshotter::{apply_layer, FsUsage, Kind, Snapshotter};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// The largest image config berth reads.
const MAX_CONFIG_SIZE: u64 = 8 << 20;
/// Snapshot keys of layers being unpacked.
const EXTRACT_PREFIX: &str = "extract-";
/// Where the test-only failpoint `unpack:mid-layer` fires: this many bytes
/// into a layer's tar stream (the test images' base layer is larger).
const UNPACK_FAILPOINT_AFTER: u64 = 64 << 10;

/// How the image service is set up.
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// Everything lives below: `content/`, `snapshotter/`, `images.redb`.
    pub root: PathBuf,
    /// containerd's hosts directory (`registry.config_path`).
    pub hosts_dir: Option<PathBuf>,
    /// Node-level credentials for pulls that bring none
    /// (`registry.auth_file`, Docker `config.json` format).
    pub auth_file: Option<PathBuf>,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// A download that receives nothing for this long fails.
    pub stall_timeout: Duration,
    /// Names whose images report `pinned`.
    pub pinned: Vec<String>,
    /// Keep compressed layer blobs in the content store after unpacking
    /// (off: an image then costs its disk space once).
    pub keep_layer_blobs: bool,
}

/// Logs every malformed `hosts.toml` under `hosts_dir`: pulls from that
/// registry fail until it is fixed.
async fn report_malformed_hosts(hosts_dir: Option<PathBuf>) -> Result<()> {
    let hosts = crate::hosts::Hosts::new(hosts_dir);
    for error in blocking(move || Ok(hosts.check_all())).await? {
        tracing::error!(error = %error, "malformed registry hosts file: pulls from that registry fail until it is fixed");
    }
    Ok(())
}

/// Image names as records hold them (`docker.io/library/x:latest`); a
/// name that does not parse is kept as written.
fn canonical_names(names: &[String]) -> HashSet<String> {
    names
        .iter()
        .map(|name| {
            name.parse::<Reference>()
                .map(|r| canonical_name(&r))
                .unwrap_or_else(|_| name.clone())
        })
        .collect()
}

/// The outcome of a layer flight, shared with waiting pulls.
type FlightOutcome = Option<std::result::Result<(), String>>;

/// The image service.
#[derive(Debug)]
pub struct Images {
    content: Store,
    snapshotter: Arc<Snapshotter>,
    records: Arc<ImageStore>,
    /// Replaced whole by [`Images::reload`]; a pull keeps the client it
    /// started with.
    client: RwLock<Client>,
    /// The registry settings `client` was made with, for [`Images::reload`].
    client_config: ClientConfig,
    downloads: Arc<Semaphore>,
    flights: Arc<Mutex<HashMap<String, watch::Receiver<FlightOutcome>>>>,
    /// Canonical names; replaced by [`Images::reload`].
    pinned: RwLock<HashSet<String>>,
    keep_layer_blobs: bool,
    /// Chain IDs that pulls in progress stand on: garbage collection keeps
    /// them although no image record names them yet.
    leased: Arc<Mutex<HashMap<String, usize>>>,
}

impl Images {
    /// Opens the stores under `config.root` and removes what an earlier,
    /// interrupted pull left behind.
    pub async fn open(config: ImagesConfig) -> Result<Images> {
        let content = Store::open(config.root.join("content")).await?;
        let root = config.root.clone();
        let (snapshotter, records) = blocking(move || {
            berth_owner_only::create_dir_all(&root).map_err(|source| Error::Local {
                path: root.clone(),
                source,
            })?;
            let snapshotter = Snapshotter::open(root.join("snapshotter"))?;
            let records = ImageStore::open(&root)?;
            Ok((snapshotter, records))
        })
        .await?;
        report_malformed_hosts(config.hosts_dir.clone()).await?;
        let client_config = ClientConfig {
            hosts_dir: config.hosts_dir.clone(),
            auth_file: config.auth_file.clone(),
            stall_timeout: config.stall_timeout,
            ..ClientConfig::default()
        };
        let images = Images {
            content,
            snapshotter: Arc::new(snapshotter),
            records: Arc::new(records),
            client: RwLock::new(Client::new(client_config.clone())),
            client_config,
            downloads: Arc::new(Semaphore::new(config.max_concurrent_downloads.max(1))),
            flights: Arc::new(Mutex::new(HashMap::new())),
            pinned: RwLock::new(canonical_names(&config.pinned)),
            keep_layer_blobs: config.keep_layer_blobs,
            leased: Arc::new(Mutex::new(HashMap::new())),
        };
        images.recover().await?;
        Ok(images)
    }

    /// Removes unpacks that never finished, and layers and blobs no image
    /// references: a pull killed after it stored a manifest or config, or
    /// committed layers, but before it wrote the image record.
    async fn recover(&self) -> Result<()> {
        let snapshotter = self.snapshotter.clone();
        let records = self.records.clone();
        let removed = blocking(move || {
            let mut removed = Vec::new();
            for info in snapshotter.list()? {
                if info.kind == Kind::Active && info.key.starts_with(EXTRACT_PREFIX) {
                    snapshotter.remove(&info.key)?;
                    removed.push(info.key);
                }
            }
            let referenced: Vec<String> = records
                .list()?
                .into_iter()
                .flat_map(|r| r.chain_ids)
                .collect();
            removed.extend(snapshotter.gc(referenced)?);
            Ok(removed)
        })
        .await?;
        if !removed.is_empty() {
            tracing::info!(snapshots = ?removed, "removed snapshots left by interrupted pulls");
        }
        let records = self.records.clone();
        let referenced: HashSet<String> = blocking(move || Ok(records.list()?))
            .await?
            .into_iter()
            .flat_map(|r| r.blobs)
            .collect();
        for digest in self.content.list().await? {
            if !referenced.contains(&digest.to_string()) {
                self.content.delete(&digest).await?;
                tracing::info!(blob = %digest, "removed a blob left by an interrupted pull");
            }
        }
        Ok(())
    }

    /// Applies a new hosts directory (`registry.config_path`), node auth
    /// file (`registry.auth_file`) and list of pinned images, as on SIGHUP. Pulls already under way finish
    /// with the registry settings they started with; later pulls and
    /// listings see the new ones. A malformed hosts file is logged, as at
    /// start-up.
    pub async fn reload(
        &self,
        hosts_dir: Option<PathBuf>,
        auth_file: Option<PathBuf>,
        pinned: &[String],
    ) -> Result<()> {
        report_malformed_hosts(hosts_dir.clone()).await?;
        let client = Client::new(ClientConfig {
            hosts_dir,
            auth_file,
            ..self.client_config.clone()
        });
        *self.client.write().expect("client lock is never poisoned") = client;
        *self.pinned.write().expect("pinned lock is never poisoned") = canonical_names(pinned);
        Ok(())
    }

    /// The snapshotter, for containers' root filesystems.
    pub fn snapshotter(&self) -> &Arc<Snapshotter> {
        &self.snapshotter
    }

    /// Pulls `image` and returns its record. `deadline` bounds the whole
    /// pull; the error then says the deadline passed. A failed pull leaves
    /// no layer that no image needs.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        deadline: Option<Instant>,
    ) -> Result<ImageRecord> {
        self.pull_counted(image, auth, deadline, Arc::default())
            .await
    }

    /// [`Images::pull`], adding every body byte received from registries
    /// (manifests, config, layers; failed pulls too) to `received` as it
    /// arrives. Layers another pull is downloading count for that pull.
    pub async fn pull_counted(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        deadline: Option<Instant>,
        received: Arc<AtomicU64>,
    ) -> Result<ImageRecord> {
        let pulled = self.pull_image(image, auth, deadline, received).await;
        if pulled.is_err() {
            if let Err(e) = self.collect_garbage().await {
                tracing::warn!(error = %e, "cannot collect the layers of a failed pull");
            }
        }
        pulled
    }

    /// Removes committed layers that neither an image nor a pull in
    /// progress needs.
    async fn collect_garbage(&self) -> Result<Vec<String>> {
        let records = self.records.clone();
        let snapshotter = self.snapshotter.clone();
        let leased = self.leased.clone();
        blocking(move || {
            let mut referenced: HashSet<String> = records
                .list()?
                .into_iter()
                .flat_map(|r| r.chain_ids)
                .collect();
            referenced.extend(
                leased
                    .lock()
                    .expect("lease lock is never poisoned")
                    .keys()
                    .cloned(),
            );
            Ok(snapshotter.gc(referenced)?)
        })
        .await
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        deadline: Option<Instant>,
        received: Arc<AtomicU64>,
    ) -> Result<ImageRecord> {
        let reference: Reference = image.parse()?;
        let options = PullOptions {
            auth,
            deadline: deadline.map(tokio::time::Instant::from_std),
            received: Some(received),
            ..PullOptions::default()
        };
        let client = self
            .client
            .read()
            .expect("client lock is never poisoned")
            .clone();
        let session = client.session(&reference, options).await?;
        let top = session.resolve().await?;
        let mut blobs = vec![top.digest.to_string()];
        let mut descriptor = top.clone();
        let manifest = loop {
            let bytes = self.manifest_bytes(&session, &descriptor).await?;
            match Manifest::parse(&descriptor.media_type, &descriptor.digest, &bytes)? {
                Manifest::Index(index) => {
                    descriptor = index
                        .select(&PlatformMatcher::host(), &descriptor.digest)?
                        .clone();
                    blobs.push(descriptor.digest.to_string());
                }
                Manifest::Image(manifest) => break manifest,
            }
        };
        berth_failpoint::hit("pull:after-manifest");
        session
            .fetch_to_store(&self.content, &manifest.config)
            .await?;
        blobs.push(manifest.config.digest.to_string());
        berth_failpoint::hit("pull:after-content-commit");
        let config_bytes = self
            .content
            .read(&manifest.config.digest, MAX_CONFIG_SIZE)
            .await?;
        let config = ImageConfig::parse(&manifest.config.digest, &config_bytes)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::LayerCount {
                manifest: descriptor.digest.clone(),
                layers: manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let chain = chain_ids(diff_ids);
        let _lease = Lease::new(
            &self.leased,
            chain.iter().map(ToString::to_string).collect(),
        );
        self.unpack_layers(&session, &manifest.layers, diff_ids, &chain)
            .await?;
        if self.keep_layer_blobs {
            blobs.extend(manifest.layers.iter().map(|l| l.digest.to_string()));
        }
        let record = ImageRecord {
            version: RECORD_VERSION,
            id: manifest.config.digest.to_string(),
            repo_tags: reference.repo_tag().into_iter().collect(),
            repo_digests: vec![reference.repo_digest(&top.digest)],
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            user: config.config.user.clone(),
            chain_ids: chain.iter().map(ToString::to_string).collect(),
            blobs,
        };
        berth_failpoint::hit("pull:before-image-record");
        let records = self.records.clone();
        let stored = blocking(move || Ok(records.put(record)?)).await?;
        tracing::info!(image = %image, id = %stored.id, "pulled");
        Ok(stored)
    }

    /// A manifest from the content store, or from the registry into it.
    async fn manifest_bytes(&self, session: &Session, descriptor: &Descriptor) -> Result<Bytes> {
        if self.content.info(&descriptor.digest).await.is_ok() {
            let bytes = self
                .content
                .read(&descriptor.digest, MAX_CONFIG_SIZE)
                .await?;
            return Ok(Bytes::from(bytes));
        }
        let bytes = session.fetch_manifest(descriptor).await?;
        self.content.write_all(&descriptor.digest, &bytes).await?;
        Ok(bytes)
    }

    /// Makes every layer's chain ID a committed snapshot.
    async fn unpack_layers(
        &self,
        session: &Session,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        chain: &[Digest],
    ) -> Result<()> {
        enum Step {
            Present,
            Lead(Flight),
            Follow(watch::Receiver<FlightOutcome>),
        }
        let mut steps = Vec::with_capacity(layers.len());
        for chain_id in chain {
            let key = chain_id.to_string();
            let snapshotter = self.snapshotter.clone();
            let probe = key.clone();
            let committed = blocking(move || {
                Ok(snapshotter
                    .stat(&probe)
                    .map(|info| info.kind == Kind::Committed)
                    .unwrap_or(false))
            })
            .await?;
            if committed {
                steps.push(Step::Present);
                continue;
            }
            steps.push(match self.join_flight(&key) {
                Ok(flight) => Step::Lead(flight),
                Err(waiting) => Step::Follow(waiting),
            });
        }

        // Download and unpack this pull's own layers, several at once.
        let unpacks = steps.iter().enumerate().map(|(i, step)| async move {
            match step {
                Step::Lead(_) => Some(self.unpack_layer(session, &layers[i], &diff_ids[i]).await),
                Step::Present | Step::Follow(_) => None,
            }
        });
        let mut unpacked = futures::future::join_all(unpacks).await;

        // Commit in chain order; wait for layers other pulls lead.
        for (i, step) in steps.into_iter().enumerate() {
            let chain_id = chain[i].to_string();
            match step {
                Step::Present => {}
                Step::Lead(flight) => {
                    let layer = unpacked[i].take().expect("every led layer was unpacked");
                    let result = match layer {
                        Ok(prepared) => self.commit_layer(prepared, &chain_id, i, chain).await,
                        Err(e) => Err(e),
                    };
                    flight.finish(result.as_ref().map(|_| ()).map_err(ToString::to_string));
                    result?;
                }
                Step::Follow(mut waiting) => {
                    let outcome = waiting
                        .wait_for(Option::is_some)
                        .await
                        .map(|outcome| outcome.clone())
                        .unwrap_or(Some(Err("the pull unpacking it was abandoned".to_owned())));
                    if let Some(Err(message)) = outcome {
                        return Err(Error::SharedLayer { chain_id, message });
                    }
                }
            }
        }
        Ok(())
    }

    /// Leads the flight of `chain_id`, or returns the flight to wait for.
    fn join_flight(
        &self,
        chain_id: &str,
    ) -> std::result::Result<Flight, watch::Receiver<FlightOutcome>> {
        let mut flights = self
            .flights
            .lock()
            .expect("flight map lock is never poisoned");
        if let Some(waiting) = flights.get(chain_id) {
            if waiting.borrow().is_none() {
                return Err(waiting.clone());
            }
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(chain_id.to_owned(), receiver);
        Ok(Flight {
            chain_id: chain_id.to_owned(),
            sender: Some(sender),
            flights: self.flights.clone(),
        })
    }

    /// Streams one layer from the registry into a new snapshot directory,
    /// verifying its digest and diff ID.
    async fn unpack_layer(
        &self,
        session: &Session,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PreparedLayer> {
        let _permit = self
            .downloads
            .acquire()
            .await
            .expect("the download semaphore is never closed");
        let key = format!(
            "{EXTRACT_PREFIX}{}-{}",
            std::process::id(),
            unique_suffix(&layer.digest)
        );
        let snapshotter = self.snapshotter.clone();
        let prepare_key = key.clone();
        let dir = blocking(move || Ok(snapshotter.prepare_layer(&prepare_key)?)).await?;
        let prepared = PreparedLayer {
            key,
            snapshotter: Some(self.snapshotter.clone()),
        };

        let mut blob = session.fetch_blob(layer).await?;
        let (sender, reader) = pipe(8);
        let media_type = layer.media_type.clone();
        let layer_digest = layer.digest.clone();
        let expected_diff_id = diff_id.clone();
        let applier = tokio::task::spawn_blocking(move || -> Result<()> {
            let tar = decompress(&media_type, &layer_digest, reader)?;
            let tar = berth_failpoint::reader("unpack:mid-layer", UNPACK_FAILPOINT_AFTER, tar);
            let mut tar = DiffIdReader::new(tar);
            apply_layer(&mut tar, &dir).map_err(|source| Error::Apply {
                digest: layer_digest.clone(),
                source,
            })?;
            tar.verify(&expected_diff_id)
        });
        let mut hasher = Hasher::new(layer.digest.algorithm());
        // With keep_layer_blobs the same bytes also go to the content store,
        // whose writer verifies them on its own.
        let mut keeper = match self.keep_layer_blobs {
            true => match self.content.writer(&layer.digest, layer.size).await? {
                crate::content::Ingest::New(writer) => Some(writer),
                crate::content::Ingest::Exists(_) => None,
            },
            false => None,
        };
        let downloaded: Result<()> = async {
            let mut first = true;
            while let Some(chunk) = blob.chunk().await? {
                if !std::mem::take(&mut first) {
                    berth_failpoint::hit("pull:mid-layer-download");
                }
                hasher.update(&chunk);
                if let Some(writer) = keeper.as_mut() {
                    writer.write(&chunk).await?;
                }
                if !sender.send(chunk).await {
                    // The applier stopped early; its error says why.
                    break;
                }
            }
            Ok(())
        }
        .await;
        match &downloaded {
            Ok(()) => sender.finish(),
            Err(e) => {
                sender
                    .fail(std::io::Error::other(format!("download failed: {e}")))
                    .await
            }
        }
        let applied = applier.await.map_err(Error::Task)?;
        downloaded?;
        applied?;
        if let Some(writer) = keeper {
            writer.commit().await?;
        }
        let actual = hasher.finish();
        if actual != layer.digest {
            return Err(Error::Content(
                crate::content::ContentError::DigestMismatch {
                    expected: layer.digest.clone(),
                    actual,
                },
            ));
        }
        Ok(prepared)
    }

    async fn commit_layer(
        &self,
        mut prepared: PreparedLayer,
        chain_id: &str,
        index: usize,
        chain: &[Digest],
    ) -> Result<()> {
        let parent = index.checked_sub(1).map(|p| chain[p].to_string());
        let snapshotter = self.snapshotter.clone();
        let key = prepared.key.clone();
        let name = chain_id.to_owned();
        blocking(move || {
            snapshotter.commit_layer(&key, &name, parent.as_deref())?;
            Ok(())
        })
        .await?;
        prepared.snapshotter = None;
        berth_failpoint::hit("unpack:after-snapshot-commit");
        Ok(())
    }

    /// The image known by `name`: its ID (`sha256:…` or the bare hex), a
    /// repo tag or repo digest, or any reference that normalises to one
    /// (`busybox` is `docker.io/library/busybox:latest`).
    pub async fn status(&self, name: &str) -> Result<Option<ImageRecord>> {
        let records = self.records.clone();
        let name = name.to_owned();
        blocking(move || {
            if let Some(record) = records.get(&name)? {
                return Ok(Some(record));
            }
            // An image ID, with or without its algorithm, names no
            // repository: when no image has it there is nothing to find.
            if name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(records.get(&format!("sha256:{name}"))?);
            }
            if name.parse::<Digest>().is_ok() {
                return Ok(None);
            }
            let reference: Reference = name.parse()?;
            Ok(records.by_name(&canonical_name(&reference))?)
        })
        .await
    }

    /// Every image.
    pub async fn list(&self) -> Result<Vec<ImageRecord>> {
        let records = self.records.clone();
        blocking(move || Ok(records.list()?)).await
    }

    /// Whether the config names the image as pinned.
    pub fn is_pinned(&self, record: &ImageRecord) -> bool {
        let pinned = self.pinned.read().expect("pinned lock is never poisoned");
        record.names().any(|name| pinned.contains(name))
    }

    /// The parsed config of an image.
    pub async fn config(&self, record: &ImageRecord) -> Result<ImageConfig> {
        let digest: Digest = record.id.parse().map_err(|_| Error::BadRecord {
            id: record.id.clone(),
        })?;
        let bytes = self.content.read(&digest, MAX_CONFIG_SIZE).await?;
        Ok(ImageConfig::parse(&digest, &bytes)?)
    }

    /// Removes the image known by `name` (as for [`Images::status`]) and
    /// everything only it used; `None` if there was none. An image that a
    /// container's snapshot stands on stays: [`Error::InUse`].
    pub async fn remove(&self, name: &str) -> Result<Option<ImageRecord>> {
        let Some(record) = self.status(name).await? else {
            return Ok(None);
        };
        if let Some(snapshot) = self.user(&record).await? {
            return Err(Error::InUse {
                id: record.id,
                name: name.to_owned(),
                snapshot,
            });
        }
        let records = self.records.clone();
        let id = record.id;
        let outcome = blocking(move || {
            let Some(removed) = records.remove(&id)? else {
                return Ok(None);
            };
            let remaining = records.list()?;
            let kept: HashSet<&String> = remaining.iter().flat_map(|r| &r.blobs).collect();
            let unused: Vec<String> = removed
                .blobs
                .iter()
                .filter(|b| !kept.contains(b))
                .cloned()
                .collect();
            Ok(Some((removed, unused)))
        })
        .await?;
        let Some((removed, unused)) = outcome else {
            return Ok(None);
        };
        self.collect_garbage().await?;
        for blob in unused {
            if let Ok(digest) = blob.parse::<Digest>() {
                if let Err(e) = self.content.delete(&digest).await {
                    tracing::warn!(blob = %blob, error = %e, "cannot delete image blob");
                }
            }
        }
        Ok(Some(removed))
    }

    /// A snapshot that is not the image's own (a container's root
    /// filesystem) standing on the image's top layer.
    async fn user(&self, record: &ImageRecord) -> Result<Option<String>> {
        let Some(top) = record.top_chain_id().map(str::to_owned) else {
            return Ok(None);
        };
        let snapshotter = self.snapshotter.clone();
        blocking(move || {
            Ok(snapshotter
                .list()?
                .into_iter()
                .find(|info| {
                    info.kind != Kind::Committed && info.parent.as_deref() == Some(top.as_str())
                })
                .map(|info| info.key))
        })
        .await
    }

    /// Usage of the filesystem that holds the snapshots.
    pub async fn fs_usage(&self) -> Result<FsUsage> {
        let snapshotter = self.snapshotter.clone();
        blocking(move || Ok(snapshotter.fs_usage()?)).await
    }

    /// Where the stores live.
    pub fn content_root(&self) -> &Path {
        self.content.root()
    }
}

/// The stored name of a reference: its repo digest if it has a digest,
/// else its repo tag.
fn canonical_name(reference: &Reference) -> String {
    match reference.digest() {
        Some(digest) => reference.repo_digest(digest),
        None => reference
            .repo_tag()
            .unwrap_or_else(|| format!("{}:latest", reference.name())),
    }
}

fn unique_suffix(digest: &Digest) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let hex = digest.hex();
    format!(
        "{}-{}",
        &hex[..hex.len().min(12)],
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(Error::Task)?
}

/// A layer flight this pull leads; waiting pulls learn the outcome. If the
/// pull is dropped (cancelled) first, they learn that it was abandoned.
struct Flight {
    chain_id: String,
    sender: Option<watch::Sender<FlightOutcome>>,
    flights: Arc<Mutex<HashMap<String, watch::Receiver<FlightOutcome>>>>,
}

impl Flight {
    fn finish(mut self, outcome: std::result::Result<(), String>) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Some(outcome));
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Some(Err("the pull unpacking it was abandoned".to_owned())));
        }
        let mut flights = self
            .flights
            .lock()
            .expect("flight map lock is never poisoned");
        flights.remove(&self.chain_id);
    }
}

/// Chain IDs a pull stands on, released when the pull ends.
struct Lease {
    leased: Arc<Mutex<HashMap<String, usize>>>,
    chain_ids: Vec<String>,
}

impl Lease {
    fn new(leased: &Arc<Mutex<HashMap<String, usize>>>, chain_ids: Vec<String>) -> Lease {
        let mut map = leased.lock().expect("lease lock is never poisoned");
        for id in &chain_ids {
            *map.entry(id.clone()).or_default() += 1;
        }
        Lease {
            leased: leased.clone(),
            chain_ids,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut map = self.leased.lock().expect("lease lock is never poisoned");
        for id in &self.chain_ids {
            if let Some(count) = map.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    map.remove(id);
                }
            }
        }
    }
}

/// An unpacked layer not yet committed; removed on drop unless committed.
struct PreparedLayer {
    key: String,
    snapshotter: Option<Arc<Snapshotter>>,
}

impl Drop for PreparedLayer {
    fn drop(&mut self) {
        if let Some(snapshotter) = self.snapshotter.take() {
            let key = std::mem::take(&mut self.key);
            let remove = move || {
                if let Err(e) = snapshotter.remove(&key) {
                    tracing::warn!(key = %key, error = %e, "cannot remove unfinished layer");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(remove);
                }
                Err(_) => remove(),
            }
        }
    }
}
