//! k3s / RKE2 containerd config templates (`config.toml.tmpl`, `config-v3.toml.tmpl`).
//!
//! These are Go `text/template` files, not TOML: `{{ ... }}` actions may sit anywhere,
//! so they cannot go through a TOML parser. k3s documents (docs.k3s.io "Configuring
//! containerd", base template available since the September 2023 releases, e.g.
//! v1.27.5+k3s1; RKE2 shares that agent code) that a template may start with
//! `{{ template "base" . }}` -- k3s's own generated config -- and append extra TOML
//! tables after it. That is exactly what we do:
//!
//! - no template: we create `{{ template "base" . }}` + our block, and own the file;
//! - a template exists: we append our block at its end, where no action can be open
//!   (a parsed template's actions are balanced), and touch nothing else.
//!
//! Our block is TOML made with toml_edit, framed by a marker comment line and an end
//! line, so it can be found, replaced and removed textually. Comments pass through
//! template rendering unchanged, so the rendered config.toml carries the marker too,
//! and ownership checks there work as in any other config.
//!
//! A template cannot be parsed, so a foreign table with our handler name is looked
//! for two ways: a header line naming it in the template (outside our block), and,
//! when k3s has rendered a config.toml, a foreign table in it (k3s auto-adds runtimes
//! such as `wasmtime` or `spin` when it finds their shims on PATH; a second table of
//! the same name would make the rendered file invalid TOML).

use std::path::Path;

use toml_edit::DocumentMut;

use crate::doc::{display_path, ensure_table_path, lookup, parse};
use crate::edit::{Backup, Edit, Entry, Indent, Removal, entry_table, table_owned};
use crate::error::{Error, Result};
use crate::ownership::{end_marker_line, marker_line};
use crate::schema::Schema;
use crate::spec::HandlerName;

/// First line of a template we create.
pub const BASE_INCLUDE: &str = "{{ template \"base\" . }}";

/// Our framed block, ending in a newline.
pub(crate) fn block_text(entry: &Entry<'_>, schema: Schema) -> String {
    let mut doc = DocumentMut::new();
    let runtimes = ensure_table_path(doc.as_table_mut(), &schema.runtimes_path())
        .expect("fresh document has no conflicting keys");
    let mut table = entry_table(entry, &Indent::flat());
    // The marker is the block's first line; no blank line inside the frame.
    table
        .decor_mut()
        .set_prefix(format!("{}\n", marker_line(entry.handler)));
    runtimes.insert(entry.handler.as_str(), toml_edit::Item::Table(table));
    format!("{}{}\n", doc, end_marker_line(entry.handler))
}

/// Where our block is: byte range of its lines, including the end line's newline.
fn find_block(text: &str, handler: &HandlerName, file: &Path) -> Result<Option<(usize, usize)>> {
    let begin = marker_line(handler);
    let end = end_marker_line(handler);
    let damaged = |reason| Error::DamagedManagedBlock {
        handler: handler.to_string(),
        file: file.to_owned(),
        reason,
    };
    let mut start = None;
    let mut found = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == begin {
            if start.is_some() || found.is_some() {
                return Err(damaged("more than one start line"));
            }
            start = Some(offset);
        } else if trimmed == end {
            match start.take() {
                Some(s) if found.is_none() => found = Some((s, offset + line.len())),
                _ => return Err(damaged("an end line without a start line")),
            }
        }
        offset += line.len();
    }
    if start.is_some() {
        return Err(damaged("a start line without an end line"));
    }
    Ok(found)
}

/// A table header line in the template that names our handler (outside our block).
fn foreign_header(text: &str, handler: &HandlerName) -> Option<String> {
    let needles = [
        format!(".runtimes.{handler}]"),
        format!(".runtimes.{handler}."),
    ];
    text.lines().find_map(|line| {
        let t = line.trim();
        if !t.starts_with('[') {
            return None;
        }
        let squashed: String = t
            .chars()
            .filter(|c| !matches!(c, '"' | '\'' | ' ' | '\t'))
            .collect();
        needles
            .iter()
            .any(|n| squashed.contains(n.as_str()))
            .then(|| t.to_owned())
    })
}

/// Refuses when k3s's rendered config has a table of our name that is not ours.
fn check_rendered(rendered: Option<&str>, schema: Schema, handler: &HandlerName) -> Result<()> {
    let Some(rendered) = rendered else {
        return Ok(());
    };
    let doc = parse(rendered, "the rendered containerd config")?;
    let mut path = schema.runtimes_path().to_vec();
    path.push(handler.as_str());
    if let Some(item) = lookup(doc.as_table(), &path)?
        && !item.as_table().is_some_and(|t| table_owned(t, handler))
    {
        return Err(Error::HandlerNotOwned {
            handler: handler.to_string(),
            path: format!("{} (in the rendered config)", display_path(&path)),
        });
    }
    Ok(())
}

/// Adds (or refreshes) our block. `old` is None when the template does not exist.
pub(crate) fn add_to_template(
    old: Option<&str>,
    rendered: Option<&str>,
    entry: &Entry<'_>,
    schema: Schema,
    file: &Path,
) -> Result<Edit> {
    check_rendered(rendered, schema, entry.handler)?;
    let block = block_text(entry, schema);
    let Some(old) = old else {
        return Ok(Edit::Changed(format!("{BASE_INCLUDE}\n\n{block}")));
    };
    let (outside, existing) = match find_block(old, entry.handler, file)? {
        Some((s, e)) => (format!("{}{}", &old[..s], &old[e..]), Some((s, e))),
        None => (old.to_owned(), None),
    };
    if let Some(line) = foreign_header(&outside, entry.handler) {
        return Err(Error::HandlerNotOwned {
            handler: entry.handler.to_string(),
            path: format!("{line} (in {})", file.display()),
        });
    }
    match existing {
        Some((s, e)) if old[s..e] == block => Ok(Edit::Unchanged),
        Some((s, e)) => Ok(Edit::Changed(format!("{}{block}{}", &old[..s], &old[e..]))),
        None => {
            let mut new = old.to_owned();
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push('\n');
            new.push_str(&block);
            Ok(Edit::Changed(new))
        }
    }
}

/// Removes our block: the whole file if we created it and nobody edited it since,
/// the original bytes if nobody edited it since, else just our block.
pub(crate) fn remove_from_template(
    current: &str,
    backup: Option<Backup<'_>>,
    entry: &Entry<'_>,
    schema: Schema,
    file: &Path,
) -> Result<Removal> {
    if let Some(backup) = backup {
        let original = match backup {
            Backup::FileWasAbsent => None,
            Backup::Original(t) => Some(t),
        };
        if let Ok(Edit::Changed(ours)) = add_to_template(original, None, entry, schema, file)
            && ours == current
        {
            return Ok(match backup {
                Backup::FileWasAbsent => Removal::DeleteFile,
                Backup::Original(t) => Removal::RestoreOriginal(t.to_owned()),
            });
        }
    }
    let Some((s, e)) = find_block(current, entry.handler, file)? else {
        return Ok(Removal::Unchanged);
    };
    // Take the blank separator line we put before the block with it.
    let s = if current[..s].ends_with("\n\n") {
        s - 1
    } else {
        s
    };
    Ok(Removal::Changed(format!(
        "{}{}",
        &current[..s],
        &current[e..]
    )))
}
