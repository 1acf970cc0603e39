//! A webhook receiver on loopback, for the demo and the tests: a minimal HTTP/1.1 server
//! that records the JSON body of every POST it is sent, and answers 200, answers 500, or
//! never answers (to show that a hanging hook delays nothing).

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request the sink reads.
const REQUEST_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    Answer,
    Fail,
    Hang,
}

/// A running sink. It stops when the runtime does.
#[derive(Clone)]
pub struct HookSink {
    pub url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl HookSink {
    pub async fn start(mode: SinkMode) -> std::io::Result<HookSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut socket).await else {
                        return;
                    };
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        if let Ok(mut r) = store.lock() {
                            r.push(v);
                        }
                    }
                    let answer: &[u8] = match mode {
                        SinkMode::Answer => {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        }
                        SinkMode::Fail => {
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        }
                        SinkMode::Hang => {
                            // Hold the connection open without a word until the client gives up.
                            let mut rest = [0u8; 1024];
                            while let Ok(n) = socket.read(&mut rest).await {
                                if n == 0 {
                                    break;
                                }
                            }
                            return;
                        }
                    };
                    let _ = socket.write_all(answer).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(HookSink { url, received })
    }

    /// Every event received so far, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Events received with this `event` name (and, if given, this `id` or `peer`).
    pub fn count(&self, event: &str, id_or_peer: Option<&str>) -> usize {
        self.received()
            .iter()
            .filter(|v| v["event"] == event)
            .filter(|v| id_or_peer.is_none_or(|x| v["id"] == x || v["peer"] == x))
            .count()
    }
}

/// Read one request; return its body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.len() > REQUEST_BYTES_MAX {
            return None;
        }
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if length > REQUEST_BYTES_MAX {
                return None;
            }
            let start = end + 4;
            while buffer.len() < start + length {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Some(buffer[start..start + length].to_vec());
        }
    }
}
