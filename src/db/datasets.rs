//! Uploaded JSONL data sets (the rows live in the object store).

use sqlx::FromRow;

use super::jobs::{visible, Viewer};
use super::{now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    pub rows: i64,
    pub bytes: i64,
    pub object_key: String,
    pub created_at: i64,
    pub owner: String,
    pub visibility: String,
}

const COLUMNS: &str = "id, name, rows, bytes, object_key, created_at, owner, visibility";

impl Db {
    pub async fn insert_dataset(&self, d: &DatasetRow) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO datasets ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.rows)
        .bind(d.bytes)
        .bind(&d.object_key)
        .bind(now())
        .bind(&d.owner)
        .bind(&d.visibility)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn dataset(&self, id: &str) -> sqlx::Result<Option<DatasetRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM datasets WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The data sets `viewer` may see, newest first.
    pub async fn datasets(&self, viewer: &Viewer<'_>) -> sqlx::Result<Vec<DatasetRow>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM datasets WHERE {} ORDER BY created_at DESC, id",
            visible(1, 2)
        ))
        .bind(i64::from(viewer.admin))
        .bind(viewer.user)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn delete_dataset(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("DELETE FROM datasets WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
