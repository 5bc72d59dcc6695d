//! Adding and removing our runtime entry in a whole containerd config (TOML) with
//! `toml_edit`, keeping every comment, ordering and unrelated key byte for byte.

use toml_edit::{DocumentMut, Item, Key, Table, Value, value};

use crate::defaults::embedded_default;
use crate::doc::{display_path, ensure_table_path, lookup, parse};
use crate::error::{Error, Result};
use crate::ownership::{decor_has_marker, marker_line};
use crate::schema::{Schema, runc_systemd_cgroup};
use crate::spec::{HandlerName, POD_ANNOTATIONS, RUNTIME_TYPE, RuntimeSpec, SystemdCgroupMode};
use crate::version::ContainerdVersion;

/// Result of an install edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Write this text (and restart containerd).
    Changed(String),
    /// The file already says exactly what we want: write nothing, restart nothing.
    Unchanged,
}

/// What the original file was, as the effects layer backed it up before our first
/// install (kept across reinstalls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backup<'a> {
    /// There was no file; our install created it.
    FileWasAbsent,
    /// The file's bytes before our first install.
    Original(&'a str),
}

/// Result of an uninstall edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Nobody else touched the file since our install: put these original bytes back.
    RestoreOriginal(String),
    /// Nobody else touched the file, which did not exist before: delete it.
    DeleteFile,
    /// Others edited the file: this is it with exactly our entry removed.
    Changed(String),
    /// Our entry is not there: nothing to do.
    Unchanged,
}

/// The entry with `Auto` resolved against the node's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub handler: &'a HandlerName,
    pub shim_path: &'a str,
    pub systemd_cgroup: bool,
    pub form: EntryForm,
}

impl<'a> Entry<'a> {
    /// [`Entry::new`], refusing what that containerd cannot express.
    pub fn checked(
        rt: &'a RuntimeSpec,
        systemd_cgroup: bool,
        containerd: &ContainerdVersion,
    ) -> Result<Self> {
        let entry = Self::new(rt, systemd_cgroup, containerd);
        if entry.form == EntryForm::ShimPathAsType && systemd_cgroup {
            return Err(Error::SystemdCgroupUnsupported {
                version: containerd.to_string(),
            });
        }
        Ok(entry)
    }

    /// The entry for `rt` on this containerd, with runc's cgroup driver already known.
    pub fn new(rt: &'a RuntimeSpec, systemd_cgroup: bool, containerd: &ContainerdVersion) -> Self {
        Self {
            handler: &rt.handler,
            shim_path: rt.shim_path.as_str(),
            systemd_cgroup,
            form: EntryForm::for_version(containerd),
        }
    }
}

/// How an entry names our shim and hands it its options; containerd's CRI plugin
/// changed both in 1.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryForm {
    /// 1.7 and later: `runtime_type = "io.containerd.wasmtime.v1"` plus `runtime_path`,
    /// and `[options]` as plain keys (CRI passes the whole table to the shim as TOML).
    RuntimePath,
    /// 1.6: CRI ignores `runtime_path`, so `runtime_type` is the shim's absolute path
    /// (1.6 runs an absolute runtime name as that binary), and no `[options]`: 1.6 sends
    /// any options table to a non-runc shim as an empty `runtimeoptions.v1.Options`,
    /// which the shim rejects, while without options it uses its defaults (cgroupfs).
    /// So runc's `SystemdCgroup = true` cannot be matched on 1.6: [`Entry::checked`]
    /// refuses that combination.
    ShimPathAsType,
}

impl EntryForm {
    pub fn for_version(containerd: &ContainerdVersion) -> Self {
        if (containerd.major, containerd.minor) < (1, 7) {
            Self::ShimPathAsType
        } else {
            Self::RuntimePath
        }
    }
}

/// Adds (or repairs) our runtime entry in the main containerd config.
///
/// `old` empty (or only whitespace) means "no config file": the result is the embedded
/// `containerd config default` of that containerd plus our entry, which is what
/// containerd would have run with, made explicit.
pub fn add_runtime(old: &str, rt: &RuntimeSpec, containerd: &ContainerdVersion) -> Result<Edit> {
    let missing = old.trim().is_empty();
    let base = if missing {
        embedded_default(containerd)?
    } else {
        old
    };
    let mut doc = parse(base, "the containerd config")?;
    let schema = Schema::detect(&doc)?;
    schema.check_accepted_by(containerd)?;
    let entry = resolve_entry(rt, &doc, schema, containerd)?;
    let changed = upsert_entry(&mut doc, schema, &entry)?;
    if changed || missing {
        Ok(Edit::Changed(doc.to_string()))
    } else {
        Ok(Edit::Unchanged)
    }
}

