//! Glossary terms: the agreed pairs of terms of a channel that the reader's rendering of a
//! notification uses. The core checks an operator's term (language tags, length, no control
//! characters, a bounded count per channel) and stages it; the store replaces an earlier
//! term with the same peer, languages and first term, so only a new key counts.

use std::collections::{BTreeMap, BTreeSet};

use detente_store_types::GlossaryRow;

use crate::{Answer, CommandError, Core};

/// Terms one channel's glossary holds at most.
pub const GLOSSARY_TERMS_MAX: usize = 1000;
/// One term's length at most, in bytes (as the renderer bounds it).
pub const GLOSSARY_TERM_BYTES_MAX: usize = 200;
/// A language tag's length at most, in bytes (BCP 47's longest useful tags are shorter).
const LANGUAGE_TAG_BYTES_MAX: usize = 35;

/// The key a store replaces on: (lang_a, term_a, lang_b).
type Key = (String, String, String);

/// Every channel's glossary keys, by peer name.
#[derive(Debug, Default)]
pub(crate) struct Terms(BTreeMap<String, BTreeSet<Key>>);

impl Terms {
    pub fn insert(&mut self, row: &GlossaryRow) {
        self.0.entry(row.peer.clone()).or_default().insert(key(row));
    }

    fn would_overflow(&self, row: &GlossaryRow) -> bool {
        self.0
            .get(&row.peer)
            .is_some_and(|keys| keys.len() >= GLOSSARY_TERMS_MAX && !keys.contains(&key(row)))
    }
}

fn key(row: &GlossaryRow) -> Key {
    (row.lang_a.clone(), row.term_a.clone(), row.lang_b.clone())
}

/// A language tag in the shape `en`, `zh-CN`: alphanumeric subtags joined by hyphens.
fn tag_ok(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= LANGUAGE_TAG_BYTES_MAX
        && tag
            .split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn term_ok(term: &str) -> bool {
    !term.trim().is_empty()
        && term.len() <= GLOSSARY_TERM_BYTES_MAX
        && !term.chars().any(char::is_control)
}

/// Why a glossary row is refused, if it is (the core's rule, which the API applies too).
pub fn check(row: &GlossaryRow) -> Result<(), CommandError> {
    if !tag_ok(&row.lang_a) || !tag_ok(&row.lang_b) || row.lang_a == row.lang_b {
        return Err(CommandError::Invalid(
            "two different language tags, such as en and zh-CN".into(),
        ));
    }
    if !term_ok(&row.term_a) || !term_ok(&row.term_b) {
        return Err(CommandError::Invalid(format!(
            "each term is 1 to {GLOSSARY_TERM_BYTES_MAX} bytes of text without control characters"
        )));
    }
    Ok(())
}

impl Core {
    pub(crate) fn command_glossary(
        &mut self,
        mut row: GlossaryRow,
    ) -> Result<Answer, CommandError> {
        if self.peer_index(&row.peer).is_none() {
            return Err(CommandError::UnknownPeer(row.peer));
        }
        check(&row)?;
        if self.glossary.would_overflow(&row) {
            return Err(CommandError::Invalid(format!(
                "the glossary is full ({GLOSSARY_TERMS_MAX} terms)"
            )));
        }
        // The time is the node's, not the operator's.
        row.added_at_ms = self.wall_ms;
        self.glossary.insert(&row);
        self.staging.batch.glossary.push(row);
        Ok(Answer::Done)
    }
}
