//! Moving, backing up and restoring a node's store (issue 13 item 5): `detente store
//! migrate --to postgres://…`, `detente backup --out FILE`, `detente restore FILE`.
//!
//! Nothing is trusted on the way: before a store is copied, and after, every envelope of
//! every channel is verified against its sender's key, every stream's stored Merkle tree is
//! checked against its envelopes, and the channel's export bundle (checkpoints included) is
//! verified as `detente verify` would ([`verify_store`]).
//!
//! A restored store is marked (`store_marks.restored`), and the node refuses to start on it:
//! envelopes it signed after the backup may be held by its peers, and signing new ones
//! would reuse their sequence numbers. The link protocol carries them back (a peer answers
//! `Fetch`, `detente_node::fetch`), but asking for them and appending them is not built
//! yet.

use std::path::{Path, PathBuf};

use detente_node::config::{NodeConfig, NodeDir, DATABASE_FILE};
use detente_node::{NodeStore, RESTORED_MARK};
use detente_proto::merkle::{leaf_hash, Frontier};
use detente_proto::{bundle, PartyKey};
use detente_store::{
    AnyStore, Direction, InboxQuery, PgStore, Placement, SqliteStore, Store, StoreUrl,
};

use crate::client::Client;
use crate::{Failure, Outcome};

/// What [`verify_store`] checked.
#[derive(Debug, Default)]
pub struct Checked {
    /// Envelopes whose signatures verified.
    pub envelopes: u64,
    /// Merkle roots checked: each stream's stored tree, and each checkpoint's roots.
    pub roots: u64,
    /// A digest of each channel's export bundle, in the order of `node.toml`'s peers.
    pub digests: Vec<detente_proto::merkle::Hash>,
}

/// Verify everything of `store` for the node whose key is `me` and whose peers are `peers`.
pub async fn verify_store(
    store: &NodeStore,
    me: &PartyKey,
    peers: &[(String, PartyKey)],
) -> Result<Checked, Failure> {
    check_owner(store, me).await?;
    let mut checked = Checked::default();
    for (name, key) in peers {
        let channel_failure =
            |what: String| Failure::new(format!("the channel with {name}: {what}"));
        let charters = store
            .messages_of_kind(
                name,
                detente_proto::envelope::KIND_CHARTER,
                bundle::CHARTERS_MAX as u32,
            )
            .await
            .map_err(|e| channel_failure(e.to_string()))?
            .into_iter()
            .filter(|m| m.placement == Placement::Appended)
            .map(|m| m.bytes)
            .collect();
        // Verifies every envelope's signature and that each stream is gap-free.
        let bytes = export_bytes(store, me, key, charters)
            .await
            .map_err(channel_failure)?;
        let exported = bundle::Bundle::decode(&bytes).map_err(channel_failure)?;
        for (member, envelopes) in &exported.streams {
            let mut tree = Frontier::default();
            let mut created = Vec::new();
            for e in envelopes {
                tree.push(leaf_hash(e), &mut created);
                created.clear();
            }
            let size = envelopes.len() as u64;
            checked.envelopes += size;
            if size == 0 {
                continue;
            }
            let stored = detente_node::transcript::root_at(
                store,
                exported.channel.0,
                *member.as_bytes(),
                size,
            )
            .await
            .map_err(channel_failure)?;
            if stored != tree.root() {
                return Err(channel_failure(format!(
                    "the stored Merkle tree of stream {} does not match its {size} envelopes",
                    member.fingerprint()
                )));
            }
            checked.roots += 1;
        }
        drop(exported);
        let report = bundle::verify(&bytes);
        if let Some(problem) = report.problems.first() {
            return Err(channel_failure(format!(
                "the record does not verify: {problem}"
            )));
        }
        checked.roots += report.checkpoints;
        checked.digests.push(leaf_hash(&bytes));
    }
    Ok(checked)
}

/// The export bundle of the channel between `me` and `peer`, whole (the node streams it;
/// here it is verified and decoded at once, so its size is the channel's).
async fn export_bytes(
    store: &NodeStore,
    me: &PartyKey,
    peer: &PartyKey,
    charters: Vec<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    use detente_node::transcript::{plan_export, stream_export};
    let plan = plan_export(store, me, peer, charters).await?;
    let mut chunks = stream_export(std::sync::Arc::new(store.clone()), plan);
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        bytes.extend(chunk.map_err(|e| e.to_string())?);
    }
    Ok(bytes)
}

