//! The image service through crictl: pull through registry mirrors,
//! list, inspect, remove, filesystem usage, errors, and a crash mid-pull.

use berth_e2e::stall::StallingProxy;
use berth_e2e::{ensure, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::path::Path;
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn main() {
    let registry = match Registry::start_with_large(None, 40) {
        Ok(registry) => registry,
        Err(e) => {
            println!("cannot start the loopback registry: {e}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let mirrors = registry.mirrors_dir();
    // The registry's own name in references: 127.0.0.1:PORT.
    let local = registry.address();
    let local = local.as_str();
    let options = || BerthdOptions {
        registry_config_path: Some(mirrors.clone()),
        ..BerthdOptions::default()
    };
    let mut suite = Suite::new();
    suite.run("pull_list_inspect_remove", || {
        pull_list_inspect_remove(options())
    });
    suite.run("pull_by_digest_and_short_names", || {
        pull_by_digest_and_short_names(options())
    });
    suite.run("whiteout_and_uncompressed_images_pull", || {
        whiteout_and_uncompressed_images_pull(options(), local)
    });
    suite.run("errors_name_what_went_wrong", || {
        errors_name_what_went_wrong(options(), local)
    });
    suite.run("concurrent_pulls_share_layers", || {
        concurrent_pulls_share_layers(options())
    });
    suite.run("kept_layer_blobs_go_with_the_image", || {
        kept_layer_blobs_go_with_the_image(
            BerthdOptions {
                extra_config: "\n[image]\nkeep_layer_blobs = true\n".to_owned(),
                ..options()
            },
            local,
        )
    });
    suite.run("pinned_images_say_so", || {
        pinned_images_say_so(BerthdOptions {
            extra_config: format!("\n[image]\npinned_images = [\"{BUSYBOX}\"]\n"),
            ..options()
        })
    });
    suite.run("disk_full_fails_the_pull_and_leaves_nothing", || {
        disk_full_fails_the_pull_and_leaves_nothing(
            BerthdOptions {
                root_size_mib: Some(24),
                ..options()
            },
            local,
        )
    });
    suite.run("kill_9_mid_pull_leaves_nothing", || {
        kill_9_mid_pull_leaves_nothing(options(), local, &mirrors)
    });
    drop(registry);
    suite.finish();
}

fn json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))
}

/// `crictl imagefsinfo`'s used bytes and inodes.
fn fs_used(berthd: &Berthd) -> Result<(u64, u64, String), String> {
    let info = json(&berthd.crictl_ok(&["imagefsinfo", "-o", "json"])?)?;
    let fs = &info["status"]["imageFilesystems"][0];
    let number = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_u64())
            .unwrap_or(0)
    };
    Ok((
        number(&fs["usedBytes"]["value"]),
        number(&fs["inodesUsed"]["value"]),
        fs["fsId"]["mountpoint"].as_str().unwrap_or("").to_owned(),
    ))
}

/// Files left in a directory tree (0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                files_under(&path)
            } else {
                1
            }
        })
        .sum()
}

