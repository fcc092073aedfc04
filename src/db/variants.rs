//! Pruned variants: a row per edit stored in the object store.

use sqlx::FromRow;

use super::jobs::{visible, Viewer};
use super::{now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct VariantRow {
    pub id: String,
    pub parent: String,
    pub job_id: String,
    pub object_key: String,
    pub created_at: i64,
    pub owner: String,
    pub visibility: String,
    pub summary: String,
}

const COLUMNS: &str = "id, parent, job_id, object_key, created_at, owner, visibility, summary";

impl Db {
    /// Idempotent per job: a re-run of the same job keeps the first row.
    pub async fn insert_variant(&self, v: &VariantRow) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO variants ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (job_id) DO NOTHING"
        ))
        .bind(&v.id)
        .bind(&v.parent)
        .bind(&v.job_id)
        .bind(&v.object_key)
        .bind(now())
        .bind(&v.owner)
        .bind(&v.visibility)
        .bind(&v.summary)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn variant(&self, id: &str) -> sqlx::Result<Option<VariantRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM variants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The variants `viewer` may see, oldest first.
    pub async fn variants(&self, viewer: &Viewer<'_>) -> sqlx::Result<Vec<VariantRow>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM variants WHERE {} ORDER BY created_at, id",
            visible(1, 2)
        ))
        .bind(i64::from(viewer.admin))
        .bind(viewer.user)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn delete_variant(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("DELETE FROM variants WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
