//! The jobs table: pruning and evaluation jobs, their life cycle and worker leases.

use sqlx::FromRow;

use super::{now, now_us, Backend, Db};

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
    pub owner: String,
    pub visibility: String,
    pub releases: i64,
    pub created_us: i64,
    pub variant_deleted_at: Option<i64>,
}

impl JobRow {
    /// Seconds since the epoch, to the microsecond.
    pub fn created_seconds(&self) -> f64 {
        self.created_us as f64 / 1e6
    }
}

/// Who lists: everything for an admin, else their own and the lab's.
pub struct Viewer<'a> {
    pub user: &'a str,
    pub admin: bool,
}

/// How a claimed job's attempts are bounded and its owner's running jobs limited.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRules {
    pub lease_secs: i64,
    /// Attempts (claims not given back by a draining worker) before a job that keeps losing
    /// its worker fails.
    pub max_attempts: i64,
    /// Running jobs per user where the user sets none (None: no limit).
    pub running_jobs: Option<i64>,
}

pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub model: &'a str,
    pub task: Option<&'a str>,
    pub dataset: Option<&'a str>,
    pub params: &'a str,
    pub suffix: Option<&'a str>,
    pub owner: &'a str,
    pub visibility: &'a str,
}

const COLUMNS: &str = "id, kind, model, task, dataset, params, suffix, status, cancel_requested, attempts, worker, lease_until, created_at, started_at, finished_at, result, error_code, error_message, pruned_model, owner, visibility, releases, created_us, variant_deleted_at";

/// Rows a viewer may see (binds $A: admin as 0/1, $U: the user).
pub(super) fn visible(admin: usize, user: usize) -> String {
    format!("(${admin} = 1 OR owner = ${user} OR visibility = 'lab')")
}

impl Db {
    /// The row as inserted (RETURNING: a worker may claim it before a second read).
    pub async fn insert_job(&self, j: &NewJob<'_>) -> sqlx::Result<JobRow> {
        sqlx::query_as(&format!(
            "INSERT INTO jobs (id, kind, model, task, dataset, params, suffix, status, created_at, owner, visibility, created_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11) RETURNING {COLUMNS}"
        ))
        .bind(j.id)
        .bind(j.kind)
        .bind(j.model)
        .bind(j.task)
        .bind(j.dataset)
        .bind(j.params)
        .bind(j.suffix)
        .bind(now())
        .bind(j.owner)
        .bind(j.visibility)
        .bind(now_us())
        .fetch_one(&self.pool)
        .await
    }

