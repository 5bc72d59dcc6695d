//! What the guest may see of the filesystem.
//!
//! `run_wasi` runs in the container's init process after youki's `pivot_root`: `/` is the
//! container rootfs and every OCI mount (volumes, bind mounts, /proc, ...) is already
//! mounted at its destination. The OCI spec itself is not reachable from there (the ctx API
//! exposes only args/env/entrypoint, and the bundle is outside the new root), so the
//! mount table is read from `/proc/self/mountinfo`, which is the kernel's own record of the
//! mounts the runtime made and their real ro/rw state.
//!
//! Policy (stricter than runwasi, which preopens the whole rootfs read-write):
//! - `/` (the image rootfs) is preopened read-only;
//! - every other mount point that is a directory (volumes, emptyDirs, configmaps, host
//!   paths) is preopened at the same path with its own mode, `rw` only if the mount is rw;
//! - kernel interfaces under `/proc`, `/sys`, `/dev` get no preopen of their own and stay
//!   reachable only read-only through `/`, as in a runc container with a read-only rootfs;
//! - file bind mounts (`/etc/hosts`, `/dev/termination-log`) are readable through `/` but
//!   not writable (WASI preopens are directories).
//!
//! WASI resolves an absolute guest path with the longest matching preopen, so `/data/x`
//! uses the `/data` preopen and its permissions, and `..` can never climb out of a preopen
//! (Wasmtime resolves paths beneath the preopened directory fd).

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, reduced to what the preopen policy needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountEntry {
    /// The path of the mount relative to the root of its filesystem (field 4). For a
    /// cgroup bind mount this is the cgroup path.
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Per-mount `ro` flag (field 6): what a bind mount's `ro` option sets.
    pub read_only: bool,
    pub super_options: String,
}

/// A directory made available to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

impl Preopen {
    pub fn read_only(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            writable: false,
        }
    }

    pub fn read_write(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            writable: true,
        }
    }
}

