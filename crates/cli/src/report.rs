//! `detente report BUNDLE --out record.html [--pdf record.pdf]`: a printable record of a
//! channel for archives and third parties.
//!
//! The bundle is verified offline first (the same check as `detente verify`). A bundle that
//! fails is refused: no record is written that could pass for a genuine one. With
//! `--even-if-damaged` a record is written all the same, for investigating the damage, and
//! every printed page of it says in large letters that verification failed and why.
//!
//! The record reads the bundle only: both parties with their fingerprints (from the charter
//! each signed into its own stream), the charter, every message in each party's language
//! (notifications rendered from their fields, free text in its own language with any
//! courtesy translations), every receipt with its time and lateness, and the checkpoints
//! with their roots and signers. The HTML is made by [`crate::report_html`]; the PDF by
//! headless Chromium's print-to-PDF.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use detente_formats::{Reader, Rendered};
use detente_proto::bundle::{self, Bundle, Report};
use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::{
    Body, Charter, MessageId, PartyKey, Precedence, ReceiptLevel, ReceiptTarget, TextBody,
    VerifiedEnvelope,
};

use crate::{Failure, Outcome};

/// How long Chromium may take to print the record.
const PRINT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Options {
    pub bundle: PathBuf,
    pub out: PathBuf,
    pub pdf: Option<PathBuf>,
    pub even_if_damaged: bool,
}

/// One member of the channel as the record names it.
pub struct Party {
    pub key: PartyKey,
    /// The node's short name and the party's full name, from the charter (empty when the
    /// bundle holds no readable charter naming this key).
    pub name: String,
    pub party: String,
    pub lang: String,
    pub tz: String,
}

/// A message of a person (text or notification) and what became of it.
pub struct Entry {
    pub id: MessageId,
    pub sender: usize,
    pub seq: u64,
    pub created_at_ms: u64,
    pub precedence: Precedence,
    pub topic: String,
    pub author: String,
    pub in_reply_to: Option<MessageId>,
    pub content: Content,
    /// When the other member's DELIVERED receipt covering it was signed.
    pub delivered_at_ms: Option<u64>,
    pub answers: Vec<Answer>,
    /// The acknowledgment deadline of the charter in force when it was written.
    pub deadline: Option<Duration>,
}

pub enum Content {
    Text(TextBody),
    /// Rendered once per language of the channel's members, in member order.
    Notification {
        format: String,
        version: u32,
        renderings: Vec<Rendered>,
    },
    /// A notification whose format this build does not hold, or whose fields do not check.
    Unrenderable {
        format: String,
        why: String,
    },
}

/// A READ, ACKNOWLEDGED or DECLINED receipt.
pub struct Answer {
    pub level: ReceiptLevel,
    pub by: usize,
    pub at_ms: u64,
    pub note: Option<String>,
    /// How long after the acknowledgment deadline it was signed (answers only, not READ).
    pub late_ms: Option<u64>,
}

pub struct CheckpointLine {
    pub time_ms: u64,
    /// (member index, stream size, root in hex).
    pub heads: Vec<(Option<usize>, u64, String)>,
    pub signers: Vec<String>,
    pub cosigned: bool,
}

/// Everything the record shows.
pub struct Record {
    pub channel_hex: String,
    pub parties: Vec<Party>,
    pub charters: Vec<Charter>,
    pub entries: Vec<Entry>,
    pub checkpoints: Vec<CheckpointLine>,
    /// Envelopes that are not people's messages: (link tests, charters, DELIVERED receipts).
    pub system: (u64, u64, u64),
    /// Items that could not be read at all (damaged bundles only).
    pub unreadable: Vec<String>,
    pub verdict: Report,
}

