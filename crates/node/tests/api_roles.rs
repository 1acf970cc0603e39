//! The `/api/v1` route × role table (issue 12, item 18).
//!
//! - The routes the router registers (read from `api.rs`'s `router()` itself) are exactly
//!   the routes declared in `api::ROUTES`: a new route without a declared role fails here
//!   (and the router refuses it to everyone at run time).
//! - `docs/api-roles.md` is the table generated from `ROUTES` (`DETENTE_BLESS=1` rewrites it).
//! - Every route × every role, through a real console session on a running node: a role the
//!   table refuses gets 403, one it allows does not.
//! - `checkpoint`, `export`, `proof` and `glossary add` are audited, and a `GET` of a proof
//!   never signs a checkpoint.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use detente_node::api::{route_table_markdown, ROUTES};
use detente_node::console::auth::{Role, ROLES};
use detente_node::writer::SendRequest;
use detente_node::Node;
use detente_proto::{Body, PartySecret, Precedence, TextBody};
use detente_store::Store;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// (method, path) pairs registered in `routes()`, parsed from its source.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api/mod.rs");
    let start = source
        .find("pub fn routes(")
        .expect("routes() in api/mod.rs");
    let body = &source[start..];
    let end = body
        .find("    Router::new()\n        .route(\n")
        .expect("the outer router");
    let mut out = BTreeSet::new();
    for line in body[..end].lines() {
        let Some(rest) = line.trim().strip_prefix(".route(\"") else {
            continue;
        };
        let (path, handlers) = rest.split_once('"').expect("a quoted path");
        for method in ["get", "post", "put", "delete", "patch"] {
            let mut h = handlers;
            while let Some(i) = h.find(method) {
                let before = h[..i].chars().last();
                let after = h[i + method.len()..].chars().next();
                if matches!(before, Some(' ' | '.' | ',')) && after == Some('(') {
                    out.insert((method.to_uppercase(), path.to_string()));
                }
                h = &h[i + method.len()..];
            }
        }
    }
    out
}

#[test]
fn every_routed_api_route_declares_its_role() {
    let declared: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let routed = routed();
    assert!(routed.len() >= 15, "parsed the router: {routed:?}");
    let undeclared: Vec<_> = routed.difference(&declared).collect();
    let stale: Vec<_> = declared.difference(&routed).collect();
    assert!(
        undeclared.is_empty(),
        "routes without a declared role (add them to api::ROUTES): {undeclared:?}"
    );
    assert!(stale.is_empty(), "declared but not routed: {stale:?}");
}

#[test]
fn the_route_table_in_docs_is_generated_from_the_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api-roles.md");
    let table = route_table_markdown();
    if std::env::var("DETENTE_BLESS").is_ok() {
        std::fs::write(path, &table).expect("write docs/api-roles.md");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed, table,
        "docs/api-roles.md differs from api::ROUTES; regenerate with DETENTE_BLESS=1 \
         cargo test -p detente-node --test api_roles"
    );
}

async fn start_node(dir: &std::path::Path) -> Node {
    common::start_target(dir, true).await
}

/// A console session of `role`: (cookie token, CSRF token).
async fn session(node: &Node, role: Role) -> (String, String) {
    let store = &node.shared.store;
    let login = format!("{}1", role.name());
    store
        .put_user(&detente_store::console::UserRow {
            login: login.clone(),
            role: role.name().into(),
            password_hash: "unused".into(),
            lang: "en".into(),
            tz: String::new(),
            created_at_ms: 0,
        })
        .await
        .expect("user");
    let token = hex::encode([role as u8 + 1; 32]);
    let csrf = hex::encode([role as u8 + 100; 16]);
    store
        .create_session(&detente_store::console::SessionRow {
            token_hash: Sha256::digest(token.as_bytes()).into(),
            login,
            csrf: csrf.clone(),
            created_at_ms: detente_node::now_ms() as i64,
            expires_at_ms: detente_node::now_ms() as i64 + 3_600_000,
        })
        .await
        .expect("session");
    (token, csrf)
}

/// Who calls: the API token, or a console session.
enum Who<'a> {
    Token,
    Session(&'a (String, String)),
}

