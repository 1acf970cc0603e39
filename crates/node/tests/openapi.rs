//! The OpenAPI description of `/api/v1` (issue 16, item 3).
//!
//! - The document is OpenAPI 3.1 and describes exactly the routes in `api::ROUTES` (which
//!   `api_roles.rs` holds equal to the router's): a route added without its `#[utoipa::path]`
//!   fails here, as does a described route that is not served.
//! - Every operation documents its success and an error answer in the API's error shape.
//! - A running node serves the document at `/api/v1/openapi.json` to the token and refuses it
//!   without one; axum's own refusals (a body that is not JSON, a query that does not parse,
//!   a method a route lacks) come back in the documented `{"error", "hint"}` shape.
//!
//! `scripts/api-fuzz` goes further: schemathesis generates requests from this document
//! against a real node and checks every answer against it.

mod common;

use std::collections::BTreeSet;

use detente_node::api::ROUTES;
use detente_node::Node;
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(detente_node::api::openapi::document()).expect("the document is JSON")
}

/// (METHOD, path under /api/v1) of every operation in the document.
fn described(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let route = path
            .strip_prefix("/api/v1")
            .unwrap_or_else(|| panic!("{path} is outside /api/v1"));
        for method in item.as_object().expect("a path item").keys() {
            out.insert((method.to_uppercase(), route.to_string()));
        }
    }
    out
}

#[test]
fn the_document_is_openapi_3_1_and_lists_every_route() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    let declared: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let described = described(&doc);
    let missing: Vec<_> = declared.difference(&described).collect();
    let extra: Vec<_> = described.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document (add #[utoipa::path] and list the handler \
         in openapi::ApiDoc): {missing:?}"
    );
    assert!(extra.is_empty(), "described but not routed: {extra:?}");
}

#[test]
fn every_operation_documents_success_and_the_error_shape() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path}: no success answer"
            );
            let error = &responses["default"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                error.as_str(),
                Some("#/components/schemas/ErrorJson"),
                "{method} {path}: the error answer"
            );
            assert!(op["tags"].is_array(), "{method} {path}: a tag");
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["token"]["scheme"], "bearer");
    assert_eq!(schemes["session"]["in"], "cookie");
}

/// Both send routes take an `Idempotency-Key` and say when an answer is a replay (issue 12
/// item 3); the description says how long a key is remembered.
#[test]
fn the_send_routes_document_the_idempotency_key() {
    let doc = document();
    for path in ["/api/v1/messages", "/api/v1/messages/batch"] {
        let op = &doc["paths"][path]["post"];
        let key = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "Idempotency-Key")
            .unwrap_or_else(|| panic!("POST {path}: no Idempotency-Key parameter"));
        assert_eq!(key["in"], "header", "POST {path}");
        assert!(
            key["schema"]["pattern"].is_string(),
            "POST {path}: the key's bounds"
        );
        let text = key["description"].as_str().unwrap_or_default();
        assert!(text.contains("24 hours"), "POST {path}: {text}");
        let replayed = &op["responses"]["201"]["headers"]["Idempotent-Replayed"];
        assert!(
            replayed.is_object(),
            "POST {path}: no Idempotent-Replayed header"
        );
    }
}

async fn start_node(dir: &std::path::Path) -> Node {
    common::start_target(dir, false).await
}

#[tokio::test]
async fn a_node_serves_the_document_and_types_every_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(tmp.path()).await;
    let base = format!("http://{}/api/v1", node.shared.console_addr);
    let token = node.shared.token.clone();
    let client = reqwest::Client::new();

    let anonymous = client.get(format!("{base}/openapi.json")).send().await;
    assert_eq!(anonymous.unwrap().status(), 401, "no token, no document");
    let served: Value = client
        .get(format!("{base}/openapi.json"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET openapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(served, document(), "the node serves the generated document");

    // (request, expected status): refusals made by axum itself, not by a handler.
    let cases = [
        (
            client
                .post(format!("{base}/messages"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
        (
            client
                .post(format!("{base}/messages"))
                .header("content-type", "application/json")
                .body("{\"text\": \"no recipient\"}"),
            422,
        ),
        (client.post(format!("{base}/messages")).body("to=x"), 415),
        (client.get(format!("{base}/messages?limit=many")), 400),
        (client.delete(format!("{base}/status")), 405),
        (
            client.put(format!("{base}/messages/{}", "a".repeat(64))),
            405,
        ),
    ];
    let head = client.head(format!("{base}/status")).bearer_auth(&token);
    assert_eq!(
        head.send().await.expect("HEAD").status(),
        200,
        "HEAD is a GET"
    );
    for (request, expected) in cases {
        let response = request.bearer_auth(&token).send().await.expect("a request");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{body}");
        assert_eq!(kind.as_deref(), Some("application/json"), "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{status}: {body}"
        );
        assert!(body["hint"].is_string(), "{status}: {body}");
    }
    node.stop().await;
}
