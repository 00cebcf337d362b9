//! critest conformance against a fresh berthd, with a ratchet.
//!
//! Runs critest (cri-tools v1.37.0, installed by `hack/install.sh`) against
//! a berthd whose registry mirrors point at the loopback registry, writes
//! the counts and names to `e2e/critest-last.txt`, and fails when a spec
//! named in `e2e/critest-passing.txt` did not pass (a ratchet by name: one
//! spec cannot regress while another starts passing). Specs that pass but
//! are not listed are reported; `BERTH_CRITEST_UPDATE=1` rewrites the list
//! from the run. A flaky spec gets one retry (`--ginkgo.flake-attempts=2`)
//! and is listed as flaked, never hidden.

use berth_e2e::{repo_root, tool, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::path::Path;
use std::process::{Command, Stdio};

fn main() {
    // critest retries a failed spec itself (--ginkgo.flake-attempts=2).
    let mut suite = Suite::without_retry();
    suite.run("critest_conformance_ratchet", critest_conformance_ratchet);
    suite.finish();
}

#[derive(Debug, Default)]
struct Counts {
    passed: Vec<String>,
    failed: Vec<String>,
    skipped: usize,
    flaked: Vec<String>,
}

/// The committed list of specs that must pass.
const PASSING: &str = "e2e/critest-passing.txt";

/// The spec names of `e2e/critest-passing.txt` (`#` lines are comments).
fn read_passing_list() -> Result<Vec<String>, String> {
    let path = repo_root().join(PASSING);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Rewrites `e2e/critest-passing.txt` with the specs that passed.
fn write_passing_list(passed: &[String]) -> TestResult {
    let mut text = String::from(
        "# critest v1.37.0 specs that pass against berthd: the ratchet of e2e/tests/critest.rs.\n\
         # Every spec listed here must pass. Regenerate after a run that passes more:\n\
         #   BERTH_CRITEST_UPDATE=1 cargo test -p berth-e2e --test critest\n",
    );
    for name in passed {
        text.push_str(name);
        text.push('\n');
    }
    let path = repo_root().join(PASSING);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn critest_conformance_ratchet() -> TestResult {
    let listed = read_passing_list()?;

    let registry = Registry::start(None)?;
    let berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(registry.mirrors_dir()),
        ..BerthdOptions::default()
    })?;
    let report = berthd.dir().join("critest-report.json");
    let log_path = berthd.dir().join("critest.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let endpoint = berthd.endpoint();
    let status = Command::new(tool("critest")?)
        .arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg("--ginkgo.flake-attempts=2")
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=80m")
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("cannot run critest: {e}"))?;
    let counts = match parse_report(&report) {
        Ok(counts) => counts,
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "critest ({status}) left no usable report: {e}\n{}",
                tail.join("\n")
            ));
        }
    };
    write_last(&counts, listed.len())?;
    println!(
        "critest specs: passed={} failed={} skipped={} flaked={} ({} listed in {PASSING}; critest exit: {status})",
        counts.passed.len(),
        counts.failed.len(),
        counts.skipped,
        counts.flaked.len(),
        listed.len(),
    );
    for name in &counts.flaked {
        println!("critest flaked (passed on retry): {name}");
    }
    berthd.stop()?;
    drop(registry);
    let newly: Vec<&String> = counts
        .passed
        .iter()
        .filter(|name| !listed.contains(name))
        .collect();
    for name in &newly {
        println!("critest newly passing (not in {PASSING}): {name}");
    }
    if std::env::var_os("BERTH_CRITEST_UPDATE").is_some() {
        write_passing_list(&counts.passed)?;
        println!(
            "critest: rewrote {PASSING} with the {} specs that passed",
            counts.passed.len()
        );
        return Ok(());
    }
    let regressed: Vec<&String> = listed
        .iter()
        .filter(|name| !counts.passed.contains(name))
        .collect();
    if !regressed.is_empty() {
        return Err(format!(
            "critest regression: {} of the specs in {PASSING} did not pass (see e2e/critest-last.txt):\n  {}",
            regressed.len(),
            regressed
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !newly.is_empty() {
        println!(
            "critest: {} specs pass that {PASSING} does not list: add them \
             (BERTH_CRITEST_UPDATE=1 cargo test -p berth-e2e --test critest)",
            newly.len()
        );
    }
    Ok(())
}

/// Reads ginkgo v2's JSON report: the `It` nodes and how each ended.
fn parse_report(path: &Path) -> Result<Counts, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let suites: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut counts = Counts::default();
    let specs = suites
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|suite| suite["SpecReports"].as_array().into_iter().flatten());
    for spec in specs {
        if spec["LeafNodeType"] != "It" {
            continue;
        }
        let mut name: Vec<String> = spec["ContainerHierarchyTexts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        name.push(spec["LeafNodeText"].as_str().unwrap_or("").to_owned());
        let name = name.join(" ");
        match spec["State"].as_str().unwrap_or("") {
            "passed" => {
                if spec["NumAttempts"].as_u64().unwrap_or(1) > 1 {
                    counts.flaked.push(name.clone());
                }
                counts.passed.push(name);
            }
            "skipped" | "pending" => counts.skipped += 1,
            _ => counts.failed.push(name),
        }
    }
    if counts.passed.is_empty() && counts.failed.is_empty() {
        return Err("the report holds no specs".to_owned());
    }
    counts.passed.sort();
    counts.failed.sort();
    Ok(counts)
}

/// `e2e/critest-last.txt`: the counts and every spec by outcome, so a
/// change in conformance shows in review.
fn write_last(counts: &Counts, listed: usize) -> TestResult {
    let mut text = format!(
        "# critest v1.37.0 against berthd; written by e2e/tests/critest.rs\n\
         passed {}\nfailed {}\nskipped {}\nflaked {}\nlisted {listed}\n",
        counts.passed.len(),
        counts.failed.len(),
        counts.skipped,
        counts.flaked.len(),
    );
    for (label, names) in [
        ("passed", &counts.passed),
        ("flaked", &counts.flaked),
        ("failed", &counts.failed),
    ] {
        text.push_str(&format!("\n## {label}\n"));
        for name in names {
            text.push_str(&format!("{name}\n"));
        }
    }
    let path = repo_root().join("e2e/critest-last.txt");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