/// Removes our runtime entry. When a backup is known and `current` is exactly what our
/// install made of it, the original comes back byte for byte (or the file goes, if
/// there was none); otherwise exactly our table is removed and nothing else.
pub fn remove_runtime(
    current: &str,
    backup: Option<Backup<'_>>,
    rt: &RuntimeSpec,
    containerd: &ContainerdVersion,
) -> Result<Removal> {
    if let Some(backup) = backup {
        let original = match backup {
            Backup::FileWasAbsent => "",
            Backup::Original(text) => text,
        };
        // Recomputing our install from the backup tells us whether anyone edited the
        // file since, without trusting timestamps or a stored hash. A backup that no
        // longer installs cleanly just means "fall back to removing our table".
        if let Ok(Edit::Changed(ours)) = add_runtime(original, rt, containerd)
            && ours == current
        {
            return Ok(match backup {
                Backup::FileWasAbsent => Removal::DeleteFile,
                Backup::Original(text) => Removal::RestoreOriginal(text.to_owned()),
            });
        }
    }
    if current.trim().is_empty() {
        return Ok(Removal::Unchanged);
    }
    let mut doc = parse(current, "the containerd config")?;
    let schema = Schema::detect(&doc)?;
    if remove_entry(&mut doc, schema, &rt.handler)? {
        Ok(Removal::Changed(doc.to_string()))
    } else {
        Ok(Removal::Unchanged)
    }
}

pub(crate) fn resolve_entry<'a>(
    rt: &'a RuntimeSpec,
    doc: &DocumentMut,
    schema: Schema,
    containerd: &ContainerdVersion,
) -> Result<Entry<'a>> {
    let systemd_cgroup = match rt.systemd_cgroup {
        SystemdCgroupMode::Enabled => true,
        SystemdCgroupMode::Disabled => false,
        SystemdCgroupMode::Auto => runc_systemd_cgroup(doc, schema)?,
    };
    Entry::checked(rt, systemd_cgroup, containerd)
}

/// Puts our table in place; `Ok(false)` when it was already exactly right.
pub(crate) fn upsert_entry(
    doc: &mut DocumentMut,
    schema: Schema,
    entry: &Entry<'_>,
) -> Result<bool> {
    let path = schema.runtimes_path();
    let handler = entry.handler.as_str();
    if let Some(existing) = lookup(doc.as_table(), &path)?
        .and_then(|runtimes| runtimes.as_table_like())
        .and_then(|runtimes| runtimes.get(handler))
    {
        let owned = existing
            .as_table()
            .is_some_and(|t| table_owned(t, entry.handler));
        if !owned {
            return Err(Error::HandlerNotOwned {
                handler: handler.to_owned(),
                path: display_path(&[&path[..], &[handler]].concat()),
            });
        }
    }
    let runtimes = ensure_table_path(doc.as_table_mut(), &path)?;
    let indent = Indent::from_siblings(runtimes, handler);
    let desired = entry_table(entry, &indent);
    if let Some(existing) = runtimes.get_mut(handler).and_then(Item::as_table_mut) {
        if canonical(existing) == canonical(&desired) {
            return Ok(false);
        }
        // Our table drifted (someone edited inside it): rewrite its content, keep
        // where it is and the comments above it.
        let position = existing.position();
        let decor = existing.decor().clone();
        *existing = desired;
        existing.set_position(position);
        *existing.decor_mut() = decor;
        return Ok(true);
    }
    runtimes.insert(handler, Item::Table(desired));
    Ok(true)
}

