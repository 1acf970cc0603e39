//! The demo's console step: with `--keep`, a console login for each node, checked by
//! signing in over HTTP, and printed so that a newcomer can watch both sides in two browser
//! windows.

use detente_node::console::auth::Role;
use rand::Rng;

use crate::harness::ProcNode;
use crate::{Failure, Outcome};

/// A readable random password (no look-alike characters).
fn password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..14)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Sign in at `node`'s console with a plain HTTP client, as a browser would.
pub async fn check_login(node: &ProcNode, login: &str, password: &str) -> Result<(), Failure> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Failure::new(e.to_string()))?;
    let base = format!("http://{}", node.console_addr);
    let page = http
        .get(format!("{base}/login"))
        .send()
        .await
        .map_err(|e| Failure::new(format!("console of {}: {e}", node.name)))?;
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .to_string();
    let csrf = cookie.split_once('=').map_or("", |(_, v)| v).to_string();
    let answer = http
        .post(format!("{base}/login"))
        .header("cookie", &cookie)
        .form(&[("login", login), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .map_err(|e| Failure::new(format!("console of {}: {e}", node.name)))?;
    let signed_in = answer.status().is_redirection()
        && answer
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.starts_with("detente_session=")));
    if signed_in {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "signing in as {login} at {} failed ({})",
            node.name,
            answer.status()
        )))
    }
}

/// Create a supervisor login on each node, check it, and print where to sign in.
pub async fn logins(nodes: [&ProcNode; 2]) -> Outcome {
    println!("\nConsoles (open each in its own browser window):");
    for node in nodes {
        let login = "duty";
        let secret = password();
        crate::users::create(&node.dir, login, Role::Supervisor, &secret, None).await?;
        check_login(node, login, &secret).await?;
        println!(
            "  {:<11} http://{}/login   login {login}   password {secret}",
            node.name, node.console_addr
        );
    }
    println!("  (more accounts: detente user add --dir DIR --name LOGIN --role principal)");
    Ok(())
}
