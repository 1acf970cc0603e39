//! Copying a SQLite store into an empty PostgreSQL one (`detente store migrate`, issue 13
//! item 5), row for row, in one PostgreSQL transaction: the target holds all of it or none.
//!
//! The copy is driven by the target's schema: every table PostgreSQL's migrations created
//! (but the lease's, which belong to the target, the console's queue index, which the
//! target's triggers rebuild as the messages and receipts go in, and the console's search
//! index, which the console rebuilds) is read from SQLite with the
//! same column names, inside one SQLite read transaction (one snapshot), streamed row by row
//! so that memory stays bounded whatever the store's size. A table or column the source
//! lacks is an error: the two schemas must be of the same detente.
//!
//! The copy does not judge what it copies; the command verifies every envelope and every
//! Merkle root of the source before and of the target after (`crates/cli/src/store_cmd.rs`).

use futures_util::TryStreamExt;
use sqlx::postgres::PgArguments;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, TypeInfo, ValueRef};

use crate::{PgStore, Result, SqliteStore, StoreError};

/// Tables the copy leaves alone: the target's own, and the one its triggers fill.
const NOT_COPIED: &[&str] = &[
    "_sqlx_migrations",
    "lease",
    "lease_epochs",
    "console_unanswered",
];

/// Tables whose name starts so are the console's search index (SQLite's FTS5 table and its
/// shadow tables, PostgreSQL's trigram-indexed table): derived from verified messages and
/// rebuilt by the console when someone searches, so never copied.
const SEARCH_INDEX_PREFIX: &str = "console_search";

fn is_copied(table: &str) -> bool {
    !NOT_COPIED.contains(&table) && !table.starts_with(SEARCH_INDEX_PREFIX)
}

/// Tables copied first, in this order (foreign keys and triggers): messages before the
/// receipts whose trigger looks them up, users before their sessions.
const FIRST: &[&str] = &["messages", "receipts", "users"];

/// One column of a target table: its name and PostgreSQL type name.
struct TargetColumn {
    name: String,
    pg_type: String,
    identity: bool,
}

/// What was copied: rows per table, in copy order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

/// Copy every row of `src` into `dst`, which must be empty (migrated, nothing in it).
pub async fn sqlite_to_postgres(src: &SqliteStore, dst: &PgStore) -> Result<CopyReport> {
    let tables = target_tables(dst).await?;
    let mut tx = dst.writer.begin().await?;
    for (table, _) in &tables {
        let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
            .fetch_one(&mut *tx)
            .await?;
        if any {
            return Err(StoreError::Open(format!(
                "the target database is not empty (table {table} has rows): migrate only \
                 into a new, empty database"
            )));
        }
    }
    let mut source = src.reader.acquire().await?;
    // One read transaction: every table from the same snapshot.
    sqlx::query("BEGIN").execute(&mut *source).await?;
    let copied = copy_all(&mut source, &mut tx, &tables).await;
    // The read transaction ends either way: the connection goes back to the pool.
    let _ = sqlx::query(if copied.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .execute(&mut *source)
        .await;
    let report = copied?;
    tx.commit().await?;
    Ok(report)
}

/// The copy itself, inside the source's read transaction and the target's transaction.
async fn copy_all(
    source: &mut sqlx::SqliteConnection,
    tx: &mut sqlx::PgConnection,
    tables: &[(String, Vec<TargetColumn>)],
) -> Result<CopyReport> {
    let in_source: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut *source)
    .await?;
    if let Some(extra) = in_source
        .iter()
        .find(|t| is_copied(t) && !tables.iter().any(|(name, _)| name == *t))
    {
        return Err(StoreError::Open(format!(
            "the SQLite store has table {extra}, which the target does not: the source and \
             the target must be of the same detente version"
        )));
    }
    let mut report = CopyReport::default();
    for (table, columns) in tables {
        let count = copy_table(source, tx, table, columns).await?;
        report.tables.push((table.clone(), count));
    }
    Ok(report)
}

