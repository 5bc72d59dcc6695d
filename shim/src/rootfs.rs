//! The container's rootfs: the daemon mounts what containerd's snapshotter hands it
//! (`CreateTaskRequest.rootfs`, usually one overlay) on the bundle's `rootfs`.
//!
//! containerd-shim's `mount_rootfs` forks a process for every mount, for the one case
//! that needs it: an overlay whose lower directories make the options longer than a page,
//! which it shortens by changing into their common parent first (a working directory is
//! process-wide). Every other mount is made here in the calling thread: the fork of the
//! multi-threaded daemon, that child's exit and the reaper's round trip were ~0.8 ms of
//! CPU on the path of every create.

use std::ffi::CString;
use std::path::Path;

use libc::c_ulong;

/// containerd's mount options that are flags (its `parseMountOptions`): the flags each
/// sets, or clears. Any other option is filesystem data.
const FLAGS: &[(&str, Flag)] = &[
    ("async", Flag::Clear(libc::MS_SYNCHRONOUS)),
    ("atime", Flag::Clear(libc::MS_NOATIME)),
    ("bind", Flag::Set(libc::MS_BIND)),
    ("defaults", Flag::Set(0)),
    ("dev", Flag::Clear(libc::MS_NODEV)),
    ("diratime", Flag::Clear(libc::MS_NODIRATIME)),
    ("dirsync", Flag::Set(libc::MS_DIRSYNC)),
    ("exec", Flag::Clear(libc::MS_NOEXEC)),
    ("mand", Flag::Set(libc::MS_MANDLOCK)),
    ("noatime", Flag::Set(libc::MS_NOATIME)),
    ("nodev", Flag::Set(libc::MS_NODEV)),
    ("nodiratime", Flag::Set(libc::MS_NODIRATIME)),
    ("noexec", Flag::Set(libc::MS_NOEXEC)),
    ("nomand", Flag::Clear(libc::MS_MANDLOCK)),
    ("norelatime", Flag::Clear(libc::MS_RELATIME)),
    ("nostrictatime", Flag::Clear(libc::MS_STRICTATIME)),
    ("nosuid", Flag::Set(libc::MS_NOSUID)),
    ("rbind", Flag::Set(libc::MS_BIND | libc::MS_REC)),
    ("relatime", Flag::Set(libc::MS_RELATIME)),
    ("remount", Flag::Set(libc::MS_REMOUNT)),
    ("ro", Flag::Set(libc::MS_RDONLY)),
    ("rw", Flag::Clear(libc::MS_RDONLY)),
    ("strictatime", Flag::Set(libc::MS_STRICTATIME)),
    ("suid", Flag::Clear(libc::MS_NOSUID)),
    ("sync", Flag::Set(libc::MS_SYNCHRONOUS)),
    ("private", Flag::Set(libc::MS_PRIVATE)),
    ("rprivate", Flag::Set(libc::MS_PRIVATE | libc::MS_REC)),
    ("shared", Flag::Set(libc::MS_SHARED)),
    ("rshared", Flag::Set(libc::MS_SHARED | libc::MS_REC)),
    ("slave", Flag::Set(libc::MS_SLAVE)),
    ("rslave", Flag::Set(libc::MS_SLAVE | libc::MS_REC)),
    ("unbindable", Flag::Set(libc::MS_UNBINDABLE)),
    ("runbindable", Flag::Set(libc::MS_UNBINDABLE | libc::MS_REC)),
];

#[derive(Clone, Copy)]
enum Flag {
    Set(c_ulong),
    Clear(c_ulong),
}

const PROPAGATION: c_ulong =
    libc::MS_SHARED | libc::MS_PRIVATE | libc::MS_SLAVE | libc::MS_UNBINDABLE;

/// The mount(2) calls for one of containerd's mounts, as containerd-shim makes them.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// the mount itself (none for a bare remount without data)
    pub mount: Option<(c_ulong, Option<String>)>,
    /// then the propagation type, if an option names one
    pub propagation: Option<c_ulong>,
    /// then, for a read-only bind mount, the remount that makes it read-only
    pub remount: Option<c_ulong>,
}

/// What `options` ask for.
pub fn plan(options: &[String]) -> Plan {
    let mut flags: c_ulong = 0;
    let mut data = Vec::new();
    for option in options {
        match FLAGS.iter().find(|(name, _)| name == option) {
            Some((_, Flag::Set(f))) => flags |= f,
            Some((_, Flag::Clear(f))) => flags &= !f,
            None => data.push(option.as_str()),
        }
    }
    let data = (!data.is_empty()).then(|| data.join(","));
    let plain = flags & !PROPAGATION;
    let bind_ro = libc::MS_BIND | libc::MS_RDONLY;
    Plan {
        mount: (flags & libc::MS_REMOUNT == 0 || data.is_some()).then_some((plain, data)),
        propagation: (flags & PROPAGATION != 0)
            .then_some(flags & (PROPAGATION | libc::MS_REC | libc::MS_SILENT)),
        remount: (plain & bind_ro == bind_ro).then_some(plain | libc::MS_REMOUNT),
    }
}