/// The store is this node's: what it sent is signed by `me`, what it received is not (the
/// peer's copy of a channel holds the same two streams, the other way round).
async fn check_owner(store: &NodeStore, me: &PartyKey) -> Result<(), Failure> {
    for direction in [Direction::Out, Direction::In] {
        let rows = store
            .inbox(InboxQuery {
                direction: Some(direction),
                include_system: true,
                limit: 1,
                ..InboxQuery::default()
            })
            .await
            .map_err(store_failure)?;
        if let Some(row) = rows.first() {
            if (row.sender == *me.as_bytes()) != (direction == Direction::Out) {
                return Err(Failure::new(
                    "this store belongs to another node: its sent and received envelopes are \
                     the other way round from this node's key",
                ));
            }
        }
    }
    Ok(())
}

/// This node's key and its pinned peers' keys.
fn keys(
    node: &NodeDir,
    config: &NodeConfig,
) -> Result<(PartyKey, Vec<(String, PartyKey)>), Failure> {
    let me = node.secret()?.public();
    let mut peers = Vec::new();
    for p in &config.peers {
        peers.push((p.name.clone(), p.party_key()?));
    }
    Ok((me, peers))
}

/// Refuse to go on while the node in `dir` answers: its store would change underneath.
async fn refuse_if_running(dir: &Path, what: &str) -> Outcome {
    if let Ok(client) = Client::for_dir(dir) {
        if client.healthy().await {
            return Err(
                Failure::new(format!("the node in {} is running", dir.display()))
                    .hint(format!("stop it (SIGTERM) before {what}")),
            );
        }
    }
    Ok(())
}

fn store_failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(e.to_string())
}

/// `detente store migrate --dir DIR --to postgres://…`.
pub async fn migrate(dir: &Path, to: &str) -> Outcome {
    let node = NodeDir::new(dir);
    let mut config = node.load()?;
    let default_file = node.file(DATABASE_FILE);
    let from = match StoreUrl::parse(&config.database_url, &default_file).map_err(store_failure)? {
        StoreUrl::Sqlite(path) => path.to_path_buf(),
        StoreUrl::Postgres(url) => {
            return Err(Failure::new(format!(
                "this node's store is already PostgreSQL ({})",
                detente_store::postgres::redact_url(url)
            ))
            .hint("to copy between PostgreSQL databases use pg_dump and pg_restore"));
        }
    };
    if !matches!(
        StoreUrl::parse(to, &default_file),
        Ok(StoreUrl::Postgres(_))
    ) {
        return Err(Failure::usage(format!(
            "--to {}: give a postgres://USER:PASSWORD@HOST:PORT/DB URL",
            detente_store::postgres::redact_url(to)
        )));
    }
    refuse_if_running(dir, "migrating its store").await?;
    let (me, peers) = keys(&node, &config)?;
    let source = crate::progress::open_store(&node, &config)
        .await
        .map_err(store_failure)?;
    let AnyStore::Sqlite(sqlite) = &source else {
        return Err(Failure::new("the source store is not SQLite"));
    };
    let before = verify_store(&source, &me, &peers).await.map_err(|f| {
        Failure::new(format!(
            "the SQLite store does not verify, nothing was copied: {}",
            f.error
        ))
    })?;
    let target = PgStore::open(to).await.map_err(store_failure)?;
    let copied = detente_store::copy::sqlite_to_postgres(sqlite, &target)
        .await
        .map_err(store_failure)?;
    let target = AnyStore::Postgres(target);
    let after = verify_store(&target, &me, &peers).await;
    let same = match &after {
        Ok(a) => a.digests == before.digests && same_counts(&source, &target).await,
        Err(_) => false,
    };
    target.close().await;
    source.close().await;
    if !same {
        let why = after
            .err()
            .map_or_else(|| "it differs from the source".to_string(), |f| f.error);
        return Err(Failure::new(format!(
            "the copy in PostgreSQL does not verify ({why}); node.toml still names the SQLite store"
        ))
        .hint("drop the target database, create it empty again, and retry"));
    }
    config.set("database_url", to)?;
    node.save(&config)?;
    let rows: u64 = copied.tables.iter().map(|(_, n)| n).sum();
    println!(
        "copied {rows} rows ({} tables) from {} into {}",
        copied.tables.len(),
        from.display(),
        detente_store::postgres::redact_url(to)
    );
    println!(
        "verified {} envelope signatures and {} Merkle roots, before and after the copy",
        after.as_ref().map_or(0, |a| a.envelopes),
        after.as_ref().map_or(0, |a| a.roots)
    );
    println!(
        "node.toml now names PostgreSQL; the SQLite file is left as it was (delete it once the \
         node runs on PostgreSQL)"
    );
    Ok(())
}

