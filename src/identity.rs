//! Who is calling, what they may see, and how much they may use: users and their API keys
//! (`ep-` + 48 random hex digits, stored only as a SHA-256 hash), visibility of owned objects,
//! and quotas (configured defaults, overridden per user).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// Who owns rows written while authentication is off (one person's service).
pub const LOCAL_USER: &str = "local";

/// The authenticated caller of a request (or a job's owner, in a worker).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
    pub quota: Quota,
}

impl Caller {
    /// Whether the caller may read an object `owner` owns with `visibility`.
    pub fn can_read(&self, owner: &str, visibility: Visibility) -> bool {
        self.admin || owner == self.user || visibility == Visibility::Lab
    }

    /// Whether the caller may delete or cancel an object `owner` owns.
    pub fn can_modify(&self, owner: &str) -> bool {
        self.admin || owner == self.user
    }
}

/// Who besides its owner (and admins) sees an object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// The owner and admins only.
    #[default]
    Private,
    /// Every user may read and use it; only the owner and admins delete it.
    Lab,
}

impl Visibility {
    pub fn name(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Lab => "lab",
        }
    }

    /// A stored value; anything unknown reads as private (never wider than written).
    pub fn parse(s: &str) -> Self {
        if s == "lab" {
            Self::Lab
        } else {
            Self::Private
        }
    }
}

/// Per-user limits. A `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Jobs running at once (workers skip the user's further jobs until one ends).
    pub running_jobs: Option<u64>,
    /// Jobs waiting to run; creating one more is a 429.
    pub queued_jobs: Option<u64>,
    /// Worker-seconds (GPU-seconds on a GPU) of jobs over the last 24 hours.
    pub gpu_seconds_per_day: Option<u64>,
    /// Completion sequences decoding or waiting at once, on this replica.
    pub sequences: Option<u64>,
    /// API requests per minute, on this replica.
    pub requests_per_minute: Option<u64>,
}

impl Quota {
    /// `self` with every limit `overrides` sets replaced (0 in an override: no limit).
    pub fn with(self, overrides: &Quota) -> Quota {
        let pick = |o: Option<u64>, d: Option<u64>| match o {
            Some(0) => None,
            Some(v) => Some(v),
            None => d,
        };
        Quota {
            running_jobs: pick(overrides.running_jobs, self.running_jobs),
            queued_jobs: pick(overrides.queued_jobs, self.queued_jobs),
            gpu_seconds_per_day: pick(overrides.gpu_seconds_per_day, self.gpu_seconds_per_day),
            sequences: pick(overrides.sequences, self.sequences),
            requests_per_minute: pick(overrides.requests_per_minute, self.requests_per_minute),
        }
    }
}

/// Creates `user` if new (an admin when `admin`) and a key for them: the key row and the key,
/// which is shown this once and never stored.
pub async fn issue_key(
    db: &crate::db::Db,
    user: &str,
    admin: bool,
) -> sqlx::Result<(crate::db::users::KeyRow, String)> {
    db.ensure_user(user, admin).await?;
    let key = new_key();
    let id = format!("key_{}", hex(&rand::random::<[u8; 8]>()));
    let row = db
        .insert_key(&id, user, &key_hash(&key), &key_prefix(&key))
        .await?;
    Ok((row, key))
}

/// A user name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A new API key: `ep-` and 48 hex digits (192 random bits).
pub fn new_key() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("ep-{}", hex(&bytes))
}

/// What is stored of a key: its SHA-256, hex.
pub fn key_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// The part of a key shown in lists (enough to recognise it, too little to use it).
pub fn key_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(a.starts_with("ep-") && a.len() == 51, "{a}");
        assert_eq!(key_hash(&a), key_hash(&a));
        assert_ne!(key_hash(&a), key_hash(&b));
        assert!(!key_hash(&a).contains(&a[3..]));
        assert_eq!(key_prefix(&a).len(), 10);
    }

    #[test]
    fn overrides_replace_defaults_and_zero_lifts_a_limit() {
        let defaults = Quota {
            running_jobs: Some(2),
            queued_jobs: Some(20),
            ..Quota::default()
        };
        let o = Quota {
            running_jobs: Some(5),
            queued_jobs: Some(0),
            sequences: Some(8),
            ..Quota::default()
        };
        let q = defaults.with(&o);
        assert_eq!(q.running_jobs, Some(5));
        assert_eq!(q.queued_jobs, None);
        assert_eq!(q.sequences, Some(8));
        assert_eq!(q.requests_per_minute, None);
    }

    #[test]
    fn visibility_rules() {
        let bob = Caller {
            user: "bob".into(),
            admin: false,
            quota: Quota::default(),
        };
        assert!(!bob.can_read("alice", Visibility::Private));
        assert!(bob.can_read("alice", Visibility::Lab));
        assert!(!bob.can_modify("alice"));
        assert!(bob.can_modify("bob"));
        let admin = Caller { admin: true, ..bob };
        assert!(admin.can_read("alice", Visibility::Private) && admin.can_modify("alice"));
        assert_eq!(Visibility::parse("lab"), Visibility::Lab);
        assert_eq!(Visibility::parse("weird"), Visibility::Private);
    }
}
