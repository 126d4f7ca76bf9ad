//! Every leakage marker (`// LEAK` `AGE: [tag]`) in the code has a row in SECURITY.md's table, and every row
//! names a marker that exists: a new leak cannot land without being documented.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "fuzz" {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn tag_of(line: &str) -> Option<String> {
    let marker = ["// LEAK", "AGE:"].concat();
    let rest = line.split(marker.as_str()).nth(1)?.trim_start();
    let inner = rest.strip_prefix('[')?;
    Some(inner[..inner.find(']')?].to_string())
}

#[test]
fn every_leakage_marker_has_a_security_md_row() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for d in [
        "engine", "keys", "server", "client", "indexer", "cli", "benches",
    ] {
        rust_files(&root.join(d), &mut files);
    }
    let mut in_code = BTreeSet::new();
    let marker = ["// LEAK", "AGE:"].concat(); // not itself a marker
    for f in &files {
        for (i, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            if line.contains(&marker) {
                let tag = tag_of(line).unwrap_or_else(|| {
                    panic!(
                        "{}:{}: a leakage marker needs a `[tag]`",
                        f.display(),
                        i + 1
                    )
                });
                in_code.insert(tag);
            }
        }
    }
    assert!(in_code.len() >= 8, "found only {in_code:?}");
    let security = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let in_table: BTreeSet<String> = security
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `[")
                .map(|r| r[..r.find(']').unwrap()].to_string())
        })
        .collect();
    let undocumented: Vec<_> = in_code.difference(&in_table).collect();
    assert!(
        undocumented.is_empty(),
        "LEAKAGE markers without a SECURITY.md row: {undocumented:?}"
    );
    let stale: Vec<_> = in_table.difference(&in_code).collect();
    assert!(
        stale.is_empty(),
        "SECURITY.md rows without a marker in the code: {stale:?}"
    );
}