pub async fn run(o: Options) -> Outcome {
    let bytes = read_bundle(&o.bundle)?;
    // Drawn on a terminal only, and cleared before the closing line.
    let progress = crate::progress::Progress::spinner(format!(
        "verifying {} ({} bytes)",
        o.bundle.display(),
        bytes.len()
    ));
    let (bytes, verdict) = tokio::task::spawn_blocking(move || {
        let verdict = bundle::verify(&bytes);
        (bytes, verdict)
    })
    .await
    .map_err(|e| Failure::new(e.to_string()))?;
    if !verdict.ok() && !o.even_if_damaged {
        let first = verdict
            .problems
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(Failure::new(format!(
            "{} failed verification ({} problems; the first: {first}); no record was made",
            o.bundle.display(),
            verdict.problems.len() as u64 + verdict.problems_dropped
        ))
        .hint(format!(
            "see every problem with: detente verify {}; to examine the damage, \
             --even-if-damaged makes a record marked as failing on every page",
            o.bundle.display()
        )));
    }
    progress.set_message("reading the record");
    let record = Record::from_bundle(&bytes, verdict)?;
    progress.set_message(format!(
        "rendering {} messages and {} checkpoints",
        record.entries.len(),
        record.checkpoints.len()
    ));
    let html = crate::report_html::render(&record);
    std::fs::write(&o.out, html.as_bytes())
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", o.out.display())))?;
    if let Some(pdf) = &o.pdf {
        progress.set_message(format!("printing {} with Chromium", pdf.display()));
        print_pdf(&o.out, pdf).await?;
    }
    drop(progress);
    let verdict = if record.verdict.ok() {
        "verified"
    } else {
        "FAILED verification, marked on every page"
    };
    eprintln!(
        "record of {} messages and {} checkpoints ({verdict}) written to {}{}",
        record.entries.len(),
        record.checkpoints.len(),
        o.out.display(),
        o.pdf
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, Failure> {
    let len = std::fs::metadata(path)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len > bundle::BUNDLE_BYTES_MAX {
        return Err(Failure::new(format!(
            "{} is {len} bytes, more than a bundle may be ({} bytes)",
            path.display(),
            bundle::BUNDLE_BYTES_MAX
        )));
    }
    std::fs::read(path).map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))
}

impl Record {
    /// The record of a bundle; `verdict` is what [`bundle::verify`] said of the same bytes.
    pub fn from_bundle(bytes: &[u8], verdict: Report) -> Result<Record, Failure> {
        let decoded = Bundle::decode(bytes).map_err(|e| {
            Failure::new(format!(
                "the bundle cannot be read at all: {e}; no record was made"
            ))
        })?;
        let mut unreadable = Vec::new();
        // Every envelope that verifies under its stream's key, in stream order.
        let mut streams: Vec<(usize, Vec<VerifiedEnvelope>)> = Vec::new();
        for (index, (key, list)) in decoded.streams.iter().enumerate() {
            let mut ok = Vec::with_capacity(list.len());
            for (position, raw) in list.iter().enumerate() {
                match VerifiedEnvelope::decode(raw, Some(key)) {
                    Ok(v) => ok.push(v),
                    Err(e) => unreadable.push(format!(
                        "stream {} item {}: {e}",
                        key.fingerprint(),
                        position + 1
                    )),
                }
            }
            streams.push((index, ok));
        }
        let charters = charters_of(&streams);
        let parties = parties_of(&decoded, charters.last());
        let keys: Vec<PartyKey> = decoded.streams.iter().map(|(k, _)| *k).collect();
        let party_of = |key: &PartyKey| parties.iter().position(|p| p.key == *key);
        let mut record = Record {
            channel_hex: hex::encode(decoded.channel.0),
            parties: Vec::new(),
            charters: Vec::new(),
            entries: Vec::new(),
            checkpoints: Vec::new(),
            system: (0, 0, 0),
            unreadable,
            verdict,
        };
        let mut by_id: HashMap<MessageId, usize> = HashMap::new();
        let mut by_seq: HashMap<(usize, u64), usize> = HashMap::new();
        let mut receipts = Vec::new();
        for (stream, list) in &streams {
            let sender = party_of(&keys[*stream]).unwrap_or(0);
            for v in list {
                let e = v.envelope();
                let content = match &e.body {
                    Body::Text(t) => Content::Text(t.clone()),
                    Body::Notification(n) => render_notification(n, e.created_at_ms, &parties),
                    Body::Receipt(r) => {
                        if matches!(r.target, ReceiptTarget::Ranges(_)) {
                            record.system.2 += 1;
                        }
                        receipts.push((sender, e.created_at_ms, r.clone()));
                        continue;
                    }
                    Body::Test { .. } => {
                        record.system.0 += 1;
                        continue;
                    }
                    Body::Charter(_) => {
                        record.system.1 += 1;
                        continue;
                    }
                };
                let deadline = charter_at(&charters, e.created_at_ms)
                    .map(|c| c.deadlines.acknowledged(e.precedence));
                by_id.insert(v.id(), record.entries.len());
                by_seq.insert((sender, e.seq), record.entries.len());
                record.entries.push(Entry {
                    id: v.id(),
                    sender,
                    seq: e.seq,
                    created_at_ms: e.created_at_ms,
                    precedence: e.precedence,
                    topic: e.topic.clone(),
                    author: e.author.clone(),
                    in_reply_to: e.in_reply_to,
                    content,
                    delivered_at_ms: None,
                    answers: Vec::new(),
                    deadline,
                });
            }
        }
        record.attach_receipts(receipts, &by_id, &by_seq, parties.len());
        record.checkpoints = checkpoints_of(&decoded, &parties, &mut record.unreadable);
        record
            .entries
            .sort_by_key(|e| (e.created_at_ms, e.sender, e.seq));
        record.parties = parties;
        record.charters = charters.into_iter().map(|(_, c)| c).collect();
        Ok(record)
    }

