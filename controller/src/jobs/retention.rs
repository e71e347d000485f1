//! Finished jobs, their tasks and their logs expire after `--job-retention` (default 30
//! days): a sweep every hour deletes what finished before the cut-off.

use std::sync::Arc;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::engine::Jobs;
use crate::store::{Collection, StoreError, Write};

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(3600);

impl Jobs {
    /// Deletes jobs that finished more than `retention` ago, with their tasks and logs.
    /// Returns how many jobs went.
    pub async fn expire(&self, retention: Duration) -> Result<usize, StoreError> {
        let cutoff = OffsetDateTime::now_utc() - retention;
        let Ok(cutoff) = cutoff.format(&Rfc3339) else {
            return Ok(0);
        };
        let query = qs_query::Query::from_request(&serde_json::json!({
            "filter": {"state": {"$ne": "running"}, "finished_at": {"$lt": cutoff}},
            "projection": {"id": 1},
        }))
        .map_err(|e| StoreError::Refused {
            message: e.to_string(),
        })?;
        let jobs = self.store.find_records(Collection::Jobs, &query).await?;
        let mut expired = 0;
        for job in jobs {
            let Some(id) = job.get("id").and_then(|v| v.as_str()) else {
                continue;
            };
            let tasks = self.job_tasks_from_store(id).await?;
            let mut writes = Vec::with_capacity(2 * tasks.len() + 1);
            for task in &tasks {
                for step in &task.steps {
                    writes.push(Write::Record {
                        collection: Collection::TaskLogs,
                        key: step.log_key(&task.id),
                        value: None,
                    });
                }
                writes.push(Write::Record {
                    collection: Collection::TaskLogs,
                    key: task.id.clone(),
                    value: None,
                });
                writes.push(Write::Record {
                    collection: Collection::Tasks,
                    key: task.id.clone(),
                    value: None,
                });
            }
            writes.push(Write::Record {
                collection: Collection::Jobs,
                key: id.to_owned(),
                value: None,
            });
            self.store.write_batch(writes).await?;
            expired += 1;
        }
        if expired > 0 {
            info!(jobs = expired, "expired jobs deleted");
        }
        Ok(expired)
    }

    /// Runs [`Jobs::expire`] every hour until the process ends.
    pub fn spawn_retention(self: &Arc<Self>) {
        let jobs = self.clone();
        let retention = self.config.retention;
        tokio::spawn(async move {
            loop {
                if let Err(error) = jobs.expire(retention).await {
                    warn!(error = %error, "job retention sweep failed; retrying in an hour");
                }
                tokio::time::sleep(EVERY).await;
            }
        });
    }
}
