//! The verifiable transcript on a node: Merkle trees read from the store, proofs, the
//! witness rule, and the bundle export (docs/transcript-format.md).
//!
//! The trees themselves are grown by the writer, in the same transaction as the messages
//! (see `writer.rs`); this module only reads complete subtrees back, so a proof costs
//! O(log n) row lookups.

use std::collections::HashMap;

use detente_proto::bundle_writer::BundleWriter;
use detente_proto::checkpoint::Checkpoint;
use detente_proto::merkle::{self, Hash, MissingNode};
use detente_proto::{ChannelId, PartyKey};
use detente_store::{CheckpointPage, CheckpointSpan, Hash32, Store, WitnessRow};

use crate::NodeStore;

/// Run a Merkle computation over the complete subtrees of one stream in the store: a first
/// pass records which `(level, index)` nodes it needs, one query fetches them all, and a
/// second pass computes with them.
pub async fn with_nodes<T, E>(
    store: &NodeStore,
    channel: Hash32,
    sender: Hash32,
    run: impl Fn(&mut dyn FnMut(u8, u64) -> Result<Hash, MissingNode>) -> Result<T, E>,
) -> Result<Result<T, E>, String> {
    let mut wanted = Vec::new();
    let mut record = |level: u8, index: u64| {
        wanted.push((level, index));
        Ok([0u8; 32])
    };
    // The first pass's result is meaningless (every node is zeros); only its reads count.
    let _ = run(&mut record);
    let found = store
        .tree_nodes(channel, sender, wanted.clone())
        .await
        .map_err(|e| e.to_string())?;
    let map: HashMap<(u8, u64), Hash> = wanted
        .into_iter()
        .zip(found)
        .filter_map(|(p, h)| h.map(|h| (p, h)))
        .collect();
    let mut lookup = |level: u8, index: u64| {
        map.get(&(level, index))
            .copied()
            .ok_or(MissingNode { level, index })
    };
    Ok(run(&mut lookup))
}

/// Root of the first `size` envelopes of a stream, from the store.
pub async fn root_at(
    store: &NodeStore,
    channel: Hash32,
    sender: Hash32,
    size: u64,
) -> Result<Hash, String> {
    with_nodes(store, channel, sender, |get| {
        merkle::root_at(size, &mut &mut *get)
    })
    .await?
    .map_err(|e| format!("the stream has fewer than {size} envelopes ({e})"))
}

/// Inclusion path of leaf `index` in the first `size` envelopes of a stream.
pub async fn inclusion_proof(
    store: &NodeStore,
    channel: Hash32,
    sender: Hash32,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, String> {
    with_nodes(store, channel, sender, |get| {
        merkle::inclusion_proof(index, size, &mut &mut *get)
    })
    .await?
    .map_err(|e| e.to_string())
}

/// Consistency path between the first `old` and the first `new` envelopes of a stream.
pub async fn consistency_proof(
    store: &NodeStore,
    channel: Hash32,
    sender: Hash32,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, String> {
    with_nodes(store, channel, sender, |get| {
        merkle::consistency_proof(old, new, &mut &mut *get)
    })
    .await?
    .map_err(|e| e.to_string())
}

/// Why this node will not sign a checkpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WitnessError {
    #[error("would sign a smaller tree of stream {stream} ({size}) after a larger one ({signed})")]
    Smaller {
        stream: String,
        size: u64,
        signed: u64,
    },
    #[error(
        "stream {stream}: our record no longer extends the tree of {size} envelopes we signed"
    )]
    Inconsistent { stream: String, size: u64 },
    #[error("{0}")]
    Store(String),
}

