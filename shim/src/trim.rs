//! Idle shim processes unmap the code they ran once and no longer run.
//!
//! A running container is three processes (shim, zygote, container init), each mapping
//! the same 30 MiB binary. Every page of it a process ever touched (creating the
//! container, compiling or loading the guest) stays in that process's RSS, although the
//! pages are clean file pages that the page cache holds once for every shim on the node.
//! Dropping a process's mapping of such a page loses nothing: the next use is a minor
//! fault that maps the cached page again. So once a process goes idle it drops them, and
//! its RSS is what it actually uses (its own heap and stack, and the code it runs).
//!
//! Only read-only private mappings of ELF files (our binary, shared libraries) with no
//! private copy of any page (`Anonymous: 0 kB`) are dropped: their content is the file's
//! by construction, and no thread ever makes them writable (no text relocations). The
//! precompiled-module mappings of Wasmtime are left alone: Wasmtime changes their
//! protection when it loads a module.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Address ranges to drop, and their resident bytes, from `/proc/<pid>/smaps` text.
/// `exe` is the path of the process's executable. Pure.
pub fn droppable(smaps: &str, exe: &str) -> (Vec<Range<usize>>, u64) {
    let mut ranges = Vec::new();
    let mut resident = 0;
    // (range, candidate, Rss kB, Anonymous kB) of the mapping being read
    let mut current: Option<(Range<usize>, bool, u64, u64)> = None;
    let mut finish = |m: Option<(Range<usize>, bool, u64, u64)>| {
        if let Some((range, true, rss, 0)) = m
            && rss > 0
        {
            ranges.push(range);
            resident += rss * 1024;
        }
    };
    for line in smaps.lines() {
        if let Some((range, candidate)) = header(line, exe) {
            finish(current.take());
            current = Some((range, candidate, 0, u64::MAX));
        } else if let Some((_, _, rss, anon)) = current.as_mut() {
            let kib = |rest: &str| rest.trim().trim_end_matches("kB").trim().parse().ok();
            if let Some(v) = line.strip_prefix("Rss:").and_then(kib) {
                *rss = v;
            } else if let Some(v) = line.strip_prefix("Anonymous:").and_then(kib) {
                *anon = v;
            }
        }
    }
    finish(current);
    (ranges, resident)
}

/// A mapping's header line (`start-end perms offset dev inode path`): its range and
/// whether it is a read-only private mapping of our binary or a shared library.
fn header(line: &str, exe: &str) -> Option<(Range<usize>, bool)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let inode = fields.nth(2)?;
    let path = fields.collect::<Vec<_>>().join(" ");
    let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
    let elf = path == exe || is_shared_object(path);
    let candidate = perms.starts_with('r')
        && !perms.contains('w')
        && perms.ends_with('p')
        && inode != "0"
        && elf;
    Some((range, candidate))
}

/// `libc.so.6`, `ld-linux-x86-64.so.2`, `libfoo.so`.
fn is_shared_object(path: &str) -> bool {
    path.starts_with('/')
        && path
            .rsplit('/')
            .next()
            .is_some_and(|name| name.ends_with(".so") || name.contains(".so."))
}

