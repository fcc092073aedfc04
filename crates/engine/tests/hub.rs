//! Loading by hub repo id, against a local HTTP server that serves a tiny repo in the hub's
//! URL layout (`/{repo}/resolve/{revision}/{file}`), with HF_ENDPOINT and HF_HOME set.
//! One test per binary: it sets process-wide environment variables.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use eigenprune_engine::{load_model, LoadOptions};

const REPO: &str = "tiny-org/tiny-llama";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama")
}

/// Serves fixture files for GET requests, honouring `Range: bytes=a-b` as the hub does.
fn serve_hub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let prefix = format!("/{REPO}/resolve/main/");
            let body = path
                .strip_prefix(&prefix)
                .and_then(|file| std::fs::read(fixture_dir().join(file)).ok());
            let Some(body) = body else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let etag = format!("{:x}", body.len() * 2654435761 % 4294967296);
            let (status, slice, extra) = match range {
                Some((a, b)) => {
                    let end = b.unwrap_or(body.len() - 1).min(body.len() - 1);
                    let cr = format!("Content-Range: bytes {a}-{end}/{}\r\n", body.len());
                    ("206 Partial Content", &body[a..=end], cr)
                }
                None => ("200 OK", &body[..], String::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n{extra}Connection: close\r\n\r\n",
                slice.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(slice);
            let _ = stream.read(&mut [0u8; 0]);
        }
    });
    format!("http://{addr}")
}

#[test]
fn loads_a_repo_id_from_the_hub_then_offline_from_the_cache() {
    let home = std::env::temp_dir().join(format!("eigenprune-hf-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_ENDPOINT", serve_hub());
    std::env::remove_var("HF_HUB_OFFLINE");

    let online = load_model(REPO, &LoadOptions::default()).unwrap();
    assert_eq!(online.model.config.n_layers, 2);
    assert!(
        home.join("hub/models--tiny-org--tiny-llama").exists(),
        "files land in HF_HOME/hub"
    );

    // Offline: the same repo comes from the cache, an unknown one is a clear error.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let offline = load_model(REPO, &LoadOptions::default()).unwrap();
    assert_eq!(
        offline.model.config.vocab_size,
        online.model.config.vocab_size
    );
    let err = load_model("tiny-org/absent", &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");

    // Online, a repo the hub does not have names the missing file.
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::set_var("HF_ENDPOINT", serve_hub());
    let err = load_model("tiny-org/absent", &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&home);
}