/// Copy every row of `table` from the SQLite connection into the PostgreSQL transaction;
/// how many.
async fn copy_table(
    source: &mut sqlx::SqliteConnection,
    tx: &mut sqlx::PgConnection,
    table: &str,
    columns: &[TargetColumn],
) -> Result<u64> {
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=columns.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!("INSERT INTO {table} ({list}) VALUES ({marks})");
    let select = format!("SELECT {list} FROM {table}");
    let mut rows = sqlx::query(&select).fetch(&mut *source);
    let mut count = 0u64;
    while let Some(row) = rows.try_next().await.map_err(|e| missing(table, e))? {
        let arguments = bind_row(table, columns, &row)?;
        sqlx::query_with(&insert, arguments)
            .execute(&mut *tx)
            .await?;
        count += 1;
    }
    drop(rows);
    for c in columns.iter().filter(|c| c.identity) {
        // Rows keep their ids; new ones must come after them.
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{0}'), \
             COALESCE((SELECT max(\"{0}\") FROM {table}), 0) + 1, false)",
            c.name
        ))
        .execute(&mut *tx)
        .await?;
    }
    Ok(count)
}

/// The target's tables to copy, in copy order, with their columns.
async fn target_tables(dst: &PgStore) -> Result<Vec<(String, Vec<TargetColumn>)>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, udt_name::text, is_identity::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&dst.reader)
    .await?;
    let mut tables: Vec<(String, Vec<TargetColumn>)> = Vec::new();
    for (table, name, pg_type, identity) in rows {
        if !is_copied(&table) {
            continue;
        }
        let column = TargetColumn {
            name,
            pg_type,
            identity: identity == "YES",
        };
        match tables.last_mut() {
            Some((t, columns)) if *t == table => columns.push(column),
            _ => tables.push((table, vec![column])),
        }
    }
    let rank = |t: &str| FIRST.iter().position(|f| *f == t).unwrap_or(FIRST.len());
    tables.sort_by_key(|(t, _)| rank(t));
    Ok(tables)
}

/// A SQLite table or column the target has but the source lacks.
fn missing(table: &str, e: sqlx::Error) -> StoreError {
    StoreError::Open(format!(
        "cannot read table {table} from the SQLite store ({e}): the source and the target \
         must be of the same detente version"
    ))
}

/// One SQLite row as the target's parameters, converted column by column.
fn bind_row(table: &str, columns: &[TargetColumn], row: &SqliteRow) -> Result<PgArguments> {
    use sqlx::Arguments;
    let mut arguments = PgArguments::default();
    for (i, column) in columns.iter().enumerate() {
        let bad = |what: &str| StoreError::Corrupt {
            table: "copy",
            what: format!("{table}.{}: {what}", column.name),
        };
        let raw = row.try_get_raw(i)?;
        let null = raw.is_null();
        let sqlite_type = raw.type_info().name().to_owned();
        let added = match column.pg_type.as_str() {
            "int8" | "int4" | "int2" => arguments.add(if null {
                None
            } else {
                Some(row.try_get_unchecked::<i64, _>(i)?)
            }),
            "bool" => arguments.add(if null {
                None
            } else {
                Some(row.try_get_unchecked::<i64, _>(i)? != 0)
            }),
            "bytea" => arguments.add(if null {
                None
            } else if sqlite_type == "TEXT" {
                Some(row.try_get_unchecked::<String, _>(i)?.into_bytes())
            } else {
                Some(row.try_get_unchecked::<Vec<u8>, _>(i)?)
            }),
            "text" => arguments.add(if null {
                None
            } else {
                Some(row.try_get_unchecked::<String, _>(i)?)
            }),
            other => {
                return Err(bad(&format!(
                    "column type {other} is not known to the copy"
                )))
            }
        };
        added.map_err(|e| bad(&e.to_string()))?;
    }
    Ok(arguments)
}
