//! Uploaded JSONL data sets (the rows live in the object store).

use sqlx::FromRow;

use super::{now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    pub rows: i64,
    pub bytes: i64,
    pub object_key: String,
    pub created_at: i64,
}

impl Db {
    pub async fn insert_dataset(&self, d: &DatasetRow) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO datasets (id, name, rows, bytes, object_key, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&d.id)
            .bind(&d.name)
            .bind(d.rows)
            .bind(d.bytes)
            .bind(&d.object_key)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn dataset(&self, id: &str) -> sqlx::Result<Option<DatasetRow>> {
        sqlx::query_as(
            "SELECT id, name, rows, bytes, object_key, created_at FROM datasets WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn datasets(&self) -> sqlx::Result<Vec<DatasetRow>> {
        sqlx::query_as("SELECT id, name, rows, bytes, object_key, created_at FROM datasets ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await
    }
}