    fn attach_receipts(
        &mut self,
        receipts: Vec<(usize, u64, detente_proto::Receipt)>,
        by_id: &HashMap<MessageId, usize>,
        by_seq: &HashMap<(usize, u64), usize>,
        members: usize,
    ) {
        for (by, at_ms, receipt) in receipts {
            match receipt.target {
                // DELIVERED ranges name the other member's stream (two members; with more,
                // a range does not say whose stream it covers, so it is not attached).
                ReceiptTarget::Ranges(ranges) if members == 2 => {
                    let other = 1 - by.min(1);
                    for (from, to) in ranges {
                        for seq in from..=to.min(from.saturating_add(1 << 24)) {
                            if let Some(&i) = by_seq.get(&(other, seq)) {
                                let e = &mut self.entries[i];
                                e.delivered_at_ms =
                                    Some(e.delivered_at_ms.map_or(at_ms, |t| t.min(at_ms)));
                            }
                        }
                    }
                }
                ReceiptTarget::Ranges(_) => {}
                ReceiptTarget::Message(of) => {
                    let Some(&i) = by_id.get(&of) else { continue };
                    let e = &mut self.entries[i];
                    let answers = matches!(
                        receipt.level,
                        ReceiptLevel::Acknowledged | ReceiptLevel::Declined
                    );
                    let late_ms = e.deadline.filter(|_| answers).and_then(|d| {
                        let due = e.created_at_ms.saturating_add(d.as_millis() as u64);
                        (at_ms > due).then(|| at_ms - due)
                    });
                    e.answers.push(Answer {
                        level: receipt.level,
                        by,
                        at_ms,
                        note: receipt.note,
                        late_ms,
                    });
                }
            }
        }
        for e in &mut self.entries {
            e.answers.sort_by_key(|a| a.at_ms);
        }
    }
}

