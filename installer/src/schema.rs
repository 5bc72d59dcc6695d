//! The containerd config schema (`version = N`) and where CRI runtimes live in it.

use std::fmt;

use toml_edit::{DocumentMut, Item, Value};

use crate::doc::{display_path, lookup, type_name};
use crate::error::{Error, Result};
use crate::version::ContainerdVersion;

/// Config schema, from the file's top-level `version` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// No `version` key (or `version = 1`): containerd 1.x reads plugins by short id
    /// (`plugins.cri`); containerd 2.x does not carry CRI runtimes over from it.
    V1,
    /// containerd 1.6/1.7 native; 2.x migrates it on load.
    V2,
    /// containerd 2.0+ native: CRI split into `io.containerd.cri.v1.{images,runtime}`.
    V3,
    /// containerd 2.2+; the runtime table is where v3 has it.
    V4,
}

impl Schema {
    /// The schema `containerd config default` of that version writes.
    pub fn native_for(containerd: &ContainerdVersion) -> Schema {
        match containerd.native_schema_version() {
            2 => Schema::V2,
            _ => Schema::V3,
        }
    }

    pub fn number(self) -> i64 {
        match self {
            Schema::V1 => 1,
            Schema::V2 => 2,
            Schema::V3 => 3,
            Schema::V4 => 4,
        }
    }

    /// Reads the `version` key. A missing key is schema 1, as containerd reads it.
    pub fn detect(doc: &DocumentMut) -> Result<Schema> {
        let Some(item) = doc.get("version") else {
            return Ok(Schema::V1);
        };
        match item {
            Item::Value(Value::Integer(n)) => match *n.value() {
                1 => Ok(Schema::V1),
                2 => Ok(Schema::V2),
                3 => Ok(Schema::V3),
                4 => Ok(Schema::V4),
                other => Err(Error::UnknownSchemaVersion {
                    found: other.to_string(),
                }),
            },
            other => Err(Error::UnexpectedType {
                path: "version".into(),
                expected: "an integer",
                found: type_name(other),
            }),
        }
    }

    /// The CRI plugin id that owns `containerd.runtimes` in this schema.
    pub fn cri_runtime_plugin(self) -> &'static str {
        match self {
            Schema::V1 => "cri",
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 | Schema::V4 => "io.containerd.cri.v1.runtime",
        }
    }

    /// `plugins.<cri>.containerd.runtimes`, as typed keys (never a dotted string).
    pub fn runtimes_path(self) -> [&'static str; 4] {
        [
            "plugins",
            self.cri_runtime_plugin(),
            "containerd",
            "runtimes",
        ]
    }

    /// `plugins.<cri>.containerd`, where `default_runtime_name` lives.
    pub fn cri_containerd_path(self) -> [&'static str; 3] {
        ["plugins", self.cri_runtime_plugin(), "containerd"]
    }

    /// Refuses a file the running containerd would reject or misread. The accepted sets
    /// were checked with `containerd config dump` on 1.6.20, 1.7.24 and 2.1.9 (1.x: "max
    /// version is 2"; 2.1: "equal to or less than 3"; 2.1 does not migrate CRI runtimes
    /// out of a version-less file). Schema 4 is taken from containerd 2.2's docs.
    pub fn check_accepted_by(self, containerd: &ContainerdVersion) -> Result<()> {
        let (ok, accepted) = match (containerd.major, containerd.minor) {
            (0 | 1, _) => (matches!(self, Schema::V1 | Schema::V2), "1, 2"),
            (2, 0 | 1) => (matches!(self, Schema::V2 | Schema::V3), "2, 3"),
            _ => (
                matches!(self, Schema::V2 | Schema::V3 | Schema::V4),
                "2, 3, 4",
            ),
        };
        if ok {
            Ok(())
        } else if self == Schema::V1 {
            Err(Error::UnversionedConfigOnV2 {
                containerd: *containerd,
            })
        } else {
            Err(Error::SchemaNotAccepted {
                schema: self,
                containerd: *containerd,
                accepted,
            })
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schema::V1 => write!(f, "version 1 (no version key)"),
            other => write!(f, "version {}", other.number()),
        }
    }
}

