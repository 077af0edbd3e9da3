//! The layering of the core, checked on its sources: every `crate::` path in a module of a
//! layer names only the modules that layer may use (see the crate docs in `lib.rs`), and SIMD
//! intrinsics (`std::arch`, `#[target_feature]`) appear only under `kernels/x86/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each top-level module may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("cpu", &[]),
    ("pool", &["error"]),
    ("eviction", &["error"]),
    ("kernels", &["cpu", "error", "pool"]),
    ("store", &["cpu", "error", "pool", "eviction", "kernels"]),
    ("sim", &["error", "eviction"]),
    ("lib", &["cpu", "error", "pool", "eviction", "kernels", "store", "sim"]),
];

/// Items re-exported at the crate root, by the module they come from.
const ROOT_ITEMS: &[(&str, &str)] = &[("CoreError", "error"), ("Result", "error")];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line (empty for a comment line).
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        ""
    } else {
        t
    }
}

/// The top-level modules a line names through `crate::` (a brace group `crate::{A, b::C}` too).
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = &rest[..i];
        rest = &rest[i + "crate::".len()..];
        // Part of a longer name (`$crate::` in a macro is the crate itself, so it counts).
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let head = part.trim().split("::").next().unwrap_or("").trim().to_owned();
                if !head.is_empty() {
                    out.push(head);
                }
            }
        } else {
            let head: String =
                rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push(head);
        }
    }
    out
}

#[test]
fn modules_import_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "sources not found under {}", src.display());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs");
        let ok = allowed.get(module).unwrap_or_else(|| {
            panic!("{}: module {module:?} has no layer in ALLOWED", rel.display())
        });
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            for r in crate_refs(line) {
                let target =
                    ROOT_ITEMS.iter().find(|(item, _)| *item == r).map_or(r.as_str(), |x| x.1);
                if target != module && !ok.contains(&target) {
                    bad.push(format!(
                        "{}:{}: {module} uses {target}: {line}",
                        rel.display(),
                        n + 1
                    ));
                }
            }
            if (line.contains("std::arch::x86_64") || line.contains("#[target_feature"))
                && !rel.starts_with("kernels/x86")
            {
                bad.push(format!(
                    "{}:{}: intrinsics outside kernels/x86: {line}",
                    rel.display(),
                    n + 1
                ));
            }
            // `super::super::` from a top-level module's file could reach another layer.
            if line.contains("super::super::") && rel.components().count() <= 2 {
                bad.push(format!("{}:{}: super::super:: out of {module}", rel.display(), n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "forbidden dependencies:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_a_forbidden_edge() {
    assert_eq!(crate_refs("use crate::store::{AlignedBuf, Store};"), ["store"]);
    assert_eq!(crate_refs("use crate::{CoreError, Result};"), ["CoreError", "Result"]);
    assert_eq!(crate_refs("let p = crate::pool::install(|| crate::sim::x());"), ["pool", "sim"]);
    assert_eq!(crate_refs("type B = $crate::kernels::x86::avx2::Avx2;"), ["kernels"]);
    assert!(crate_refs("use my_crate::store;").is_empty());
}
