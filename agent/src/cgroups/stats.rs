//! The counters of one cgroup, read from its files on v1 or v2.
//!
//! What each field is, where it comes from, and the choices made where the
//! kernel offers several (they follow what cAdvisor and kubelet compute, so
//! the numbers match what kubelet shows on other runtimes):
//!
//! | field | v2 | v1 |
//! |---|---|---|
//! | CPU usage | `cpu.stat` `usage_usec` × 1000 | `cpuacct.usage` |
//! | user / system | `cpu.stat` `user_usec`, `system_usec` | `cpuacct.usage_user`, `cpuacct.usage_sys` |
//! | throttling | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_usec` | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_time` |
//! | memory usage | `memory.current` | `memory.usage_in_bytes` |
//! | working set | usage − `memory.stat` `inactive_file` | usage − `total_inactive_file` |
//! | RSS | `memory.stat` `anon` | `memory.stat` `total_rss` |
//! | page faults | `pgfault`, `pgmajfault` | `total_pgfault`, `total_pgmajfault` |
//! | cache, mapped file | `memory.stat` `file`, `file_mapped` | `total_cache`, `total_mapped_file` |
//! | kernel memory | `memory.stat` `kernel` (5.18+) | `memory.kmem.usage_in_bytes` |
//! | peak usage | `memory.peak` (5.19+) | `memory.max_usage_in_bytes` |
//! | limit hits | `memory.events` `max` | `memory.failcnt` |
//! | limit | `memory.max` | `memory.limit_in_bytes` |
//! | OOM | `memory.events` `oom`, `oom_kill` | `memory.oom_control` `oom_kill` |
//! | swap | `memory.swap.current`, `memory.swap.max` | `memory.stat` `total_swap`; memsw limit − memory limit |
//! | pids | `pids.current`, `pids.max` | the same |
//! | IO | `io.stat` | `blkio.throttle.io_service_bytes`, `io_serviced` (`_recursive` where present) |
//!
//! v2's counters include the cgroup's descendants; on v1 the `total_*` keys
//! and the `_recursive` blkio files are chosen for the same reason, so a
//! pod's cgroup sums its containers on both.

use super::files::{read_blkio, read_io_stat, read_limit, read_u64, FlatKeyed, IoDeviceStats};
use super::oom::read_oom_kills;
use super::{Cgroup, CgroupDirs, CgroupError};
use std::path::Path;

/// v1 writes "no limit" as the largest page-aligned `i64`
/// (`PAGE_COUNTER_MAX` pages); anything from 2^62 up is taken as unlimited,
/// whatever the page size.
const V1_UNLIMITED: u64 = 1 << 62;

/// The counters of one cgroup; a section is `None` where its controller is
/// not enabled for the cgroup (or the kernel lacks its files).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    /// One entry per block device the cgroup did IO on.
    pub io: Option<Vec<IoDeviceStats>>,
}

/// Cumulative CPU time, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuStats {
    pub usage_ns: u64,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    /// CFS bandwidth control; `None` without the cpu controller.
    pub throttling: Option<CpuThrottling>,
}

/// How often the CFS quota held the cgroup back.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuThrottling {
    /// Enforcement periods that have elapsed.
    pub periods: u64,
    /// Periods in which the cgroup used up its quota.
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

/// Memory in bytes, and the events of the memory controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// All memory charged to the cgroup, page cache included.
    pub usage_bytes: u64,
    /// Usage minus inactive file pages: what kubelet evicts on and
    /// `kubectl top` shows.
    pub working_set_bytes: u64,
    /// Anonymous memory (heap, stacks, anonymous mappings).
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Times the cgroup reached its limit and the OOM killer was invoked
    /// (v2 only: v1 has no such counter).
    pub oom_events: Option<u64>,
    /// Processes killed by the OOM killer (0 on v1 kernels before 4.13,
    /// which do not count).
    pub oom_kills: u64,
    /// `None` where the kernel does not account swap.
    pub swap: Option<SwapStats>,
    /// Page cache.
    pub cache_bytes: u64,
    /// Page cache mapped into processes.
    pub mapped_file_bytes: u64,
    /// Kernel memory; `None` where the kernel does not say.
    pub kernel_bytes: Option<u64>,
    /// The highest usage seen; `None` where the kernel does not keep it.
    pub max_usage_bytes: Option<u64>,
    /// Times the usage hit the limit.
    pub failcnt: Option<u64>,
}