/// Drops this process's droppable mappings (see the module docs); returns the resident
/// bytes they held. Safe to call from any thread at any time.
pub fn release() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let (ranges, resident) = droppable(&smaps, exe.strip_suffix(" (deleted)").unwrap_or(&exe));
    for range in ranges {
        #[allow(unsafe_code)]
        // SAFETY: a private, read-only mapping of an ELF file with no private page is the
        // file's content; after MADV_DONTNEED the next access faults the same bytes in from
        // the page cache. Nothing can write to it meanwhile (not writable, and nothing in
        // this process mprotects ELF text or read-only data).
        let result = unsafe {
            rustix::mm::madvise(
                range.start as *mut std::ffi::c_void,
                range.end - range.start,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        // a range that went away meanwhile (a library unloaded) is nothing to drop
        if let Err(e) = result {
            tracing::debug!(error = %e, "madvise {range:x?}");
        }
    }
    Ok(resident)
}

/// How long a process waits after a container starts before it drops its code pages:
/// long enough for a guest to be past its start-up code, short next to a container's life.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Requests that reset [`when_quiet`]'s wait.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Runs `f` on its own thread once [`IDLE_AFTER`] passed with no other call to this
/// function: a burst of starts (a pod's containers) trims once, after the last. Never
/// call it in the zygote (it starts a thread).
pub fn when_quiet(f: fn()) {
    let mine = ACTIVITY.fetch_add(1, Ordering::SeqCst) + 1;
    spawn(move || {
        std::thread::sleep(IDLE_AFTER);
        if ACTIVITY.load(Ordering::SeqCst) == mine {
            f();
        }
    });
}

/// Runs `f` on its own thread [`IDLE_AFTER`] from now.
pub fn after_start(f: fn()) {
    spawn(move || {
        std::thread::sleep(IDLE_AFTER);
        f();
    });
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("trim".into()).spawn(f) {
        tracing::warn!(error = %e, "cannot start the trim thread");
    }
}

/// [`release`], logging what it did; for idle points that cannot report an error.
pub fn release_logged(who: &str) {
    match release() {
        Ok(bytes) => tracing::debug!("{who}: dropped {} KiB of clean code pages", bytes / 1024),
        Err(e) => tracing::warn!(error = %e, "{who}: cannot drop clean code pages"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/smaps` of a release shim serving one Wasm container under containerd
    /// 2.x, 3 s after the start (after its trim; the code it still runs is resident again),
    /// with the binary's build path replaced by [`EXE`].
    const FIXTURE: &str = include_str!("../tests/fixtures/shim-smaps.txt");
    const EXE: &str = "/opt/wasmruntime/containerd-shim-wasmtime-v1";

    /// Every mapping of a smaps text: header line, Rss kB, Anonymous kB.
    fn mappings(smaps: &str) -> Vec<(&str, u64, u64)> {
        let mut out: Vec<(&str, u64, u64)> = Vec::new();
        let kib = |v: &str| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        for line in smaps.lines() {
            if header(line, EXE).is_some() {
                out.push((line, 0, 0));
            } else if let Some(last) = out.last_mut() {
                if let Some(v) = line.strip_prefix("Rss:") {
                    last.1 = kib(v);
                } else if let Some(v) = line.strip_prefix("Anonymous:") {
                    last.2 = kib(v);
                }
            }
        }
        out
    }

    #[test]
    fn only_clean_read_only_elf_mappings_are_dropped() {
        let (ranges, resident) = droppable(FIXTURE, EXE);
        let all = mappings(FIXTURE);
        assert!(all.len() > 20, "a real process has many mappings");
        let mut expected_bytes = 0;
        let mut expected_count = 0;
        for (line, rss, anon) in all {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (perms, path) = (fields[1], fields.get(5).copied().unwrap_or(""));
            let start = usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
            let chosen = ranges.iter().any(|r| r.start == start);
            let expected = perms.starts_with('r')
                && !perms.contains('w')
                && perms.ends_with('p')
                && (path == EXE || path.contains(".so"))
                && rss > 0
                && anon == 0;
            assert_eq!(chosen, expected, "{line} (Rss {rss}, Anonymous {anon})");
            if expected {
                expected_bytes += rss * 1024;
                expected_count += 1;
            }
        }
        assert!(expected_count >= 4, "the binary's and libc's code and data");
        assert_eq!(ranges.len(), expected_count);
        assert_eq!(resident, expected_bytes);
    }

    #[test]
    fn table() {
        let block = |header: &str, rss: u64, anon: u64| {
            format!("{header}\nSize: 8 kB\nRss: {rss} kB\nAnonymous: {anon} kB\nVmFlags: rd\n")
        };
        let cases: &[(&str, u64, u64, bool)] = &[
            (
                "1000-3000 r-xp 00000000 fd:00 12 /usr/lib/x86_64-linux-gnu/libc.so.6",
                8,
                0,
                true,
            ),
            ("1000-3000 r--p 00000000 fd:00 12 /opt/shim/bin", 8, 0, true),
            (
                "1000-3000 r--p 00000000 fd:00 12 /opt/shim/bin (deleted)",
                8,
                0,
                true,
            ),
            // a relocated read-only segment (RELRO) holds private copies
            (
                "1000-3000 r--p 00000000 fd:00 12 /opt/shim/bin",
                8,
                4,
                false,
            ),
            (
                "1000-3000 rw-p 00000000 fd:00 12 /opt/shim/bin",
                8,
                0,
                false,
            ),
            (
                "1000-3000 r-xs 00000000 fd:00 12 /opt/shim/bin",
                8,
                0,
                false,
            ),
            (
                "1000-3000 r-xp 00000000 fd:00 12 /opt/shim/bin",
                0,
                0,
                false,
            ),
            // Wasmtime's precompiled modules, anonymous memory, the vDSO
            (
                "1000-3000 r-xp 00000000 fd:00 13 /var/lib/wasmruntime/cache/ab.cwasm",
                8,
                0,
                false,
            ),
            ("1000-3000 r--p 00000000 00:00 0 ", 8, 0, false),
            ("1000-3000 r-xp 00000000 00:00 0 [vdso]", 8, 0, false),
            (
                "1000-3000 r-xp 00000000 fd:00 14 /tmp/not-a-library.sock",
                8,
                0,
                false,
            ),
        ];
        for &(line, rss, anon, dropped) in cases {
            let (ranges, resident) = droppable(&block(line, rss, anon), "/opt/shim/bin");
            assert_eq!(
                ranges.len() == 1 && ranges[0] == (0x1000..0x3000),
                dropped,
                "{line}"
            );
            assert_eq!(resident, if dropped { rss * 1024 } else { 0 }, "{line}");
        }
    }

    fn own_code_resident_kib() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        droppable(&smaps, &exe.to_string_lossy()).1 / 1024
    }

    #[test]
    fn release_unmaps_code_and_the_process_keeps_running() {
        // touch plenty of code first (formatting, hashing, regex-free parsing)
        let before_text = format!("{:?}", (0..1000).map(|i| i * 7).collect::<Vec<_>>());
        let before = own_code_resident_kib();
        assert!(before > 0, "no resident code before");
        let dropped = release().unwrap() / 1024;
        assert!(
            dropped > 0,
            "nothing dropped (resident before: {before} KiB)"
        );
        let after = own_code_resident_kib();
        assert!(
            after < before,
            "resident code {before} KiB before, {after} KiB after dropping {dropped} KiB"
        );
        // the code runs again, faulted back in from the page cache
        let after_text = format!("{:?}", (0..1000).map(|i| i * 7).collect::<Vec<_>>());
        assert_eq!(before_text, after_text);
    }
}
