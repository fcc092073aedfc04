//! Pruned variants: a row per edit stored in the object store.

use sqlx::FromRow;

use super::{now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct VariantRow {
    pub id: String,
    pub parent: String,
    pub job_id: String,
    pub object_key: String,
    pub created_at: i64,
    pub summary: String,
}

impl Db {
    /// Idempotent per job: a re-run of the same job keeps the first row.
    pub async fn insert_variant(&self, v: &VariantRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO variants (id, parent, job_id, object_key, created_at, summary) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&v.id)
        .bind(&v.parent)
        .bind(&v.job_id)
        .bind(&v.object_key)
        .bind(now())
        .bind(&v.summary)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn variant(&self, id: &str) -> sqlx::Result<Option<VariantRow>> {
        sqlx::query_as("SELECT id, parent, job_id, object_key, created_at, summary FROM variants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn variants(&self) -> sqlx::Result<Vec<VariantRow>> {
        sqlx::query_as("SELECT id, parent, job_id, object_key, created_at, summary FROM variants ORDER BY created_at, id")
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
