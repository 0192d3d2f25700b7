//! The media service's [`Executor`]: `media.*` kinds (and `test.sleep` when enabled) for the
//! shared worker loop in `mediamesh_bus::worker`.

use futures::FutureExt;
use futures::future::BoxFuture;
use mediamesh_blob::Blob;
use mediamesh_bus::worker::{Attempt, Executor};
use mediamesh_bus::{Bus, JobMessage};
use mediamesh_core::{Error, JobKind};

use crate::{MediaConfig, jobs};

pub struct MediaExecutor {
    pub bus: Bus,
    pub blob: Blob,
    pub config: MediaConfig,
}

impl Executor for MediaExecutor {
    fn execute(&self, job: JobMessage, attempt: Attempt) -> BoxFuture<'static, Result<serde_json::Value, Error>> {
        let bus = self.bus.clone();
        let blob = self.blob.clone();
        let config = self.config.clone();
        async move { execute(&bus, &blob, &config, &job, attempt).await }.boxed()
    }
}

async fn execute(
    bus: &Bus,
    blob: &Blob,
    config: &MediaConfig,
    job: &JobMessage,
    attempt: Attempt,
) -> Result<serde_json::Value, Error> {
    let kind = JobKind::parse(&job.kind).map_err(|_| Error::unsupported(format!("unknown job kind {:?}", job.kind)))?;
    if kind == JobKind::Noop {
        if !config.enable_noop {
            return Err(Error::unsupported(
                "the noop kind is disabled on this worker (MM_ENABLE_NOOP)",
            ));
        }
        return Ok(serde_json::json!({ "outputs": [] }));
    }
    if kind == JobKind::TestSleep {
        if !config.enable_test_kinds {
            return Err(Error::unsupported("test kinds are disabled on this worker"));
        }
        return crate::test_kind::sleep(bus, job, attempt.cancel).await;
    }
    let media_id = job
        .media_id
        .ok_or_else(|| Error::bad_input(format!("job kind {kind} needs a media_id")))?;
    let job_ctx = jobs::JobCtx {
        bus,
        blob,
        config,
        job,
        media_id,
        cancel: attempt.cancel,
        deadline: attempt.deadline,
    };
    jobs::run(&job_ctx, kind).await
}
