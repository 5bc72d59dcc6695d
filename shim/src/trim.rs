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
//! The drop is the last thing a process does before it waits: a fault on a file page
//! maps the cached pages around it too (the kernel's fault-around, 64 KiB), so each
//! function run after the drop costs up to 64 KiB again. Measured: when the drop came
//! before the zygote's answer, the shim's request to the zygote, a log line and the
//! trim thread's exit, ~5 MiB of the three processes came back. So one long-lived
//! thread per process trims and waits again ([`when_quiet`]), and the single-threaded
//! zygote drops from a signal handler once it waits for its next request
//! ([`in_zygote_soon`]).
//!
//! Only read-only private mappings of ELF files (our binary, shared libraries) are
//! touched, and in them only pages that are the file's: a mapping with no private copy of
//! any page (`Anonymous: 0 kB`) goes whole; in one with private copies (the relocated
//! GOT in the read-only-after-relocation segment) `/proc/self/pagemap` tells the file
//! pages from the private ones, which stay. No thread ever makes these mappings writable
//! (no text relocations), so no file page can turn private between the check and the
//! drop. The precompiled-module mappings of Wasmtime are left alone: Wasmtime changes
//! their protection when it loads a module.

use std::ops::Range;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

/// What [`droppable`] found in a smaps text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Droppable {
    /// Mappings with no private page: dropped whole.
    pub whole: Vec<Range<usize>>,
    /// Resident bytes of `whole`.
    pub resident: u64,
    /// Mappings with private pages beside file pages: dropped page by page.
    pub partial: Vec<Range<usize>>,
}

/// The mappings to drop, from `/proc/<pid>/smaps` text. `exe` is the path of the
/// process's executable. Pure.
pub fn droppable(smaps: &str, exe: &str) -> Droppable {
    let mut found = Droppable::default();
    // (range, candidate, Rss kB, Anonymous kB) of the mapping being read
    let mut current: Option<(Range<usize>, bool, u64, u64)> = None;
    let mut finish = |m: Option<(Range<usize>, bool, u64, u64)>| match m {
        Some((range, true, rss, 0)) if rss > 0 => {
            found.whole.push(range);
            found.resident += rss * 1024;
        }
        Some((range, true, rss, anon)) if rss > anon && anon != u64::MAX => {
            found.partial.push(range)
        }
        _ => {}
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
    found
}

/// `/proc/<pid>/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;

/// The runs of resident file pages among the pagemap `entries` of the pages from
/// `start` on: what can go from a mapping that also holds private pages. Pure.
pub fn file_page_runs(start: usize, entries: &[u64], page: usize) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, &entry) in entries.iter().enumerate() {
        if entry & (PM_PRESENT | PM_FILE) != PM_PRESENT | PM_FILE {
            continue;
        }
        let addr = start + i * page;
        match runs.last_mut() {
            Some(run) if run.end == addr => run.end = addr + page,
            _ => runs.push(addr..addr + page),
        }
    }
    runs
}

/// The pagemap entries of `range` in this process.
fn pagemap(range: &Range<usize>, page: usize) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open("/proc/self/pagemap")?;
    let mut bytes = vec![0u8; (range.end - range.start) / page * 8];
    file.read_exact_at(&mut bytes, (range.start / page * 8) as u64)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Drops `range`, inside a private, read-only mapping of an ELF file, holding only pages