/// Whether only containerd-shim's forking mount can make this one: an overlay whose
/// options (its lower directories) come near a page, the limit of mount(2)'s data.
fn needs_its_own_process(fs_type: Option<&str>, options: &[String]) -> bool {
    let length: usize = options.iter().map(String::len).sum();
    fs_type == Some("overlay") && length >= rustix::param::page_size() - 512
}

/// Mounts one of containerd's rootfs mounts on `target`.
pub fn mount(
    fs_type: Option<&str>,
    source: Option<&str>,
    options: &[String],
    target: &Path,
) -> Result<(), String> {
    if needs_its_own_process(fs_type, options) {
        return containerd_shim::mount::mount_rootfs(fs_type, source, options, target)
            .map_err(|e| e.to_string());
    }
    let c = |s: &str| CString::new(s).map_err(|e| format!("{s:?}: {e}"));
    let target_c = c(&target.to_string_lossy())?;
    let call = |source: Option<&CString>,
                fs_type: Option<&CString>,
                flags: c_ulong,
                data: Option<&CString>|
     -> Result<(), String> {
        let ptr = |s: Option<&CString>| s.map_or(std::ptr::null(), |s| s.as_ptr());
        #[allow(unsafe_code)]
        // SAFETY: NUL-terminated strings (or null) that outlive the call
        let rc = unsafe {
            libc::mount(
                ptr(source),
                target_c.as_ptr(),
                ptr(fs_type),
                flags,
                ptr(data).cast(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "mounting {:?} ({}) on {}: {}",
                source.map(|s| s.to_string_lossy()),
                fs_type.map_or("-".into(), |s| s.to_string_lossy()),
                target.display(),
                std::io::Error::last_os_error()
            ))
        }
    };
    let plan = plan(options);
    if let Some((flags, data)) = &plan.mount {
        let source = source.map(c).transpose()?;
        let fs_type = fs_type.map(c).transpose()?;
        let data = data.as_deref().map(c).transpose()?;
        call(source.as_ref(), fs_type.as_ref(), *flags, data.as_ref())?;
    }
    if let Some(flags) = plan.propagation {
        call(None, None, flags, None)?;
    }
    if let Some(flags) = plan.remount {
        call(None, None, flags, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(options: &[&str]) -> Vec<String> {
        options.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plans_as_containerd_shim_mounts() {
        use libc::{MS_BIND, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT};
        let cases: &[(&str, &[&str], Plan)] = &[
            (
                "overlay snapshot: all data",
                &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"],
                Plan {
                    mount: Some((
                        0,
                        Some("index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2".into()),
                    )),
                    propagation: None,
                    remount: None,
                },
            ),
            (
                "read-only overlay (a view snapshot)",
                &["ro", "lowerdir=/l1:/l2"],
                Plan {
                    mount: Some((MS_RDONLY, Some("lowerdir=/l1:/l2".into()))),
                    propagation: None,
                    remount: None,
                },
            ),
            (
                "native snapshotter: a recursive bind, then read-only by a remount",
                &["rbind", "ro"],
                Plan {
                    mount: Some((MS_BIND | MS_REC | MS_RDONLY, None)),
                    propagation: None,
                    remount: Some(MS_BIND | MS_REC | MS_RDONLY | MS_REMOUNT),
                },
            ),
            (
                "a later option clears an earlier one",
                &["ro", "nosuid", "rw", "bind"],
                Plan {
                    mount: Some((MS_NOSUID | MS_BIND, None)),
                    propagation: None,
                    remount: None,
                },
            ),
            (
                "propagation is a call of its own",
                &["rbind", "rprivate"],
                Plan {
                    mount: Some((MS_BIND | MS_REC, None)),
                    propagation: Some(MS_PRIVATE | MS_REC),
                    remount: None,
                },
            ),
            (
                "a bare remount is no new mount",
                &["remount", "ro"],
                Plan {
                    mount: None,
                    propagation: None,
                    remount: None,
                },
            ),
        ];
        for (name, options, want) in cases {
            assert_eq!(&plan(&strings(options)), want, "{name}");
        }
    }

    #[test]
    fn only_a_page_of_overlay_options_needs_a_process() {
        let long = format!("lowerdir={}", vec!["/var/lib/l"; 500].join(":"));
        assert!(needs_its_own_process(
            Some("overlay"),
            std::slice::from_ref(&long)
        ));
        assert!(!needs_its_own_process(Some("bind"), &[long]));
        assert!(!needs_its_own_process(
            Some("overlay"),
            &strings(&["lowerdir=/a:/b", "upperdir=/u", "workdir=/w"])
        ));
    }

    /// A real read-only bind mount, made in this thread (needs root, as the shim).
    #[test]
    fn a_read_only_bind_mount_is_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("file"), "x").unwrap();
        mount(
            None,
            Some(&source.to_string_lossy()),
            &strings(&["rbind", "ro"]),
            &target,
        )
        .unwrap();
        let read = std::fs::read_to_string(target.join("file"));
        let write = std::fs::write(target.join("new"), "y");
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
        assert_eq!(read.unwrap(), "x");
        assert_eq!(
            write.unwrap_err().raw_os_error(),
            Some(libc::EROFS),
            "written through a read-only bind mount"
        );
    }
}
