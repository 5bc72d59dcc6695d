//! The container memory limit, enforced inside Wasmtime.
//!
//! The OCI spec's `linux.resources.memory.limit` is written by youki into the container's
//! memory cgroup, and the spec itself is out of reach from inside the container (see
//! [`crate::mounts`]), so the limit is read back from the cgroup the process is in, the
//! same way JVMs and Go's automaxprocs discover their limits: `/proc/self/cgroup` gives the
//! cgroup path, `/proc/self/mountinfo` where that hierarchy is mounted in the container.
//!
//! Why enforce it in Wasmtime when the kernel already does: the cgroup OOM killer fires at
//! an arbitrary allocation, possibly in the shim's own code, while a [`MemoryLimiter`]
//! refuses the exact `memory.grow` that crosses the limit. Refusal is an error (a trap),
//! not `-1`, so the guest cannot carry on in a degraded state, and the container then
//! exits 137 = 128 + SIGKILL, what a runc container killed by the OOM killer reports.
//! The cap covers guest linear memory only; the engine's own memory (compiled code,
//! tables, stacks) stays under the kernel's cgroup limit, which remains the backstop.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};

use crate::error::Error;
use crate::mounts::{MountEntry, parse_mountinfo};

/// Caps the sum of all linear memories of one store (a component has several).
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    limit: Option<u64>,
    used: u64,
}

impl MemoryLimiter {
    pub fn new(limit: Option<u64>) -> Self {
        Self { limit, used: 0 }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self
            .used
            .saturating_add(desired.saturating_sub(current) as u64);
        if let Some(limit) = self.limit
            && requested > limit
        {
            return Err(Error::MemoryLimitExceeded { limit, requested }.into());
        }
        self.used = requested;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// cgroup v1 reports "no limit" as a page-rounded `i64::MAX`; anything this large is none.
const UNLIMITED_FLOOR: u64 = 1 << 62;

/// Parses `memory.max` (v2: a number or `max`) or `memory.limit_in_bytes` (v1).
pub fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&v| v < UNLIMITED_FLOOR)
}

/// The file holding this process's memory limit, given the texts of `/proc/self/cgroup`
/// and the parsed mountinfo. Prefers the v1 memory controller (hybrid hosts mount an empty
/// cgroup2 as well).
pub fn memory_limit_file(proc_cgroup: &str, mounts: &[MountEntry]) -> Option<PathBuf> {
    let mut v2_path = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            let mount = mounts.iter().find(|m| {
                m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory")
            })?;
            return Some(join_cgroup(mount, path).join("memory.limit_in_bytes"));
        }
        if controllers.is_empty() {
            v2_path = Some(path);
        }
    }
    let path = v2_path?;
    let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    Some(join_cgroup(mount, path).join("memory.max"))
}

/// Maps a cgroup path to where it is visible: the mount shows the cgroup tree from
/// `mount.root` on, so strip that prefix. (A runtime bind-mounts the container's own
/// cgroup, so usually path == root and the file is right at the mount point.)
fn join_cgroup(mount: &MountEntry, cgroup_path: &str) -> PathBuf {
    let rel = Path::new(cgroup_path)
        .strip_prefix(&mount.root)
        .unwrap_or(Path::new(""));
    mount.mount_point.join(rel)
}

/// The host's memory cgroup hierarchy, opened by `main` before the zygote forks (see
/// [`open_host_cgroups`]): `(dir fd, true if cgroup v1)`.
static HOST_CGROUP: Mutex<Option<(OwnedFd, bool)>> = Mutex::new(None);

/// Opens the host's memory cgroup hierarchy (v1 `memory` controller, else cgroup2) so
/// container inits inherit it. Needed because a container without a cgroup namespace
/// (containerd + youki on cgroup v1) gets no cgroupfs mount at all: its
/// `/proc/self/cgroup` names the host path, which only this fd can reach. Same life
/// cycle as the cache fd ([`crate::cache`]): taken and closed before the guest starts.
pub fn open_host_cgroups() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mounts = parse_mountinfo(&text);
    let v1 = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"));
    let found = v1.map(|m| (m, true)).or_else(|| {
        mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| (m, false))
    });
    let Some((mount, is_v1)) = found else { return };
    match rustix::fs::open(
        &mount.mount_point,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => *HOST_CGROUP.lock().unwrap_or_else(|p| p.into_inner()) = Some((fd, is_v1)),
        Err(e) => tracing::warn!(error = %e, "cannot open the host cgroup hierarchy"),
    }
}

