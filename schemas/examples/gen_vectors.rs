//! Rewrites `schemas/vectors/*.json` from the fixed inputs of `pairbus_schemas::vectors`.
//!
//! `cargo run -p pairbus-schemas --example gen_vectors`

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    std::fs::create_dir_all(&dir)?;
    for v in pairbus_schemas::vectors::generate() {
        let path = dir.join(format!("{}.json", v.name));
        std::fs::write(&path, pairbus_schemas::vectors::to_json(&v))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
