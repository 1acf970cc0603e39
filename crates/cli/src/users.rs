//! `detente user add` and `detente user list`: console accounts, kept in the node's store.
//! They work whether or not the node is running (SQLite lets a second process write).

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use detente_node::config::NodeDir;
use detente_node::console::auth::{self, Role};
use detente_store::console::UserRow;
use serde_json::json;

use crate::{Failure, Outcome};

/// Read the password: the first line of `file`, or from the terminal without echo, or the
/// first line of standard input. Never from the command line, where `ps` would show it.
fn read_password(file: Option<&Path>) -> Result<String, Failure> {
    let line = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => {
            let stdin = std::io::stdin();
            let terminal = stdin.is_terminal();
            if terminal {
                eprint!("password: ");
                let _ = std::io::stderr().flush();
                let _ = Command::new("stty")
                    .arg("-echo")
                    .stdin(Stdio::inherit())
                    .status();
            }
            let mut line = String::new();
            let read = stdin.lock().read_line(&mut line);
            if terminal {
                let _ = Command::new("stty")
                    .arg("echo")
                    .stdin(Stdio::inherit())
                    .status();
                eprintln!();
            }
            read.map_err(|e| Failure::new(format!("cannot read the password: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    Ok(line)
}

pub async fn user_add(
    dir: &Path,
    name: &str,
    role: &str,
    password_file: Option<&Path>,
    lang: Option<String>,
) -> Outcome {
    let Some(parsed) = Role::parse(role) else {
        return Err(Failure::usage(format!("unknown role {role:?}"))
            .hint("use watch, supervisor, principal, auditor or admin"));
    };
    if !auth::valid_login(name) {
        return Err(Failure::usage(format!(
            "login {name:?} is not allowed: use 1 to {} letters, digits, '.', '_' or '-'",
            auth::LOGIN_BYTES_MAX
        )));
    }
    NodeDir::new(dir).load()?;
    let password = read_password(password_file)?;
    let created = create(dir, name, parsed, &password, lang).await?;
    println!(
        "{} console user {name} ({})",
        if created { "created" } else { "updated" },
        parsed.name()
    );
    Ok(())
}

/// Create or update an account; true when it is new. The demo and the tests use this too.
pub async fn create(
    dir: &Path,
    name: &str,
    role: Role,
    password: &str,
    lang: Option<String>,
) -> Result<bool, Failure> {
    if !auth::valid_login(name) {
        return Err(Failure::usage(format!("login {name:?} is not allowed")));
    }
    let node = NodeDir::new(dir);
    let config = node.load()?;
    let lang = lang.unwrap_or_else(|| config.lang.clone());
    if !detente_node::console::i18n::supported(&lang) {
        return Err(Failure::usage(format!("no console language {lang:?}")).hint("use en or zh-CN"));
    }
    let hash = auth::hash_password(password)
        .map_err(|e| Failure::new(e.to_string()).hint("choose a longer password"))?;
    let store = crate::progress::open_store(&node, &config)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    let row = UserRow {
        login: name.to_string(),
        role: role.name().to_string(),
        password_hash: hash,
        lang,
        tz: String::new(),
        created_at_ms: detente_node::now_ms() as i64,
    };
    let result = store.put_user(&row).await;
    if let Ok(created) = &result {
        let audit = detente_store::console::AuditRow {
            at_ms: row.created_at_ms,
            login: "cli".into(),
            action: if *created { "user-add" } else { "user-change" }.into(),
            detail: format!("{name} {}", role.name()),
            source: "local".into(),
        };
        let _ = store.append_audit(&audit).await;
    }
    store.close().await;
    result.map_err(|e| Failure::new(e.to_string()))
}

pub async fn user_list(dir: &Path, json: bool) -> Outcome {
    let node = NodeDir::new(dir);
    let config = node.load()?;
    let store = crate::progress::open_store(&node, &config)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    let users = store
        .users()
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    store.close().await;
    if json {
        let list: Vec<_> = users
            .iter()
            .map(|u| json!({"login": u.login, "role": u.role, "lang": u.lang}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for u in users {
            println!("{:<20} {:<11} {}", u.login, u.role, u.lang);
        }
    }
    Ok(())
}
