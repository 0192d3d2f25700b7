use std::fmt;

use mediamesh_proto::v1 as pb;

/// The response metadata key that carries the stable error code beside the gRPC status.
pub const ERROR_CODE_METADATA: &str = "mm-error-code";

/// The stable error codes of the product. Each is retryable or not, and maps to one gRPC status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadInput,
    Unsupported,
    TooLarge,
    NotFound,
    Timeout,
    RateLimited,
    ProviderDown,
    Network,
    BudgetExceeded,
    Cancelled,
    Unavailable,
    Internal,
    DependencyFailed,
    QuotaExceeded,
    Unauthenticated,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        Self::BadInput,
        Self::Unsupported,
        Self::TooLarge,
        Self::NotFound,
        Self::Timeout,
        Self::RateLimited,
        Self::ProviderDown,
        Self::Network,
        Self::BudgetExceeded,
        Self::Cancelled,
        Self::Unavailable,
        Self::Internal,
        Self::DependencyFailed,
        Self::QuotaExceeded,
        Self::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadInput => "BAD_INPUT",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooLarge => "TOO_LARGE",
            Self::NotFound => "NOT_FOUND",
            Self::Timeout => "TIMEOUT",
            Self::RateLimited => "RATE_LIMITED",
            Self::ProviderDown => "PROVIDER_DOWN",
            Self::Network => "NETWORK",
            Self::BudgetExceeded => "BUDGET_EXCEEDED",
            Self::Cancelled => "CANCELLED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::DependencyFailed => "DEPENDENCY_FAILED",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == s)
    }

    /// Whether a job attempt that failed with this code should be tried again.
    pub fn is_retryable(self) -> bool {
        match self {
            Self::Timeout
            | Self::RateLimited
            | Self::ProviderDown
            | Self::Network
            | Self::Unavailable
            | Self::Internal => true,
            Self::BadInput
            | Self::Unsupported
            | Self::TooLarge
            | Self::NotFound
            | Self::BudgetExceeded
            | Self::Cancelled
            | Self::DependencyFailed
            | Self::QuotaExceeded
            | Self::Unauthenticated => false,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadInput => tonic::Code::InvalidArgument,
            Self::Unsupported => tonic::Code::Unimplemented,
            Self::TooLarge => tonic::Code::OutOfRange,
            Self::NotFound => tonic::Code::NotFound,
            Self::Timeout => tonic::Code::DeadlineExceeded,
            Self::RateLimited => tonic::Code::ResourceExhausted,
            Self::ProviderDown => tonic::Code::Unavailable,
            Self::Network => tonic::Code::Unavailable,
            Self::BudgetExceeded => tonic::Code::ResourceExhausted,
            Self::Cancelled => tonic::Code::Cancelled,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
            Self::DependencyFailed => tonic::Code::FailedPrecondition,
            Self::QuotaExceeded => tonic::Code::ResourceExhausted,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
        }
    }

    pub fn to_proto(self) -> pb::ErrorCode {
        match self {
            Self::BadInput => pb::ErrorCode::BadInput,
            Self::Unsupported => pb::ErrorCode::Unsupported,
            Self::TooLarge => pb::ErrorCode::TooLarge,
            Self::NotFound => pb::ErrorCode::NotFound,
            Self::Timeout => pb::ErrorCode::Timeout,
            Self::RateLimited => pb::ErrorCode::RateLimited,
            Self::ProviderDown => pb::ErrorCode::ProviderDown,
            Self::Network => pb::ErrorCode::Network,
            Self::BudgetExceeded => pb::ErrorCode::BudgetExceeded,
            Self::Cancelled => pb::ErrorCode::Cancelled,
            Self::Unavailable => pb::ErrorCode::Unavailable,
            Self::Internal => pb::ErrorCode::Internal,
            Self::DependencyFailed => pb::ErrorCode::DependencyFailed,
            Self::QuotaExceeded => pb::ErrorCode::QuotaExceeded,
            Self::Unauthenticated => pb::ErrorCode::Unauthenticated,
        }
    }

    /// The code a client reads back from a status: the `mm-error-code` metadata when present,
    /// else the closest code for the gRPC status.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Some(code) = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
        {
            return code;
        }
        match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Self::BadInput,
            tonic::Code::NotFound => Self::NotFound,
            tonic::Code::Unimplemented => Self::Unsupported,
            tonic::Code::OutOfRange => Self::TooLarge,
            tonic::Code::DeadlineExceeded => Self::Timeout,
            tonic::Code::ResourceExhausted => Self::RateLimited,
            tonic::Code::Cancelled => Self::Cancelled,
            tonic::Code::Unavailable => Self::Unavailable,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Self::Unauthenticated,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a caller may see: a stable code and a short message. The cause chain stays in
/// the logs of the service that produced it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which the same call may succeed (sent as `retry-after`).
    pub retry_after: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the caller to wait `secs` (at least 1) before trying again.
    pub fn retry_after(mut self, secs: f64) -> Self {
        self.retry_after = Some(secs.ceil().max(1.0) as u64);
        self
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The same error, its message prefixed with where it happened (`jobs[3]: ...`).
    pub fn context(self, at: &str) -> Self {
        Self {
            code: self.code,
            message: format!("{at}: {}", self.message),
            retry_after: self.retry_after,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn to_proto(&self) -> pb::JobError {
        pb::JobError {
            code: self.code.to_proto() as i32,
            message: self.message.clone(),
            retryable: self.code.is_retryable(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let mut status = tonic::Status::new(err.code.grpc_code(), err.message);
        if let Ok(value) = err.code.as_str().parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA, value);
        }
        let retry_after = err.retry_after.or((err.code == ErrorCode::RateLimited).then_some(1));
        if let Some(secs) = retry_after
            && let Ok(value) = secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let mut err = Self::new(ErrorCode::from_status(&status), status.message().to_owned());
        err.retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        err
    }
}

impl TryFrom<pb::ErrorCode> for ErrorCode {
    type Error = Error;

    fn try_from(code: pb::ErrorCode) -> Result<Self> {
        Ok(match code {
            pb::ErrorCode::Unspecified => return Err(Error::bad_input("error code unspecified")),
            pb::ErrorCode::BadInput => Self::BadInput,
            pb::ErrorCode::Unsupported => Self::Unsupported,
            pb::ErrorCode::TooLarge => Self::TooLarge,
            pb::ErrorCode::NotFound => Self::NotFound,
            pb::ErrorCode::Timeout => Self::Timeout,
            pb::ErrorCode::RateLimited => Self::RateLimited,
            pb::ErrorCode::ProviderDown => Self::ProviderDown,
            pb::ErrorCode::Network => Self::Network,
            pb::ErrorCode::BudgetExceeded => Self::BudgetExceeded,
            pb::ErrorCode::Cancelled => Self::Cancelled,
            pb::ErrorCode::Unavailable => Self::Unavailable,
            pb::ErrorCode::Internal => Self::Internal,
            pb::ErrorCode::DependencyFailed => Self::DependencyFailed,
            pb::ErrorCode::QuotaExceeded => Self::QuotaExceeded,
            pb::ErrorCode::Unauthenticated => Self::Unauthenticated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_a_status() {
        for code in ErrorCode::ALL {
            let status = tonic::Status::from(Error::new(code, "x"));
            assert_eq!(ErrorCode::from_status(&status), code);
            assert_eq!(status.code(), code.grpc_code());
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }
}
