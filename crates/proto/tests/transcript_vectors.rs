//! Fixed transcript test vectors in `testdata/transcript-v1.json`, built on the envelopes of
//! `testdata/envelope-v1.json` (two streams of one channel): every leaf hash, the root at
//! every size, every inclusion and consistency proof, a checkpoint signed by both members,
//! and the whole export bundle with the verifier's verdict. The test recomputes all of it,
//! checks every proof verifies, and compares with the committed file byte for byte, so
//! another implementation can check its hashing, proofs, checkpoint and bundle encodings.
//!
//! Regenerate (only after a deliberate format change) with
//! `DETENTE_WRITE_VECTORS=1 cargo test -p detente-proto --test transcript_vectors`.

use detente_proto::bundle::{self, Bundle};
use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint, StreamHead};
use detente_proto::merkle::{leaf_hash, verify_consistency, verify_inclusion, MemoryTree};
use detente_proto::{PartyKey, PartySecret, VerifiedEnvelope};
use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/transcript-v1.json");
const ENVELOPES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/envelope-v1.json");
const SEEDS: [[u8; 32]; 2] = [[1; 32], [2; 32]];
const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn generate() -> Value {
    let source: Value = serde_json::from_str(&std::fs::read_to_string(ENVELOPES).unwrap()).unwrap();
    let secrets: Vec<PartySecret> = SEEDS.iter().map(|s| PartySecret::from_seed(*s)).collect();
    let mut members: Vec<PartyKey> = secrets.iter().map(|s| s.public()).collect();
    members.sort();
    let mut streams: Vec<(PartyKey, Vec<Vec<u8>>)> =
        members.iter().map(|k| (*k, Vec::new())).collect();
    let mut channel = None;
    for e in source["envelopes"].as_array().unwrap() {
        let bytes = hex::decode(e["bytes"].as_str().unwrap()).unwrap();
        let v = VerifiedEnvelope::decode(&bytes, None).unwrap();
        let env = v.envelope();
        if !members.contains(&env.sender) {
            continue;
        }
        channel = Some(env.channel);
        let stream = streams.iter_mut().find(|(k, _)| *k == env.sender).unwrap();
        assert_eq!(env.seq, stream.1.len() as u64 + 1);
        stream.1.push(bytes);
    }
    let channel = channel.unwrap();

    let mut stream_vectors = Vec::new();
    let mut heads = Vec::new();
    for (key, envelopes) in &streams {
        let leaves: Vec<[u8; 32]> = envelopes.iter().map(|b| leaf_hash(b)).collect();
        let mut tree = MemoryTree::new();
        for l in &leaves {
            tree.push(*l);
        }
        let n = tree.size();
        let roots: Vec<String> = (0..=n)
            .map(|s| hex::encode(tree.root_at(s).unwrap()))
            .collect();
        let mut inclusion = Vec::new();
        for size in 1..=n {
            let root = tree.root_at(size).unwrap();
            for index in 0..size {
                let path = tree.inclusion_proof(index, size).unwrap();
                assert!(verify_inclusion(
                    index,
                    size,
                    &leaves[index as usize],
                    &path,
                    &root
                ));
                inclusion.push(json!({
                    "index": index, "size": size,
                    "path": path.iter().map(hex::encode).collect::<Vec<_>>(),
                }));
            }
        }
        let mut consistency = Vec::new();
        for new in 1..=n {
            for old in 1..=new {
                let path = tree.consistency_proof(old, new).unwrap();
                assert!(verify_consistency(
                    old,
                    new,
                    &tree.root_at(old).unwrap(),
                    &tree.root_at(new).unwrap(),
                    &path
                ));
                consistency.push(json!({
                    "old": old, "new": new,
                    "path": path.iter().map(hex::encode).collect::<Vec<_>>(),
                }));
            }
        }
        heads.push(StreamHead {
            key: *key,
            size: n,
            root: tree.root(),
        });
        stream_vectors.push(json!({
            "key": hex::encode(key.as_bytes()),
            "leaves": leaves.iter().map(hex::encode).collect::<Vec<_>>(),
            "roots": roots,
            "inclusion": inclusion,
            "consistency": consistency,
        }));
    }

    let checkpoint = Checkpoint::new(channel, T0 + 60_000, heads).unwrap();
    let mut signed = SignedCheckpoint::sign(checkpoint.clone(), &secrets[0]).unwrap();
    let one_signature = signed.encode();
    signed.add_signature(&secrets[1]).unwrap();
    assert!(signed.cosigned());
    let bundle = Bundle {
        channel,
        members: members.clone(),
        charters: Vec::new(),
        streams,
        checkpoints: vec![signed.encode()],
    };
    let bytes = bundle.encode();
    assert_eq!(Bundle::decode(&bytes).unwrap(), bundle);
    let report = bundle::verify(&bytes);
    json!({
        "description": "detente transcript format v1 test vectors (docs/transcript-format.md): RFC 9162 leaf hashes, roots at every size, inclusion and consistency proofs of the two streams of testdata/envelope-v1.json, a checkpoint body and its signing input, the checkpoint signed by one and by both members, and the export bundle with the verifier's verdict. All hex. Generated by crates/proto/tests/transcript_vectors.rs.",
        "empty_root": hex::encode(detente_proto::merkle::empty_root()),
        "channel": hex::encode(channel.0),
        "streams": stream_vectors,
        "checkpoint": {
            "body": hex::encode(checkpoint.encode()),
            "signing_input": hex::encode(Checkpoint::signing_input(&checkpoint.encode())),
            "signed_by_first": hex::encode(one_signature),
            "cosigned": hex::encode(signed.encode()),
        },
        "bundle": hex::encode(&bytes),
        "verify": {
            "ok": report.ok(),
            "messages": report.messages,
            "checkpoints": report.checkpoints,
            "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        },
    })
}

#[test]
fn transcript_vectors_match_the_committed_file() {
    let generated = generate();
    let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var("DETENTE_WRITE_VECTORS").is_ok() {
        std::fs::write(PATH, &text).unwrap();
    }
    let committed =
        std::fs::read_to_string(PATH).expect("testdata/transcript-v1.json is committed");
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(
        committed, generated,
        "the transcript vectors changed; regenerate only after a deliberate format change"
    );
    assert_eq!(committed["verify"]["ok"], json!(true));

    // The committed values themselves check out, read from the file alone.
    let cosigned = hex::decode(committed["checkpoint"]["cosigned"].as_str().unwrap()).unwrap();
    let signed = SignedCheckpoint::decode(&cosigned).unwrap();
    assert!(signed.cosigned());
    for (s, head) in committed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&signed.checkpoint().members)
    {
        let leaves: Vec<[u8; 32]> = s["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                hex::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        let roots: Vec<[u8; 32]> = s["roots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                hex::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        assert_eq!(roots[head.size as usize], head.root);
        for p in s["inclusion"].as_array().unwrap() {
            let (index, size) = (p["index"].as_u64().unwrap(), p["size"].as_u64().unwrap());
            let path: Vec<[u8; 32]> = p["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    hex::decode(h.as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap()
                })
                .collect();
            assert!(verify_inclusion(
                index,
                size,
                &leaves[index as usize],
                &path,
                &roots[size as usize]
            ));
        }
    }
    let bundle = hex::decode(committed["bundle"].as_str().unwrap()).unwrap();
    assert!(bundle::verify(&bundle).ok());
}
