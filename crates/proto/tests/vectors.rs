//! Fixed test vectors in `testdata/envelope-v1.json`: for fixed seeds, the public keys, their
//! text form and fingerprints, the pair channel id, and envelopes of every body kind and
//! precedence with their exact signed bytes and message ids (Ed25519 is deterministic). The
//! test parses each envelope from the file's fields, signs it and compares bytes and id,
//! decodes the stored bytes, and checks the file is exactly what the vectors below generate.
//!
//! Regenerate (only after a deliberate format change) with
//! `DETENTE_WRITE_VECTORS=1 cargo test -p detente-proto --test vectors`.

use detente_proto::envelope::message_id;
use detente_proto::{
    fingerprint, Body, ChannelId, Charter, Deadlines, Envelope, FormatRef, Member, MessageId,
    PartyKey, PartySecret, Precedence, Receipt, ReceiptLevel, ReceiptTarget, Terms, TextBody,
    VerifiedEnvelope,
};
use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/envelope-v1.json");

const SEEDS: [[u8; 32]; 3] = [[1; 32], [2; 32], [3; 32]];

const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// The vector envelopes: two streams of one channel (party 1 and party 2), chained.
fn vector_envelopes() -> Vec<(&'static str, [u8; 32], Envelope)> {
    let a = PartySecret::from_seed(SEEDS[0]);
    let b = PartySecret::from_seed(SEEDS[1]);
    let channel = ChannelId::for_pair(&a.public(), &b.public());
    let text = |language: &str, text: &str, translations: &[(&str, &str)]| {
        Body::Text(TextBody {
            language: language.into(),
            text: text.into(),
            translations: translations
                .iter()
                .map(|(l, t)| (l.to_string(), t.to_string()))
                .collect(),
        })
    };
    let mut out: Vec<(&'static str, [u8; 32], Envelope)> = Vec::new();
    let mut last: [MessageId; 2] = [MessageId::ZERO; 2];
    let mut seq = [0u64; 2];
    let mut ids = Vec::new();
    let mut push = |name: &'static str,
                    who: usize,
                    at: u64,
                    precedence: Precedence,
                    topic: &str,
                    author: &str,
                    in_reply_to: Option<MessageId>,
                    body: Body| {
        let secret = PartySecret::from_seed(SEEDS[who]);
        seq[who] += 1;
        let e = Envelope {
            channel,
            sender: secret.public(),
            seq: seq[who],
            prev: last[who],
            created_at_ms: T0 + at,
            precedence,
            topic: topic.into(),
            author: author.into(),
            in_reply_to,
            body,
        };
        let id = VerifiedEnvelope::sign(e.clone(), &secret).unwrap().id();
        last[who] = id;
        out.push((name, SEEDS[who], e));
        id
    };
    ids.push(push(
        "a1-text-flash",
        0,
        0,
        Precedence::Flash,
        "incident-7",
        "Duty Officer",
        None,
        text(
            "en",
            "Unidentified aircraft crossing sector 4. Stand by.",
            &[],
        ),
    ));
    ids.push(push(
        "b1-receipt-delivered",
        1,
        850,
        Precedence::Priority,
        "incident-7",
        "Дежурный офицер",
        None,
        Body::Receipt(Receipt {
            level: ReceiptLevel::Delivered,
            target: ReceiptTarget::Ranges(vec![(1, 1)]),
            note: None,
        }),
    ));
    ids.push(push(
        "a2-text-immediate-translations",
        0,
        4_000,
        Precedence::Immediate,
        "incident-7",
        "Duty Officer",
        None,
        text(
            "en",
            "Details: two contacts, altitude 9 km, heading 270.\nNo hostile intent observed.",
            &[
                ("ru", "Подробности: два контакта, высота 9 км, курс 270."),
                ("zh-Hans", "详情：两个目标，高度9公里，航向270。"),
            ],
        ),
    ));
    let a2 = ids[2];
    ids.push(push(
        "b2-receipt-read",
        1,
        9_000,
        Precedence::Routine,
        "incident-7",
        "Дежурный офицер",
        Some(a2),
        Body::Receipt(Receipt {
            level: ReceiptLevel::Read,
            target: ReceiptTarget::Message(a2),
            note: Some("Read by the watch supervisor.".into()),
        }),
    ));
    let a1 = ids[0];
    ids.push(push(
        "b3-receipt-declined",
        1,
        12_000,
        Precedence::Immediate,
        "incident-7",
        "Супервизор",
        Some(a1),
        Body::Receipt(Receipt {
            level: ReceiptLevel::Declined,
            target: ReceiptTarget::Message(a1),
            note: Some("Not our aircraft; refer to civil aviation.".into()),
        }),
    ));
    ids.push(push(
        "a3-receipt-delivered-ranges",
        0,
        15_000,
        Precedence::Routine,
        "incident-7",
        "",
        None,
        Body::Receipt(Receipt {
            level: ReceiptLevel::Delivered,
            target: ReceiptTarget::Ranges(vec![(1, 3)]),
            note: Some("batch".into()),
        }),
    ));
    ids.push(push(
        "a4-test-routine",
        0,
        86_400_000,
        Precedence::Routine,
        "link-test",
        "Communications Technician",
        None,
        Body::Test { nonce: [0xa5; 16] },
    ));
    ids.push(push(
        "b4-charter",
        1,
        90_000_000,
        Precedence::Immediate,
        "general",
        "",
        None,
        Body::Charter(vector_charter()),
    ));
    out
}

/// The charter of the vector channel: both parties' terms agreed.
fn vector_charter() -> Charter {
    let terms = |seed: [u8; 32], name: &str, lang: &str, tz: &str, port: u16| Terms {
        member: Member {
            key: PartySecret::from_seed(seed).public(),
            name: name.into(),
            party: format!("The {name} party"),
            addresses: vec![format!("192.0.2.{}:{port}", seed[0])],
            lang: lang.into(),
            tz: tz.into(),
        },
        formats: vec![FormatRef {
            id: "launch".into(),
            version: 1,
            digest: [0x42; 32],
        }],
        deadlines: Deadlines::default(),
        link_test_interval: std::time::Duration::from_secs(3600),
        counterparts: vec![("Duty Officer".into(), "值班员".into())],
    };
    let mut b = terms(SEEDS[1], "bravo", "zh-CN", "Asia/Shanghai", 7001);
    b.deadlines.flash_acknowledged = std::time::Duration::from_secs(300);
    Charter::agree(
        &terms(SEEDS[0], "alpha", "en", "America/New_York", 7000),
        &b,
    )
    .unwrap()
}

// ---- JSON form of the fields ------------------------------------------------------------

fn hex32(b: &[u8; 32]) -> String {
    hex::encode(b)
}

fn envelope_json(e: &Envelope) -> Value {
    let body = match &e.body {
        Body::Text(t) => json!({
            "kind": "text",
            "language": t.language,
            "text": t.text,
            "translations": t.translations.iter().map(|(l, s)| json!([l, s])).collect::<Vec<_>>(),
        }),
        Body::Receipt(r) => {
            let mut v = json!({
                "kind": "receipt",
                "level": r.level.name(),
                "note": r.note,
            });
            match &r.target {
                ReceiptTarget::Ranges(ranges) => {
                    v["ranges"] = json!(ranges
                        .iter()
                        .map(|(a, b)| json!([a, b]))
                        .collect::<Vec<_>>())
                }
                ReceiptTarget::Message(id) => v["message"] = json!(id.to_hex()),
            }
            v
        }
        Body::Test { nonce } => json!({ "kind": "test", "nonce": hex::encode(nonce) }),
        Body::Charter(c) => json!({
            "kind": "charter",
            "charter_cbor": hex::encode(c.encode()),
            "charter_digest": hex::encode(c.digest()),
        }),
    };
    json!({
        "channel": e.channel.to_hex(),
        "sender": hex32(e.sender.as_bytes()),
        "seq": e.seq,
        "prev": e.prev.to_hex(),
        "created_at_ms": e.created_at_ms,
        "precedence": e.precedence.name(),
        "topic": e.topic,
        "author": e.author,
        "in_reply_to": e.in_reply_to.map(|id| id.to_hex()),
        "body": body,
    })
}

fn bytes32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().expect("hex string"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn text_of(v: &Value) -> String {
    v.as_str().expect("string").to_string()
}

fn envelope_from_json(v: &Value) -> Envelope {
    let body = &v["body"];
    let body = match body["kind"].as_str().unwrap() {
        "text" => Body::Text(TextBody {
            language: text_of(&body["language"]),
            text: text_of(&body["text"]),
            translations: body["translations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| (text_of(&pair[0]), text_of(&pair[1])))
                .collect(),
        }),
        "receipt" => Body::Receipt(Receipt {
            level: ReceiptLevel::parse(body["level"].as_str().unwrap()).unwrap(),
            target: match body.get("ranges") {
                Some(ranges) => ReceiptTarget::Ranges(
                    ranges
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
                        .collect(),
                ),
                None => ReceiptTarget::Message(MessageId(bytes32(&body["message"]))),
            },
            note: body["note"].as_str().map(str::to_string),
        }),
        "test" => Body::Test {
            nonce: hex::decode(body["nonce"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        },
        "charter" => {
            let c = Charter::decode(&hex::decode(body["charter_cbor"].as_str().unwrap()).unwrap())
                .unwrap();
            assert_eq!(
                hex::encode(c.digest()),
                body["charter_digest"].as_str().unwrap()
            );
            Body::Charter(c)
        }
        other => panic!("unknown body kind {other}"),
    };
    Envelope {
        channel: ChannelId(bytes32(&v["channel"])),
        sender: PartyKey::from_bytes(bytes32(&v["sender"])).unwrap(),
        seq: v["seq"].as_u64().unwrap(),
        prev: MessageId(bytes32(&v["prev"])),
        created_at_ms: v["created_at_ms"].as_u64().unwrap(),
        precedence: Precedence::parse(v["precedence"].as_str().unwrap()).unwrap(),
        topic: text_of(&v["topic"]),
        author: text_of(&v["author"]),
        in_reply_to: v["in_reply_to"]
            .as_str()
            .map(|_| MessageId(bytes32(&v["in_reply_to"]))),
        body,
    }
}

/// The whole vector document, as the code computes it now.
fn generate() -> Value {
    let keys: Vec<Value> = SEEDS
        .iter()
        .map(|seed| {
            let key = PartySecret::from_seed(*seed).public();
            json!({
                "seed": hex::encode(seed),
                "public": hex32(key.as_bytes()),
                "text": key.to_text(),
                "fingerprint": key.fingerprint(),
            })
        })
        .collect();
    let public = |i: usize| PartySecret::from_seed(SEEDS[i]).public();
    let channels: Vec<Value> = [(0, 1), (0, 2), (2, 1)]
        .into_iter()
        .map(|(a, b)| {
            json!({
                "a": hex32(public(a).as_bytes()),
                "b": hex32(public(b).as_bytes()),
                "channel": ChannelId::for_pair(&public(a), &public(b)).to_hex(),
            })
        })
        .collect();
    let envelopes: Vec<Value> = vector_envelopes()
        .into_iter()
        .map(|(name, seed, e)| {
            let v = VerifiedEnvelope::sign(e.clone(), &PartySecret::from_seed(seed)).unwrap();
            json!({
                "name": name,
                "seed": hex::encode(seed),
                "envelope": envelope_json(&e),
                "bytes": hex::encode(v.bytes()),
                "id": v.id().to_hex(),
            })
        })
        .collect();
    json!({
        "description": "detente envelope format v1 test vectors: Ed25519 keys from fixed seeds with fingerprints, pair channel ids, and COSE_Sign1 envelopes (hex) with their message ids (SHA-256 of the bytes). Generated by crates/proto/tests/vectors.rs.",
        "keys": keys,
        "channels": channels,
        "envelopes": envelopes,
    })
}

fn load() -> Value {
    let text = std::fs::read_to_string(PATH)
        .unwrap_or_else(|e| panic!("{PATH}: {e}; generate it with DETENTE_WRITE_VECTORS=1"));
    serde_json::from_str(&text).expect("vector file is JSON")
}

#[test]
fn write_vectors_when_asked() {
    if std::env::var_os("DETENTE_WRITE_VECTORS").is_none() {
        return;
    }
    let mut text = serde_json::to_string_pretty(&generate()).unwrap();
    text.push('\n');
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata")).unwrap();
    std::fs::write(PATH, text).unwrap();
}

#[test]
fn keys_and_fingerprints() {
    let file = load();
    let keys = file["keys"].as_array().unwrap();
    assert_eq!(keys.len(), SEEDS.len());
    for k in keys {
        let seed: [u8; 32] = bytes32(&k["seed"]);
        let key = PartySecret::from_seed(seed).public();
        assert_eq!(hex32(key.as_bytes()), k["public"]);
        assert_eq!(key.to_text(), k["text"]);
        assert_eq!(
            PartyKey::from_text(k["text"].as_str().unwrap()).unwrap(),
            key
        );
        assert_eq!(key.fingerprint(), k["fingerprint"]);
        assert_eq!(fingerprint(key.as_bytes()), k["fingerprint"]);
    }
}

#[test]
fn pair_channels() {
    let file = load();
    for c in file["channels"].as_array().unwrap() {
        let a = PartyKey::from_bytes(bytes32(&c["a"])).unwrap();
        let b = PartyKey::from_bytes(bytes32(&c["b"])).unwrap();
        assert_eq!(ChannelId::for_pair(&a, &b).to_hex(), c["channel"]);
        assert_eq!(
            ChannelId::for_pair(&b, &a).to_hex(),
            c["channel"],
            "symmetric"
        );
    }
}

#[test]
fn envelopes_sign_and_decode_to_the_vectors() {
    let file = load();
    let envelopes = file["envelopes"].as_array().unwrap();
    assert!(envelopes.len() >= 5);
    let mut kinds = std::collections::BTreeSet::new();
    let mut precedences = std::collections::BTreeSet::new();
    for v in envelopes {
        let name = v["name"].as_str().unwrap();
        let e = envelope_from_json(&v["envelope"]);
        assert_eq!(envelope_json(&e), v["envelope"], "{name}: fields");
        kinds.insert(e.body.kind());
        precedences.insert(e.precedence);

        let secret = PartySecret::from_seed(bytes32(&v["seed"]));
        let signed = VerifiedEnvelope::sign(e.clone(), &secret).unwrap();
        assert_eq!(
            hex::encode(signed.bytes()),
            v["bytes"],
            "{name}: signed bytes"
        );
        assert_eq!(signed.id().to_hex(), v["id"], "{name}: message id");

        let bytes = hex::decode(v["bytes"].as_str().unwrap()).unwrap();
        assert_eq!(
            message_id(&bytes).to_hex(),
            v["id"],
            "{name}: id is SHA-256"
        );
        let decoded = VerifiedEnvelope::decode(&bytes, Some(&e.sender)).unwrap();
        assert_eq!(decoded.envelope(), &e, "{name}: decoded");
        assert_eq!(decoded.id().to_hex(), v["id"]);
    }
    assert_eq!(kinds.len(), 4, "text, receipt, test and charter bodies");
    assert_eq!(precedences.len(), 4, "every precedence");
}

#[test]
fn the_file_is_what_the_generator_writes() {
    assert_eq!(
        load(),
        generate(),
        "testdata/envelope-v1.json is stale; regenerate with DETENTE_WRITE_VECTORS=1 if the change is deliberate"
    );
}
