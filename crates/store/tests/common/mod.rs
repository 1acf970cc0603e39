//! Helpers shared by the store's test binaries.

/// The newest migration this build carries for `store` (`sqlite` or `postgres`): the
/// number its newest file starts with.
pub fn newest_migration(store: &str) -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(store);
    std::fs::read_dir(dir)
        .expect("the migrations directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .expect("at least one migration")
}
