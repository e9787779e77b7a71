//! One module per command, and nothing else (tested below, with the rule
//! that commands depend on one another without a cycle: `fetch` may use
//! `prefetch`, never the reverse). Each takes explicit options and a
//! repository, never global configuration, and returns errors to `main`.

pub mod archive;
pub mod backup;
pub mod check;
pub mod daemon;
pub mod drill;
pub mod expire;
pub mod fetch;
pub mod list;
pub mod prefetch;
pub mod rekey;
pub mod restore;
pub mod standby;
pub mod verify;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// The commands: the only modules directly in `src/ops/`.
    const COMMANDS: [&str; 13] = [
        "archive", "backup", "check", "daemon", "drill", "expire", "fetch", "list", "prefetch", "rekey", "restore",
        "standby", "verify",
    ];

    fn ops_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops")
    }

    /// Every `.rs` file under `dir`, with its path below `src/ops/`.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ops is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The module names a path that starts right after `prefix` names:
    /// `list::x` gives `list`, `{list, restore::y}` gives both.
    fn names_after(code: &str, prefix: &str) -> Vec<String> {
        let ident = |s: &str| s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
        let mut out = Vec::new();
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth < 0
                    })
                    .map_or(group.len(), |(i, _)| i);
                // Top-level items of the group only.
                let mut depth = 0;
                let mut item = String::new();
                for c in group[..end].chars().chain([',']) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => out.push(ident(&std::mem::take(&mut item))),
                        _ if depth == 0 => item.push(c),
                        _ => {}
                    }
                }
            } else {
                out.push(ident(rest));
            }
        }
        out.retain(|n| !n.is_empty() && n != "self");
        out
    }

    /// Which commands each command's library code (not its tests) refers to.
    fn edges() -> BTreeMap<String, BTreeSet<String>> {
        let root = ops_dir();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in files {
            let rel = path.strip_prefix(&root).expect("below src/ops");
            let parts: Vec<&str> = rel.iter().map(|p| p.to_str().expect("UTF-8 name")).collect();
            if parts == ["mod.rs"] || parts.last() == Some(&"tests.rs") {
                continue;
            }
            let command = parts[0].trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).expect("readable");
            let code: String = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut used = names_after(&code, "crate::ops::");
            // `super::` is ops/ itself only in a command's own root file
            // (ops/X.rs, ops/X/mod.rs); one level down, `super::super::` is.
            let root_file = parts.len() == 1 || parts == [command.as_str(), "mod.rs"];
            let up = if root_file {
                "super::"
            } else if parts.len() == 2 {
                "super::super::"
            } else {
                ""
            };
            if !up.is_empty() {
                let code = if up == "super::" { code.replace("super::super::", "") } else { code.clone() };
                used.extend(names_after(&code, up));
            }
            let entry = edges.entry(command.clone()).or_default();
            entry.extend(used.into_iter().filter(|u| *u != command && COMMANDS.contains(&u.as_str())));
        }
        edges
    }

    #[test]
    fn ops_holds_commands_only() {
        let mut strays = Vec::new();
        for entry in std::fs::read_dir(ops_dir()).expect("src/ops is readable") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            let module = if path.is_dir() { name.as_str() } else { name.trim_end_matches(".rs") };
            if name != "mod.rs" && !COMMANDS.contains(&module) {
                strays.push(name);
            }
        }
        assert!(strays.is_empty(), "not a command, so not in src/ops/: {strays:?} (commands: {COMMANDS:?})");
    }

    #[test]
    fn commands_depend_on_one_another_without_a_cycle() {
        let edges = edges();
        // Known edges, so that the scan is seen to find them.
        assert!(edges["fetch"].contains("prefetch"), "{edges:?}");
        assert!(edges["standby"].contains("restore"), "{edges:?}");
        // Depth-first search; a grey node met again closes a cycle.
        fn visit<'a>(
            n: &'a str,
            edges: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<&'a str>> {
            if let Some(i) = path.iter().position(|p| *p == n) {
                let mut cycle = path[i..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            if !done.insert(n) {
                return None;
            }
            path.push(n);
            for next in edges.get(n).into_iter().flatten() {
                if let Some(c) = visit(next, edges, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for n in edges.keys() {
            if let Some(cycle) = visit(n, &edges, &mut Vec::new(), &mut done) {
                panic!("import cycle between commands: {} (all: {edges:?})", cycle.join(" -> "));
            }
        }
    }
}
