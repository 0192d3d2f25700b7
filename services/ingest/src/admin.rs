//! `AdminService`: tenants' API keys and quotas. The auth layer lets only the admin token in.

use mediamesh_core::{Error, to_timestamp};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::admin_service_server::AdminService;
use mediamesh_store::{ApiKeyRow, Store};
use tonic::{Request, Response, Status};

use crate::auth::{PublicAuth, new_api_key};
use crate::quota::QuotaBook;

#[derive(Clone)]
pub struct AdminApi {
    store: Store,
    auth: PublicAuth,
    quotas: QuotaBook,
}

impl AdminApi {
    pub fn new(store: Store, auth: PublicAuth, quotas: QuotaBook) -> Self {
        Self { store, auth, quotas }
    }
}

/// A tenant name: 1 to 64 of letters, digits, '-', '_' and '.'.
pub fn check_tenant(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_input(format!(
            "tenant {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn key_to_proto(row: &ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: row.id.to_string(),
        tenant: row.tenant.clone(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        created_at: Some(to_timestamp(row.created_at)),
        last_used_at: row.last_used_at.map(to_timestamp),
        revoked_at: row.revoked_at.map(to_timestamp),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let pb::CreateApiKeyRequest { tenant, name } = request.into_inner();
        check_tenant(&tenant)?;
        if name.len() > 200 || name.chars().any(char::is_control) {
            return Err(Error::bad_input("name: at most 200 characters, no control characters").into());
        }
        let crate::auth::NewKey { secret, prefix, hash } = new_api_key();
        let row = self
            .store
            .create_api_key(&tenant, &name, &prefix, &hash)
            .await
            .map_err(Error::from)?;
        tracing::info!(tenant, key_id = %row.id, prefix, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(key_to_proto(&row)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let pb::ListApiKeysRequest {
            tenant,
            include_revoked,
        } = request.into_inner();
        let tenant = (!tenant.is_empty()).then_some(tenant);
        let rows = self
            .store
            .list_api_keys(tenant.as_deref(), include_revoked)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: rows.iter().map(key_to_proto).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(Error::bad_input("key (an id or a prefix) is required").into());
        }
        let id = uuid::Uuid::parse_str(&key).ok();
        let rows = self.store.revoke_api_key(id, &key).await.map_err(Error::from)?;
        match rows.as_slice() {
            [row] => {
                self.auth.forget(row.id);
                tracing::info!(tenant = row.tenant, key_id = %row.id, "API key revoked");
                Ok(Response::new(pb::RevokeApiKeyResponse {
                    key: Some(key_to_proto(row)),
                }))
            }
            [] => Err(Error::not_found(format!("no API key {key:?}")).into()),
            many => Err(Error::bad_input(format!("{} keys start with {key:?}: give the key's id", many.len())).into()),
        }
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let tenant = request.into_inner().tenant;
        check_tenant(&tenant)?;
        let overrides = self.quotas.overrides(&tenant).await?;
        let usage = self.store.tenant_usage(&tenant).await.map_err(Error::from)?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Response::new(pb::GetTenantResponse {
            effective: Some(self.quotas.defaults().with(&overrides).to_proto()),
            overrides: Some(overrides.to_proto()),
            usage: Some(pb::TenantUsage {
                jobs_last_hour: count(usage.jobs_last_hour),
                jobs_last_day: count(usage.jobs_last_day),
                stored_bytes: count(usage.stored_bytes),
                running_jobs: count(usage.running_jobs),
            }),
            tenant,
        }))
    }

    async fn set_quotas(
        &self,
        request: Request<pb::SetQuotasRequest>,
    ) -> Result<Response<pb::SetQuotasResponse>, Status> {
        let pb::SetQuotasRequest { tenant, quotas, reset } = request.into_inner();
        check_tenant(&tenant)?;
        let set = quotas.unwrap_or_default();
        let overrides = self.quotas.overrides(&tenant).await?.apply(&set, &reset)?;
        let effective = self.quotas.set(&tenant, &overrides).await?;
        tracing::info!(tenant, overrides = ?overrides, "quotas set");
        Ok(Response::new(pb::SetQuotasResponse {
            effective: Some(effective.to_proto()),
            overrides: Some(overrides.to_proto()),
        }))
    }
}
