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

/// What a worker reports about an attempt; workers send them in batches ([`ReportBatch`]).
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

/// A worker's report with the trace context of the attempt it is about, so that the
/// scheduler's span applying it joins the attempt's trace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub event: WorkerEvent,
    /// The attempt span's W3C `traceparent`, when traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The reports one worker had ready at once, in the order they happened: one message on
/// `mm.events.<queue>`, one JetStream publish and one ack for the lot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReportBatch {
    pub reports: Vec<Report>,
}

impl ReportBatch {
    /// Reads a message of `MM_EVENTS`: a batch, or a single report as workers before batching
    /// sent them (on `mm.events.<job id>`, the trace context in the headers).
    pub fn decode(payload: &[u8], header_traceparent: Option<&str>) -> Result<Self, serde_json::Error> {
        match serde_json::from_slice::<Self>(payload) {
            Ok(batch) => Ok(batch),
            Err(batch_err) => match serde_json::from_slice::<WorkerEvent>(payload) {
                Ok(event) => Ok(Self {
                    reports: vec![Report {
                        event,
                        traceparent: header_traceparent.map(str::to_owned),
                    }],
                }),
                Err(_) => Err(batch_err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(attempt: u32) -> WorkerEvent {
        WorkerEvent::Started {
            job_id: Uuid::nil(),
            attempt,
            worker_id: "w".to_owned(),
            at: Utc::now(),
        }
    }

    #[test]
    fn a_batch_round_trips_in_order() {
        let batch = ReportBatch {
            reports: vec![
                Report {
                    event: started(1),
                    traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
                },
                Report {
                    event: started(2),
                    traceparent: None,
                },
            ],
        };
        let bytes = serde_json::to_vec(&batch).unwrap();
        assert_eq!(ReportBatch::decode(&bytes, None).unwrap(), batch);
    }

    #[test]
    fn a_single_report_of_an_older_worker_reads_as_a_batch_of_one() {
        let bytes = serde_json::to_vec(&started(3)).unwrap();
        let batch = ReportBatch::decode(&bytes, Some("00-abc-def-01")).unwrap();
        assert_eq!(batch.reports.len(), 1);
        assert_eq!(batch.reports[0].event.attempt(), 3);
        assert_eq!(batch.reports[0].traceparent.as_deref(), Some("00-abc-def-01"));
        assert!(ReportBatch::decode(b"{\"type\":\"nonsense\"}", None).is_err());
    }
}