async fn call(node: &Node, who: &Who<'_>, method: &str, path: &str) -> (u16, String) {
    let auth = match who {
        Who::Token => format!("Authorization: Bearer {}\r\n", node.shared.token),
        Who::Session((token, csrf)) => {
            format!("Cookie: detente_session={token}\r\nX-CSRF-Token: {csrf}\r\n")
        }
    };
    let body = if method == "POST" { "{}" } else { "" };
    let request = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(node.shared.console_addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn send_one(node: &Node) -> String {
    let sent = node
        .shared
        .engine
        .send(SendRequest {
            peer: "fake".into(),
            precedence: Precedence::Routine,
            topic: "general".into(),
            author: "Tester".into(),
            in_reply_to: None,
            body: Body::Text(TextBody {
                language: "en".into(),
                text: "hello".into(),
                translations: vec![],
            }),
        })
        .await
        .expect("send");
    sent.id.to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_exactly_the_roles_the_table_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(&tmp.path().join("node")).await;
    let id = send_one(&node).await;
    let mut sessions = Vec::new();
    for role in ROLES {
        sessions.push((role, session(&node, role).await));
    }
    for (method, path, access) in ROUTES {
        let concrete = path
            .replace("{id}", &id)
            .replace("{name}", "fake")
            .replace("/wait", "/wait?timeout_ms=1");
        for (role, s) in &sessions {
            let (status, text) = call(&node, &Who::Session(s), method, &concrete).await;
            // The route layer's refusal names what the table says the route needs; a
            // handler may refuse more finely (a precedence, a receipt level).
            let refused = status == 403 && text.contains(access.what());
            assert_eq!(
                refused,
                !access.allows(*role),
                "{method} {path} as {}: {status} {text}",
                role.name()
            );
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_get_never_signs_and_record_actions_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(&tmp.path().join("node")).await;
    let id = send_one(&node).await;
    // As if the peer's Ack had said it holds seq 1 (a checkpoint names our stream only so
    // far): the prune its Ack makes, committed to the store, and the node restarted, which
    // knows from its outbox what the peer holds (either engine).
    let prune = detente_store::WriteBatch {
        prune: vec![("fake".into(), 1)],
        ..Default::default()
    };
    node.shared.store.commit(prune).await.expect("prune");
    node.stop().await;
    let node = Node::start(detente_node::config::NodeDir::new(tmp.path().join("node")))
        .await
        .expect("restart");
    let channel = detente_proto::ChannelId::for_pair(
        &node.shared.secret.public(),
        &PartySecret::from_seed([0x22; 32]).public(),
    );
    let proof_path = format!("/messages/{id}/proof");
    let (status, text) = call(&node, &Who::Token, "GET", &proof_path).await;
    assert_eq!(
        status, 409,
        "no checkpoint covers it and a GET signs none: {text}"
    );
    let checkpoints = node.shared.store.checkpoints(channel.0).await.unwrap();
    assert!(checkpoints.is_empty(), "a GET signed a checkpoint");
    let (status, text) = call(&node, &Who::Token, "POST", &proof_path).await;
    assert_eq!(status, 200, "{}", text.rsplit("\r\n").next().unwrap_or(""));
    let (status, text) = call(&node, &Who::Token, "GET", &proof_path).await;
    assert_eq!(status, 200, "now covered: {text}");
    let (status, _) = call(&node, &Who::Token, "POST", "/peers/fake/checkpoint").await;
    assert_eq!(status, 200);
    let (status, _) = call(&node, &Who::Token, "GET", "/peers/fake/export").await;
    assert_eq!(status, 200);
    let supervisor = session(&node, Role::Supervisor).await;
    let glossary =
        r#"{"peer":"fake","lang_a":"en","term_a":"launch","lang_b":"zh-CN","term_b":"发射"}"#;
    let request = format!(
        "POST /api/v1/glossary HTTP/1.1\r\nHost: x\r\nCookie: detente_session={}\r\n\
         X-CSRF-Token: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{glossary}",
        supervisor.0,
        supervisor.1,
        glossary.len()
    );
    let mut s = TcpStream::connect(node.shared.console_addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 201"));
    let audit = node.shared.store.audit(100).await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.login.as_str()))
        .collect();
    for action in ["proof", "checkpoint", "export"] {
        assert!(
            actions.contains(&(action, "api-token")),
            "{action} audited: {actions:?}"
        );
    }
    assert!(
        actions.contains(&("glossary add", "supervisor1")),
        "{actions:?}"
    );
    node.stop().await;
}
