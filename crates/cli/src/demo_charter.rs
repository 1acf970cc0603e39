//! Demo step: the channel charter both nodes signed on first contact.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Client;
use crate::{Failure, Outcome};

/// Wait until both nodes hold the same agreed charter, and say what it fixes.
pub async fn show_agreed(w: &Client, b: &Client, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let (at_w, at_b) = loop {
        let at_w = w.get("/api/v1/peers/beijing/charter").await?;
        let at_b = b.get("/api/v1/peers/washington/charter").await?;
        if at_w["state"] == "agreed" && at_b["state"] == "agreed" {
            break (at_w, at_b);
        }
        if Instant::now() > deadline {
            // What each side shows, so that a failure says which side waits for what.
            let state = |c: &Value| {
                let digest = c["digest"].as_str().unwrap_or("none");
                format!("{} (v{}, digest {digest})", c["state"], c["version"])
            };
            return Err(Failure::new(format!(
                "the nodes did not agree a channel charter within {timeout:?}: washington \
                 shows {}, beijing {}",
                state(&at_w),
                state(&at_b)
            ))
            .hint("see node.log in each node directory"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    if at_w["digest"] != at_b["digest"] {
        return Err(Failure::new("the two nodes agreed different charters"));
    }
    let c: &Value = &at_w["charter"];
    let d = &c["deadlines"];
    println!(
        "   ✓ both signed channel charter v{} ({}…): FLASH delivered within {}, acknowledged within {}; link test every {}",
        at_w["version"],
        &at_w["digest"].as_str().unwrap_or_default()[..12],
        d["flash_delivered"].as_str().unwrap_or("?"),
        d["flash_acknowledged"].as_str().unwrap_or("?"),
        c["link_test_interval"].as_str().unwrap_or("?"),
    );
    Ok(())
}
