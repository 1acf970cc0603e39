//! The fuzz targets' seed corpus (`fuzz/seeds/TARGET/`), generated from the committed test
//! vectors (`testdata/*.json`) so that every target starts from valid inputs of its format.
//! This test fails when the committed seeds differ from what the vectors give;
//! `DETENTE_BLESS=1 cargo test -p detente-proto --test fuzz_seeds` rewrites them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use detente_proto::checkpoint::SignedCheckpoint;
use detente_proto::{Body, Frame, RefuseCode, Terms};
use serde_json::Value;

fn vectors(name: &str) -> Value {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("test vectors")).expect("JSON")
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex text")).expect("hex")
}

/// A frame as `Frame::decode` takes it: type byte and body, without the length prefix.
fn frame_body(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out.split_off(4)
}

fn seeds() -> BTreeMap<(&'static str, String), Vec<u8>> {
    let envelopes = vectors("envelope-v1.json");
    let transcript = vectors("transcript-v1.json");
    let mut seeds = BTreeMap::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.insert((target, name), bytes);
    };
    let mut charter = None;
    for e in envelopes["envelopes"].as_array().expect("envelopes") {
        let name = e["name"].as_str().expect("name").to_string();
        let bytes = unhex(&e["bytes"]);
        add(
            "frame",
            format!("envelope-{name}"),
            frame_body(&Frame::Envelope(bytes.clone())),
        );
        if let Ok(parsed) = detente_proto::envelope::parse_unverified(&bytes) {
            if let Body::Charter(c) = &parsed.body {
                charter = Some(c.clone());
            }
        }
        add("envelope", name, bytes);
    }
    add(
        "frame",
        "hello".into(),
        frame_body(&Frame::Hello {
            version: 2,
            hwm: 7,
            wall_ms: 1_767_225_600_000,
        }),
    );
    add(
        "frame",
        "ack".into(),
        frame_body(&Frame::Ack {
            hwm: 9,
            received: 3,
        }),
    );
    add(
        "frame",
        "ping".into(),
        frame_body(&Frame::Ping {
            nonce: 42,
            wall_ms: 1_767_225_600_000,
        }),
    );
    add(
        "frame",
        "refuse".into(),
        frame_body(&Frame::Refuse {
            seq: 3,
            code: RefuseCode::Invalid,
            reason: "the signature does not verify".into(),
        }),
    );
    let checkpoint = &transcript["checkpoint"];
    add("checkpoint", "body".into(), unhex(&checkpoint["body"]));
    add(
        "checkpoint",
        "signed-by-first".into(),
        unhex(&checkpoint["signed_by_first"]),
    );
    add(
        "checkpoint",
        "cosigned".into(),
        unhex(&checkpoint["cosigned"]),
    );
    let cosigned = unhex(&checkpoint["cosigned"]);
    add(
        "frame",
        "checkpoint".into(),
        frame_body(&Frame::Checkpoint(cosigned.clone())),
    );
    let bundle = unhex(&transcript["bundle"]);
    add("bundle", "channel".into(), bundle.clone());
    if let Some(c) = charter {
        add(
            "charter",
            "charter".into(),
            [&[0u8][..], &c.encode()].concat(),
        );
        for (i, member) in c.members.iter().enumerate() {
            let terms = Terms {
                member: member.clone(),
                formats: c.formats.clone(),
                deadlines: c.deadlines,
                link_test_interval: c.link_test_interval,
                counterparts: c
                    .counterparts
                    .iter()
                    .map(|p| (p.first.clone(), p.second.clone()))
                    .collect(),
            };
            let encoded = terms.encode();
            add(
                "frame",
                format!("terms-{i}"),
                frame_body(&Frame::Terms(encoded.clone())),
            );
            add(
                "charter",
                format!("terms-{i}"),
                [&[1u8][..], &encoded].concat(),
            );
        }
    }
    // Proof documents as `detente proof` writes them: the messages of each stream against
    // the co-signed checkpoint, with the inclusion paths of the vectors.
    let signed = SignedCheckpoint::decode(&cosigned).expect("the vectors' checkpoint");
    for stream in transcript["streams"].as_array().expect("streams") {
        let key = detente_proto::PartyKey::from_bytes(unhex(&stream["key"]).try_into().unwrap())
            .expect("a stream key");
        let Some(size) = signed.checkpoint().head(&key).map(|h| h.size) else {
            continue;
        };
        for inclusion in stream["inclusion"].as_array().expect("inclusion") {
            if inclusion["size"].as_u64() != Some(size) {
                continue;
            }
            let index = inclusion["index"].as_u64().unwrap();
            let envelope = envelopes["envelopes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| unhex(&e["bytes"]))
                .find(|b| {
                    detente_proto::envelope::parse_unverified(b)
                        .is_ok_and(|e| e.sender == key && e.seq == index + 1)
                })
                .expect("the envelope at that index");
            let proof = serde_json::json!({
                "format": "detente-inclusion-proof-v1",
                "message_id": detente_proto::envelope::message_id(&envelope).to_hex(),
                "stream": key.to_text(),
                "seq": index + 1,
                "index": index,
                "size": size,
                "path": inclusion["path"],
                "envelope": base64(&envelope),
                "checkpoint": base64(&cosigned),
            });
            let name = format!("{}-{index}", &key.to_text()[8..16]);
            add("proof_json", name, proof.to_string().into_bytes());
        }
    }
    seeds
}

/// Standard base64 with padding (what the node's proof JSON uses).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds"))
}

#[test]
fn committed_fuzz_seeds_are_generated_from_the_test_vectors() {
    let seeds = seeds();
    let bless = std::env::var("DETENTE_BLESS").is_ok();
    for ((target, name), bytes) in &seeds {
        let path = seeds_dir().join(target).join(name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            &committed == bytes,
            "{} differs from the test vectors; regenerate with DETENTE_BLESS=1 cargo test \
             -p detente-proto --test fuzz_seeds",
            path.display()
        );
    }
}