impl MemoryStats {
    /// What is left before the limit, counted as kubelet does (limit minus
    /// working set); `None` when unlimited.
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes
            .map(|limit| limit.saturating_sub(self.working_set_bytes))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SwapStats {
    pub usage_bytes: u64,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PidsStats {
    /// Tasks (threads) in the cgroup.
    pub current: u64,
    /// `None` when unlimited.
    pub limit: Option<u64>,
}

impl Cgroup {
    /// Reads the cgroup's counters. Fails with [`CgroupError::Gone`] when
    /// the cgroup does not exist (its container has exited and been
    /// deleted), and when a file cannot be read or parsed.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        if !self.exists() {
            return Err(CgroupError::Gone {
                path: self.dirs.first().to_owned(),
            });
        }
        match &self.dirs {
            CgroupDirs::Unified(dir) => unified_stats(dir),
            CgroupDirs::Legacy(_) => self.legacy_stats(),
        }
    }

    fn legacy_stats(&self) -> Result<CgroupStats, CgroupError> {
        let cpu = match self.dir("cpuacct") {
            Some(dir) => legacy_cpu(dir, self.dir("cpu"))?,
            None => None,
        };
        let memory = match self.dir("memory") {
            Some(dir) => legacy_memory(dir)?,
            None => None,
        };
        let pids = match self.dir("pids") {
            Some(dir) => pids(dir)?,
            None => None,
        };
        let io = match self.dir("blkio") {
            Some(dir) => legacy_io(dir)?,
            None => None,
        };
        Ok(CgroupStats {
            cpu,
            memory,
            pids,
            io,
        })
    }
}

fn unified_stats(dir: &Path) -> Result<CgroupStats, CgroupError> {
    Ok(CgroupStats {
        cpu: unified_cpu(dir)?,
        memory: unified_memory(dir)?,
        pids: pids(dir)?,
        io: read_io_stat(dir)?,
    })
}

fn unified_cpu(dir: &Path) -> Result<Option<CpuStats>, CgroupError> {
    let Some(stat) = FlatKeyed::read(dir, "cpu.stat")? else {
        return Ok(None);
    };
    let us = |key: &str| stat.get(key).map(|v| v.saturating_mul(1000));
    // The throttling keys appear once the cpu controller is enabled.
    let throttling = match (stat.get("nr_periods"), stat.get("nr_throttled")) {
        (Some(periods), Some(throttled_periods)) => Some(CpuThrottling {
            periods,
            throttled_periods,
            throttled_ns: us("throttled_usec").unwrap_or(0),
        }),
        _ => None,
    };
    Ok(Some(CpuStats {
        usage_ns: stat.require("usage_usec")?.saturating_mul(1000),
        user_ns: us("user_usec"),
        system_ns: us("system_usec"),
        throttling,
    }))
}

fn legacy_cpu(cpuacct: &Path, cpu: Option<&Path>) -> Result<Option<CpuStats>, CgroupError> {
    let Some(usage_ns) = read_u64(cpuacct, "cpuacct.usage")? else {
        return Ok(None);
    };
    let throttling = match cpu {
        Some(dir) => FlatKeyed::read(dir, "cpu.stat")?
            .map(|stat| -> Result<_, CgroupError> {
                Ok(CpuThrottling {
                    periods: stat.require("nr_periods")?,
                    throttled_periods: stat.require("nr_throttled")?,
                    throttled_ns: stat.require("throttled_time")?,
                })
            })
            .transpose()?,
        None => None,
    };
    Ok(Some(CpuStats {
        usage_ns,
        user_ns: read_u64(cpuacct, "cpuacct.usage_user")?,
        system_ns: read_u64(cpuacct, "cpuacct.usage_sys")?,
        throttling,
    }))
}

