//! Puts a container into its cgroup v1 hierarchies without the kernel's grace period.
//!
//! Writing a pid to a `cgroup.procs` (or `tasks`) file takes the kernel's global
//! threadgroup rwsem for writing, under `cgroup_mutex`; when no writer held it in the last
//! grace period, that first waits for an RCU grace period: 6-13 ms on these machines (HZ
//! 250), and every `mkdir` in any hierarchy waits behind it. youki's intermediate process
//! makes exactly such a write for every container, and it was the longest step of a
//! create (runc pays the same). The kernel skips the global lock for one case: a thread
//! that moves itself, i.e. `0` written to a v1 `tasks` file (0.02 ms here, against 7.4 ms
//! for `cgroup.procs` after an idle period).
//!
//! So for a container on a v1 host with the cgroupfs driver the shim places it itself:
//! the zygote makes the container's directory in each hierarchy and applies
//! `linux.resources` there (libcgroups' v1 manager, the code youki would run); a builder
//! process forked from the zygote moves itself into those directories with `0` >
//! `tasks`, and runs youki's build, whose intermediate and init processes are born there.
//! youki must not make its own write: the builder hides the cgroupfs from it (a mount
//! namespace of its own with an empty tmpfs on `/sys/fs/cgroup`, so youki's v1 manager
//! finds no hierarchy), and youki reads a copy of the spec without `linux.resources`
//! (applied already; with no hierarchy youki would refuse them). Everything else youki
//! does as before; `delete` runs in the zygote, which sees the hierarchies, so youki
//! removes the cgroup as it always did. Hosts on cgroup v2, the systemd driver, cgroupfs
//! mounted elsewhere or a relative `cgroupsPath` take youki's own path.

use std::path::{Component, Path, PathBuf};

use crate::mounts::MountEntry;

/// The v1 controllers youki's cgroup manager handles (libcgroups 0.6 `CONTROLLERS`): a
/// hierarchy with none of them (e.g. `name=systemd`) is left alone, as youki does.
const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Where cgroupfs is mounted on hosts this applies to (libcgroups' default root).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The container's directory in every v1 hierarchy youki would manage, given the mount
/// table and the spec's `cgroupsPath`; `None` when the fast path does not apply (v2 or no
/// v1 hierarchy, cgroupfs mounted outside `/sys/fs/cgroup`, a path that is not absolute
/// or climbs with `..`).
pub fn v1_dirs(mounts: &[MountEntry], cgroups_path: &Path) -> Option<Vec<PathBuf>> {
    if !cgroups_path.is_absolute()
        || cgroups_path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return None;
    }
    let root = Path::new(CGROUP_ROOT);
    let cgroupfs: Vec<&MountEntry> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .collect();
    // unified (cgroup2 at the root), or hierarchies youki would find elsewhere
    if cgroupfs
        .iter()
        .any(|m| m.mount_point == root || !m.mount_point.starts_with(root))
    {
        return None;
    }
    let relative = cgroups_path.strip_prefix("/").ok()?;
    let dirs: Vec<PathBuf> = cgroupfs
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .filter(|m| m.super_options.split(',').any(|o| CONTROLLERS.contains(&o)))
        .map(|m| m.mount_point.join(relative))
        .collect();
    (!dirs.is_empty()).then_some(dirs)
}

/// Where the shim places a container itself: its `cgroupsPath`, this host's mount table
/// and the container's directory in every v1 hierarchy ([`v1_dirs`]). Decided once per
/// create, by the task service, and handed to the zygote with the create.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub cgroups_path: PathBuf,
    pub mounts: Vec<MountEntry>,
    pub dirs: Vec<PathBuf>,
}

/// The [`Target`] of `spec`'s container on this host, or `None` when youki places it
/// (with its `cgroup.procs` write). `systemd`: the systemd cgroup driver.
pub fn target(spec: &oci_spec::runtime::Spec, systemd: bool) -> Option<Target> {
    if systemd {
        return None;
    }
    let cgroups_path = spec.linux().as_ref()?.cgroups_path().clone()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts = crate::mounts::parse_mountinfo(&mountinfo);
    let dirs = v1_dirs(&mounts, &cgroups_path)?;
    Some(Target {
        cgroups_path,
        mounts,
        dirs,
    })
}

/// The cpuset files a v1 cpuset cgroup needs before a task may join it.
const CPUSET_FILES: &[&str] = &["cpuset.cpus", "cpuset.mems"];

