use std::fmt;
use std::time::Duration;

use mediamesh_proto::v1 as pb;

use crate::{Error, Result};

pub const DEFAULT_PRIORITY: u32 = 5;

/// The tenant of every request until API keys name one.
pub const DEFAULT_TENANT: &str = "default";

/// A job kind: what a worker does. The string form is the stable name in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    MediaProbe,
    MediaThumbnails,
    MediaWaveform,
    MediaVideoThumbnail,
    MediaVideoPreview,
    InferenceTranscribe,
    InferenceDescribeImage,
    InferenceEnhanceImage,
    InferenceGenerateText,
    InferenceGenerateImage,
    InferenceExtract,
    Aggregate,
    /// Sleeps, optionally in a subprocess, then succeeds or fails as its payload says. Only
    /// accepted when the services run with `MM_ENABLE_TEST_KINDS=true`: the fault tests use it.
    TestSleep,
    /// Does nothing and succeeds: what the queue itself costs, for benchmarks. Only accepted
    /// when the services run with `MM_ENABLE_NOOP=true`.
    Noop,
}

/// The JetStream queue (subject suffix and durable consumer) a kind runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Queue {
    Media,
    Inference,
    Scheduler,
}

impl Queue {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Media => "media",
            Self::Inference => "inference",
            Self::Scheduler => "scheduler",
        }
    }
}

impl JobKind {
    pub const ALL: [JobKind; 14] = [
        Self::MediaProbe,
        Self::MediaThumbnails,
        Self::MediaWaveform,
        Self::MediaVideoThumbnail,
        Self::MediaVideoPreview,
        Self::InferenceTranscribe,
        Self::InferenceDescribeImage,
        Self::InferenceEnhanceImage,
        Self::InferenceGenerateText,
        Self::InferenceGenerateImage,
        Self::InferenceExtract,
        Self::Aggregate,
        Self::TestSleep,
        Self::Noop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MediaProbe => "media.probe",
            Self::MediaThumbnails => "media.thumbnails",
            Self::MediaWaveform => "media.waveform",
            Self::MediaVideoThumbnail => "media.video_thumbnail",
            Self::MediaVideoPreview => "media.video_preview",
            Self::InferenceTranscribe => "inference.transcribe",
            Self::InferenceDescribeImage => "inference.describe_image",
            Self::InferenceEnhanceImage => "inference.enhance_image",
            Self::InferenceGenerateText => "inference.generate_text",
            Self::InferenceGenerateImage => "inference.generate_image",
            Self::InferenceExtract => "inference.extract",
            Self::Aggregate => "aggregate",
            Self::TestSleep => "test.sleep",
            Self::Noop => "noop",
        }
    }

    /// Parses a kind name; an unknown name is `BAD_INPUT`.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name).ok_or_else(|| {
            if name.is_empty() {
                Error::bad_input("job kind is required")
            } else {
                Error::bad_input(format!("unknown job kind {name:?}"))
            }
        })
    }

    pub fn queue(self) -> Queue {
        match self {
            Self::MediaProbe
            | Self::MediaThumbnails
            | Self::MediaWaveform
            | Self::MediaVideoThumbnail
            | Self::MediaVideoPreview
            | Self::TestSleep
            | Self::Noop => Queue::Media,
            Self::InferenceTranscribe
            | Self::InferenceDescribeImage
            | Self::InferenceEnhanceImage
            | Self::InferenceGenerateText
            | Self::InferenceGenerateImage
            | Self::InferenceExtract => Queue::Inference,
            Self::Aggregate => Queue::Scheduler,
        }
    }

    /// Whether this build has a worker for the kind. Submitting one that has none is
    /// `UNSUPPORTED`, so that no job waits forever for a worker that does not exist.
    pub fn is_available(self) -> bool {
        !self.is_test() && self != Self::Noop
    }

    /// Kinds that exist for tests only and are refused unless test kinds are enabled.
    pub fn is_test(self) -> bool {
        matches!(self, Self::TestSleep)
    }

    /// Whether the kind works on a media (and so needs a `media_id`). `inference.extract`
    /// takes either a media (its transcript) or a text in its payload.
    pub fn needs_media(self) -> bool {
        !matches!(
            self,
            Self::Aggregate
                | Self::TestSleep
                | Self::Noop
                | Self::InferenceGenerateText
                | Self::InferenceGenerateImage
                | Self::InferenceExtract
        )
    }

    /// Whether the kind calls an AI provider (and so exists only when one is configured).
    pub fn is_inference(self) -> bool {
        self.queue() == Queue::Inference
    }

    pub fn default_max_attempts(self) -> u32 {
        3
    }

    pub fn default_timeout(self) -> Duration {
        Duration::from_secs(300)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job state machine's states; the text form is stored in PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Scheduled => "SCHEDULED",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::internal(format!("unknown job state {s:?}")))
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn to_proto(self) -> pb::JobState {
        match self {
            Self::Queued => pb::JobState::Queued,
            Self::Scheduled => pb::JobState::Scheduled,
            Self::Running => pb::JobState::Running,
            Self::Succeeded => pb::JobState::Succeeded,
            Self::Failed => pb::JobState::Failed,
            Self::Cancelled => pb::JobState::Cancelled,
        }
    }

    /// `None` for UNSPECIFIED, which filters mean as "any".
    pub fn from_proto(state: pb::JobState) -> Option<Self> {
        match state {
            pb::JobState::Unspecified => None,
            pb::JobState::Queued => Some(Self::Queued),
            pb::JobState::Scheduled => Some(Self::Scheduled),
            pb::JobState::Running => Some(Self::Running),
            pb::JobState::Succeeded => Some(Self::Succeeded),
            pb::JobState::Failed => Some(Self::Failed),
            pb::JobState::Cancelled => Some(Self::Cancelled),
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Image,
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "image" => Ok(Self::Image),
            "audio" => Ok(Self::Audio),
            "video" => Ok(Self::Video),
            other => Err(Error::internal(format!("unknown media kind {other:?}"))),
        }
    }

    pub fn to_proto(self) -> pb::MediaKind {
        match self {
            Self::Image => pb::MediaKind::Image,
            Self::Audio => pb::MediaKind::Audio,
            Self::Video => pb::MediaKind::Video,
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_is_bad_input() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Ok(kind));
        }
        let err = JobKind::parse("media.nonsense").unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::BadInput);
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Ok(state));
        }
    }
}
