//! Small helpers over `toml_edit` shared by the edit functions: parsing with a useful
//! error, and walking a key path that must consist of tables.

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use crate::error::{Error, Result};

pub(crate) fn parse(text: &str, what: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .map_err(|source| Error::NotToml {
            what: what.to_owned(),
            source: Box::new(source),
        })
}

/// `plugins."io.containerd.grpc.v1.cri".containerd` for messages; quoted like TOML.
pub(crate) fn display_path(path: &[&str]) -> String {
    path.iter()
        .map(|k| {
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                (*k).to_owned()
            } else {
                format!("{k:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub(crate) fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}

/// Read-only walk: `Ok(None)` when a key is absent, an error when something on the way
/// is not a table (inline tables are fine for reading).
pub(crate) fn lookup<'a>(root: &'a Table, path: &[&str]) -> Result<Option<&'a Item>> {
    let mut current: &dyn TableLike = root;
    for (i, key) in path.iter().enumerate() {
        let Some(item) = current.get(key) else {
            return Ok(None);
        };
        if i + 1 == path.len() {
            return Ok(Some(item));
        }
        current = item.as_table_like().ok_or_else(|| Error::UnexpectedType {
            path: display_path(&path[..=i]),
            expected: "a table",
            found: type_name(item),
        })?;
    }
    Ok(None)
}

/// Mutable walk that creates missing tables as *implicit* ones, so that a table we add
/// deep down renders as one header and nothing else, and disappears again (byte for
/// byte) when we remove it. Refuses inline tables: we would have to rewrite the
/// admin's one-line table into another shape.
pub(crate) fn ensure_table_path<'a>(root: &'a mut Table, path: &[&str]) -> Result<&'a mut Table> {
    let mut current = root;
    for (i, key) in path.iter().enumerate() {
        let item = current.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        let found = type_name(item);
        current = item.as_table_mut().ok_or_else(|| Error::UnexpectedType {
            path: display_path(&path[..=i]),
            expected: "a standard table ([header] or dotted keys)",
            found,
        })?;
    }
    Ok(current)
}
