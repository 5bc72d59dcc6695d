//! Starts the kernel's wait for a cgroup migration before youki needs it.
//!
//! Every write to a `cgroup.procs` file takes the kernel's global threadgroup rwsem for
//! writing. When no writer held it recently, that first waits for an RCU grace period:
//! 5-20 ms on these machines, measured as youki's first `cgroup.procs` write in a create
//! (runc pays the same; `cargo xtask bench shim` shows both). Writers that follow within
//! about a grace period are fast (< 0.2 ms).
//!
//! So as soon as a create is coming, a process writes its own pid into the `cgroup.procs`
//! of the cgroup it is already in: a migration that moves nothing, changes nothing, but
//! pays the grace period while containerd spawns the daemon, the shim mounts the rootfs
//! and youki forks; youki's own write then finds the lock warm. `shim start` (containerd
//! runs it for every container, ~15 ms before youki's write) forks a process for it, as the
//! write blocks and `start` must exit at once; a create request starts it on a thread too
//! (the daemon of a pod may get a create without a fresh `start`). Best effort: any
//! failure only means the create waits as it did before.
//!
//! Only for containers youki places itself (cgroup v2, the systemd driver): one the shim
//! places ([`crate::placement`], cgroup v1) makes no such write, and would only wait
//! behind this one (its `mkdir`s need the `cgroup_mutex` the write holds throughout).

use std::path::{Path, PathBuf};

use crate::mounts::{MountEntry, parse_mountinfo};

/// The `cgroup.procs` of a cgroup this process is in, given the texts of
/// `/proc/self/cgroup` and the parsed mountinfo: the first hierarchy that is mounted
/// (v1 controllers or named hierarchies, or the v2 unified one).
pub fn own_procs_file(proc_cgroup: &str, mounts: &[MountEntry]) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let mount = if controllers.is_empty() {
            mounts.iter().find(|m| m.fstype == "cgroup2")?
        } else {
            let first = controllers.split(',').next()?;
            mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == first))?
        };
        // A mount shows the tree from `mount.root` on; a cgroup outside it is not reachable.
        let rel = Path::new(path).strip_prefix(&mount.root).ok()?;
        Some(mount.mount_point.join(rel).join("cgroup.procs"))
    })
}

/// The no-op migration of this process; returns once the kernel took the lock.
fn write_own_pid() -> Result<(), String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let file = own_procs_file(&cgroup, &parse_mountinfo(&mountinfo))
        .ok_or("no mounted cgroup hierarchy of this process")?;
    std::fs::write(&file, std::process::id().to_string())
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// Starts the grace period now, on a thread of its own (the write blocks for it).
pub fn cgroup_lock() {
    let spawned = std::thread::Builder::new()
        .name("cgroup-prewarm".into())
        .stack_size(64 << 10)
        .spawn(|| {
            if let Err(e) = write_own_pid() {
                tracing::debug!(error = e, "cgroup lock not prewarmed");
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cgroup lock not prewarmed");
    }
}

/// Starts the grace period in a forked process that exits when done, for a process that
/// is about to exit itself (`shim start`). Only while single-threaded: fork copies the
/// calling thread alone.
///
/// Forked twice, the middle process reaped here at once: the writer's exit must not
/// signal `start`. containerd-shim's `start` registers SIGCHLD and SIGPIPE handlers that
/// write to a signal pipe; a SIGCHLD arriving while it tears them down at its end sends
/// into the closed pipe, and the SIGPIPE handler does the same: `start` spun there for
/// good (~1 in 1,500 containers, found by `fifty_containers_leave_nothing_behind`). The
/// writer, orphaned before `start` registers anything, is reaped like the shim daemon
/// (by containerd or init).
pub fn cgroup_lock_in_child() {
    #[allow(unsafe_code)]
    // SAFETY: the caller is single-threaded (main before any thread), so the child's
    // copy of the heap and libc is consistent; the children only do file I/O and _exit.
    unsafe {
        let middle = libc::fork();
        if middle == 0 {
            if libc::fork() == 0 {
                // containerd reads `start`'s stdout and stderr to their end: let go of them.
                libc::close(0);
                libc::close(1);
                libc::close(2);
                let _ = write_own_pid();
            }
            // without the parent's exit handlers
            libc::_exit(0);
        }
        if middle > 0 {
            libc::waitpid(middle, std::ptr::null_mut(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's mount table (the cgroup part): v1 controllers beside an empty
    /// cgroup2 (hybrid).
    const HYBRID_MOUNTS: &str = include_str!("../tests/fixtures/mountinfo-hybrid.txt");
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/06ef
1:cpu:/
0::/
";

    #[test]
    fn own_procs_file_cases() {
        let v2_mounts = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let in_ns = "30 25 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                "v1: the first listed hierarchy, at its own path",
                HYBRID_CGROUP,
                HYBRID_MOUNTS,
                Some("/sys/fs/cgroup/systemd/cgroup.procs"),
            ),
            (
                "v1: a nested cgroup",
                "4:memory:/process_api/06ef\n",
                HYBRID_MOUNTS,
                Some("/sys/fs/cgroup/memory/process_api/06ef/cgroup.procs"),
            ),
            (
                "v1 hierarchy not mounted: the next one",
                "8:hugetlb:/\n1:cpu:/a\n",
                HYBRID_MOUNTS,
                Some("/sys/fs/cgroup/cpu/a/cgroup.procs"),
            ),
            (
                "v2 only",
                "0::/system.slice/containerd.service\n",
                v2_mounts,
                Some("/sys/fs/cgroup/system.slice/containerd.service/cgroup.procs"),
            ),
            (
                "v2 mounted from a subtree (cgroup namespace or bind mount)",
                "0::/kubepods/pod1/c1\n",
                in_ns,
                Some("/sys/fs/cgroup/c1/cgroup.procs"),
            ),
            (
                "cgroup outside the mounted subtree",
                "0::/other\n",
                in_ns,
                None,
            ),
            ("no cgroupfs mounted", "0::/\n", "", None),
        ];
        for (name, cgroup, mountinfo, want) in cases {
            let got = own_procs_file(cgroup, &parse_mountinfo(mountinfo));
            assert_eq!(got.as_deref(), want.map(Path::new), "{name}");
        }
    }

    #[test]
    fn the_write_moves_nothing() {
        // Runs the real write on this machine when it is allowed (root); the process
        // must stay in every cgroup it was in.
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(file) = own_procs_file(&before, &parse_mountinfo(&mountinfo)) else {
            panic!("no cgroup hierarchy found in\n{before}\n{mountinfo}");
        };
        // EBUSY: a v2 cgroup with controllers enabled for its children (the lock was
        // still taken, which is all the shim wants of it)
        if let Err(e) = std::fs::write(&file, std::process::id().to_string()) {
            assert_eq!(e.raw_os_error(), Some(16), "{}: {e}", file.display());
        }
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