/// Reads `<cgroup>/<file>` through the inherited host hierarchy fd.
fn read_via_host(dir: &OwnedFd, proc_cgroup: &str, v1: bool, file: &str) -> Option<String> {
    let path = proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = if v1 {
            controllers.split(',').any(|c| c == "memory")
        } else {
            controllers.is_empty()
        };
        wanted.then_some(path)
    })?;
    let rel = format!("{}/{file}", path.trim_matches('/'));
    let rel = rel.trim_start_matches('/');
    let fd = rustix::fs::openat(dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Headroom left below the cgroup limit for the engine itself, so that the limiter's trap
/// (a clean 137 with a reason) comes before the kernel's OOM kill.
const ENGINE_HEADROOM: u64 = 4 << 20;

/// The guest's memory budget: the cgroup memory limit minus what the container already
/// uses (the shim's own code, compiled module, runtime) and some headroom; `None`
/// without a limit. Found through the container's cgroupfs mount if it has one, else
/// through the host hierarchy opened by [`open_host_cgroups`].
pub fn container_memory_limit() -> Option<u64> {
    let inherited = HOST_CGROUP.lock().unwrap_or_else(|p| p.into_inner()).take();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (limit, usage) = match memory_limit_file(&cgroup, &parse_mountinfo(&mountinfo)) {
        Some(file) => {
            let usage_name = if file.ends_with("memory.max") {
                "memory.current"
            } else {
                "memory.usage_in_bytes"
            };
            let usage = file.with_file_name(usage_name);
            (
                std::fs::read_to_string(&file).ok(),
                std::fs::read_to_string(usage).ok(),
            )
        }
        None => {
            let (dir, v1) = inherited.as_ref()?;
            let (limit, usage) = if *v1 {
                ("memory.limit_in_bytes", "memory.usage_in_bytes")
            } else {
                ("memory.max", "memory.current")
            };
            (
                read_via_host(dir, &cgroup, *v1, limit),
                read_via_host(dir, &cgroup, *v1, usage),
            )
        }
    };
    let limit = parse_limit(&limit?)?;
    let used = usage.as_deref().and_then(parse_limit).unwrap_or(0);
    let budget = limit.saturating_sub(used.saturating_add(ENGINE_HEADROOM));
    tracing::info!(limit, used, budget, "container memory limit");
    Some(budget)
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter as _;

    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("67108864\n"), Some(64 << 20));
        assert_eq!(parse_limit("junk"), None);
    }

    #[test]
    fn v1_emulated_bind_mount() {
        // youki bind-mounts the container's own memory cgroup at /sys/fs/cgroup/memory.
        let mounts = parse_mountinfo(
            "617 616 0:30 /default/c1 /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
             618 616 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        let cg = "12:memory:/default/c1\n0::/default/c1\n";
        assert_eq!(
            memory_limit_file(cg, &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        );
    }

    #[test]
    fn v1_whole_hierarchy_mounted() {
        let mounts =
            parse_mountinfo("30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n");
        let cg = "4:memory:/kubepods/pod1/c1\n";
        assert_eq!(
            memory_limit_file(cg, &mounts),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes"
            ))
        );
    }

    #[test]
    fn v2_with_cgroup_namespace() {
        let mounts =
            parse_mountinfo("40 30 0:27 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n");
        assert_eq!(
            memory_limit_file("0::/\n", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/memory.max"))
        );
    }

    #[test]
    fn no_cgroup_mount_means_no_limit_file() {
        assert_eq!(memory_limit_file("4:memory:/c1\n", &[]), None);
        assert_eq!(memory_limit_file("0::/c1\n", &[]), None);
    }

    #[test]
    fn limiter_counts_all_memories_and_refuses_with_an_error() {
        let page = 64 * 1024;
        let mut l = MemoryLimiter::new(Some(3 * page as u64));
        assert!(l.memory_growing(0, 2 * page, None).unwrap());
        assert!(l.memory_growing(0, page, None).unwrap()); // a second memory
        let err = l.memory_growing(page, 2 * page, None).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Error>(),
            Some(Error::MemoryLimitExceeded { requested, .. }) if *requested == 4 * page as u64
        ));
        let mut unlimited = MemoryLimiter::new(None);
        assert!(unlimited.memory_growing(0, 1 << 40, None).unwrap());
    }
}