/// The witness rule: a checkpoint may be signed only if, for every stream, its size is at
/// least the largest this node signed before and the tree it names extends that one. `root_at`
/// gives our record's root at a size (our record is what the checkpoint was checked against).
/// Returns the new witness rows to store with the signature.
pub async fn witness_check(
    store: &NodeStore,
    checkpoint: &Checkpoint,
) -> Result<Vec<WitnessRow>, WitnessError> {
    let channel = checkpoint.channel.0;
    let signed = store
        .witness(channel)
        .await
        .map_err(|e| WitnessError::Store(e.to_string()))?;
    let mut rows = Vec::new();
    for head in &checkpoint.members {
        let sender = *head.key.as_bytes();
        if let Some(w) = signed.iter().find(|w| w.sender == sender) {
            if head.size < w.size {
                return Err(WitnessError::Smaller {
                    stream: head.key.to_text(),
                    size: head.size,
                    signed: w.size,
                });
            }
            // The tree we signed must be a prefix of the one we are asked to sign: prove
            // it with our record's consistency path, checked against both signed roots.
            let consistent = if w.size == 0 || w.size == head.size {
                w.size == head.size && w.root == head.root || w.size == 0
            } else {
                let path = consistency_proof(store, channel, sender, w.size, head.size)
                    .await
                    .map_err(WitnessError::Store)?;
                merkle::verify_consistency(w.size, head.size, &w.root, &head.root, &path)
            };
            if !consistent {
                return Err(WitnessError::Inconsistent {
                    stream: head.key.to_text(),
                    size: w.size,
                });
            }
        }
        rows.push(WitnessRow {
            channel,
            sender,
            size: head.size,
            root: head.root,
        });
    }
    Ok(rows)
}

/// The words every "a stored row fails verification" error starts with.
pub const TAMPERED: &str = "a stored envelope fails verification (the database was altered)";

/// Envelopes read from the store per query while exporting (with envelopes of at most
/// 64 KiB, one page is at most 8 MiB).
const EXPORT_PAGE: u32 = 128;
/// Checkpoints read per query while exporting (each at most 2 KiB).
const EXPORT_CHECKPOINT_PAGE: u32 = 512;
/// Bundle bytes gathered before they are handed to the client as one chunk.
const EXPORT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks waiting for a slow client, at most. With the page being read, this bounds what an
/// export holds in memory, whatever the transcript's length.
const EXPORT_CHUNKS_QUEUED: usize = 2;

/// What an export covers, fixed before its first byte: the streams' lengths and the
/// checkpoints stored by then (whatever is stored meanwhile is left for the next export).
#[derive(Debug, Clone)]
pub struct ExportPlan {
    channel: ChannelId,
    members: Vec<PartyKey>,
    charters: Vec<Vec<u8>>,
    /// Appended envelopes per member, in the order of `members`.
    lengths: Vec<u64>,
    checkpoints: CheckpointSpan,
}

impl ExportPlan {
    /// Envelopes the bundle will hold.
    pub fn messages(&self) -> u64 {
        self.lengths.iter().sum()
    }
}

/// Fix what the bundle of the channel between `me` and `peer` will hold.
pub async fn plan_export(
    store: &NodeStore,
    me: &PartyKey,
    peer: &PartyKey,
    charters: Vec<Vec<u8>>,
) -> Result<ExportPlan, String> {
    let channel = ChannelId::for_pair(me, peer);
    let mut members = vec![*me, *peer];
    members.sort();
    let streams = store.streams().await.map_err(|e| e.to_string())?;
    let lengths = members
        .iter()
        .map(|key| {
            streams
                .iter()
                .find(|s| s.channel == channel.0 && s.sender == *key.as_bytes())
                .map_or(0, |s| s.next_seq.saturating_sub(1))
        })
        .collect();
    let checkpoints = store
        .checkpoint_span(channel.0)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ExportPlan {
        channel,
        members,
        charters,
        lengths,
        checkpoints,
    })
}

/// Why an export stopped. Nothing after the bytes already sent was produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExportError {
    /// A stored row fails verification; the message starts with [`TAMPERED`].
    #[error("{0}")]
    Tampered(String),
    /// The store failed or changed under the export.
    #[error("{0}")]
    Store(String),
}

