//! Full-text search over the channel for the timeline: the words of each text and
//! notification as people see them, in every console language, kept in the store's search
//! index (`console_search`: SQLite FTS5 with trigrams, PostgreSQL pg_trgm).
//!
//! **Only verified words are indexed**: a message's words come from
//! [`crate::service::message_json`], which verifies the envelope's signature first; a message
//! that does not verify is indexed with no words, so it is never found and never retried.
//! The index is filled when someone searches ([`catch_up`]), newest first and in bounded
//! batches, so the writer path is untouched and a search always sees what was just stored.

use detente_store::console::SEARCH_BATCH_MAX;
use detente_store::{MessageRow, Store};

use crate::{service, Shared};

/// Batches indexed before one search, at most; what is left is indexed by the next searches
/// (the page says so).
pub const CATCH_UP_BATCHES_MAX: u32 = 8;

/// The words of one message: its text or the notification rendered in every console
/// language, its courtesy translations, topic and author, each once.
async fn words(shared: &Shared, row: &MessageRow) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (lang, _) in super::i18n::LANGUAGES {
        let Ok(m) = service::message_json(shared, row, Some(lang)).await else {
            return String::new();
        };
        if m["tampered"] == true {
            return String::new();
        }
        let mut found = vec![&m["text"], &m["rendered"], &m["topic"], &m["author"]];
        if let Some(pairs) = m["translations"].as_array() {
            found.extend(pairs.iter().map(|p| &p[1]));
        }
        for text in found.into_iter().filter_map(|v| v.as_str()) {
            if !text.is_empty() && !parts.iter().any(|p| p == text) {
                parts.push(text.to_string());
            }
        }
    }
    parts.join("\n")
}

/// Index what the search index does not hold yet, newest first, at most
/// [`CATCH_UP_BATCHES_MAX`] batches. Returns whether the index is complete.
pub async fn catch_up(shared: &Shared) -> bool {
    for _ in 0..CATCH_UP_BATCHES_MAX {
        let rows = match shared.store.search_pending(SEARCH_BATCH_MAX).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read messages to index for search");
                return false;
            }
        };
        if rows.is_empty() {
            return true;
        }
        let mut indexed = Vec::with_capacity(rows.len());
        for row in &rows {
            indexed.push((row.id, words(shared, row).await));
        }
        if let Err(e) = shared.store.put_search(indexed).await {
            tracing::warn!(error = %e, "cannot write the search index");
            return false;
        }
        if (rows.len() as u32) < SEARCH_BATCH_MAX {
            return true;
        }
    }
    false
}
