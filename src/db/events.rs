//! Progress events of a job: phase, fraction done, a message.

use sqlx::FromRow;

use super::{now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub job_id: String,
    pub created_at: i64,
    pub phase: String,
    pub fraction: f64,
    pub message: String,
    /// The job's attempt that wrote it (1 for the first run).
    pub attempt: i64,
}

impl Db {
    pub async fn add_event(
        &self,
        job_id: &str,
        attempt: i64,
        phase: &str,
        fraction: f64,
        message: &str,
    ) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO job_events (job_id, created_at, phase, fraction, message, attempt) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(job_id)
            .bind(now())
            .bind(phase)
            .bind(fraction)
            .bind(message)
            .bind(attempt)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Events after `after_id`, oldest first.
    pub async fn events(&self, job_id: &str, after_id: i64) -> sqlx::Result<Vec<EventRow>> {
        sqlx::query_as(
            "SELECT id, job_id, created_at, phase, fraction, message, attempt FROM job_events \
             WHERE job_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(job_id)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await
    }
}