/// that are the file's (no private copy). A system call and nothing else (rustix issues
/// it inline): it runs in the zygote's signal handler.
fn dont_need(range: &Range<usize>) {
    #[allow(unsafe_code)]
    // SAFETY: after MADV_DONTNEED the next access faults the same bytes in from the page
    // cache, as the range holds no private copy. Nothing can write to it meanwhile (not
    // writable, and nothing in this process mprotects ELF text or read-only data).
    let result = unsafe {
        rustix::mm::madvise(
            range.start as *mut std::ffi::c_void,
            range.end - range.start,
            rustix::mm::Advice::LinuxDontNeed,
        )
    };
    // a range that went away meanwhile (a library unloaded) is nothing to drop
    let _ = result;
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

/// What one trim drops: whole mappings and runs of file pages.
#[derive(Debug, Default)]
pub struct Plan {
    ranges: Vec<Range<usize>>,
    resident: u64,
}

/// Chooses this process's droppable pages (see the module docs) and frees glibc's unused
/// heap. Safe to call from any thread at any time.
pub fn plan() -> std::io::Result<Plan> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let found = droppable(&smaps, exe.strip_suffix(" (deleted)").unwrap_or(&exe));
    // free heap pages too: glibc keeps what threads freed in its arenas
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim is thread-safe (it locks each arena) and only returns free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let page = rustix::param::page_size();
    let mut plan = Plan {
        ranges: found.whole,
        resident: found.resident,
    };
    for mapping in &found.partial {
        // a mapping that went away meanwhile reads short: nothing to drop
        let Ok(entries) = pagemap(mapping, page) else {
            continue;
        };
        for run in file_page_runs(mapping.start, &entries, page) {
            plan.resident += (run.end - run.start) as u64;
            plan.ranges.push(run);
        }
    }
    Ok(plan)
}

impl Plan {
    /// The resident bytes the pages held when planned.
    pub fn resident(&self) -> u64 {
        self.resident
    }

    /// Drops the pages: system calls only, no allocation, lock or log. Whatever code the
    /// process runs after it comes back, and not page by page: a fault on a file page maps
    /// the cached pages around it too (the kernel's fault-around, 64 KiB), so every
    /// function touched after the drop costs up to 64 KiB of RSS again. The callers
    /// drop last, right before they block.
    pub fn apply(&self) {
        for range in &self.ranges {
            dont_need(range);
        }
    }
}

/// One malloc arena for the whole process and its forks (zygote, container inits).
/// glibc gives each thread that allocates an arena of its own (up to 8 per CPU), and
/// the shim's threads (ttrpc server workers, reaper, events, tokio) each keep theirs,
/// with what they freed, for the life of the shim. Call while single-threaded, first thing
/// in the daemon. The shim allocates little and rarely, so the one arena's lock is hardly
/// contended, and tcache still serves small allocations per thread. Measured on an idle
/// container: ~0.1 MiB less anonymous memory in the shim.
pub fn one_malloc_arena() {
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } == 1;
    if !ok {
        tracing::debug!("mallopt(M_ARENA_MAX) refused; glibc keeps its per-thread arenas");
    }
}

