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
