//! The contract's modules build on one another in one direction (see the crate docs): each
//! imports only from the modules listed before it. A newcomer can then read them in order, and
//! a change that makes two modules need each other fails here instead of growing a cycle.

use std::collections::BTreeSet;
use std::path::Path;

/// The layers, lowest first.
const ORDER: &[&str] = &[
    "error",
    "hex",
    "parameters",
    "network",
    "circuit",
    "simulate",
    "packed",
    "file",
    "client_spec",
    "bulk_spec",
    "borderline",
    "preprocess",
];

/// Every `crate::<module>` a source file names outside comments.
fn named_modules(source: &str) -> BTreeSet<String> {
    source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .flat_map(|code| code.split("crate::").skip(1))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The top-level module each source file belongs to, with its text.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = top.to_str().unwrap().trim_end_matches(".rs").to_owned();
            out.push((top, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out
}

#[test]
fn modules_import_only_from_lower_layers() {
    let sources = sources();
    let mut checked = BTreeSet::new();
    for (module, source) in &sources {
        // The crate root re-exports, and `testing` is a doc-test helper above everything.
        if module == "lib" || module == "testing" {
            continue;
        }
        let rank = ORDER
            .iter()
            .position(|m| m == module)
            .unwrap_or_else(|| panic!("module {module} is not in the layer order"));
        for named in named_modules(source) {
            if named == *module {
                continue;
            }
            let named_rank = ORDER
                .iter()
                .position(|m| *m == named)
                .unwrap_or_else(|| panic!("{module} names crate::{named}, which is no layer"));
            assert!(
                named_rank < rank,
                "{module} imports crate::{named}, a layer above it"
            );
        }
        checked.insert(module.clone());
    }
    assert_eq!(checked.len(), ORDER.len(), "every layer has a source file");
}

#[test]
fn the_scan_sees_imports() {
    let named = named_modules("use crate::network::{Shape};\n// crate::file in a comment\n");
    assert_eq!(named, BTreeSet::from(["network".to_owned()]));
}
