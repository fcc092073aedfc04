//! Users, their quota overrides and their API keys (hashes only).

use sqlx::FromRow;

use super::{now, Db};
use crate::identity::Quota;

#[derive(Clone, Debug, FromRow)]
pub struct UserRow {
    pub name: String,
    pub admin: i64,
    pub created_at: i64,
    pub running_jobs: Option<i64>,
    pub queued_jobs: Option<i64>,
    pub gpu_seconds_per_day: Option<i64>,
    pub sequences: Option<i64>,
    pub requests_per_minute: Option<i64>,
}

impl UserRow {
    /// The limits this user overrides.
    pub fn overrides(&self) -> Quota {
        let u = |v: Option<i64>| v.map(|v| v.max(0) as u64);
        Quota {
            running_jobs: u(self.running_jobs),
            queued_jobs: u(self.queued_jobs),
            gpu_seconds_per_day: u(self.gpu_seconds_per_day),
            sequences: u(self.sequences),
            requests_per_minute: u(self.requests_per_minute),
        }
    }
}

#[derive(Clone, Debug, FromRow)]
pub struct KeyRow {
    pub id: String,
    pub user_name: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const USER_COLUMNS: &str = "name, admin, created_at, running_jobs, queued_jobs, gpu_seconds_per_day, sequences, requests_per_minute";
const KEY_COLUMNS: &str = "id, user_name, prefix, created_at, last_used_at, revoked_at";

impl Db {
    /// Creates the user if new; `admin` only ever grants the role (never takes it away).
    pub async fn ensure_user(&self, name: &str, admin: bool) -> sqlx::Result<UserRow> {
        sqlx::query(
            "INSERT INTO users (name, admin, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(i64::from(admin))
        .bind(now())
        .execute(&self.pool)
        .await?;
        if admin {
            sqlx::query("UPDATE users SET admin = 1 WHERE name = $1")
                .bind(name)
                .execute(&self.pool)
                .await?;
        }
        Ok(self.user(name).await?.expect("the user was just written"))
    }

    pub async fn user(&self, name: &str) -> sqlx::Result<Option<UserRow>> {
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// Sets the user's overrides (None: back to the default).
    pub async fn set_quota(&self, name: &str, q: &Quota) -> sqlx::Result<bool> {
        let i = |v: Option<u64>| v.map(|v| v as i64);
        let r = sqlx::query(
            "UPDATE users SET running_jobs = $1, queued_jobs = $2, gpu_seconds_per_day = $3, \
             sequences = $4, requests_per_minute = $5 WHERE name = $6",
        )
        .bind(i(q.running_jobs))
        .bind(i(q.queued_jobs))
        .bind(i(q.gpu_seconds_per_day))
        .bind(i(q.sequences))
        .bind(i(q.requests_per_minute))
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn insert_key(
        &self,
        id: &str,
        user: &str,
        hash: &str,
        prefix: &str,
    ) -> sqlx::Result<KeyRow> {
        sqlx::query(
            "INSERT INTO api_keys (id, user_name, hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(user)
        .bind(hash)
        .bind(prefix)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(self.key(id).await?.expect("the key was just written"))
    }

    pub async fn key(&self, id: &str) -> sqlx::Result<Option<KeyRow>> {
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Every key (revoked ones too), oldest first; one user's when `user` is given.
    pub async fn keys(&self, user: Option<&str>) -> sqlx::Result<Vec<KeyRow>> {
        let q = format!("SELECT {KEY_COLUMNS} FROM api_keys");
        match user {
            Some(u) => {
                sqlx::query_as(&format!("{q} WHERE user_name = $1 ORDER BY created_at, id"))
                    .bind(u)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query_as(&format!("{q} ORDER BY created_at, id"))
                    .fetch_all(&self.pool)
                    .await
            }
        }
    }

    /// Revokes a key; false when there is no such key or it was already revoked.
    pub async fn revoke_key(&self, id: &str) -> sqlx::Result<bool> {
        let r =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The live key with this hash and its user.
    pub async fn key_by_hash(&self, hash: &str) -> sqlx::Result<Option<(KeyRow, UserRow)>> {
        let key: Option<KeyRow> = sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(key) = key else { return Ok(None) };
        Ok(self.user(&key.user_name).await?.map(|u| (key, u)))
    }

    /// Whether any live key exists (a server with auth on and none cannot be used yet).
    pub async fn any_key(&self) -> sqlx::Result<bool> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn touch_key(&self, id: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