fn pull_list_inspect_remove(options: BerthdOptions) -> TestResult {
    let berthd = Berthd::start(options)?;
    let (empty_bytes, _, mountpoint) = fs_used(&berthd)?;
    ensure(!mountpoint.is_empty(), || {
        "imagefsinfo names no mountpoint".to_owned()
    })?;

    let out = berthd.crictl_ok(&["pull", BUSYBOX])?;
    ensure(out.contains("Image is up to date for sha256:"), || {
        out.clone()
    })?;
    let id = out.trim().rsplit(' ').next().unwrap_or("").to_owned();

    let images = json(&berthd.crictl_ok(&["images", "-o", "json"])?)?;
    let listed = images["images"].as_array().cloned().unwrap_or_default();
    ensure(listed.len() == 1, || {
        format!("expected one image: {images}")
    })?;
    let image = &listed[0];
    ensure(image["id"] == id.as_str(), || {
        format!("id {id} not in {image}")
    })?;
    ensure(image["repoTags"][0] == BUSYBOX, || image.to_string())?;
    let digest = image["repoDigests"][0].as_str().unwrap_or("");
    ensure(
        digest.starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        || image.to_string(),
    )?;
    let size: u64 = image["size"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    ensure(size > 1_000_000, || {
        format!("size {size} is too small for busybox+glibc")
    })?;

    // inspecti by tag, by ID and by repo digest tell the same.
    for name in [BUSYBOX, id.as_str(), digest] {
        let status = json(&berthd.crictl_ok(&["inspecti", "-o", "json", name])?)?;
        ensure(status["status"]["id"] == id.as_str(), || {
            format!("{name}: {status}")
        })?;
    }
    let (used_bytes, used_inodes, _) = fs_used(&berthd)?;
    ensure(
        used_bytes > empty_bytes + 1_000_000 && used_inodes > 10,
        || {
            format!("imagefsinfo did not grow: {empty_bytes} -> {used_bytes} bytes, {used_inodes} inodes")
        },
    )?;

    // Pulling again is a metadata check that returns the same image.
    let again = berthd.crictl_ok(&["pull", BUSYBOX])?;
    ensure(again.contains(&id), || again.clone())?;

    berthd.crictl_ok(&["rmi", BUSYBOX])?;
    let images = json(&berthd.crictl_ok(&["images", "-o", "json"])?)?;
    ensure(
        images["images"].as_array().is_none_or(Vec::is_empty),
        || images.to_string(),
    )?;
    let (after_bytes, _, _) = fs_used(&berthd)?;
    ensure(after_bytes < used_bytes, || {
        format!("rmi freed nothing: {used_bytes} -> {after_bytes}")
    })?;
    // Everything of the image is gone from disk.
    let root = berthd.root_dir();
    ensure(
        files_under(&root.join("snapshotter/snapshots")) == 0,
        || "snapshots remain after rmi".to_owned(),
    )?;
    ensure(files_under(&root.join("content/blobs")) == 0, || {
        "blobs remain after rmi".to_owned()
    })?;
    // Removing it again is fine.
    berthd
        .crictl_ok(&["rmi", id.as_str()])
        .map(|_| ())
        .or_else(|e| {
            // crictl itself refuses when the image is unknown; the RPC was OK.
            ensure(e.contains("no such image"), || e.clone())
        })?;
    berthd.stop()
}

fn pull_by_digest_and_short_names(options: BerthdOptions) -> TestResult {
    let berthd = Berthd::start(options)?;
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let status = json(&berthd.crictl_ok(&["inspecti", "-o", "json", BUSYBOX])?)?;
    let digest = status["status"]["repoDigests"][0]
        .as_str()
        .unwrap_or("")
        .to_owned();
    berthd.crictl_ok(&["rmi", BUSYBOX])?;
    // By digest: no tag, one repo digest.
    berthd.crictl_ok(&["pull", &digest])?;
    let status = json(&berthd.crictl_ok(&["inspecti", "-o", "json", &digest])?)?;
    ensure(
        status["status"]["repoTags"]
            .as_array()
            .is_none_or(Vec::is_empty),
        || status.to_string(),
    )?;
    ensure(
        status["status"]["repoDigests"][0] == digest.as_str(),
        || status.to_string(),
    )?;
    // A docker.io short name normalises like containerd's.
    berthd.crictl_ok(&["pull", "busybox"])?;
    let status = json(&berthd.crictl_ok(&[
        "inspecti",
        "-o",
        "json",
        "docker.io/library/busybox:latest",
    ])?)?;
    ensure(
        status["status"]["repoTags"][0] == "docker.io/library/busybox:latest",
        || status.to_string(),
    )?;
    berthd.stop()
}

fn whiteout_and_uncompressed_images_pull(options: BerthdOptions, local: &str) -> TestResult {
    let berthd = Berthd::start(options)?;
    let whiteout = format!("{local}/bench/whiteout:1");
    for image in [
        whiteout.clone(),
        format!("{local}/bench/uncompressed:1"),
        format!("{local}/bench/multiarch:1"),
        "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest".to_owned(),
    ] {
        berthd.crictl_ok(&["pull", &image])?;
    }
    let user = json(&berthd.crictl_ok(&[
        "inspecti",
        "-o",
        "json",
        "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest",
    ])?)?;
    ensure(user["status"]["username"] == "www-data", || {
        user.to_string()
    })?;
    // The whiteout image's top layer deletes files of the lower ones: its
    // snapshots exist for all four layers.
    let status = json(&berthd.crictl_ok(&["inspecti", "-o", "json", &whiteout])?)?;
    // crictl prints the verbose `info` JSON as the document's `info`.
    let info = &status["info"];
    let chain = info["chainIDs"].as_array().cloned().unwrap_or_default();
    ensure(chain.len() == 4, || format!("expected 4 layers: {info}"))?;
    berthd.stop()
}

fn errors_name_what_went_wrong(options: BerthdOptions, local: &str) -> TestResult {
    let berthd = Berthd::start(options)?;
    let output = berthd.crictl(&["pull", "registry.k8s.io/no/such-image:1"])?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure(!output.status.success(), || {
        "pulling a missing image succeeded".to_owned()
    })?;
    ensure(
        stderr.contains("NotFound") && stderr.contains(local),
        || stderr.clone(),
    )?;
    let output = berthd.crictl(&["pull", "Not_A/Valid::Reference"])?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure(
        stderr.contains("InvalidArgument") && stderr.contains("Not_A/Valid::Reference"),
        || stderr.clone(),
    )?;
    berthd.stop()
}

fn concurrent_pulls_share_layers(options: BerthdOptions) -> TestResult {
    let berthd = Berthd::start(options)?;
    // Five images on one base layer, pulled at once.
    let names: Vec<String> = (1..=3)
        .map(|i| format!("gcr.io/k8s-staging-cri-tools/test-image-{i}:latest"))
        .chain([
            BUSYBOX.to_owned(),
            "gcr.io/k8s-staging-cri-tools/test-image-tags:1".to_owned(),
        ])
        .collect();
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(|| berthd.crictl_ok(&["pull", name.as_str()])))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("pull thread panicked".to_owned()))
            })
            .collect()
    });
    for (name, result) in names.iter().zip(results) {
        result.map_err(|e| format!("{name}: {e}"))?;
    }
    let images = json(&berthd.crictl_ok(&["images", "-o", "json"])?)?;
    ensure(images["images"].as_array().map_or(0, Vec::len) == 5, || {
        images.to_string()
    })?;
    berthd.stop()
}

