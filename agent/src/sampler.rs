//! Counting the node's cores: online logical CPUs from sysinfo, cross-checked against sysfs under a configurable root.

use std::path::{Path, PathBuf};

use shared::sample::{CORES_MAX, CORES_MIN};

/// Where the machine is read from. `sys_root` is the host's `/sys` (mounted at
/// `/host/sys` in a pod); tests point it at a directory that presents any node.
#[derive(Debug, Clone)]
pub struct Machine {
    pub sys_root: PathBuf,
}

/// A core count and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreCount {
    pub cores: u32,
    /// Online CPUs as `sys/devices/system/cpu/online` lists them, if readable.
    pub sysfs: Option<u32>,
    /// Logical CPUs as sysinfo sees them (the kernel's list, not this process's affinity).
    pub sysinfo: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot count the node's cores: {sysfs_path} is unreadable ({sysfs_error}) and sysinfo found no CPUs")]
pub struct NoCores {
    sysfs_path: String,
    sysfs_error: String,
}

impl Machine {
    pub fn new(sys_root: impl Into<PathBuf>) -> Machine {
        Machine {
            sys_root: sys_root.into(),
        }
    }

    fn online_path(&self) -> PathBuf {
        self.sys_root.join("devices/system/cpu/online")
    }

    /// The node's online logical CPUs. Never the CPU quota or cpuset of this
    /// container: a pod limited to one CPU on a 64-core node reports 64. The
    /// sysfs list wins when the two sources disagree, because under a mounted
    /// host `/sys` it is the host's own view; the disagreement is logged.
    pub fn cores(&self) -> Result<CoreCount, NoCores> {
        let path = self.online_path();
        let sysfs = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                parse_cpu_list(&text).ok_or_else(|| format!("cannot parse {:?}", text.trim()))
            });
        let sysinfo = sysinfo_cpus();
        let count = |sysfs: Option<u32>| CoreCount {
            cores: 0,
            sysfs,
            sysinfo,
        };
        let chosen = match (&sysfs, sysinfo) {
            (Ok(s), Some(i)) if *s != i => {
                tracing::warn!(sysfs = *s, sysinfo = i, path = %path.display(), "core counts disagree; using sysfs");
                *s
            }
            (Ok(s), _) => *s,
            (Err(e), Some(i)) => {
                tracing::debug!(error = %e, path = %path.display(), "sysfs unreadable; using sysinfo");
                i
            }
            (Err(e), None) => {
                return Err(NoCores {
                    sysfs_path: path.display().to_string(),
                    sysfs_error: e.clone(),
                })
            }
        };
        let cores = chosen.clamp(CORES_MIN, CORES_MAX);
        Ok(CoreCount {
            cores,
            ..count(sysfs.ok())
        })
    }
}

fn sysinfo_cpus() -> Option<u32> {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};
    let sys =
        System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()));
    u32::try_from(sys.cpus().len()).ok().filter(|n| *n > 0)
}

/// Counts the CPUs of a kernel CPU list such as `0-3,8,10-11` (7).
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count: u32 = 0;
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (
                lo.trim().parse::<u32>().ok()?,
                hi.trim().parse::<u32>().ok()?,
            ),
            None => {
                let n = part.trim().parse::<u32>().ok()?;
                (n, n)
            }
        };
        if hi < lo {
            return None;
        }
        count = count.checked_add(hi - lo + 1)?;
    }
    Some(count)
}

/// The `sys` root to use when none is given: the host's, if the pod mounts it.
pub fn default_sys_root() -> &'static Path {
    if Path::new("/host/sys/devices/system/cpu/online").exists() {
        Path::new("/host/sys")
    } else {
        Path::new("/sys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_list_counts_ranges_and_single_cpus() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(parse_cpu_list("0-95"), Some(96));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a-b"), None);
    }

    #[test]
    fn a_sys_root_can_present_a_96_core_node() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("online"), "0-95\n").unwrap();
        let count = Machine::new(dir.path()).cores().unwrap();
        assert_eq!(count.cores, 96);
        assert_eq!(count.sysfs, Some(96));
    }

    #[test]
    fn without_sysfs_the_count_comes_from_sysinfo() {
        let dir = tempfile::tempdir().unwrap();
        let count = Machine::new(dir.path()).cores().unwrap();
        assert_eq!(count.sysfs, None);
        assert_eq!(Some(count.cores), count.sysinfo);
    }
}
