//! The public API's authentication: tenants' API keys (checked against their SHA-256 in
//! PostgreSQL, cached for a few seconds) and the admin token for `AdminService`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mediamesh_server::auth::{AuthMode, Authenticator, Caller, Token, bearer, unauthenticated};
use mediamesh_store::Store;
use sha2::{Digest, Sha256};
use tonic::Status;

/// How long a checked key is trusted without asking PostgreSQL again. A key revoked through
/// this ingest is refused at once; through another replica, within this time.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Keys kept in the cache, at most.
const KEY_CACHE_SIZE: usize = 10_000;

/// The SHA-256 of a key's secret, as stored.
pub fn key_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Checked keys by hash: their tenant, their id, when checked.
type KeyCache = HashMap<[u8; 32], (String, uuid::Uuid, Instant)>;

/// Characters of a key's secret kept as its prefix (after `mm_`).
const PREFIX_CHARS: usize = 8;

/// A fresh API key: the secret (shown once), its prefix and the hash that is stored.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

pub fn new_api_key() -> NewKey {
    let secret = mediamesh_server::auth::random_secret("mm_");
    let prefix = secret.chars().take(3 + PREFIX_CHARS).collect();
    let hash = key_hash(&secret);
    NewKey { secret, prefix, hash }
}

#[derive(Clone)]
pub struct PublicAuth {
    mode: AuthMode,
    admin: Option<Token>,
    store: Store,
    cache: Arc<Mutex<KeyCache>>,
}

impl PublicAuth {
    pub fn new(mode: AuthMode, admin: Option<Token>, store: Store) -> Self {
        Self {
            mode,
            admin,
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Forgets a revoked key at once.
    pub fn forget(&self, key_id: uuid::Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, id, _)| *id != key_id);
        }
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<String> {
        let cache = self.cache.lock().ok()?;
        let (tenant, _, at) = cache.get(hash)?;
        (at.elapsed() < KEY_CACHE_TTL).then(|| tenant.clone())
    }

    fn remember(&self, hash: [u8; 32], tenant: String, id: uuid::Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= KEY_CACHE_SIZE {
                cache.retain(|_, (_, _, at)| at.elapsed() < KEY_CACHE_TTL);
                if cache.len() >= KEY_CACHE_SIZE {
                    cache.clear();
                }
            }
            cache.insert(hash, (tenant, id, Instant::now()));
        }
    }

    async fn tenant_of_key(&self, secret: &str) -> Result<String, Status> {
        let hash = key_hash(secret);
        if let Some(tenant) = self.cached(&hash) {
            return Ok(tenant);
        }
        match self.store.authenticate_key(&hash).await {
            Ok(Some(key)) => {
                self.remember(hash, key.tenant.clone(), key.id);
                Ok(key.tenant)
            }
            Ok(None) => Err(unauthenticated("invalid or revoked API key")),
            Err(err) => Err(Status::from(mediamesh_core::Error::from(err))),
        }
    }
}

const ADMIN_PREFIX: &str = "/mediamesh.v1.AdminService/";

impl Authenticator for PublicAuth {
    async fn authenticate(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let presented = bearer(headers);
        if path.starts_with(ADMIN_PREFIX) {
            let Some(admin) = &self.admin else {
                return Err(unauthenticated("the admin API is off: set MM_ADMIN_TOKEN on ingest"));
            };
            return match presented {
                Some(token) if admin.matches(token) => Ok(Caller::Trusted),
                _ => Err(unauthenticated("admin calls need the admin token (MM_ADMIN_TOKEN)")),
            };
        }
        match (self.mode, presented) {
            (AuthMode::Off, _) => Ok(Caller::Trusted),
            (AuthMode::On, None) => Err(unauthenticated(
                "missing API key: send `authorization: Bearer <key>` (meshctl: MM_API_KEY)",
            )),
            (AuthMode::On, Some(secret)) => self.tenant_of_key(secret).await.map(Caller::Tenant),
        }
    }
}