    pub async fn job(&self, id: &str) -> sqlx::Result<Option<JobRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Newest first, of what `viewer` may see; `after` is the id of the last job of the
    /// previous page.
    pub async fn list_jobs(
        &self,
        kind: &str,
        viewer: &Viewer<'_>,
        after: Option<&str>,
        limit: i64,
    ) -> sqlx::Result<Vec<JobRow>> {
        let cursor = match after {
            Some(a) => self.job(a).await?.map(|j| (j.created_us, j.id)),
            None => None,
        };
        let (ts, id) = cursor.unwrap_or((i64::MAX, String::new()));
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE kind = $1 AND (created_us < $2 OR (created_us = $2 AND id < $3)) \
             AND {} ORDER BY created_us DESC, id DESC LIMIT $4",
            visible(5, 6)
        ))
        .bind(kind)
        .bind(ts)
        .bind(if ts == i64::MAX { "\u{10ffff}".to_string() } else { id })
        .bind(limit)
        .bind(i64::from(viewer.admin))
        .bind(viewer.user)
        .fetch_all(&self.pool)
        .await
    }

    /// Ends jobs whose worker stopped heartbeating and that must not run again: cancelled
    /// ones (cancel was asked) and ones out of attempts (failed, saying so).
    pub async fn reap_lost_jobs(&self, max_attempts: i64) -> sqlx::Result<()> {
        let t = now();
        sqlx::query(
            "UPDATE jobs SET status = 'cancelled', finished_at = $1, lease_until = NULL \
             WHERE status = 'running' AND lease_until < $1 AND cancel_requested = 1",
        )
        .bind(t)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE jobs SET status = 'failed', finished_at = $1, lease_until = NULL, error_code = 'worker_lost', \
             error_message = 'the worker running the job stopped (' || CAST(attempts - releases AS TEXT) || ' attempts, the most allowed)' \
             WHERE status = 'running' AND lease_until < $1 AND attempts - releases >= $2",
        )
        .bind(t)
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes a queued job, or one whose lease expired (its worker died) with attempts left, for
    /// `worker`: fairly across users (the owner with the fewest running jobs first, skipping
    /// owners at their running-jobs limit), then the oldest. (Lost jobs that must not run
    /// again are ended by [`Db::reap_lost_jobs`], which workers call every lease.)
    pub async fn claim_job(&self, worker: &str, rules: ClaimRules) -> sqlx::Result<Option<JobRow>> {
        let t = now();
        // Claims are serialised (Postgres: a transaction-level advisory lock; SQLite: its one
        // writer), so two workers claiming at once cannot both see an owner under the limit.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(738201)")
                .execute(&mut *tx)
                .await?;
        }
        let running = "(SELECT COUNT(*) FROM jobs r WHERE r.owner = j.owner AND r.status = 'running' AND r.lease_until >= $3)";
        let id: Option<(String,)> = sqlx::query_as(&format!(
            "UPDATE jobs SET status = 'running', worker = $1, lease_until = $2, attempts = attempts + 1, \
             started_at = COALESCE(started_at, $3) \
             WHERE id = (SELECT j.id FROM jobs j LEFT JOIN users u ON u.name = j.owner \
                         WHERE (j.status = 'queued' OR (j.status = 'running' AND j.lease_until < $3 \
                                AND j.attempts - j.releases < $5)) \
                         AND j.cancel_requested = 0 \
                         AND (COALESCE(u.running_jobs, $4) <= 0 OR {running} < COALESCE(u.running_jobs, $4)) \
                         ORDER BY {running}, j.created_us, j.id LIMIT 1) \
             RETURNING id"
        ))
        .bind(worker)
        .bind(t + rules.lease_secs)
        .bind(t)
        .bind(rules.running_jobs.unwrap_or(0))
        .bind(rules.max_attempts)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match id {
            Some((id,)) => self.job(&id).await,
            None => Ok(None),
        }
    }

    /// Gives a running job back (a draining worker): queued again, claimable at once, the
    /// attempt not counted against max_attempts. A job whose cancel was asked ends cancelled.
    pub async fn release_job(&self, id: &str, worker: &str) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, \
             finished_at = CASE WHEN cancel_requested = 1 THEN $1 ELSE NULL END, \
             worker = NULL, lease_until = NULL, releases = releases + 1 \
             WHERE id = $2 AND worker = $3 AND status = 'running'",
        )
        .bind(now())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The owner's queued jobs.
    pub async fn queued_jobs_of(&self, owner: &str) -> sqlx::Result<i64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status = 'queued'")
                .bind(owner)
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    /// Seconds the owner's jobs ran over the last 24 hours (running ones until now), and when
    /// the oldest of them started.
    pub async fn job_seconds_of(&self, owner: &str) -> sqlx::Result<(i64, Option<i64>)> {
        let t = now();
        let (used, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(COALESCE(finished_at, $1) - started_at), 0) AS BIGINT), MIN(started_at) \
             FROM jobs WHERE owner = $2 AND started_at IS NOT NULL AND COALESCE(finished_at, $1) > $1 - 86400",
        )
        .bind(t)
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        Ok((used, oldest))
    }

    /// The variant this job made was deleted.
    pub async fn mark_variant_deleted(&self, job_id: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE jobs SET variant_deleted_at = $1 WHERE id = $2")
            .bind(now())
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
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