/// How long a process waits after a container starts before it drops its code pages:
/// long enough for a guest to be past its start-up code, short next to a container's life.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The next trim of this process: when, who (for the log), and what runs first.
type Due = Option<(Instant, &'static str, fn())>;

static DUE: Mutex<Due> = Mutex::new(None);
static DUE_CHANGED: Condvar = Condvar::new();
static TRIMMER: Once = Once::new();

/// Trims this process once [`IDLE_AFTER`] passed with no other call to this function (a
/// burst of starts, a pod's containers, trims once, after the last), running `first`
/// before (the shim asks its zygote then). One thread does every trim of the process and
/// waits for the next in between, rather than a thread per trim: a thread's exit after
/// the drop would fault the exit code back in. Never call it in the zygote (it starts a
/// thread; see [`in_zygote_soon`]).
pub fn when_quiet(who: &'static str, first: fn()) {
    *DUE.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((Instant::now() + IDLE_AFTER, who, first));
    DUE_CHANGED.notify_one();
    TRIMMER.call_once(|| {
        if let Err(e) = std::thread::Builder::new()
            .name("trim".into())
            .spawn(trimmer)
        {
            tracing::warn!(error = %e, "cannot start the trim thread");
        }
    });
}

fn trimmer() {
    // kept until the next trim: freeing it right after the drop would page malloc back in
    let mut kept: Option<Plan> = None;
    loop {
        let (who, first) = next_due();
        first();
        drop(kept.take());
        kept = match plan() {
            Ok(plan) => {
                tracing::debug!(
                    "{who}: dropping {} KiB of clean code pages",
                    plan.resident / 1024
                );
                plan.apply();
                Some(plan)
            }
            Err(e) => {
                tracing::warn!(error = %e, "{who}: cannot drop clean code pages");
                None
            }
        };
    }
}

/// Waits until the due time passes without a later [`when_quiet`] moving it.
fn next_due() -> (&'static str, fn()) {
    let mut due = DUE.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        match *due {
            None => {
                due = DUE_CHANGED
                    .wait(due)
                    .unwrap_or_else(PoisonError::into_inner)
            }
            Some((at, who, first)) => {
                let now = Instant::now();
                if now >= at {
                    *due = None;
                    return (who, first);
                }
                due = DUE_CHANGED
                    .wait_timeout(due, at - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

/// The zygote's planned drop, for its SIGALRM handler: a leaked `Box<[Range<usize>]>`.
static ZYGOTE_PLAN: AtomicPtr<Range<usize>> = AtomicPtr::new(std::ptr::null_mut());
static ZYGOTE_PLAN_LEN: AtomicUsize = AtomicUsize::new(0);
/// How long after its answer the zygote drops its pages: it is back waiting by then.
const ZYGOTE_DELAY_US: i64 = 20_000;

/// In the zygote (single-threaded, between requests): plans the drop and arms a timer
/// whose signal handler does it [`ZYGOTE_DELAY_US`] later, when the zygote has sent
/// its answer and waits in `read` for the next request. Dropping right away would have
/// the answer's code (serialising, writing, the request loop) fault back in, with
/// fault-around ~1 MiB of it; after the handler only its return and the restarted `read`
/// run. Every other request cancels a pending drop first ([`cancel_in_zygote`]), so the
/// signal never interrupts youki's work. Returns the resident bytes to drop.
pub fn in_zygote_soon() -> std::io::Result<u64> {
    cancel_in_zygote();
    let plan = plan()?;
    let resident = plan.resident;
    let ranges = Box::into_raw(plan.ranges.into_boxed_slice());
    // the handler cannot run while the two change (the timer is off)
    let old_len = ZYGOTE_PLAN_LEN.swap(ranges.len(), Ordering::SeqCst);
    let old = ZYGOTE_PLAN.swap(ranges.cast(), Ordering::SeqCst);
    if !old.is_null() {
        #[allow(unsafe_code)]
        // SAFETY: `old` is the slice of `old_len` ranges an earlier call leaked with
        // Box::into_raw, and the handler cannot run now (the timer is off and the only
        // thread is here).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(old, old_len)) });
    }
    #[allow(unsafe_code)]
    // SAFETY: the handler only reads two atomics and makes madvise system calls, which
    // is async-signal-safe; SA_RESTART resumes the zygote's interrupted read.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = drop_zygote_plan as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    set_zygote_timer(ZYGOTE_DELAY_US)?;
    Ok(resident)
}

/// Cancels a drop [`in_zygote_soon`] armed; first thing in every other zygote request.
pub fn cancel_in_zygote() {
    let _ = set_zygote_timer(0);
}

/// Puts SIGALRM back to its default, in a container's init forked from the zygote (which
/// inherits the handler, not the timer).
pub fn forget_zygote_handler() {
    #[allow(unsafe_code)]
    // SAFETY: resets one signal's disposition to the default.
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
    }
}

fn set_zygote_timer(us: i64) -> std::io::Result<()> {
    let value = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: us,
        },
    };
    #[allow(unsafe_code)]
    // SAFETY: a one-shot ITIMER_REAL of this process.
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &value, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

extern "C" fn drop_zygote_plan(_signal: libc::c_int) {
    let ptr = ZYGOTE_PLAN.load(Ordering::SeqCst);
    let len = ZYGOTE_PLAN_LEN.load(Ordering::SeqCst);
    if ptr.is_null() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: `ptr` and `len` describe the leaked slice `in_zygote_soon` stored; it is
    // only freed with the timer off, never while this handler can run.
    let ranges = unsafe { std::slice::from_raw_parts(ptr, len) };
    for range in ranges {
        dont_need(range);
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
        let Droppable {
            whole: ranges,
            resident,
            partial,
        } = droppable(FIXTURE, EXE);
        let all = mappings(FIXTURE);
        assert!(all.len() > 20, "a real process has many mappings");
        let mut expected_bytes = 0;
        let mut expected_count = 0;
        for (line, rss, anon) in all {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (perms, path) = (fields[1], fields.get(5).copied().unwrap_or(""));
            let start = usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
            let chosen = ranges.iter().any(|r| r.start == start);
            let read_only_elf = perms.starts_with('r')
                && !perms.contains('w')
                && perms.ends_with('p')
                && (path == EXE || path.contains(".so"));
            let expected = read_only_elf && rss > 0 && anon == 0;
            assert_eq!(chosen, expected, "{line} (Rss {rss}, Anonymous {anon})");
            let page_by_page = partial.iter().any(|r| r.start == start);
            assert_eq!(
                page_by_page,
                read_only_elf && anon > 0 && rss > anon,
                "{line} (Rss {rss}, Anonymous {anon})"
            );
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
            // a relocated read-only segment (RELRO) holds private copies: page by page
            (
                "1000-3000 r--p 00000000 fd:00 12 /opt/shim/bin",
                8,
                4,
                false,
            ),
            // ... and when all its resident pages are private, nothing to look at
            (
                "1000-3000 r--p 00000000 fd:00 12 /opt/shim/bin",
                8,
                8,
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
            let found = droppable(&block(line, rss, anon), "/opt/shim/bin");
            let only = |ranges: &[Range<usize>]| ranges.len() == 1 && ranges[0] == (0x1000..0x3000);
            assert_eq!(only(&found.whole), dropped, "{line}");
            assert_eq!(
                found.resident,
                if dropped { rss * 1024 } else { 0 },
                "{line}"
            );
            let page_by_page = line.contains(" r--p ") && anon == 4;
            assert_eq!(only(&found.partial), page_by_page, "{line}");
        }
    }

    #[test]
    fn file_page_runs_table() {
        const P: u64 = PM_PRESENT;
        const F: u64 = PM_PRESENT | PM_FILE;
        // (case, pagemap entries, expected runs as (start, end))
        type Case = (&'static str, &'static [u64], &'static [(usize, usize)]);
        let cases: &[Case] = &[
            ("none resident", &[0, 0], &[]),
            ("private pages stay", &[P, P, P], &[]),
            ("file pages, one run", &[F, F, F], &[(0x10000, 0x13000)]),
            (
                "a private page splits the run",
                &[F, P, F, F],
                &[(0x10000, 0x11000), (0x12000, 0x14000)],
            ),
            ("not present", &[PM_FILE, F], &[(0x11000, 0x12000)]),
        ];
        for (name, entries, want) in cases {
            let want: Vec<Range<usize>> = want.iter().map(|&(a, b)| a..b).collect();
            assert_eq!(file_page_runs(0x10000, entries, 0x1000), want, "{name}");
        }
    }

    #[test]
    fn pagemap_tells_private_copies_from_file_pages() {
        use std::io::Write as _;
        let page = rustix::param::page_size();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 4 * page]).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a fresh private mapping of our own temp file, unmapped below.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                4 * page,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                0,
            )
        }
        .unwrap() as *mut u8;
        #[allow(unsafe_code)]
        // SAFETY: within the 4 pages just mapped.
        unsafe {
            // page 1 becomes a private copy; 0 and 3 are read (file pages); 2 untouched
            addr.add(page).write_volatile(9);
            assert_eq!(addr.read_volatile(), 7);
            assert_eq!(addr.add(3 * page).read_volatile(), 7);
        }
        let start = addr as usize;
        let entries = pagemap(&(start..start + 4 * page), page).unwrap();
        let runs = file_page_runs(start, &entries, page);
        #[allow(unsafe_code)]
        // SAFETY: the mapping made above, no longer used.
        unsafe {
            rustix::mm::munmap(addr.cast(), 4 * page).unwrap();
        }
        // page 2 may be mapped too (the kernel maps neighbours of a read fault)
        let in_runs = |addr: usize| runs.iter().any(|r| r.contains(&addr));
        assert!(!in_runs(start + page), "the private copy: {entries:x?}");
        assert!(in_runs(start), "file page 0: {entries:x?}");
        assert!(in_runs(start + 3 * page), "file page 3: {entries:x?}");
    }

    fn own_code_resident_kib() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        droppable(&smaps, &exe.to_string_lossy()).resident / 1024
    }

    #[test]
    fn release_unmaps_code_and_the_process_keeps_running() {
        // touch plenty of code first (formatting, hashing, regex-free parsing)
        let before_text = format!("{:?}", (0..1000).map(|i| i * 7).collect::<Vec<_>>());
        let before = own_code_resident_kib();
        assert!(before > 0, "no resident code before");
        let plan = plan().unwrap();
        plan.apply();
        let dropped = plan.resident() / 1024;
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

    fn timer_left_us() -> i64 {
        #[allow(unsafe_code)]
        // SAFETY: reads this process's ITIMER_REAL into a zeroed struct.
        unsafe {
            let mut value: libc::itimerval = std::mem::zeroed();
            assert_eq!(libc::getitimer(libc::ITIMER_REAL, &mut value), 0);
            value.it_value.tv_sec * 1_000_000 + value.it_value.tv_usec
        }
    }

    // nextest runs every test in a process of its own, so the handler and the timer are
    // this test's alone
    #[test]
    fn the_zygote_drops_its_pages_on_the_timer_after_it_answered() {
        let text = format!("{:?}", (0..1000).map(|i| i * 3).collect::<Vec<_>>());
        let before = own_code_resident_kib();
        let planned = in_zygote_soon().unwrap() / 1024;
        assert!(planned > 0, "nothing planned (resident {before} KiB)");
        assert!(timer_left_us() > 0, "no drop pending");
        // the drop comes while this thread sleeps (std's sleep resumes after the signal)
        std::thread::sleep(Duration::from_millis(ZYGOTE_DELAY_US as u64 / 1000 * 5));
        assert_eq!(timer_left_us(), 0);
        let after = own_code_resident_kib();
        assert!(
            after < before,
            "resident code {before} KiB before, {after} KiB after the timer ({planned} KiB planned)"
        );
        assert_eq!(
            text,
            format!("{:?}", (0..1000).map(|i| i * 3).collect::<Vec<_>>())
        );

        // a second plan replaces the first; a request cancels it
        in_zygote_soon().unwrap();
        cancel_in_zygote();
        assert_eq!(timer_left_us(), 0, "a request leaves no drop pending");
    }

    static QUIET_RUNS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_burst_of_starts_trims_once_after_the_last() {
        fn count() {
            QUIET_RUNS.fetch_add(1, Ordering::SeqCst);
        }
        for _ in 0..3 {
            when_quiet("test", count);
        }
        assert_eq!(
            QUIET_RUNS.load(Ordering::SeqCst),
            0,
            "not before IDLE_AFTER"
        );
        let deadline = Instant::now() + IDLE_AFTER * 10;
        while QUIET_RUNS.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(QUIET_RUNS.load(Ordering::SeqCst), 1);
        // the same thread serves the next burst
        when_quiet("test", count);
        let deadline = Instant::now() + IDLE_AFTER * 10;
        while QUIET_RUNS.load(Ordering::SeqCst) == 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(QUIET_RUNS.load(Ordering::SeqCst), 2);
        let trims = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = t.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).unwrap().trim() == "trim"
            })
            .count();
        assert_eq!(trims, 1, "one trim thread");
    }
}
