use uuid::Uuid;

use crate::{DEFAULT_TENANT, Error};

/// The metadata key an internal hop names the tenant in.
pub const TENANT_METADATA: &str = "mm-tenant";

/// The tenant a request acts for: the one an internal hop names in `mm-tenant`, else
/// `default` (until API keys name one).
pub fn tenant_of<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get(TENANT_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TENANT)
        .to_owned()
}

/// Parses a required id field; a missing or malformed one is `BAD_INPUT` naming the field.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, Error> {
    if value.is_empty() {
        return Err(Error::bad_input(format!("{field} is required")));
    }
    Uuid::parse_str(value).map_err(|_| Error::bad_input(format!("{field} {value:?} is not a valid id")))
}

/// The client's deadline from `grpc-timeout` (`<digits><unit>`, units H M S m u n).
pub fn client_timeout<T>(request: &tonic::Request<T>) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grpc_timeout_is_read() {
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(client_timeout(&request), Some(Duration::from_millis(1500)));
        request.metadata_mut().insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(client_timeout(&request), Some(Duration::from_secs(2)));
        request.metadata_mut().insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(client_timeout(&request), None);
    }
}