fn unified_memory(dir: &Path) -> Result<Option<MemoryStats>, CgroupError> {
    let (Some(usage_bytes), Some(stat)) = (
        read_u64(dir, "memory.current")?,
        FlatKeyed::read(dir, "memory.stat")?,
    ) else {
        return Ok(None);
    };
    let swap = match read_u64(dir, "memory.swap.current")? {
        Some(usage_bytes) => Some(SwapStats {
            usage_bytes,
            limit_bytes: read_limit(dir, "memory.swap.max")?.flatten(),
        }),
        None => None,
    };
    let events = FlatKeyed::read(dir, "memory.events")?;
    Ok(Some(MemoryStats {
        usage_bytes,
        working_set_bytes: usage_bytes.saturating_sub(stat.require("inactive_file")?),
        rss_bytes: stat.require("anon")?,
        page_faults: stat.require("pgfault")?,
        major_page_faults: stat.require("pgmajfault")?,
        limit_bytes: read_limit(dir, "memory.max")?.flatten(),
        oom_events: events.as_ref().and_then(|e| e.get("oom")),
        oom_kills: read_oom_kills(dir, true)?.unwrap_or(0),
        swap,
        cache_bytes: stat.get("file").unwrap_or(0),
        mapped_file_bytes: stat.get("file_mapped").unwrap_or(0),
        kernel_bytes: stat.get("kernel"),
        max_usage_bytes: read_u64(dir, "memory.peak")?,
        failcnt: events.as_ref().and_then(|e| e.get("max")),
    }))
}

fn legacy_memory(dir: &Path) -> Result<Option<MemoryStats>, CgroupError> {
    let (Some(usage_bytes), Some(stat)) = (
        read_u64(dir, "memory.usage_in_bytes")?,
        FlatKeyed::read(dir, "memory.stat")?,
    ) else {
        return Ok(None);
    };
    let limit = |name| -> Result<Option<u64>, CgroupError> {
        Ok(read_u64(dir, name)?.filter(|v| *v < V1_UNLIMITED))
    };
    let limit_bytes = limit("memory.limit_in_bytes")?;
    // `total_swap` is there only when the kernel accounts swap; memsw's
    // limit is memory plus swap.
    let swap = match stat.get("total_swap") {
        Some(usage_bytes) => Some(SwapStats {
            usage_bytes,
            limit_bytes: limit("memory.memsw.limit_in_bytes")?
                .zip(limit_bytes)
                .map(|(memsw, memory)| memsw.saturating_sub(memory)),
        }),
        None => None,
    };
    Ok(Some(MemoryStats {
        usage_bytes,
        working_set_bytes: usage_bytes.saturating_sub(stat.require("total_inactive_file")?),
        rss_bytes: stat.require("total_rss")?,
        page_faults: stat.require("total_pgfault")?,
        major_page_faults: stat.require("total_pgmajfault")?,
        limit_bytes,
        oom_events: None,
        oom_kills: read_oom_kills(dir, false)?.unwrap_or(0),
        swap,
        cache_bytes: stat.get("total_cache").unwrap_or(0),
        mapped_file_bytes: stat.get("total_mapped_file").unwrap_or(0),
        kernel_bytes: read_u64(dir, "memory.kmem.usage_in_bytes")?,
        max_usage_bytes: read_u64(dir, "memory.max_usage_in_bytes")?,
        failcnt: read_u64(dir, "memory.failcnt")?,
    }))
}

