//! A drop-in file that is ours as a whole (k0s `containerd.d`, containerd 2.x conf.d):
//! created by us, rewritten by us, deleted by us, and never touched if it is not ours.

use toml_edit::DocumentMut;

use crate::edit::{Edit, Entry, Indent, Removal, entry_table};
use crate::error::{Error, Result};
use crate::ownership::file_marker_line;
use crate::schema::Schema;
use crate::spec::HandlerName;
use std::path::Path;

/// The whole drop-in: file marker, `version`, our table. A drop-in is a complete config
/// fragment, so it states its schema itself (containerd migrates each import by it).
pub(crate) fn dropin_text(entry: &Entry<'_>, schema: Schema) -> String {
    let mut doc = DocumentMut::new();
    doc.insert("version", toml_edit::value(schema.number()));
    doc.key_mut("version")
        .expect("just inserted")
        .leaf_decor_mut()
        .set_prefix(format!("{}\n", file_marker_line(entry.handler)));
    let runtimes = crate::doc::ensure_table_path(doc.as_table_mut(), &schema.runtimes_path())
        .expect("fresh document has no conflicting keys");
    runtimes.insert(
        entry.handler.as_str(),
        toml_edit::Item::Table(entry_table(entry, &Indent::flat())),
    );
    doc.to_string()
}

fn is_ours(text: &str, handler: &HandlerName) -> bool {
    text.lines().next() == Some(file_marker_line(handler).as_str())
}

pub(crate) fn add_dropin(
    existing: Option<&str>,
    entry: &Entry<'_>,
    schema: Schema,
    file: &Path,
) -> Result<Edit> {
    let wanted = dropin_text(entry, schema);
    match existing {
        None => Ok(Edit::Changed(wanted)),
        Some(text) if text == wanted => Ok(Edit::Unchanged),
        Some(text) if is_ours(text, entry.handler) => Ok(Edit::Changed(wanted)),
        Some(_) => Err(Error::ForeignFile {
            file: file.to_owned(),
        }),
    }
}

pub(crate) fn remove_dropin(
    existing: Option<&str>,
    handler: &HandlerName,
    file: &Path,
) -> Result<Removal> {
    match existing {
        None => Ok(Removal::Unchanged),
        Some(text) if is_ours(text, handler) => Ok(Removal::DeleteFile),
        Some(_) => Err(Error::ForeignFile {
            file: file.to_owned(),
        }),
    }
}