/// Makes the container's directories (a new cpuset's `cpus`/`mems` come from its parent,
/// as youki fills them before its write). Runs where the hierarchies are visible.
pub fn make_dirs(dirs: &[PathBuf], mounts: &[MountEntry]) -> Result<(), String> {
    for dir in dirs {
        let cpuset = mounts.iter().find(|m| {
            m.fstype == "cgroup"
                && m.super_options.split(',').any(|o| o == "cpuset")
                && dir.starts_with(&m.mount_point)
        });
        match cpuset {
            Some(mount) => {
                make_cloned(&mount.mount_point, dir)?;
                // left empty only if another writer cleared a parent's flag meanwhile
                fill_cpuset(&mount.mount_point, dir)?;
            }
            None => std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?,
        }
    }
    Ok(())
}

/// The v1 flag that makes a new cpuset cgroup start with its parent's `cpus` and `mems`.
const CLONE_CHILDREN: &str = "cgroup.clone_children";

/// Makes each missing directory from `mount_point` down to `dir` with its parent's
/// `cgroup.clone_children` set for the `mkdir`, so the new cpuset is born with its
/// parent's `cpus` and `mems`; the flag is put back after, on the parent and on the new
/// directory (which inherits it), so both read as they would have. Writing `cpuset.cpus`
/// instead rebuilds the scheduler's domains: 0.6-1.5 ms of CPU per write here, where a
/// cloning `mkdir` takes 0.1 ms.
fn make_cloned(mount_point: &Path, dir: &Path) -> Result<(), String> {
    let relative = dir.strip_prefix(mount_point).map_err(|e| e.to_string())?;
    let mut current = mount_point.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        if current.is_dir() {
            continue;
        }
        let flag = parent.join(CLONE_CHILDREN);
        let set = std::fs::read_to_string(&flag)
            .map_err(|e| format!("{}: {e}", flag.display()))?
            .trim()
            == "1";
        if !set {
            std::fs::write(&flag, "1").map_err(|e| format!("{}: {e}", flag.display()))?;
        }
        let made = std::fs::create_dir(&current);
        if !set {
            // the new directory inherited the flag: both get the parent's own value
            for flag in [flag, current.join(CLONE_CHILDREN)] {
                if let Err(e) = std::fs::write(&flag, "0") {
                    tracing::warn!(path = %flag.display(), error = %e, "cannot put the cpuset flag back");
                }
            }
        }
        match made {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(format!("{}: {e}", current.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Walks from the hierarchy's root to `dir`, copying each empty cpuset file from the
/// parent (a new v1 cpuset cgroup starts with none, and no task can join it then).
fn fill_cpuset(mount_point: &Path, dir: &Path) -> Result<(), String> {
    let relative = dir.strip_prefix(mount_point).map_err(|e| e.to_string())?;
    for file in CPUSET_FILES {
        let mut current = mount_point.to_path_buf();
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut parent_value = read(&current.join(file))?;
        for component in relative.components() {
            current.push(component);
            let path = current.join(file);
            let value = read(&path)?;
            if value.trim().is_empty() {
                std::fs::write(&path, parent_value.trim())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            } else {
                parent_value = value;
            }
        }
    }
    Ok(())
}

/// Moves the calling thread (the whole builder: it is single-threaded) into `dirs`.
pub fn join(dirs: &[PathBuf]) -> Result<(), String> {
    for dir in dirs {
        let tasks = dir.join("tasks");
        std::fs::write(&tasks, "0").map_err(|e| format!("{}: {e}", tasks.display()))?;
    }
    Ok(())
}

/// Gives the calling process a mount namespace in which `/sys/fs/cgroup` is an empty
/// tmpfs, so youki (and the container it builds) finds no cgroup hierarchy. The tree is
/// made a slave first: nothing done here may propagate back to the host. `mounts`: the
/// mount table, whose cgroupfs mounts ([`v1_dirs`] checked) all sit below the root.
pub fn hide_cgroupfs(mounts: &[MountEntry]) -> Result<(), String> {
    use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
    #[allow(unsafe_code)]
    // SAFETY: a new mount namespace only; the caller is single-threaded (the builder).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(|e| format!("making / a slave: {e}"))?;
    // the root (with everything below it) when it is a mount of its own, as on hybrid
    // and legacy hosts; otherwise each hierarchy, deepest first
    let root = Path::new(CGROUP_ROOT);
    let mut detach: Vec<&Path> = mounts
        .iter()
        .map(|m| m.mount_point.as_path())
        .filter(|p| p.starts_with(root))
        .collect();
    detach.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    if detach.contains(&root) {
        detach = vec![root];
    }
    for path in detach {
        rustix::mount::unmount(path, UnmountFlags::DETACH)
            .map_err(|e| format!("detaching {}: {e}", path.display()))?;
    }
    rustix::mount::mount(
        "tmpfs",
        CGROUP_ROOT,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=755"),
    )
    .map_err(|e| format!("tmpfs on {CGROUP_ROOT}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::parse_mountinfo;

    /// This machine's mount table (the cgroup part): v1 controllers beside an empty
    /// cgroup2 at `unified`.
    const HYBRID: &str = include_str!("../tests/fixtures/mountinfo-hybrid.txt");

    #[test]
    fn v1_dirs_cases() {
        let comounted = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
";
        let unified = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let elsewhere = format!("{HYBRID}50 23 0:29 / /mnt/cpu rw - cgroup cgroup rw,cpu\n");
        let cases: &[(&str, &str, &str, Option<&[&str]>)] = &[
            (
                "hybrid: every controller hierarchy, not name=systemd or unified",
                HYBRID,
                "/k8s.io/abc",
                Some(&[
                    "/sys/fs/cgroup/cpu/k8s.io/abc",
                    "/sys/fs/cgroup/cpuacct/k8s.io/abc",
                    "/sys/fs/cgroup/cpuset/k8s.io/abc",
                    "/sys/fs/cgroup/memory/k8s.io/abc",
                    "/sys/fs/cgroup/devices/k8s.io/abc",
                    "/sys/fs/cgroup/freezer/k8s.io/abc",
                    "/sys/fs/cgroup/blkio/k8s.io/abc",
                    "/sys/fs/cgroup/pids/k8s.io/abc",
                ]),
            ),
            (
                "co-mounted controllers: one directory per hierarchy",
                comounted,
                "/kubepods/pod1/c1",
                Some(&[
                    "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1",
                    "/sys/fs/cgroup/net_cls,net_prio/kubepods/pod1/c1",
                ]),
            ),
            ("cgroup v2: youki's own path", unified, "/k8s.io/abc", None),
            (
                "relative path: youki's own path",
                HYBRID,
                "k8s.io/abc",
                None,
            ),
            ("systemd slice syntax", HYBRID, "system.slice:cri:abc", None),
            ("a path that climbs", HYBRID, "/k8s.io/../abc", None),
            ("a hierarchy mounted elsewhere too", &elsewhere, "/x", None),
            ("no cgroupfs", "", "/x", None),
        ];
        for (name, mountinfo, path, want) in cases {
            let got = v1_dirs(&parse_mountinfo(mountinfo), Path::new(path));
            let want: Option<Vec<PathBuf>> = want.map(|w| w.iter().map(PathBuf::from).collect());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn cpuset_levels_are_made_with_the_flag_set_and_put_back() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        // the parent's flag as found: "0" is put back after the mkdir, "1" stays
        for found in ["0\n", "1\n"] {
            let parent = r.join(found.trim());
            std::fs::create_dir(&parent).unwrap();
            std::fs::write(parent.join(CLONE_CHILDREN), found).unwrap();
            let leaf = parent.join("abc");
            make_cloned(r, &leaf).unwrap();
            assert!(leaf.is_dir(), "{found:?}");
            assert_eq!(read(&parent.join(CLONE_CHILDREN)).trim(), found.trim());
            if found == "0\n" {
                // the kernel copies a set flag into the new directory: cleared there too
                assert_eq!(read(&leaf.join(CLONE_CHILDREN)), "0");
            }
            // an existing directory: nothing is read or written
            std::fs::remove_file(parent.join(CLONE_CHILDREN)).unwrap();
            make_cloned(r, &leaf).unwrap();
        }
        // a parent without the flag file is not a cpuset cgroup: an error, nothing made
        let err = make_cloned(r, &r.join("none/abc")).unwrap_err();
        assert!(err.contains(CLONE_CHILDREN), "{err}");
        assert!(!r.join("none").exists());
    }

    #[test]
    fn cpuset_files_are_filled_down_from_the_parent() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(r.join("cpuset.mems"), "0\n").unwrap();
        let mid = r.join("k8s.io");
        std::fs::create_dir(&mid).unwrap();
        std::fs::write(mid.join("cpuset.cpus"), "1\n").unwrap();
        std::fs::write(mid.join("cpuset.mems"), "\n").unwrap();
        let leaf = mid.join("abc");
        std::fs::create_dir(&leaf).unwrap();
        std::fs::write(leaf.join("cpuset.cpus"), "").unwrap();
        std::fs::write(leaf.join("cpuset.mems"), "").unwrap();
        fill_cpuset(r, &leaf).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        // the nearest non-empty ancestor's value, not the root's
        assert_eq!(read(leaf.join("cpuset.cpus")), "1");
        assert_eq!(read(mid.join("cpuset.mems")), "0");
        assert_eq!(read(leaf.join("cpuset.mems")), "0");
    }
}
