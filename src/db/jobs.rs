//! The jobs table: pruning and evaluation jobs, their life cycle and worker leases.

use sqlx::FromRow;

use super::{now, Backend, Db};

#[derive(Clone, Debug, FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub model: String,
    pub task: Option<String>,
    pub dataset: Option<String>,
    pub params: String,
    pub suffix: Option<String>,
    pub status: String,
    pub cancel_requested: i64,
    pub attempts: i64,
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub pruned_model: Option<String>,
}

pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub model: &'a str,
    pub task: Option<&'a str>,
    pub dataset: Option<&'a str>,
    pub params: &'a str,
    pub suffix: Option<&'a str>,
}

const COLUMNS: &str = "id, kind, model, task, dataset, params, suffix, status, cancel_requested, attempts, worker, lease_until, created_at, started_at, finished_at, result, error_code, error_message, pruned_model";

impl Db {
    pub async fn insert_job(&self, j: &NewJob<'_>) -> sqlx::Result<JobRow> {
        sqlx::query(
            "INSERT INTO jobs (id, kind, model, task, dataset, params, suffix, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)",
        )
        .bind(j.id)
        .bind(j.kind)
        .bind(j.model)
        .bind(j.task)
        .bind(j.dataset)
        .bind(j.params)
        .bind(j.suffix)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(self.job(j.id).await?.expect("the job was just inserted"))
    }

    pub async fn job(&self, id: &str) -> sqlx::Result<Option<JobRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Newest first; `after` is the id of the last job of the previous page.
    pub async fn list_jobs(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: i64,
    ) -> sqlx::Result<Vec<JobRow>> {
        let cursor = match after {
            Some(a) => self.job(a).await?.map(|j| (j.created_at, j.id)),
            None => None,
        };
        let (ts, id) = cursor.unwrap_or((i64::MAX, String::new()));
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE kind = $1 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(kind)
        .bind(ts)
        .bind(if ts == i64::MAX { "\u{10ffff}".to_string() } else { id })
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Takes the oldest queued job, or one whose lease expired (its worker died), for `worker`.
    pub async fn claim_job(&self, worker: &str, lease_secs: i64) -> sqlx::Result<Option<JobRow>> {
        let t = now();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let id: Option<(String,)> = sqlx::query_as(&format!(
            "UPDATE jobs SET status = 'running', worker = $1, lease_until = $2, attempts = attempts + 1, \
             started_at = COALESCE(started_at, $3) \
             WHERE id = (SELECT id FROM jobs WHERE (status = 'queued' OR (status = 'running' AND lease_until < $3)) \
                         AND cancel_requested = 0 ORDER BY created_at, id LIMIT 1 {lock}) \
             RETURNING id"
        ))
        .bind(worker)
        .bind(t + lease_secs)
        .bind(t)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some((id,)) => self.job(&id).await,
            None => Ok(None),
        }
    }

    /// Extends the lease; false when the job is no longer this worker's.
    pub async fn heartbeat(&self, id: &str, worker: &str, lease_secs: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND worker = $3 AND status = 'running'",
        )
        .bind(now() + lease_secs)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks the job done, only if this worker still holds it.
    pub async fn finish_job(
        &self,
        id: &str,
        worker: &str,
        status: &str,
        result: Option<&str>,
        error: Option<(&str, &str)>,
        pruned_model: Option<&str>,
    ) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, result = $2, error_code = $3, error_message = $4, pruned_model = $5, \
             finished_at = $6, lease_until = NULL WHERE id = $7 AND worker = $8 AND status = 'running'",
        )
        .bind(status)
        .bind(result)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .bind(pruned_model)
        .bind(now())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Queued jobs are cancelled at once; running ones at their next batch.
    pub async fn request_cancel(&self, id: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE jobs SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, \
             finished_at = CASE WHEN status = 'queued' THEN $1 ELSE finished_at END, cancel_requested = 1 \
             WHERE id = $2 AND status IN ('queued', 'running')",
        )
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn cancel_requested(&self, id: &str) -> sqlx::Result<bool> {
        let r: Option<(i64,)> = sqlx::query_as("SELECT cancel_requested FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some_and(|(c,)| c != 0))
    }

    pub async fn count_by_status(&self) -> sqlx::Result<Vec<(String, String, i64)>> {
        sqlx::query_as("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")
            .fetch_all(&self.pool)
            .await
    }
}
