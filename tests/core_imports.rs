//! No two files of `src/core` import each other, directly or through
//! others: each can be read, and tested, knowing only what it imports.
//! Unit-test modules and their helpers (`testing.rs`) are left out: a test
//! uses the helper that builds what it tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each file of `src/core` and the files of `src/core` its `use` lines name.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|ext| ext == "rs") && name != "mod" && name != "testing" {
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(name, text)| {
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
            let mut used = BTreeSet::new();
            for statement in code.split(';') {
                let statement = statement.trim_start();
                let statement = statement.strip_prefix("pub ").unwrap_or(statement);
                if !statement.starts_with("use ") {
                    continue;
                }
                for prefix in ["super::", "crate::core::"] {
                    for (at, _) in statement.match_indices(prefix) {
                        let module: String = statement[at + prefix.len()..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if module != *name && names.contains(&module) {
                            used.insert(module);
                        }
                    }
                }
            }
            (name.clone(), used)
        })
        .collect()
}

/// A cycle through `from`, as the files in order, if there is one.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|file| file == from) {
        let mut found = path[at..].to_vec();
        found.push(from.to_owned());
        return Some(found);
    }
    if done.contains(from) {
        return None;
    }
    path.push(from.to_owned());
    for next in &graph[from] {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(from.to_owned());
    None
}

#[test]
fn no_file_of_the_core_imports_itself_through_others() {
    let graph = imports();
    assert!(graph.contains_key("hub") && graph["session"].contains("hub"));
    let mut done = BTreeSet::new();
    for file in graph.keys() {
        if let Some(found) = cycle(&graph, file, &mut Vec::new(), &mut done) {
            panic!("src/core imports in a cycle: {}", found.join(" -> "));
        }
    }
}
