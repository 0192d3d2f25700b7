//! Helpers shared by the gateway tests: gateways over fake providers, fixtures and ledgers.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use mediamesh_fakeai::{FakeAi, Options};
use mediamesh_gateway::{
    ApiKey, AudioIn, BreakerState, Call, CallRecord, Gateway, GatewayConfig, ImageIn, Ledger, ProviderConfig, Settings,
};

/// A fake provider named `name` (embedded in its answers).
pub async fn fake(name: &str) -> FakeAi {
    FakeAi::start_with(Options {
        name: name.to_owned(),
        ..Options::default()
    })
    .await
    .unwrap()
}

/// A provider config for a fake: every task, the default models and prices, fast test limits.
pub fn provider(name: &str, fake: &FakeAi) -> ProviderConfig {
    let mut p = ProviderConfig::openai_default(name, None, Some(&fake.base_url()));
    p.timeout = Duration::from_secs(5);
    p.max_retries = 2;
    p.requests_per_minute = 60_000;
    p.burst = 1_000;
    p.tokens_per_minute = 100_000_000;
    p.breaker_failures = 100;
    p
}

pub fn gateway(providers: Vec<ProviderConfig>) -> Gateway {
    Gateway::new(GatewayConfig {
        providers,
        settings: Settings::default(),
    })
    .unwrap()
}

/// A gateway over one fake with `tweak` applied to its provider config.
pub fn gateway_one(fake: &FakeAi, tweak: impl FnOnce(&mut ProviderConfig)) -> Gateway {
    let mut p = provider("p1", fake);
    tweak(&mut p);
    gateway(vec![p])
}

pub fn key(secret: &str) -> Option<ApiKey> {
    Some(ApiKey::new(secret).unwrap())
}

pub fn call() -> Call {
    Call::new("tenant-a").with_timeout(Duration::from_secs(20))
}

pub fn fixture(name: &str) -> bytes::Bytes {
    let path = format!("{}/../../../shared/fixtures/media/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
        .into()
}

pub fn photo() -> ImageIn {
    ImageIn {
        bytes: fixture("friends_by_Aitzol_Berasategi_orient6.jpg"),
        mime: "image/jpeg".into(),
    }
}

pub fn png() -> ImageIn {
    ImageIn {
        bytes: fixture("Arc-Colors-Transparent-Wallpaper.png"),
        mime: "image/png".into(),
    }
}

pub fn speech() -> AudioIn {
    AudioIn {
        bytes: fixture("speech_en.wav"),
        filename: "speech_en.wav".into(),
        mime: "audio/wav".into(),
    }
}

/// A ledger that keeps every record and can refuse with a budget error.
#[derive(Default)]
pub struct MemoryLedger {
    pub records: Mutex<Vec<CallRecord>>,
    pub refuse: bool,
    pub checks: Mutex<u32>,
}

impl MemoryLedger {
    pub fn records(&self) -> Vec<CallRecord> {
        self.records.lock().unwrap().clone()
    }

    pub fn outcomes(&self) -> Vec<Option<ErrorCode>> {
        self.records().iter().map(|r| r.outcome).collect()
    }
}

impl Ledger for MemoryLedger {
    fn check(&self, tenant: &str) -> BoxFuture<'_, Result<(), Error>> {
        *self.checks.lock().unwrap() += 1;
        let refuse = self.refuse;
        let tenant = tenant.to_owned();
        Box::pin(async move {
            if refuse {
                Err(Error::new(
                    ErrorCode::BudgetExceeded,
                    format!("tenant {tenant} is over budget"),
                ))
            } else {
                Ok(())
            }
        })
    }

    fn record(&self, record: CallRecord) -> BoxFuture<'_, ()> {
        self.records.lock().unwrap().push(record);
        Box::pin(async {})
    }
}

pub fn call_with(ledger: Arc<MemoryLedger>) -> Call {
    call().with_ledger(ledger)
}

/// Polls the breaker state with short awaits until it is `want` (at most `within`).
pub async fn await_breaker(gateway: &Gateway, provider: &str, want: BreakerState, within: Duration) {
    let start = Instant::now();
    loop {
        let state = gateway.breaker_state(provider);
        if state == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "breaker of {provider} is {state:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