/// Stream the bundle `plan` describes: chunks of at most about [`EXPORT_CHUNK_BYTES`] in
/// bundle order, every envelope verified against its sender's key before it is passed on
/// (batch verification keeps this cheap). The receiver ends after the last chunk, or after
/// one error: then the bytes sent are not a bundle, and the client's verifier says so.
pub fn stream_export(
    store: std::sync::Arc<NodeStore>,
    plan: ExportPlan,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, ExportError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_CHUNKS_QUEUED);
    tokio::spawn(async move {
        let mut out = Vec::with_capacity(EXPORT_CHUNK_BYTES);
        let result = write_export(&store, &plan, &mut out, &tx).await;
        let last = match result {
            Ok(()) => Ok(out),
            Err(e) => Err(e),
        };
        // A client that went away is no error of ours.
        let _ = tx.send(last).await;
    });
    rx
}

type ChunkSender = tokio::sync::mpsc::Sender<Result<Vec<u8>, ExportError>>;

/// Hand `out` to the client once it holds a chunk's worth.
async fn flush(out: &mut Vec<u8>, tx: &ChunkSender) -> Result<(), ExportError> {
    if out.len() >= EXPORT_CHUNK_BYTES {
        let chunk = std::mem::replace(out, Vec::with_capacity(EXPORT_CHUNK_BYTES));
        tx.send(Ok(chunk))
            .await
            .map_err(|_| ExportError::Store("the client went away".into()))?;
    }
    Ok(())
}

async fn write_export(
    store: &NodeStore,
    plan: &ExportPlan,
    out: &mut Vec<u8>,
    tx: &ChunkSender,
) -> Result<(), ExportError> {
    let order =
        |e: detente_proto::bundle_writer::WriteOrderError| ExportError::Store(e.to_string());
    let mut writer = BundleWriter::start(
        out,
        &plan.channel,
        &plan.members,
        &plan.charters,
        plan.members.len(),
    );
    for (key, &length) in plan.members.iter().zip(&plan.lengths) {
        writer.stream(out, key, length).map_err(order)?;
        let mut after = 0u64;
        while after < length {
            let page = store
                .stream_envelopes(plan.channel.0, *key.as_bytes(), after, EXPORT_PAGE)
                .await
                .map_err(|e| ExportError::Store(e.to_string()))?;
            if page.is_empty() {
                return Err(ExportError::Store(format!(
                    "stream {} ends at seq {after} in the store, not {length}",
                    key.to_text()
                )));
            }
            let frames: Vec<&[u8]> = page.iter().map(|(_, b)| b.as_slice()).collect();
            let verdicts = detente_proto::VerifiedEnvelope::decode_batch(&frames, key);
            for ((seq, bytes), verdict) in page.iter().zip(verdicts) {
                if *seq > length {
                    break;
                }
                if let Err(e) = verdict {
                    return Err(ExportError::Tampered(format!(
                        "{TAMPERED}: stream {} seq {seq} ({e}); the export stopped there",
                        key.to_text()
                    )));
                }
                if *seq != after + 1 {
                    return Err(ExportError::Store(format!(
                        "stream {} has a gap before seq {seq} in the store",
                        key.to_text()
                    )));
                }
                writer.item(out, bytes).map_err(order)?;
                after = *seq;
            }
            flush(out, tx).await?;
        }
    }
    writer
        .checkpoints(out, plan.checkpoints.count)
        .map_err(order)?;
    let mut page = CheckpointPage {
        upto_id: plan.checkpoints.last_id,
        ..CheckpointPage::oldest_first(EXPORT_CHECKPOINT_PAGE)
    };
    let mut written = 0u64;
    while written < plan.checkpoints.count {
        let rows = store
            .checkpoint_page(plan.channel.0, page)
            .await
            .map_err(|e| ExportError::Store(e.to_string()))?;
        let Some(last) = rows.last() else {
            return Err(ExportError::Store(format!(
                "{} checkpoints were announced and {written} found",
                plan.checkpoints.count
            )));
        };
        page.after_id = last.id;
        for row in &rows {
            writer.item(out, &row.signed).map_err(order)?;
            written += 1;
        }
        flush(out, tx).await?;
    }
    if !writer.is_done() {
        return Err(ExportError::Store("the bundle was left incomplete".into()));
    }
    Ok(())
}

/// The `format` of a proof JSON document.
pub const PROOF_FORMAT: &str = "detente-inclusion-proof-v1";

