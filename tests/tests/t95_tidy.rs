//! Tidiness that review tends to miss, checked on the source:
//!
//! - the engine stays pure: no clock, thread, global randomness or I/O in
//!   `engine/src` outside its test helpers (the engine's contract in
//!   DESIGN.md; determinism of the simulator depends on it);
//! - the modules of `node/src` import each other without cycles (a module
//!   and its own submodules are one), so the layout shows the architecture;
//! - functions longer than [`FUNCTION_LINES_MAX`] lines in engine, wal, net
//!   and node are rare and justified: each is listed, with the reason, in
//!   `tests/tidy/long_functions.txt`; a new one fails this test until it is
//!   split or listed, and a listed one that got shorter must leave the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a function may have before it needs a reason.
const FUNCTION_LINES_MAX: usize = 70;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The source's lines with their numbers, without the items marked
/// `#[cfg(test)]` (tests may do anything): such an item runs from the
/// attribute to the closing brace at the item's indent.
fn without_tests(source: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut kept = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if lines[index].trim() != "#[cfg(test)]" {
            kept.push((index + 1, lines[index]));
            index += 1;
            continue;
        }
        let item = (index + 1..lines.len()).find(|&at| !lines[at].trim().is_empty()).unwrap_or(lines.len());
        let Some(line) = lines.get(item) else { break };
        let indent = &line[..line.len() - line.trim_start().len()];
        if line.trim_end().ends_with(';') {
            index = item + 1;
            continue;
        }
        let closing = format!("{indent}}}");
        index = (item..lines.len()).find(|&at| lines[at].trim_end() == closing).map_or(lines.len(), |end| end + 1);
    }
    kept
}

#[test]
fn the_engine_reads_no_clock_starts_no_thread_and_does_no_io() {
    let forbidden = [
        ("Instant::now", "reads the clock"),
        ("SystemTime", "reads the clock"),
        ("thread::spawn", "starts a thread"),
        ("std::thread", "uses threads"),
        ("thread_rng", "uses the global random generator"),
        ("rand::", "uses a random generator that is not the seeded one in the config"),
        ("std::fs", "does file I/O"),
        ("std::net", "does network I/O"),
        ("tokio", "uses an async runtime"),
        ("println!", "writes to standard output"),
        ("eprintln!", "writes to standard error"),
    ];
    let mut found = Vec::new();
    for path in rust_files(&workspace().join("engine/src")) {
        // The in-memory test cluster is a test helper, not the engine.
        if path.ends_with("testing.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable source");
        for (number, line) in without_tests(&source) {
            let code = line.split("//").next().unwrap_or("");
            for (pattern, what) in forbidden {
                if code.contains(pattern) {
                    found.push(format!("{}:{number}: {what}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the engine must stay pure:\n{}", found.join("\n"));
}

/// The top-level module of `node/src` a file belongs to.
fn node_module(path: &Path, root: &Path) -> String {
    let relative = path.strip_prefix(root).expect("under node/src");
    let first = relative.components().next().expect("a file").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn node_modules_import_each_other_without_cycles() {
    let root = workspace().join("node/src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in rust_files(&root) {
        let module = node_module(&path, &root);
        let source = std::fs::read_to_string(&path).expect("readable source");
        for line in source.lines().map(str::trim_start) {
            let Some(rest) = line.strip_prefix("use crate::").or_else(|| line.strip_prefix("pub use crate::")) else {
                continue;
            };
            let target: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !target.is_empty() && target != module {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            panic!("node/src modules import each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}

/// The functions of a file longer than the limit: (name, first line, lines).
/// A function runs from its `fn` line to the closing brace at its indent.
fn long_functions(source: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let declaration = trimmed
            .split_once("fn ")
            .filter(|(before, _)| {
                before
                    .split_whitespace()
                    .all(|word| ["pub", "pub(crate)", "pub(super)", "async", "const", "unsafe"].contains(&word))
            })
            .map(|(_, after)| after);
        let Some(after) = declaration else {
            index += 1;
            continue;
        };
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.is_empty() || line.trim_end().ends_with(';') {
            index += 1;
            continue;
        }
        let closing = format!("{indent}}}");
        let end = (index..lines.len()).find(|&at| lines[at].trim_end() == closing).unwrap_or(lines.len() - 1);
        let count = end - index + 1;
        if count > FUNCTION_LINES_MAX {
            found.push((name, index + 1, count));
        }
        index = end + 1;
    }
    found
}

#[test]
fn long_functions_are_listed_with_a_reason() {
    let workspace = workspace();
    let listed_text = std::fs::read_to_string(workspace.join("tests/tidy/long_functions.txt")).expect("the list");
    let mut listed: BTreeMap<(String, String), String> = BTreeMap::new();
    for line in listed_text.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#')) {
        let mut parts = line.splitn(3, ' ');
        let (Some(file), Some(function), Some(reason)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("a list line is `FILE FUNCTION REASON`: {line}");
        };
        assert!(reason.len() > 20, "give a real reason for {file} {function}");
        listed.insert((file.to_string(), function.to_string()), reason.to_string());
    }
    let mut report = Vec::new();
    let mut unlisted = Vec::new();
    let mut found = BTreeSet::new();
    for crate_name in ["engine", "wal", "net", "node"] {
        for path in rust_files(&workspace.join(crate_name).join("src")) {
            let source = std::fs::read_to_string(&path).expect("readable source");
            let file = path.strip_prefix(&workspace).expect("in the workspace").display().to_string();
            for (function, line, count) in long_functions(&source) {
                report.push(format!("{file}:{line} {function}: {count} lines"));
                let key = (file.clone(), function.clone());
                if !listed.contains_key(&key) {
                    unlisted.push(format!("{file}:{line} {function} ({count} lines)"));
                }
                found.insert(key);
            }
        }
    }
    eprintln!("functions over {FUNCTION_LINES_MAX} lines:\n{}", report.join("\n"));
    let stale: Vec<String> = listed
        .keys()
        .filter(|key| !found.contains(*key))
        .map(|(file, function)| format!("{file} {function}"))
        .collect();
    assert!(
        unlisted.is_empty(),
        "functions over {FUNCTION_LINES_MAX} lines not in tests/tidy/long_functions.txt (split them, or list them with the reason they are long):\n{}",
        unlisted.join("\n")
    );
    assert!(stale.is_empty(), "listed long functions that are short now or gone (remove them):\n{}", stale.join("\n"));
}

#[test]
fn test_items_are_skipped_and_nothing_else() {
    let source =
        "use a;\n#[cfg(test)]\nmod tests {\n    fn x() {}\n}\nfn after() {}\n#[cfg(test)]\nuse b;\nfn last() {}\n";
    let kept: Vec<usize> = without_tests(source).into_iter().map(|(number, _)| number).collect();
    assert_eq!(kept, vec![1, 6, 9]);
}

#[test]
fn the_long_function_scanner_measures_what_it_should() {
    let mut source = String::from("fn short() {\n    1;\n}\n\n    pub async fn long(x: u8) -> u8 {\n");
    for _ in 0..FUNCTION_LINES_MAX {
        source.push_str("        x;\n");
    }
    source.push_str("    }\nfn declared();\n");
    assert_eq!(long_functions(&source), vec![("long".to_string(), 5, FUNCTION_LINES_MAX + 2)]);
}
