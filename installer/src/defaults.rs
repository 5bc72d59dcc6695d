//! The real `containerd config default` output of the containerd releases we test
//! against (Debian packages), used when a node has no config file at all.

use crate::error::{Error, Result};
use crate::version::ContainerdVersion;

const DEFAULT_1_6: &str = include_str!("../fixtures/defaults/containerd-1.6.20.toml");
const DEFAULT_1_7: &str = include_str!("../fixtures/defaults/containerd-1.7.24.toml");
const DEFAULT_2_1: &str = include_str!("../fixtures/defaults/containerd-2.1.9.toml");

/// Defaults by major.minor: within a minor line the defaults do not change shape. For a
/// minor we have no capture of we refuse rather than hand a 2.1 file to a 2.0 daemon
/// (2.x logs every key it does not know); the effects layer can run the node's own
/// `containerd config default` instead.
pub fn embedded_default(containerd: &ContainerdVersion) -> Result<&'static str> {
    match (containerd.major, containerd.minor) {
        (1, 6) => Ok(DEFAULT_1_6),
        (1, 7) => Ok(DEFAULT_1_7),
        (2, 1) => Ok(DEFAULT_2_1),
        _ => Err(Error::NoEmbeddedDefaults {
            containerd: *containerd,
        }),
    }
}
