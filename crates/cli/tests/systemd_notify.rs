//! `detente serve` under systemd's `Type=notify` (debian/detente.service): it sends READY=1 on
//! `$NOTIFY_SOCKET` only once both ports listen, and STOPPING=1 when told to stop. The test
//! plays systemd's part with a real datagram socket.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the node may take to start or stop, at most (a loaded machine is slow).
const WAIT_MAX: Duration = Duration::from_secs(120);

fn detente(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(args)
        .env("DETENTE_DIR", dir)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run detente")
}

/// The next notification, or a failure after [`WAIT_MAX`].
fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_reports_ready_when_listening_and_stopping_at_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let init = detente(
        &dir,
        &[
            "init",
            "--name",
            "washington",
            "--party",
            "Test Party",
            "--peer-listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(init.status.code(), Some(0), "{init:?}");

    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT_MAX)).unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(["serve"])
        .env("DETENTE_DIR", &dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = next_message(&socket);
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "first notification: {ready:?}"
    );
    // Ready means ready: the API answers at once, with no retry.
    let status = detente(&dir, &["status", "--json"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "status right after READY=1: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let kill = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopping = next_message(&socket);
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "notification at shutdown: {stopping:?}"
    );
    let exit = node.wait().unwrap();
    assert!(exit.success(), "serve exits cleanly on SIGTERM: {exit:?}");
}
