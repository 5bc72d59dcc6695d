//! How we recognise what we wrote.
//!
//! Ownership is a TOML *comment* directly above our runtime table's header (toml_edit
//! keeps it as the table's decor, so it survives every edit of the rest of the file).
//! We chose a comment over a marker key because containerd must not see it: checked
//! with `containerd config dump`, 1.6.20/1.7.24 silently ignore an unknown key in a
//! runtime table, but 2.1.9 logs "Ignoring unknown key in TOML for plugin ... strict
//! mode" at every start, and a key inside `options` would be handed to the shim.
//! The comment carries the handler name, so a copied-and-renamed table is not ours.
//! Go templates (k3s/RKE2) copy comments into the rendered config verbatim, so the
//! same marker identifies our entry there; it also opens our block in a template.

use crate::spec::HandlerName;

const PREFIX: &str = "# wasm-installer: managed runtime handler";

/// `# wasm-installer: managed runtime handler "wasm"; do not edit, uninstall removes it`
pub fn marker_line(handler: &HandlerName) -> String {
    format!("{PREFIX} \"{handler}\"; do not edit, uninstall removes it")
}

/// Closes our block in a Go template, where there is no TOML structure to end it.
pub fn end_marker_line(handler: &HandlerName) -> String {
    format!("# wasm-installer: end of runtime handler \"{handler}\"")
}

/// First line of a drop-in file we own as a whole.
pub fn file_marker_line(handler: &HandlerName) -> String {
    format!(
        "# wasm-installer: managed file for runtime handler \"{handler}\"; uninstall deletes it"
    )
}

/// Whether a decor prefix (the comments above a table header) carries our marker for
/// this handler.
pub fn decor_has_marker(decor_prefix: &str, handler: &HandlerName) -> bool {
    let wanted = format!("{PREFIX} \"{handler}\"");
    decor_prefix
        .lines()
        .any(|line| line.trim_start().starts_with(&wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_per_handler() {
        let a = HandlerName::new("wasm").unwrap();
        let b = HandlerName::new("wasm2").unwrap();
        let prefix = format!("\n    {}\n    ", marker_line(&a));
        assert!(decor_has_marker(&prefix, &a));
        assert!(!decor_has_marker(&prefix, &b));
        assert!(!decor_has_marker("\n# some admin comment\n", &a));
    }
}
