//! `hexray-crypto` is the only crate that names TFHE-rs: the engine composes its operations
//! (`hexray_crypto::lwe`) and never reaches past them. A TFHE-rs upgrade then touches one
//! crate, and the atomic-pattern dispatch cannot be written twice again.

use std::path::Path;

#[test]
fn the_engine_names_no_tfhe_path_and_has_no_tfhe_dependency() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        !manifest
            .lines()
            .any(|line| line.trim_start().starts_with("tfhe")),
        "engine/Cargo.toml depends on tfhe"
    );
    // The engine's sources are one flat folder; a subfolder would have to be read here too.
    let mut files = 0;
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let path = entry.unwrap().path();
        assert!(path.is_file(), "{}: read its files here", path.display());
        files += 1;
        let source = std::fs::read_to_string(&path).unwrap();
        for (n, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("tfhe"),
                "{}:{}: {line}",
                path.display(),
                n + 1
            );
        }
    }
    assert!(files >= 3, "read {files} source files");
}