/// Whether the node's runc runtime uses the systemd cgroup driver: the `SystemdCgroup`
/// option of the default runtime (`default_runtime_name`, else `runc`). Absent means
/// false, which is containerd's default.
pub fn runc_systemd_cgroup(doc: &DocumentMut, schema: Schema) -> Result<bool> {
    let containerd_path = schema.cri_containerd_path();
    let default_name = match lookup(
        doc.as_table(),
        &[&containerd_path[..], &["default_runtime_name"]].concat(),
    )? {
        Some(item) => item
            .as_str()
            .ok_or_else(|| Error::UnexpectedType {
                path: display_path(&[&containerd_path[..], &["default_runtime_name"]].concat()),
                expected: "a string",
                found: type_name(item),
            })?
            .to_owned(),
        None => "runc".to_owned(),
    };
    // `default_runtime_name` may name a non-runc runtime (e.g. nvidia, which is runc
    // underneath and carries the same option); an empty name means runc.
    let name = if default_name.is_empty() {
        "runc"
    } else {
        default_name.as_str()
    };
    let mut path: Vec<&str> = schema.runtimes_path().to_vec();
    path.extend([name, "options", "SystemdCgroup"]);
    match lookup(doc.as_table(), &path)? {
        None => Ok(false),
        Some(item) => item.as_bool().ok_or_else(|| Error::UnexpectedType {
            path: display_path(&path),
            expected: "a boolean",
            found: type_name(item),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn doc(text: &str) -> DocumentMut {
        text.parse().unwrap()
    }

    #[rstest]
    #[case("", Schema::V1)]
    #[case("root = '/x'\n", Schema::V1)]
    #[case("version = 1\n", Schema::V1)]
    #[case("version = 2\n", Schema::V2)]
    #[case("version = 3\n", Schema::V3)]
    #[case("version = 4\n", Schema::V4)]
    fn detects_schema(#[case] text: &str, #[case] want: Schema) {
        assert_eq!(Schema::detect(&doc(text)).unwrap(), want);
    }

    #[rstest]
    #[case("version = 5\n", "unknown_schema_version")]
    #[case("version = 0\n", "unknown_schema_version")]
    #[case("version = '2'\n", "unexpected_type")]
    fn refuses_bad_schema(#[case] text: &str, #[case] category: &str) {
        assert_eq!(Schema::detect(&doc(text)).unwrap_err().category(), category);
    }

    #[test]
    fn runtime_table_paths() {
        assert_eq!(
            Schema::V2.runtimes_path(),
            [
                "plugins",
                "io.containerd.grpc.v1.cri",
                "containerd",
                "runtimes"
            ]
        );
        assert_eq!(
            Schema::V3.runtimes_path(),
            [
                "plugins",
                "io.containerd.cri.v1.runtime",
                "containerd",
                "runtimes"
            ]
        );
        assert_eq!(Schema::V4.runtimes_path(), Schema::V3.runtimes_path());
        assert_eq!(
            Schema::V1.runtimes_path(),
            ["plugins", "cri", "containerd", "runtimes"]
        );
    }

    #[rstest]
    #[case(Schema::V1, (1, 6, 20), true)]
    #[case(Schema::V2, (1, 7, 24), true)]
    #[case(Schema::V3, (1, 7, 24), false)]
    #[case(Schema::V1, (2, 1, 9), false)]
    #[case(Schema::V2, (2, 1, 9), true)]
    #[case(Schema::V3, (2, 1, 9), true)]
    #[case(Schema::V4, (2, 1, 9), false)]
    #[case(Schema::V4, (2, 2, 0), true)]
    fn schema_acceptance(
        #[case] schema: Schema,
        #[case] v: (u32, u32, u32),
        #[case] accepted: bool,
    ) {
        let version = ContainerdVersion::new(v.0, v.1, v.2);
        assert_eq!(schema.check_accepted_by(&version).is_ok(), accepted);
    }

    #[rstest]
    #[case("version = 2\n", Schema::V2, false)]
    #[case(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = true\n",
        Schema::V2,
        true
    )]
    #[case(
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\nSystemdCgroup = true\n",
        Schema::V3,
        true
    )]
    #[case(
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\ndefault_runtime_name = 'nvidia'\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\nSystemdCgroup = false\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia.options]\nSystemdCgroup = true\n",
        Schema::V3,
        true
    )]
    fn detects_systemd_cgroup(#[case] text: &str, #[case] schema: Schema, #[case] want: bool) {
        assert_eq!(runc_systemd_cgroup(&doc(text), schema).unwrap(), want);
    }

    #[test]
    fn systemd_cgroup_of_wrong_type_is_refused() {
        let d = doc(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = 'yes'\n",
        );
        assert_eq!(
            runc_systemd_cgroup(&d, Schema::V2).unwrap_err().category(),
            "unexpected_type"
        );
    }
}