/// A self-contained inclusion proof as JSON (docs/transcript-format.md): the envelope and
/// the signed checkpoint in base64, the leaf index, the tree size and the path in hex. The
/// other fields are for people and are not trusted by the verifier.
pub fn proof_json(proof: &detente_proto::bundle::InclusionProof) -> serde_json::Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let envelope = detente_proto::envelope::parse_unverified(&proof.envelope).ok();
    serde_json::json!({
        "format": PROOF_FORMAT,
        "message_id": detente_proto::envelope::message_id(&proof.envelope).to_hex(),
        "stream": envelope.as_ref().map(|e| e.sender.to_text()),
        "seq": envelope.as_ref().map(|e| e.seq),
        "index": proof.index,
        "size": proof.size,
        "path": proof.path.iter().map(hex::encode).collect::<Vec<_>>(),
        "envelope": b64.encode(&proof.envelope),
        "checkpoint": b64.encode(&proof.checkpoint),
    })
}

/// Read a proof JSON document back (structure only; [`InclusionProof::verify`] checks it).
///
/// [`InclusionProof::verify`]: detente_proto::bundle::InclusionProof::verify
pub fn proof_from_json(
    value: &serde_json::Value,
) -> Result<detente_proto::bundle::InclusionProof, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    if value.get("format").and_then(|f| f.as_str()) != Some(PROOF_FORMAT) {
        return Err(format!("not a proof: \"format\" is not \"{PROOF_FORMAT}\""));
    }
    let bytes = |field: &str| -> Result<Vec<u8>, String> {
        let text = value
            .get(field)
            .and_then(|v| v.as_str())
            .ok_or(format!("proof has no \"{field}\""))?;
        b64.decode(text)
            .map_err(|e| format!("proof field \"{field}\" is not base64: {e}"))
    };
    let number = |field: &str| -> Result<u64, String> {
        value
            .get(field)
            .and_then(|v| v.as_u64())
            .ok_or(format!("proof field \"{field}\" is not a number"))
    };
    let path = value
        .get("path")
        .and_then(|p| p.as_array())
        .ok_or("proof has no \"path\" list")?;
    if path.len() > merkle::PROOF_HASHES_MAX {
        return Err("proof path is too long".into());
    }
    let path = path
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(|t| hex::decode(t).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| "a path entry is not 64 hex digits".to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(detente_proto::bundle::InclusionProof {
        envelope: bytes("envelope")?,
        checkpoint: bytes("checkpoint")?,
        index: number("index")?,
        size: number("size")?,
        path,
    })
}

/// A checkpoint for people: time, whether every member signed, and each stream.
pub fn checkpoint_json(signed: &detente_proto::checkpoint::SignedCheckpoint) -> serde_json::Value {
    let c = signed.checkpoint();
    serde_json::json!({
        "time_ms": c.time_ms,
        "cosigned": signed.cosigned(),
        "signed_by": signed.signers().map(|k| k.fingerprint()).collect::<Vec<_>>(),
        "streams": c.members.iter().map(|m| serde_json::json!({
            "key": m.key.to_text(),
            "fingerprint": m.key.fingerprint(),
            "size": m.size,
            "root": hex::encode(m.root),
        })).collect::<Vec<_>>(),
    })
}

/// Raise the alarm for a stored row that fails verification, once per detail text (a page
/// listed again does not repeat it), at most [`TAMPERED_ALARMS_MAX`] distinct ones kept.
pub(crate) fn tampered_alarm(shared: &crate::Shared, peer: &str, detail: &str) {
    let first = shared.tampered.lock().is_ok_and(|mut seen| {
        if seen.len() >= TAMPERED_ALARMS_MAX {
            seen.clear();
        }
        seen.insert(detail.to_string())
    });
    if first {
        tracing::error!(peer, "{detail}");
        shared.events.publish(crate::events::Event::Alarm {
            peer: peer.to_string(),
            detail: detail.to_string(),
        });
    }
}

/// Distinct tampered-row alarms remembered (to raise each once), at most.
const TAMPERED_ALARMS_MAX: usize = 1024;