fn pids(dir: &Path) -> Result<Option<PidsStats>, CgroupError> {
    let Some(current) = read_u64(dir, "pids.current")? else {
        return Ok(None);
    };
    Ok(Some(PidsStats {
        current,
        limit: read_limit(dir, "pids.max")?.flatten(),
    }))
}

fn legacy_io(dir: &Path) -> Result<Option<Vec<IoDeviceStats>>, CgroupError> {
    let recursive = read_blkio(
        dir,
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_serviced_recursive",
    )?;
    match recursive {
        Some(devices) => Ok(Some(devices)),
        None => read_blkio(
            dir,
            "blkio.throttle.io_service_bytes",
            "blkio.throttle.io_serviced",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{pod_cgroup_dir, testdata, CgroupDriver, CgroupLayout};
    use std::path::PathBuf;

    fn v2_systemd() -> CgroupLayout {
        CgroupLayout::Unified {
            mount: testdata("v2-systemd"),
        }
    }

    fn device(major: u32, minor: u32, bytes: (u64, u64), ops: (u64, u64)) -> IoDeviceStats {
        IoDeviceStats {
            major,
            minor,
            read_bytes: bytes.0,
            write_bytes: bytes.1,
            read_ops: ops.0,
            write_ops: ops.1,
        }
    }

    #[test]
    fn v2_systemd_scope_with_an_oom_kill() {
        let cgroup = Cgroup::of_container(&v2_systemd(), "kubepods-burstable-pod1.slice:berth:c1")
            .expect("a systemd path");
        let stats = cgroup.stats().expect("stats");
        assert_eq!(
            stats,
            CgroupStats {
                cpu: Some(CpuStats {
                    usage_ns: 2_513_047_000,
                    user_ns: Some(2_204_810_000),
                    system_ns: Some(308_237_000),
                    throttling: Some(CpuThrottling {
                        periods: 5012,
                        throttled_periods: 231,
                        throttled_ns: 1_830_452_000,
                    }),
                }),
                memory: Some(MemoryStats {
                    usage_bytes: 66_998_272,
                    working_set_bytes: 66_998_272 - 2_097_152,
                    rss_bytes: 62_914_560,
                    page_faults: 48211,
                    major_page_faults: 12,
                    limit_bytes: Some(64 << 20),
                    oom_events: Some(1),
                    oom_kills: 1,
                    swap: Some(SwapStats {
                        usage_bytes: 0,
                        limit_bytes: None,
                    }),
                    cache_bytes: 3_145_728,
                    mapped_file_bytes: 1_052_672,
                    kernel_bytes: Some(2_879_488),
                    max_usage_bytes: None,
                    failcnt: Some(842),
                }),
                pids: Some(PidsStats {
                    current: 3,
                    limit: Some(1024),
                }),
                io: Some(vec![device(254, 0, (4_218_880, 1_048_576), (301, 12))]),
            }
        );
        let memory = stats.memory.expect("memory");
        assert_eq!(memory.available_bytes(), Some((64 << 20) - 64_901_120));
    }

    #[test]
    fn v2_systemd_scope_without_limits() {
        let cgroup = Cgroup::of_container(&v2_systemd(), "kubepods-burstable-pod1.slice:berth:c2")
            .expect("a systemd path");
        let stats = cgroup.stats().expect("stats");
        let memory = stats.memory.expect("memory");
        assert_eq!(memory.limit_bytes, None);
        assert_eq!(memory.available_bytes(), None);
        assert_eq!(memory.working_set_bytes, 8_388_608 - 3_145_728);
        assert_eq!((memory.oom_events, memory.oom_kills), (Some(0), 0));
        assert_eq!(
            memory.swap,
            Some(SwapStats {
                usage_bytes: 1 << 20,
                limit_bytes: Some(256 << 20),
            })
        );
        assert_eq!(
            stats.pids,
            Some(PidsStats {
                current: 1,
                limit: None
            })
        );
        assert_eq!(stats.io, Some(Vec::new()), "no IO yet");
    }

    #[test]
    fn v2_pod_slice_sums_its_scopes() {
        let layout = v2_systemd();
        let dir = pod_cgroup_dir("kubepods-burstable-pod1.slice", CgroupDriver::Systemd)
            .expect("a slice")
            .expect("a pod cgroup");
        let pod = Cgroup::new(&layout, &dir).stats().expect("pod stats");
        let containers: Vec<CgroupStats> = ["c1", "c2"]
            .iter()
            .map(|id| {
                let path = format!("kubepods-burstable-pod1.slice:berth:{id}");
                Cgroup::of_container(&layout, &path)
                    .and_then(|c| c.stats())
                    .expect("container stats")
            })
            .collect();
        let sum = |f: fn(&CgroupStats) -> u64| containers.iter().map(f).sum::<u64>();
        let cpu = |s: &CgroupStats| s.cpu.as_ref().expect("cpu").usage_ns;
        let usage = |s: &CgroupStats| s.memory.as_ref().expect("memory").usage_bytes;
        let pids = |s: &CgroupStats| s.pids.as_ref().expect("pids").current;
        assert_eq!(cpu(&pod), sum(cpu));
        assert_eq!(usage(&pod), sum(usage));
        assert_eq!(pids(&pod), sum(pids));
        assert_eq!(pod.memory.expect("memory").limit_bytes, Some(128 << 20));
    }

    #[test]
    fn v2_controllers_that_are_not_enabled_read_as_none() {
        let layout = CgroupLayout::Unified {
            mount: testdata("v2-cgroupfs"),
        };
        let stats = Cgroup::of_container(&layout, "/kubepods/besteffort/pod2/c3")
            .expect("a cgroupfs path")
            .stats()
            .expect("stats");
        let cpu = stats.cpu.expect("cpu.stat is in every v2 cgroup");
        assert_eq!(
            (cpu.usage_ns, cpu.user_ns, cpu.system_ns),
            (991_000, Some(512_000), Some(479_000))
        );
        assert_eq!(cpu.throttling, None, "no cpu controller");
        let memory = stats.memory.expect("memory");
        assert_eq!(memory.working_set_bytes, 270_336 - 16_384);
        assert_eq!(memory.swap, None, "no memory.swap.current");
        assert_eq!(stats.pids, None);
        assert_eq!(stats.io, None);
    }

    #[test]
    fn v1_systemd_scope_from_a_recorded_layout() {
        let root = testdata("v1-systemd");
        let root = root.display();
        // The mounts of a v1 node with systemd, moved under the recorded tree.
        let mountinfo = format!(
            "25 18 0:22 / {root} ro,nosuid - tmpfs tmpfs ro,mode=755\n\
             26 25 0:23 / {root}/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd\n\
             27 25 0:24 / {root}/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
             28 25 0:25 / {root}/memory rw,nosuid - cgroup cgroup rw,memory\n\
             29 25 0:26 / {root}/pids rw,nosuid - cgroup cgroup rw,pids\n\
             30 25 0:27 / {root}/blkio rw,nosuid - cgroup cgroup rw,blkio\n"
        );
        let layout = CgroupLayout::from_mountinfo(&mountinfo).expect("layout");
        let stats = Cgroup::of_container(&layout, "kubepods-besteffort-pod3.slice:berth:c4")
            .expect("a systemd path")
            .stats()
            .expect("stats");
        assert_eq!(
            stats,
            CgroupStats {
                cpu: Some(CpuStats {
                    usage_ns: 3_120_554_983,
                    user_ns: Some(2_880_112_000),
                    system_ns: Some(240_443_000),
                    throttling: Some(CpuThrottling {
                        periods: 6021,
                        throttled_periods: 1204,
                        throttled_ns: 96_500_123_456,
                    }),
                }),
                memory: Some(MemoryStats {
                    usage_bytes: 33_656_832,
                    working_set_bytes: 33_656_832 - 786_432,
                    rss_bytes: 31_457_280,
                    page_faults: 30122,
                    major_page_faults: 7,
                    limit_bytes: Some(32 << 20),
                    oom_events: None,
                    oom_kills: 1,
                    swap: Some(SwapStats {
                        usage_bytes: 2 << 20,
                        limit_bytes: Some(32 << 20),
                    }),
                    cache_bytes: 1_048_576,
                    mapped_file_bytes: 524_288,
                    kernel_bytes: None,
                    max_usage_bytes: None,
                    failcnt: None,
                }),
                pids: Some(PidsStats {
                    current: 2,
                    limit: None,
                }),
                // The recursive files win over the local ones (all zero).
                io: Some(vec![device(8, 0, (1_310_720, 4096), (40, 1))]),
            }
        );
    }

    #[test]
    fn a_cgroup_that_is_gone() {
        let cgroup = Cgroup::of_container(&v2_systemd(), "kubepods-burstable-pod1.slice:berth:c9")
            .expect("a systemd path");
        assert!(matches!(cgroup.stats(), Err(CgroupError::Gone { .. })));
        assert!(matches!(
            Cgroup::of_container(&v2_systemd(), "c9"),
            Err(CgroupError::Path(_))
        ));
    }

    /// A cgroup made by this test in each v1 hierarchy it reads, under the
    /// test's own cgroup there; removed (after killing its one process, by
    /// PID) on drop.
    struct LiveCgroup {
        dirs: Vec<(Vec<String>, PathBuf)>,
        child: Option<std::process::Child>,
    }

    impl Drop for LiveCgroup {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            for (_, dir) in &self.dirs {
                // The kernel empties the cgroup just after the reap.
                for _ in 0..50 {
                    match std::fs::remove_dir(dir) {
                        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                            std::thread::sleep(std::time::Duration::from_millis(20))
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    fn raw(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("raw cgroup file")
    }

    fn raw_key(text: &str, key: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    }

    #[test]
    fn v1_live_cgroup_agrees_with_the_kernel() {
        use std::io::{BufRead, Write};
        let layout = CgroupLayout::detect().expect("layout");
        let CgroupLayout::Legacy { hierarchies, .. } = &layout else {
            eprintln!("skipped: this host runs cgroup v2 (v2 is tested on recorded trees)");
            return;
        };
        let wanted = ["cpu", "cpuacct", "memory", "pids", "blkio"];
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let name = format!("berth-stats-test-{}", std::process::id());
        let mut live = LiveCgroup {
            dirs: Vec::new(),
            child: None,
        };
        for (mount, controllers) in hierarchies {
            if !controllers.iter().any(|c| wanted.contains(&c.as_str())) {
                continue;
            }
            // `N:cpu,cpuacct:/path`: this process's cgroup in the hierarchy.
            let joined = controllers.join(",");
            let own_path = own
                .lines()
                .filter_map(|l| l.split_once(':')?.1.split_once(':'))
                .find_map(|(cs, path)| (cs == joined).then_some(path))
                .expect("this process is in every hierarchy");
            let dir = mount.join(own_path.trim_start_matches('/')).join(&name);
            std::fs::create_dir(&dir).expect("create a test cgroup (tests run as root)");
            live.dirs.push((controllers.clone(), dir));
        }
        let cgroup = Cgroup {
            dirs: CgroupDirs::Legacy(live.dirs.clone()),
        };
        let dir = |controller: &str| cgroup.dir(controller).expect("controller").to_owned();
        std::fs::write(dir("memory").join("memory.limit_in_bytes"), "268435456")
            .expect("set a memory limit");
        std::fs::write(dir("pids").join("pids.max"), "64").expect("set a pids limit");
        // Half a core, so a busy loop is throttled.
        std::fs::write(dir("cpu").join("cpu.cfs_quota_us"), "50000").expect("set a CPU quota");

        // Waits for a line, burns CPU, holds 16 MiB in a shell variable,
        // says "ready" and waits for stdin to close.
        let script = "read _; i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
                      x=$(head -c 16777216 /dev/zero | tr '\\0' a); echo ready; read _ || true";
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        live.child = Some(child);
        for (_, dir) in &live.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
        }
        assert_eq!(cgroup.processes().expect("cgroup.procs"), vec![pid]);
        writeln!(stdin).expect("start the work");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready");

        let stats = cgroup.stats().expect("stats");
        let cpu = stats.cpu.expect("cpu");
        let memory = stats.memory.expect("memory");
        let raw_usage: u64 = raw(&dir("cpuacct"), "cpuacct.usage")
            .trim()
            .parse()
            .expect("ns");
        let raw_stat = raw(&dir("memory"), "memory.stat");
        let raw_cpu_stat = raw(&dir("cpu"), "cpu.stat");
        eprintln!("{cpu:?}\n{memory:?}\n{:?}\n{:?}", stats.pids, stats.io);

        // The shell is idle now, so a second read moves little.
        assert!(cpu.usage_ns > 20_000_000, "a busy loop burns CPU: {cpu:?}");
        assert!(raw_usage >= cpu.usage_ns && raw_usage - cpu.usage_ns < 50_000_000);
        // user and system time are sampled at ticks, the usage is exact.
        let user = cpu.user_ns.expect("cpuacct.usage_user");
        let system = cpu.system_ns.expect("cpuacct.usage_sys");
        assert!(user + system <= cpu.usage_ns + 100_000_000, "{cpu:?}");
        let throttling = cpu.throttling.expect("cpu.stat");
        assert!(
            throttling.periods > 0,
            "a quota counts periods: {throttling:?}"
        );
        assert_eq!(throttling.periods, raw_key(&raw_cpu_stat, "nr_periods"));

        // memory.stat lags by the kernel's per-CPU batches (a flush may
        // land between two reads), hence the slack.
        let close = |a: u64, b: u64, slack: u64| a.abs_diff(b) <= slack;
        assert!(memory.rss_bytes >= 15 << 20, "16 MiB are held: {memory:?}");
        assert!(memory.rss_bytes < 128 << 20, "{memory:?}");
        assert!(close(
            memory.rss_bytes,
            raw_key(&raw_stat, "total_rss"),
            1 << 20
        ));
        assert!(memory.usage_bytes >= memory.working_set_bytes);
        assert!(memory.working_set_bytes + (1 << 20) >= memory.rss_bytes);
        let inactive_file = raw_key(&raw_stat, "total_inactive_file");
        assert!(close(
            memory.working_set_bytes,
            memory.usage_bytes.saturating_sub(inactive_file),
            1 << 20
        ));
        assert!(memory.page_faults > 0, "touching 16 MiB faults pages in");
        assert!(close(
            memory.page_faults,
            raw_key(&raw_stat, "total_pgfault"),
            256
        ));
        assert_eq!(memory.limit_bytes, Some(256 << 20));
        assert_eq!(
            memory.available_bytes(),
            Some((256 << 20) - memory.working_set_bytes)
        );
        assert_eq!(memory.oom_events, None);
        assert_eq!(memory.oom_kills, 0);
        assert_eq!(
            stats.pids,
            Some(PidsStats {
                current: 1,
                limit: Some(64)
            }),
            "only the shell is left"
        );
        assert!(stats.io.is_some(), "blkio is mounted");
        assert_eq!(cgroup.oom_kills().expect("oom kills"), Some(0));

        drop(stdin);
        let status = live.child.take().expect("child").wait().expect("wait");
        assert!(status.success(), "{status}");
        drop(live);
        assert!(matches!(cgroup.stats(), Err(CgroupError::Gone { .. })));
    }
}
