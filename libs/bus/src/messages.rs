use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One attempt of a job, as published to `mm.jobs.<queue>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobMessage {
    pub job_id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub queue: String,
    pub attempt: u32,
    pub media_id: Option<Uuid>,
    #[serde(default)]
    pub payload: serde_json::Value,
    pub timeout_ms: u64,
    /// The attempt budget: a delivery whose attempt would exceed it is not run (a job that
    /// keeps killing its workers ends FAILED instead of looping).
    #[serde(default)]
    pub max_attempts: u32,
}

/// What a worker reports about an attempt, on `mm.events.<job id>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    Started {
        job_id: Uuid,
        attempt: u32,
        worker_id: String,
        at: DateTime<Utc>,
    },
    Succeeded {
        job_id: Uuid,
        attempt: u32,
        worker_id: String,
        at: DateTime<Utc>,
        result: serde_json::Value,
        /// When the attempt started, on an outcome that came before any start report (a
        /// short attempt reports once): the scheduler records the start from it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<DateTime<Utc>>,
    },
    Failed {
        job_id: Uuid,
        attempt: u32,
        worker_id: String,
        at: DateTime<Utc>,
        code: String,
        message: String,
        retryable: bool,
        /// As for `Succeeded`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<DateTime<Utc>>,
    },
}

impl WorkerEvent {
    /// The start an outcome carries when no start report was sent for its attempt.
    pub fn unreported_start(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Started { .. } => None,
            Self::Succeeded { started_at, .. } | Self::Failed { started_at, .. } => *started_at,
        }
    }

    pub fn job_id(&self) -> Uuid {
        match self {
            Self::Started { job_id, .. } | Self::Succeeded { job_id, .. } | Self::Failed { job_id, .. } => *job_id,
        }
    }

    /// The attempt the report is about.
    pub fn attempt(&self) -> u32 {
        match self {
            Self::Started { attempt, .. } | Self::Succeeded { attempt, .. } | Self::Failed { attempt, .. } => *attempt,
        }
    }

    /// The worker that sent the report.
    pub fn worker_id(&self) -> &str {
        match self {
            Self::Started { worker_id, .. } | Self::Succeeded { worker_id, .. } | Self::Failed { worker_id, .. } => {
                worker_id
            }
        }
    }
}

/// A live update for `WatchJob`, on `mm.updates.<job id>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Update {
    /// A recorded state change (its row in `scheduler.job_events`).
    Transition { seq: i64, state: String, attempt: u32 },
    /// Progress of the running attempt.
    Progress {
        attempt: u32,
        progress: f32,
        message: String,
    },
}
