//! Build script: rebuild the crate when a migration is added or changed.
//!
//! `sqlx::migrate!` embeds the migration files at compile time, but on stable Rust cargo
//! only notices edits to files that already existed; a new migration would be silently
//! left out of the binary without this.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