/// Parses `/proc/self/mountinfo` (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    if left.len() < 6 {
        return None;
    }
    let fstype = right.next()?.to_string();
    let _source = right.next()?;
    let super_options = right.next().unwrap_or_default().to_string();
    Some(MountEntry {
        root: unescape(left[3]),
        mount_point: PathBuf::from(unescape(left[4])),
        fstype,
        read_only: left[5].split(',').any(|o| o == "ro"),
        super_options,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && let Ok(b) = u8::from_str_radix(octal, 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const KERNEL_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Applies the policy in the module docs. `is_dir` is injected so the policy is testable
/// without a container.
pub fn preopens_for_mounts(mounts: &[MountEntry], is_dir: impl Fn(&Path) -> bool) -> Vec<Preopen> {
    let mut preopens = vec![Preopen::read_only("/", "/")];
    for m in mounts {
        let mp = &m.mount_point;
        if mp == Path::new("/") || KERNEL_TREES.iter().any(|k| mp.starts_with(k)) {
            continue;
        }
        let Some(guest) = mp.to_str() else {
            tracing::warn!(mount = ?mp, "skipping mount point that is not UTF-8");
            continue;
        };
        if !is_dir(mp) {
            continue;
        }
        // A later line for the same mount point is a mount stacked on top: it wins.
        preopens.retain(|p| p.guest != guest);
        preopens.push(Preopen {
            host: mp.clone(),
            guest: guest.to_string(),
            writable: !m.read_only,
        });
    }
    preopens
}

/// The preopens for the current process (the container init), with `cwd` also preopened
/// as `.` for guests that open relative paths. If mountinfo is unreadable the guest gets
/// only the read-only rootfs.
pub fn container_preopens(cwd: Option<&Path>) -> Vec<Preopen> {
    let mounts = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => parse_mountinfo(&text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/mountinfo; only / (read-only) is visible to the guest");
            Vec::new()
        }
    };
    // A directory the container user cannot open would fail the whole start; the guest
    // could not use it anyway, so it is left out with a warning.
    let usable = |p: &Path| {
        p.is_dir()
            && std::fs::File::open(p)
                .inspect_err(
                    |e| tracing::warn!(mount = %p.display(), error = %e, "mount not preopened"),
                )
                .is_ok()
    };
    let mut preopens = preopens_for_mounts(&mounts, usable);
    if let Some(cwd) = cwd {
        preopens.extend(cwd_preopen(&preopens, cwd));
    }
    preopens
}

/// `.` for the working directory, with the permissions of the preopen that contains it.
pub fn cwd_preopen(preopens: &[Preopen], cwd: &Path) -> Option<Preopen> {
    let covering = preopens
        .iter()
        .filter(|p| cwd.starts_with(&p.host))
        .max_by_key(|p| p.host.as_os_str().len())?;
    Some(Preopen {
        host: cwd.to_path_buf(),
        guest: ".".to_string(),
        writable: covering.writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from a real youki container started by containerd (cgroup v1 host).
    const MOUNTINFO: &str = "\
612 540 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
613 612 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
614 612 0:56 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
615 614 0:57 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620
616 612 0:58 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
617 616 0:30 /default/c1 /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
618 612 8:1 /var/lib/data /data rw,relatime - ext4 /dev/sda1 rw
619 612 8:1 /srv/config /config ro,relatime - ext4 /dev/sda1 rw
620 612 8:1 /var/lib/hosts /etc/hosts ro,relatime - ext4 /dev/sda1 rw
621 612 8:1 /srv/with\\040space /my\\040dir rw,relatime - ext4 /dev/sda1 rw
622 612 8:1 /srv/other /config rw,relatime - ext4 /dev/sda1 rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 11);
        assert_eq!(m[5].root, "/default/c1");
        assert_eq!(m[5].mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m[5].fstype, "cgroup");
        assert_eq!(m[5].super_options, "rw,memory");
        assert!(m[7].read_only);
        assert!(!m[6].read_only);
        assert_eq!(m[9].mount_point, PathBuf::from("/my dir"));
        assert_eq!(m[9].root, "/srv/with space");
    }

    #[test]
    fn rootfs_read_only_volumes_keep_their_mode_kernel_trees_hidden() {
        let m = parse_mountinfo(MOUNTINFO);
        let is_dir = |p: &Path| p != Path::new("/etc/hosts");
        let got = preopens_for_mounts(&m, is_dir);
        assert_eq!(
            got,
            vec![
                Preopen::read_only("/", "/"),
                Preopen::read_write("/data", "/data"),
                Preopen::read_write("/my dir", "/my dir"),
                // the later, stacked rw mount on /config replaces the ro one
                Preopen::read_write("/config", "/config"),
            ]
        );
    }

    #[test]
    fn stacked_read_only_mount_wins() {
        let text = "\
1 0 0:1 / / rw - overlay o rw
2 1 8:1 /a /config rw - ext4 /dev/sda1 rw
3 1 8:1 /b /config ro - ext4 /dev/sda1 rw
";
        let got = preopens_for_mounts(&parse_mountinfo(text), |_| true);
        assert_eq!(got[1], Preopen::read_only("/config", "/config"));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn cwd_takes_the_mode_of_the_innermost_preopen() {
        let pre = vec![
            Preopen::read_only("/", "/"),
            Preopen::read_write("/data", "/data"),
        ];
        assert_eq!(
            cwd_preopen(&pre, Path::new("/data/app")),
            Some(Preopen::read_write("/data/app", "."))
        );
        assert_eq!(
            cwd_preopen(&pre, Path::new("/app")),
            Some(Preopen::read_only("/app", "."))
        );
        // "/database" must not match the "/data" preopen
        assert_eq!(
            cwd_preopen(&pre, Path::new("/database")),
            Some(Preopen::read_only("/database", "."))
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_mountinfo("garbage\n1 2 3\n").is_empty());
    }
}
