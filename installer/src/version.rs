//! containerd's version, as printed by `containerd --version`.

use std::fmt;

use crate::error::{Error, Result};

/// The numeric part of a containerd release; distro suffixes (`~ds1`, `+unknown`) are
/// dropped because nothing we decide depends on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ContainerdVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses `containerd --version` output. Observed forms:
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`,
    /// `containerd containerd.io 1.7.24 88bf19b2…`,
    /// `containerd github.com/containerd/containerd/v2 2.1.9+unknown`, and upstream's
    /// `v1.7.24` with a leading `v`. The version is the first token after the program
    /// name that starts with `X.Y.Z`; a bare `X.Y.Z` is accepted too (CLI input).
    pub fn parse(output: &str) -> Result<Self> {
        let unparsable = || Error::VersionUnparsable {
            output: output.trim().to_owned(),
        };
        let mut tokens = output.split_whitespace().peekable();
        if tokens.peek() == Some(&"containerd") {
            tokens.next();
        }
        tokens.find_map(parse_version_token).ok_or_else(unparsable)
    }

    /// The newest config schema this containerd writes itself (`config default`).
    pub fn native_schema_version(&self) -> u32 {
        if self.major >= 2 { 3 } else { 2 }
    }
}

/// `1.6.20~ds1`, `v2.1.9+unknown`, `1.7.24` -> version; anything else -> None.
fn parse_version_token(token: &str) -> Option<ContainerdVersion> {
    let token = token.strip_prefix('v').unwrap_or(token);
    let mut parts = token.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if digits_end == 0 {
        return None;
    }
    // A suffix must look like a pre-release/build/distro tag, not more dots (`1.2.3.4`).
    let suffix = &rest[digits_end..];
    if !(suffix.is_empty() || suffix.starts_with(['~', '+', '-'])) {
        return None;
    }
    let patch = rest[..digits_end].parse().ok()?;
    Some(ContainerdVersion::new(major, minor, patch))
}

impl fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
        (1, 6, 20)
    )]
    #[case(
        "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
        (1, 7, 24)
    )]
    #[case(
        "containerd containerd.io 1.7.24 88bf19b2105c8b17560993bee28a01ddc2f97182",
        (1, 7, 24)
    )]
    #[case("containerd github.com/containerd/containerd/v2 2.1.9+unknown ", (2, 1, 9))]
    #[case("containerd github.com/containerd/containerd/v2 2.1.9+ds1 ", (2, 1, 9))]
    #[case(
        "containerd github.com/containerd/containerd v1.7.24 88bf19b2105c8b17560993bee28a01ddc2f97182",
        (1, 7, 24)
    )]
    #[case("2.2.0", (2, 2, 0))]
    #[case("containerd github.com/k3s-io/containerd v2.0.4-k3s2", (2, 0, 4))]
    fn parses_real_version_lines(#[case] line: &str, #[case] want: (u32, u32, u32)) {
        let v = ContainerdVersion::parse(line).unwrap();
        assert_eq!((v.major, v.minor, v.patch), want);
    }

    #[rstest]
    #[case("")]
    #[case("containerd: command not found")]
    #[case("containerd github.com/containerd/containerd")]
    #[case("containerd x 1.2 y")]
    #[case("containerd x 1.2.3.4")]
    fn refuses_lines_without_a_version(#[case] line: &str) {
        let err = ContainerdVersion::parse(line).unwrap_err();
        assert_eq!(err.category(), "version_unparsable");
    }

    #[test]
    fn native_schema_follows_major() {
        assert_eq!(ContainerdVersion::new(1, 7, 24).native_schema_version(), 2);
        assert_eq!(ContainerdVersion::new(2, 1, 9).native_schema_version(), 3);
    }
}