/// Every charter signed into a stream, with the time it was signed, oldest first and each
/// digest once.
fn charters_of(streams: &[(usize, Vec<VerifiedEnvelope>)]) -> Vec<(u64, Charter)> {
    let mut out: Vec<(u64, Charter)> = Vec::new();
    for (_, list) in streams {
        for v in list {
            if let Body::Charter(c) = &v.envelope().body {
                let at = v.envelope().created_at_ms;
                match out
                    .iter_mut()
                    .find(|(_, known)| known.digest() == c.digest())
                {
                    Some(known) => known.0 = known.0.min(at),
                    None => out.push((at, c.clone())),
                }
            }
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// The charter in force when a message was written: the latest signed at or before it, or
/// the first one for a message written before any.
fn charter_at(charters: &[(u64, Charter)], at_ms: u64) -> Option<&Charter> {
    charters
        .iter()
        .rev()
        .find(|(signed, _)| *signed <= at_ms)
        .or(charters.first())
        .map(|(_, c)| c)
}

fn parties_of(decoded: &Bundle, charter: Option<&(u64, Charter)>) -> Vec<Party> {
    decoded
        .streams
        .iter()
        .map(|(key, _)| {
            let member = charter.and_then(|(_, c)| c.member(key));
            Party {
                key: *key,
                name: member.map(|m| m.name.clone()).unwrap_or_default(),
                party: member.map(|m| m.party.clone()).unwrap_or_default(),
                lang: member.map_or_else(|| "en".into(), |m| m.lang.clone()),
                tz: member.map_or_else(|| "UTC".into(), |m| m.tz.clone()),
            }
        })
        .collect()
}

/// The distinct languages of the members, in member order.
pub fn languages(parties: &[Party]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for p in parties {
        let locale = detente_formats::locale_for(&p.lang).to_string();
        if !out.iter().any(|(l, _)| *l == locale) {
            out.push((locale, p.tz.clone()));
        }
    }
    out
}

fn render_notification(
    n: &detente_proto::NotificationBody,
    created_at_ms: u64,
    parties: &[Party],
) -> Content {
    match detente_node::notify::check(n, created_at_ms) {
        Ok((def, notification)) => Content::Notification {
            format: n.format.clone(),
            version: n.version,
            renderings: languages(parties)
                .iter()
                .map(|(lang, tz)| notification.render(def, Reader { lang, tz }, &[]))
                .collect(),
        },
        Err(e) => Content::Unrenderable {
            format: format!("{}@{}", n.format, n.version),
            why: e.to_string(),
        },
    }
}

fn checkpoints_of(
    decoded: &Bundle,
    parties: &[Party],
    unreadable: &mut Vec<String>,
) -> Vec<CheckpointLine> {
    let mut out = Vec::new();
    for (i, raw) in decoded.checkpoints.iter().enumerate() {
        let signed = match SignedCheckpoint::decode(raw) {
            Ok(s) => s,
            Err(e) => {
                unreadable.push(format!("checkpoint {}: {e}", i + 1));
                continue;
            }
        };
        let c = signed.checkpoint();
        out.push(CheckpointLine {
            time_ms: c.time_ms,
            heads: c
                .members
                .iter()
                .map(|h| {
                    let who = parties.iter().position(|p| p.key == h.key);
                    (who, h.size, hex::encode(h.root))
                })
                .collect(),
            signers: signed.signers().map(PartyKey::fingerprint).collect(),
            cosigned: signed.cosigned(),
        });
    }
    out
}

/// Print `html` to `pdf` with Debian's headless Chromium.
async fn print_pdf(html: &Path, pdf: &Path) -> Result<(), Failure> {
    let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            Failure::new("--pdf needs Chromium, which is not installed")
                .hint("install it with: apt-get install chromium (the HTML record was written)")
        })?;
    let html = std::fs::canonicalize(html)
        .map_err(|e| Failure::new(format!("cannot find {}: {e}", html.display())))?;
    let profile = tempfile::tempdir()
        .map_err(|e| Failure::new(format!("cannot make a temporary directory: {e}")))?;
    let mut command = tokio::process::Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(PRINT_TIMEOUT, command.status())
        .await
        .map_err(|_| Failure::new("Chromium did not print the record within 2 minutes"))?
        .map_err(|e| Failure::new(format!("cannot run Chromium: {e}")))?;
    let printed = std::fs::read(pdf).unwrap_or_default();
    if !status.success() || !printed.starts_with(b"%PDF") {
        return Err(Failure::new(format!(
            "Chromium could not print {} to {} ({status})",
            html.display(),
            pdf.display()
        )));
    }
    Ok(())
}
