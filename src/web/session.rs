//! Dashboard sign-in: an API key, checked once, opens a server-side session; the browser holds
//! only a random session id in an HttpOnly, SameSite=Strict cookie (never the key, never in a
//! URL). Each request resolves the key again, so a revoked key ends its sessions at once.
//! Sessions live in this replica's memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand::RngCore;

pub const COOKIE: &str = "ep_session";
/// A session ends this long after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Open sessions per replica; the oldest goes first beyond this.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    key_hash: String,
    opened: Instant,
}

#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for the key with this hash; its id.
    pub fn open(&self, key_hash: String) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.opened.elapsed() < LIFETIME);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(
            id.clone(),
            Session {
                key_hash,
                opened: Instant::now(),
            },
        );
        id
    }

    /// The key hash of a live session.
    pub fn key_hash(&self, id: &str) -> Option<String> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(id)
            .filter(|s| s.opened.elapsed() < LIFETIME)
            .map(|s| s.key_hash.clone())
    }

    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The session id in a request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The Set-Cookie value that holds `id` (or, with None, clears it).
pub fn cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_maps_its_cookie_to_the_key_until_closed() {
        let s = Sessions::default();
        let id = s.open("hash".into());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(session_id(&headers), Some(id.as_str()));
        assert_eq!(s.key_hash(&id).as_deref(), Some("hash"));
        s.close(&id);
        assert_eq!(s.key_hash(&id), None);
        headers.insert(header::COOKIE, format!("{COOKIE}=nothex").parse().unwrap());
        assert_eq!(session_id(&headers), None);
        assert!(cookie(Some(&id)).contains("HttpOnly; SameSite=Strict"));
    }
}