fn kept_layer_blobs_go_with_the_image(options: BerthdOptions, local: &str) -> TestResult {
    let berthd = Berthd::start(options)?;
    let blobs = berthd.root_dir().join("content/blobs");
    let whiteout = format!("{local}/bench/whiteout:1");
    berthd.crictl_ok(&["pull", &whiteout])?;
    // Manifest and config, plus the four compressed layers.
    ensure(files_under(&blobs) == 6, || {
        format!("expected 6 blobs, found {}", files_under(&blobs))
    })?;
    berthd.crictl_ok(&["rmi", &whiteout])?;
    ensure(files_under(&blobs) == 0, || {
        "blobs remain after rmi".to_owned()
    })?;
    berthd.stop()
}

fn pinned_images_say_so(options: BerthdOptions) -> TestResult {
    let berthd = Berthd::start(options)?;
    let other = "gcr.io/k8s-staging-cri-tools/test-image-1:latest";
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    berthd.crictl_ok(&["pull", other])?;
    let pinned = json(&berthd.crictl_ok(&["inspecti", "-o", "json", BUSYBOX])?)?;
    ensure(pinned["status"]["pinned"] == true, || pinned.to_string())?;
    let unpinned = json(&berthd.crictl_ok(&["inspecti", "-o", "json", other])?)?;
    ensure(unpinned["status"]["pinned"] == false, || {
        unpinned.to_string()
    })?;
    berthd.stop()
}

fn disk_full_fails_the_pull_and_leaves_nothing(options: BerthdOptions, local: &str) -> TestResult {
    let berthd = Berthd::start(options)?;
    // 40 MiB of incompressible layers cannot fit a 24 MiB root.
    let output = berthd.crictl(&["pull", &format!("{local}/bench/large:1")])?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure(!output.status.success(), || {
        "the pull fitted in 24 MiB".to_owned()
    })?;
    ensure(stderr.to_lowercase().contains("no space left"), || {
        stderr.clone()
    })?;
    let images = json(&berthd.crictl_ok(&["images", "-o", "json"])?)?;
    ensure(
        images["images"].as_array().is_none_or(Vec::is_empty),
        || images.to_string(),
    )?;
    let snapshots = berthd.root_dir().join("snapshotter/snapshots");
    ensure(
        wait_until(Duration::from_secs(10), || files_under(&snapshots) == 0),
        || "the failed pull left layers behind".to_owned(),
    )?;
    // With the space back, a small image still pulls.
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    berthd.stop()
}

fn kill_9_mid_pull_leaves_nothing(
    options: BerthdOptions,
    local: &str,
    mirrors: &Path,
) -> TestResult {
    // The pull goes through a proxy that holds the big layers part-way, so
    // the kill lands mid-pull whatever the machine's speed.
    let proxy = StallingProxy::start(local)?;
    proxy.write_hosts(mirrors)?;
    let mut berthd = Berthd::start(options)?;
    let large = format!("{}/bench/large:1", proxy.address());
    let large = large.as_str();
    let endpoint = berthd.endpoint();
    let mut pull = std::process::Command::new(berth_e2e::tool("crictl")?)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "pull",
            large,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Kill berthd while layer downloads are held and layers are unpacked.
    let snapshots = berthd.root_dir().join("snapshotter/snapshots");
    let held = wait_until(Duration::from_secs(30), || proxy.held() > 0);
    let unpacking = wait_until(Duration::from_secs(30), || files_under(&snapshots) > 0);
    let mid_pull = proxy.held() > 0;
    berthd.kill9()?;
    let _ = pull.wait();
    ensure(held, || {
        "no layer download reached the proxy's hold".to_owned()
    })?;
    ensure(unpacking, || "the pull never started unpacking".to_owned())?;
    ensure(mid_pull, || {
        "the held downloads ended before the kill".to_owned()
    })?;
    proxy.release();
    berthd.restart()?;
    let images = json(&berthd.crictl_ok(&["images", "-o", "json"])?)?;
    ensure(
        images["images"].as_array().is_none_or(Vec::is_empty),
        || format!("a half-pulled image is visible: {images}"),
    )?;
    // Start-up swept the partial layers and blobs.
    ensure(files_under(&snapshots) == 0, || {
        "partial layers remain after restart".to_owned()
    })?;
    ensure(
        files_under(&berthd.root_dir().join("content/ingest")) == 0,
        || "partial blobs remain after restart".to_owned(),
    )?;
    berthd.crictl_ok(&["pull", large])?;
    berthd.crictl_ok(&["rmi", large])?;
    ensure(files_under(&snapshots) == 0, || {
        "layers remain after rmi".to_owned()
    })?;
    berthd.stop()
}
