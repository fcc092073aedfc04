//! Real processes for the tests that need them: `eigenprune` subcommands with their logs
//! kept in files (so a test can read them), signals, and the S3-compatible server s3s-fs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `eigenprune` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// `eigenprune ARGS` with `envs`, stdout and stderr appended to `log`.
    pub fn start(args: &[String], envs: &[(&str, String)], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_eigenprune"))
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env_remove("EIGENPRUNE_AUTH")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit (at most `limit`); its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                start.elapsed() < limit,
                "the process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `base`/health answers.
pub async fn wait_up(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} did not come up");
}

/// `eigenprune keys create --user USER [--admin]` against a store; the key it prints.
pub fn create_key(store: &[String], user: &str, admin: bool) -> String {
    let mut args = vec![
        "keys".to_string(),
        "create".into(),
        "--user".into(),
        user.into(),
    ];
    if admin {
        args.push("--admin".into());
    }
    args.extend(store.iter().cloned());
    let out = Command::new(env!("CARGO_BIN_EXE_eigenprune"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "keys create prints the key alone: {stdout:?}"
    );
    assert!(lines[0].starts_with("ep-"), "{stdout:?}");
    lines[0].to_string()
}

/// Every log line of `logs` that holds one of `secrets`.
pub fn leaks(logs: &[PathBuf], secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let lower = line.to_lowercase();
            if secrets.iter().any(|s| line.contains(s.as_str()))
                || lower.contains("bearer ")
                || lower.contains("authorization:")
            {
                found.push(line.to_string());
            }
        }
    }
    found
}

/// A running s3s-fs; killed when dropped.
pub struct S3 {
    child: Child,
    pub endpoint: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// s3s-fs over `dir` with a bucket `eigenprune` (keys AKTEST / SKTEST), or a visible skip
/// (a failure under EIGENPRUNE_REQUIRE_S3).
pub fn start_s3(dir: &Path) -> Option<S3> {
    let bin = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    let port = free_port();
    std::fs::create_dir_all(dir.join("eigenprune")).unwrap();
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "AKTEST", "--secret-key", "SKTEST"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }),
        Err(e) => {
            assert!(
                std::env::var("EIGENPRUNE_REQUIRE_S3").is_err(),
                "EIGENPRUNE_REQUIRE_S3 is set but `{bin}` does not start: {e}"
            );
            super::skip::skip_without_requirement(&format!(
                "`{bin}` not found ({e}); `cargo install --locked s3s-fs@0.14.1 --features binary`"
            ));
            None
        }
    }
}
