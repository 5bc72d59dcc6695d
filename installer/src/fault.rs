//! Fault points for the crash tests: `WASM_INSTALLER_FAULT=after-backup` (a
//! comma-separated list) makes the binary SIGKILL itself at that point, exactly like
//! `kill -9` from outside, so tests can prove every intermediate state converges.
//! `bad-entry` is a test hook, not a crash: it corrupts our entry before the config
//! write so that containerd rejects the result and the rollback path runs for real.

pub const ENV: &str = "WASM_INSTALLER_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault<'a> {
    /// The shim is in place, nothing else happened.
    AfterShim,
    /// A temp file was written and fsynced, not yet renamed (`before-rename=<file name>`).
    BeforeRename(&'a str),
    /// The original config is backed up, the new one not written.
    AfterBackup,
    /// The new config is in place, containerd not restarted.
    AfterConfig,
    /// containerd restarted, not verified.
    AfterRestart,
    /// Uninstall: the shim is removed, its options file and the backup are not.
    AfterShimRemoved,
}

impl Fault<'_> {
    fn spec(&self) -> String {
        match self {
            Fault::AfterShim => "after-shim".into(),
            Fault::BeforeRename(file) => format!("before-rename={file}"),
            Fault::AfterBackup => "after-backup".into(),
            Fault::AfterConfig => "after-config".into(),
            Fault::AfterRestart => "after-restart".into(),
            Fault::AfterShimRemoved => "after-shim-removed".into(),
        }
    }
}

fn armed(spec: &str) -> bool {
    std::env::var(ENV)
        .map(|v| v.split(',').any(|s| s.trim() == spec))
        .unwrap_or(false)
}

/// Dies here with SIGKILL when this fault point is armed.
pub fn hit(fault: Fault<'_>) {
    let spec = fault.spec();
    if armed(&spec) {
        eprintln!("wasm-installer: fault point {spec}: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The `bad-entry` hook: the text containerd will reject instead of ours.
pub fn corrupt_entry(text: String) -> String {
    if !armed("bad-entry") {
        return text;
    }
    // An integer where containerd decodes a string, inside our table (after our
    // marker): a type error fails the CRI plugin's config at load on 1.x and 2.x.
    let Some(at) = text.find("# wasm-installer: managed runtime handler") else {
        return text;
    };
    let key = "runtime_type = ";
    let Some(start) = text[at..].find(key).map(|i| at + i + key.len()) else {
        return text;
    };
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let (head, tail) = (&text[..start], &text[end..]);
    let ours = "42";
    format!("{head}{ours}{tail}")
}
