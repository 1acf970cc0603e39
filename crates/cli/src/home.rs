//! Where the node's directory is when `--dir` is left out, and what `detente` with no
//! command says about it: `--dir`, else `$DETENTE_DIR`, else the per-user data directory of
//! the XDG base directory specification (`$XDG_DATA_HOME/detente`, else
//! `~/.local/share/detente`). A duty officer then types `detente status`, not a path.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use detente_node::config::{NodeDir, CONFIG_FILE, RUN_FILE};

use crate::{Failure, Outcome};

/// The environment variable that names the node's directory.
pub const DIR_ENV: &str = "DETENTE_DIR";

/// How long `detente` with no command waits for a running node's health answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a resolved directory came from, for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    XdgDataHome,
    Home,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Flag => "from --dir",
            Source::Env => "from $DETENTE_DIR",
            Source::XdgDataHome => "from $XDG_DATA_HOME",
            Source::Home => "the default, ~/.local/share/detente",
        }
    }
}

/// The environment the resolution reads, passed in so that tests need not change the
/// process's own.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub detente_dir: Option<OsString>,
    pub xdg_data_home: Option<OsString>,
    pub home: Option<OsString>,
}

impl Env {
    pub fn of_process() -> Self {
        Self {
            detente_dir: std::env::var_os(DIR_ENV),
            xdg_data_home: std::env::var_os("XDG_DATA_HOME"),
            home: std::env::var_os("HOME"),
        }
    }
}

/// The node directory: the flag, then `$DETENTE_DIR`, then `$XDG_DATA_HOME/detente` (only
/// if absolute, as the XDG specification says), then `$HOME/.local/share/detente`. Empty
/// values count as unset.
pub fn resolve_in(flag: Option<PathBuf>, env: &Env) -> Result<(PathBuf, Source), Failure> {
    let set = |v: &Option<OsString>| v.clone().filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = flag.filter(|d| !d.as_os_str().is_empty()) {
        return Ok((dir, Source::Flag));
    }
    if let Some(dir) = set(&env.detente_dir) {
        return Ok((dir, Source::Env));
    }
    if let Some(data) = set(&env.xdg_data_home).filter(|d| d.is_absolute()) {
        return Ok((data.join("detente"), Source::XdgDataHome));
    }
    if let Some(home) = set(&env.home) {
        return Ok((home.join(".local/share/detente"), Source::Home));
    }
    Err(Failure::usage(
        "no node directory: --dir was not given and neither $DETENTE_DIR nor $HOME is set",
    )
    .hint("pass --dir DIR, or set DETENTE_DIR=DIR"))
}

/// [`resolve_in`] with the process's environment.
pub fn resolve(flag: Option<PathBuf>) -> Result<PathBuf, Failure> {
    resolve_in(flag, &Env::of_process()).map(|(dir, _)| dir)
}

/// What `detente` with no command prints: where the node is, whether it exists and runs,
/// and the next thing to type.
pub async fn where_am_i() -> Outcome {
    let (dir, source) = resolve_in(None, &Env::of_process())?;
    println!("node directory: {} ({})", dir.display(), source.describe());
    let node = NodeDir::new(&dir);
    if !node.file(CONFIG_FILE).exists() {
        println!("node:           none here yet");
        println!();
        println!("next: create it with");
        println!(
            "  detente init --name NAME --party \"FULL NAME\" [--lang en|zh-CN] [--tz AREA/CITY]"
        );
        println!("or point at another one with --dir DIR or DETENTE_DIR=DIR.");
        println!("`detente demo` runs the whole story on this machine; `detente --help` lists every command.");
        return Ok(());
    }
    let config = node.load()?;
    let fingerprint = node.secret().map_or_else(
        |e| format!("(unreadable: {e})"),
        |s| s.public().fingerprint(),
    );
    println!(
        "node:           {} ({}), fingerprint {fingerprint}",
        config.name, config.party
    );
    match running_console(&node).await {
        Some(console) => {
            println!("running:        yes, console http://{console}/login");
            println!();
            println!("next: detente status   (links and alarms)");
            println!("      detente inbox    (messages)");
            println!("      detente send --to PEER --text TEXT");
        }
        None => {
            println!("running:        no");
            println!();
            if config.peers.is_empty() {
                println!(
                    "next: pin a peer: detente peer add --name NAME --key KEY --addr HOST:PORT"
                );
                println!("      (`detente id` prints this node's key and fingerprint for the other side)");
            }
            println!("next: start it:  detente serve");
        }
    }
    Ok(())
}

/// The console address of the node running in this directory, if one answers its health
/// check: the run file names the address, and a stale run file (a node killed with `kill -9`)
/// gets no answer.
async fn running_console(node: &NodeDir) -> Option<String> {
    let text = std::fs::read_to_string(node.file(RUN_FILE)).ok()?;
    let run: serde_json::Value = serde_json::from_str(&text).ok()?;
    let console = run["console_listen"].as_str()?.to_string();
    let http = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .build()
        .ok()?;
    let answer = http
        .get(format!("http://{console}/healthz"))
        .send()
        .await
        .ok()?;
    answer.status().is_success().then_some(console)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(detente: Option<&str>, xdg: Option<&str>, home: Option<&str>) -> Env {
        Env {
            detente_dir: detente.map(OsString::from),
            xdg_data_home: xdg.map(OsString::from),
            home: home.map(OsString::from),
        }
    }

    #[test]
    fn the_flag_then_the_variable_then_xdg_then_home() {
        let all = env(Some("/d"), Some("/x"), Some("/h"));
        let flag = Some(PathBuf::from("/f"));
        assert_eq!(resolve_in(flag, &all).unwrap(), ("/f".into(), Source::Flag));
        assert_eq!(resolve_in(None, &all).unwrap(), ("/d".into(), Source::Env));
        let no_env = env(None, Some("/x"), Some("/h"));
        assert_eq!(
            resolve_in(None, &no_env).unwrap(),
            ("/x/detente".into(), Source::XdgDataHome)
        );
        let home_only = env(Some(""), Some("relative"), Some("/h"));
        assert_eq!(
            resolve_in(None, &home_only).unwrap(),
            ("/h/.local/share/detente".into(), Source::Home)
        );
        let failure = resolve_in(None, &env(None, None, None)).unwrap_err();
        assert_eq!(failure.code, 2);
        assert!(failure.hint.is_some());
    }
}