/// Whether both stores hold as many messages and the same stream heads.
async fn same_counts(a: &NodeStore, b: &NodeStore) -> bool {
    let (Ok(ma), Ok(mb)) = (a.message_count().await, b.message_count().await) else {
        return false;
    };
    let (Ok(mut sa), Ok(mut sb)) = (a.streams().await, b.streams().await) else {
        return false;
    };
    sa.sort_by_key(|s| (s.channel, s.sender));
    sb.sort_by_key(|s| (s.channel, s.sender));
    ma == mb && sa == sb
}

/// `detente backup --dir DIR --out FILE`.
pub async fn backup(dir: &Path, out: &Path) -> Outcome {
    let node = NodeDir::new(dir);
    let config = node.load()?;
    let default_file = node.file(DATABASE_FILE);
    if let StoreUrl::Postgres(url) =
        StoreUrl::parse(&config.database_url, &default_file).map_err(store_failure)?
    {
        return pg_dump(url, out);
    }
    let (me, peers) = keys(&node, &config)?;
    let store = crate::progress::open_store(&node, &config)
        .await
        .map_err(store_failure)?;
    let AnyStore::Sqlite(sqlite) = &store else {
        return Err(Failure::new("the store is not SQLite"));
    };
    let made = sqlite.backup_into(out).await;
    store.close().await;
    made.map_err(|e| store_failure(e).hint("give --out a new file in a writable directory"))?;
    let copy = AnyStore::Sqlite(SqliteStore::open(out).await.map_err(store_failure)?);
    let checked = verify_store(&copy, &me, &peers).await;
    copy.close().await;
    let checked = checked.map_err(|f| {
        Failure::new(format!(
            "the backup {} does not verify: {}",
            out.display(),
            f.error
        ))
    })?;
    println!(
        "backed up to {} ({} envelopes and {} Merkle roots verified in the copy)",
        out.display(),
        checked.envelopes,
        checked.roots
    );
    Ok(())
}

/// A PostgreSQL store's backup: `pg_dump` when it is installed, else how to make one.
fn pg_dump(url: &str, out: &Path) -> Outcome {
    let shown = detente_store::postgres::redact_url(url);
    let how = format!(
        "pg_dump --format=custom --file {} '{shown}' (give the password in PGPASSWORD or \
         ~/.pgpass), or a base backup with pg_basebackup and WAL archiving for \
         point-in-time recovery; see docs/deployment.md",
        out.display()
    );
    let Some(program) = find_program("pg_dump") else {
        return Err(Failure::new("pg_dump is not installed here").hint(how));
    };
    let (without_password, password) = split_password(url);
    let mut command = std::process::Command::new(program);
    command
        .arg("--format=custom")
        .arg("--file")
        .arg(out)
        .arg("--dbname")
        .arg(&without_password);
    if let Some(p) = password {
        // Not on the command line, where other users could read it.
        command.env("PGPASSWORD", p);
    }
    let status = command
        .status()
        .map_err(|e| Failure::new(format!("cannot run pg_dump: {e}")).hint(how.clone()))?;
    if !status.success() {
        return Err(Failure::new(format!("pg_dump of {shown} failed ({status})")).hint(how));
    }
    println!(
        "backed up {shown} to {} with pg_dump (custom format; restore with pg_restore)",
        out.display()
    );
    Ok(())
}

/// `program` on `PATH` or among Debian's PostgreSQL binaries.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions.flatten().map(|v| v.path().join("bin")).collect();
        found.sort();
        dirs.extend(found.into_iter().rev());
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `url` without its password, and the password (percent-decoded).
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return (url.to_owned(), None);
    };
    let (userinfo, host) = authority.split_at(at);
    let Some((user, password)) = userinfo.split_once(':') else {
        return (url.to_owned(), None);
    };
    (
        format!("{scheme}://{user}{host}{tail}"),
        Some(percent_decode(password)),
    )
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `detente restore` asks for.
pub struct RestoreArgs {
    pub file: Option<PathBuf>,
    /// Only mark the store restored (after restoring PostgreSQL with pg_restore).
    pub mark_only: bool,
    /// Do not mark: the backup is known to hold everything this node ever signed.
    pub insecure_skip_recovery: bool,
}