/// Removes our table; `Ok(false)` when absent. Refuses a foreign table of that name.
pub(crate) fn remove_entry(
    doc: &mut DocumentMut,
    schema: Schema,
    handler: &HandlerName,
) -> Result<bool> {
    let path = schema.runtimes_path();
    let Some(runtimes) = lookup(doc.as_table(), &path)? else {
        return Ok(false);
    };
    let Some(runtimes) = runtimes.as_table_like() else {
        return Ok(false);
    };
    let Some(existing) = runtimes.get(handler.as_str()) else {
        return Ok(false);
    };
    if !existing.as_table().is_some_and(|t| table_owned(t, handler)) {
        return Err(Error::HandlerNotOwned {
            handler: handler.to_string(),
            path: display_path(&[&path[..], &[handler.as_str()]].concat()),
        });
    }
    let runtimes = ensure_table_path(doc.as_table_mut(), &path)?;
    runtimes.remove(handler.as_str());
    Ok(true)
}

pub(crate) fn table_owned(table: &Table, handler: &HandlerName) -> bool {
    table
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .is_some_and(|p| decor_has_marker(p, handler))
}

/// Indentation copied from a sibling runtime (containerd's own dumps indent nested
/// tables), so our lines look like the file around them.
pub(crate) struct Indent {
    pub header: String,
    pub key: String,
}

impl Indent {
    pub fn flat() -> Self {
        Self {
            header: String::new(),
            key: "  ".into(),
        }
    }

    fn from_siblings(runtimes: &Table, ours: &str) -> Self {
        let sibling = runtimes
            .iter()
            .filter(|(k, _)| *k != ours)
            .find_map(|(_, item)| item.as_table());
        let Some(sibling) = sibling else {
            return Self::flat();
        };
        let header = sibling
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .map(|p| p.rsplit('\n').next().unwrap_or(""))
            .filter(|s| s.chars().all(|c| c == ' ' || c == '\t'))
            .unwrap_or("")
            .to_owned();
        let key = sibling
            .iter()
            .next()
            .and_then(|(k, _)| sibling.key(k))
            .and_then(|k| k.leaf_decor().prefix())
            .and_then(|p| p.as_str())
            .filter(|s| s.chars().all(|c| c == ' ' || c == '\t'))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{header}  "));
        Self { header, key }
    }
}

/// Our table in the entry's form (see [`EntryForm`]), with the ownership marker above
/// the header.
pub(crate) fn entry_table(entry: &Entry<'_>, indent: &Indent) -> Table {
    let mut table = Table::new();
    table.decor_mut().set_prefix(format!(
        "\n{h}{marker}\n{h}",
        h = indent.header,
        marker = marker_line(entry.handler)
    ));
    let runtime_type = match entry.form {
        EntryForm::RuntimePath => RUNTIME_TYPE,
        EntryForm::ShimPathAsType => entry.shim_path,
    };
    push_key(&mut table, "runtime_type", value(runtime_type), &indent.key);
    if entry.form == EntryForm::RuntimePath {
        push_key(
            &mut table,
            "runtime_path",
            value(entry.shim_path),
            &indent.key,
        );
    }
    let mut annotations = toml_edit::Array::new();
    annotations.push(POD_ANNOTATIONS);
    push_key(
        &mut table,
        "pod_annotations",
        value(annotations),
        &indent.key,
    );
    if entry.form == EntryForm::ShimPathAsType {
        return table;
    }
    let mut options = Table::new();
    let options_header = format!("{}  ", indent.header);
    options
        .decor_mut()
        .set_prefix(format!("\n{options_header}"));
    push_key(
        &mut options,
        "SystemdCgroup",
        value(entry.systemd_cgroup),
        &format!("{}  ", indent.key),
    );
    table.insert("options", Item::Table(options));
    table
}

fn push_key(table: &mut Table, name: &str, item: Item, indent: &str) {
    let mut key = Key::new(name);
    key.leaf_decor_mut().set_prefix(indent);
    key.leaf_decor_mut().set_suffix(" ");
    table.insert_formatted(&key, item);
}

/// Layout-free content of a table, to tell "already right" from "drifted".
fn canonical(table: &Table) -> Vec<(String, String)> {
    fn walk(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<(String, String)>) {
        for (k, item) in table.iter() {
            let path = if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            match item {
                Item::Value(Value::InlineTable(t)) => walk(t, &path, out),
                Item::Value(Value::String(s)) => out.push((path, format!("s:{}", s.value()))),
                Item::Value(v) => out.push((path, v.clone().decorated("", "").to_string())),
                Item::Table(t) => walk(t, &path, out),
                Item::ArrayOfTables(a) => out.push((path, a.to_string())),
                Item::None => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(table, "", &mut out);
    out.sort();
    out
}
