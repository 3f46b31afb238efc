//! The migrations embedded by this crate (`migrations/` beside its
//! `Cargo.toml`) are the repository's top-level `migrations/`, byte for byte:
//! the top-level folder is the one users and the docs refer to, the copy is
//! the one a published crate can carry.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const DIALECTS: [&str; 3] = ["postgres", "sqlite", "mysql"];

/// Every file under `dir`, by path relative to it, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes =
                    fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                let relative = path
                    .strip_prefix(root)
                    .expect("under its root")
                    .to_path_buf();
                out.insert(relative, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn embedded_migrations_are_the_top_level_ones() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let top = crate_dir.join("../../migrations");
    if !top.is_dir() {
        // Built from the published package: there is no repository around it
        // to compare with, and the copy is all there is.
        eprintln!("no repository migrations/ next to this crate: nothing to compare");
        return;
    }
    let fix = "copy them over as crates/keepsake-sqlx/migrations/README.md shows";
    for dialect in DIALECTS {
        let expected = tree(&top.join(dialect));
        let embedded = tree(&crate_dir.join("migrations").join(dialect));
        assert!(!expected.is_empty(), "migrations/{dialect} holds no file");
        let expected_names: Vec<_> = expected.keys().collect();
        let embedded_names: Vec<_> = embedded.keys().collect();
        assert_eq!(
            embedded_names, expected_names,
            "crates/keepsake-sqlx/migrations/{dialect} and migrations/{dialect} list different files: {fix}"
        );
        for (name, bytes) in &expected {
            assert!(
                embedded[name] == *bytes,
                "crates/keepsake-sqlx/migrations/{dialect}/{} differs from migrations/{dialect}/{}: {fix}",
                name.display(),
                name.display()
            );
        }
    }
}