/// `detente restore --dir DIR FILE`.
pub async fn restore(dir: &Path, args: RestoreArgs) -> Outcome {
    let node = NodeDir::new(dir);
    let config = node.load()?;
    refuse_if_running(dir, "restoring its store").await?;
    if args.mark_only {
        return mark_only(&node, &config).await;
    }
    let Some(file) = args.file else {
        return Err(Failure::usage(
            "give the backup FILE (or --mark-only after pg_restore)",
        ));
    };
    let default_file = node.file(DATABASE_FILE);
    let path = match StoreUrl::parse(&config.database_url, &default_file).map_err(store_failure)? {
        StoreUrl::Sqlite(path) => path.to_path_buf(),
        StoreUrl::Postgres(url) => {
            return Err(Failure::new(format!(
                "this node's store is PostgreSQL ({})",
                detente_store::postgres::redact_url(url)
            ))
            .hint(format!(
                "restore it with: pg_restore --dbname URL {} into an empty database, then run: \
                 detente restore --dir {} --mark-only",
                file.display(),
                dir.display()
            )));
        }
    };
    // Work on a copy: the backup file itself is never changed.
    let staged = path.with_extension("db.restoring");
    let checked = match stage(&node, &config, &file, &staged, args.insecure_skip_recovery).await {
        Ok(c) => c,
        Err(f) => {
            let _ = std::fs::remove_file(&staged);
            return Err(Failure::new(format!(
                "{} is not a good backup of this node: {}; nothing was changed",
                file.display(),
                f.error
            )));
        }
    };
    let kept = set_aside(&path)?;
    std::fs::rename(&staged, &path)
        .map_err(|e| Failure::new(format!("cannot put the restored file in place: {e}")))?;
    println!(
        "restored {} into {} ({} envelopes and {} Merkle roots verified)",
        file.display(),
        path.display(),
        checked.envelopes,
        checked.roots
    );
    if let Some(kept) = kept {
        println!("the previous store is kept as {}", kept.display());
    }
    if !args.insecure_skip_recovery {
        println!("{}", restored_message(&file.display().to_string()));
    }
    Ok(())
}

/// `restore --mark-only`: mark the store the node directory names (after pg_restore).
async fn mark_only(node: &NodeDir, config: &NodeConfig) -> Outcome {
    let store = crate::progress::open_store(node, config)
        .await
        .map_err(store_failure)?;
    let marked = mark(&store, "pg_restore").await;
    store.close().await;
    marked?;
    println!(
        "the store is marked restored: the node will not write until its later envelopes \
         are recovered"
    );
    Ok(())
}

/// Copy `file` to `staged`, verify it as this node's store, and mark it (or, with
/// `insecure_skip_recovery`, clear any mark).
async fn stage(
    node: &NodeDir,
    config: &NodeConfig,
    file: &Path,
    staged: &Path,
    insecure_skip_recovery: bool,
) -> Result<Checked, Failure> {
    let _ = std::fs::remove_file(staged);
    copy_private(file, staged)?;
    let (me, peers) = keys(node, config)?;
    let store = AnyStore::Sqlite(SqliteStore::open(staged).await.map_err(store_failure)?);
    let mut checked = verify_store(&store, &me, &peers).await;
    if checked.is_ok() {
        let marked = if insecure_skip_recovery {
            store
                .set_mark(RESTORED_MARK, None)
                .await
                .map_err(store_failure)
        } else {
            mark(&store, &file.display().to_string()).await
        };
        if let Err(f) = marked {
            checked = Err(f);
        }
    }
    store.close().await;
    checked
}

/// Why a restored node does not start; stored as the mark's value, shown at start.
fn restored_message(from: &str) -> String {
    format!(
        "this store was restored from a backup ({from}): envelopes this node signed after the \
         backup may be held by its peers, and signing new ones now could reuse their sequence \
         numbers (equivocation). Getting them back from the peers is not built yet (issue 13), \
         so the node refuses to write and does not start. Restore a newer backup if there is \
         one; if this backup is known to hold everything this node ever sent, restore it with \
         detente restore --insecure-skip-recovery"
    )
}

async fn mark(store: &NodeStore, from: &str) -> Outcome {
    store
        .set_mark(RESTORED_MARK, Some(&restored_message(from)))
        .await
        .map_err(store_failure)
}

/// Copy `from` to the new owner-only file `to`, durably.
fn copy_private(from: &Path, to: &Path) -> Outcome {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| Failure::new(format!("cannot copy {}: {e}", from.display()));
    let mut source = std::fs::File::open(from).map_err(failed)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(failed)?;
    std::io::copy(&mut source, &mut target).map_err(failed)?;
    target.sync_all().map_err(failed)
}

/// Move the current store (and its WAL files) aside, never deleting it; where it went.
fn set_aside(path: &Path) -> Result<Option<PathBuf>, Failure> {
    if !path.exists() {
        return Ok(None);
    }
    let kept = path.with_extension(format!("db.before-restore-{}", detente_node::now_ms()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", kept.display()));
            std::fs::rename(&from, &to)
                .map_err(|e| Failure::new(format!("cannot move {} aside: {e}", from.display())))?;
        }
    }
    Ok(Some(kept))
}
