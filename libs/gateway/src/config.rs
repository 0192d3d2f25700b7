//! Gateway configuration: which providers serve which task, with which model, limits and prices.
//!
//! The configuration is the default provider built from `MM_OPENAI_API_KEY` /
//! `MM_OPENAI_BASE_URL` (named `default`, serving every task with OpenAI's models), followed by
//! the providers of the TOML file named by `MM_CONFIG`. The failover order of a task is the
//! declared order of the providers that have a model for it (the env default first).
//!
//! API keys are resolved when the configuration is loaded (from an environment variable or a
//! file) and are held in [`ApiKey`], whose `Debug` never prints the key; no configuration type
//! prints a key in `Debug` output or errors.
//!
//! A full example:
//!
//! ```toml
//! [settings]
//! default_language = "en"        # transcription language when the request has none ("" = auto-detect)
//! describe_prompt = "Describe this photo for a media library."   # optional, has a default
//! enhance_prompt = "Improve lighting and sharpness; keep the person's identity unchanged."
//! moderation = "provider"        # or "off" (the default)
//!
//! [[providers]]
//! name = "openai"
//! kind = "openai"                # or "azure"
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY" # or api_key_file = "/run/secrets/openai" (trimmed; relative to
//!                                # this file); neither = no key (local servers)
//! timeout_ms = 60000             # per attempt, never past the call's deadline
//! max_retries = 2                # per provider before failing over
//! requests_per_minute = 500
//! tokens_per_minute = 200000
//! burst = 83                     # requests allowed at once (default requests_per_minute / 6, at least 1)
//! max_audio_bytes = 26214400
//! breaker_failures = 5           # consecutive failed calls that open the circuit
//! breaker_cooldown_ms = 30000
//!
//! [providers.models]             # task -> model; a provider serves only the tasks listed
//! transcribe = "whisper-1"
//! describe_image = "gpt-4o-mini"
//! extract = "gpt-4o-mini"
//! generate_text = "gpt-4o-mini"
//! generate_image = "dall-e-3"
//! enhance_image = "gpt-image-1"
//! moderate = "omni-moderation-latest"
//!
//! [providers.prices."gpt-4o-mini"]   # USD
//! input_per_1m_tokens = 0.15
//! output_per_1m_tokens = 0.60
//! [providers.prices."whisper-1"]
//! per_audio_minute = 0.006
//! [providers.prices."dall-e-3"]
//! per_image = 0.04
//!
//! [[providers]]
//! name = "azure-eu"
//! kind = "azure"
//! base_url = "https://my-resource.openai.azure.com"
//! api_key_file = "/run/secrets/azure"
//! api_version = "2024-10-21"     # required for azure
//! [providers.models]
//! generate_text = "gpt-4o-mini"
//! [providers.deployments]        # azure: model -> deployment, required for every model
//! "gpt-4o-mini" = "my-gpt4o-mini-deployment"
//!
//! [[providers]]
//! name = "local"                 # an Ollama / vLLM / LocalAI server: no key
//! base_url = "http://127.0.0.1:11434/v1"
//! [providers.models]
//! generate_text = "llama3.2"
//! ```
//!
//! Every error is a [`mediamesh_core::Error`] with code `BadInput` whose message names the file,
//! the provider and the field.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use mediamesh_core::Error;
use serde::Deserialize;

/// What a provider call is for. Each task maps to one model per provider. Serialized as
/// [`Task::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Speech to text.
    Transcribe,
    /// Caption, tags and objects of an image.
    DescribeImage,
    /// Image edit that improves a photo.
    EnhanceImage,
    /// Free text generation.
    GenerateText,
    /// Image generation from a prompt.
    GenerateImage,
    /// Structured extraction against a caller's JSON Schema.
    Extract,
    /// Text moderation.
    Moderate,
}

impl Task {
    /// Every task, in a stable order.
    pub const ALL: [Task; 7] = [
        Task::Transcribe,
        Task::DescribeImage,
        Task::EnhanceImage,
        Task::GenerateText,
        Task::GenerateImage,
        Task::Extract,
        Task::Moderate,
    ];

    /// The task's name in configuration files and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Transcribe => "transcribe",
            Task::DescribeImage => "describe_image",
            Task::EnhanceImage => "enhance_image",
            Task::GenerateText => "generate_text",
            Task::GenerateImage => "generate_image",
            Task::Extract => "extract",
            Task::Moderate => "moderate",
        }
    }

    /// The task named `name` (as written by [`Task::as_str`]).
    pub fn parse(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|task| task.as_str() == name)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key. Its `Debug` prints `ApiKey(***)`; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key. Fails (without printing it) when the key is empty or cannot be sent in an
    /// HTTP header.
    pub fn new(key: impl Into<String>) -> Result<Self, Error> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::bad_input("the API key is empty"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::bad_input(
                "the API key contains characters that cannot be sent in an HTTP header",
            ));
        }
        Ok(Self(key))
    }

    /// The key itself, for the HTTP client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// The API dialect of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (Ollama, vLLM, LocalAI, ...).
    OpenAi,
    /// Azure OpenAI: `api_version` and a deployment per model.
    Azure,
}

/// Prices of one model in USD. Missing prices are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelPrice {
    /// USD per million input (prompt) tokens.
    pub input_per_1m_tokens: f64,
    /// USD per million output (completion) tokens.
    pub output_per_1m_tokens: f64,
    /// USD per image produced.
    pub per_image: f64,
    /// USD per minute of transcribed audio.
    pub per_audio_minute: f64,
}

impl ModelPrice {
    /// The cost of one call that used these amounts.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64, images: u32, audio_seconds: f64) -> f64 {
        tokens_in as f64 * self.input_per_1m_tokens / 1e6
            + tokens_out as f64 * self.output_per_1m_tokens / 1e6
            + f64::from(images) * self.per_image
            + audio_seconds.max(0.0) / 60.0 * self.per_audio_minute
    }
}

/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Default retries per provider before failing over.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Default requests per minute.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 500;
/// Default tokens per minute.
pub const DEFAULT_TOKENS_PER_MINUTE: u64 = 200_000;
/// Default largest audio upload (25 MiB, OpenAI's limit).
pub const DEFAULT_MAX_AUDIO_BYTES: u64 = 26_214_400;
/// Default consecutive failures that open the circuit.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time the circuit stays open.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 30_000;
/// The base URL of the default provider when `MM_OPENAI_BASE_URL` is unset.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The name of the provider built from `MM_OPENAI_*`.
pub const DEFAULT_PROVIDER: &str = "default";

/// One provider: where it is, its key, limits, the model of each task it serves and prices.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Unique name, used in errors, records and fingerprints.
    pub name: String,
    /// API dialect.
    pub kind: ProviderKind,
    /// Base URL without a trailing slash (`https://api.openai.com/v1`).
    pub base_url: String,
    /// The key, if the provider needs one.
    pub api_key: Option<ApiKey>,
    /// Azure only: the `api-version` query parameter.
    pub api_version: Option<String>,
    /// Azure only: model -> deployment.
    pub deployments: HashMap<String, String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retries on this provider before failing over.
    pub max_retries: u32,
    /// Requests per minute (sustained rate).
    pub requests_per_minute: u32,
    /// Tokens per minute (sustained rate).
    pub tokens_per_minute: u64,
    /// Requests allowed at once on top of the sustained rate.
    pub burst: u32,
    /// Largest audio file the provider accepts.
    pub max_audio_bytes: u64,
    /// Consecutive failed calls that open the circuit.
    pub breaker_failures: u32,
    /// Time the circuit stays open before a trial call.
    pub breaker_cooldown: Duration,
    /// Task -> model. A provider serves only these tasks.
    pub models: HashMap<Task, String>,
    /// Model -> prices.
    pub prices: HashMap<String, ModelPrice>,
}

impl ProviderConfig {
    /// The OpenAI provider with default models for every task, default limits and list
    /// prices. `base_url` defaults to [`OPENAI_BASE_URL`].
    pub fn openai_default(name: &str, api_key: Option<ApiKey>, base_url: Option<&str>) -> Self {
        let models = [
            (Task::Transcribe, "whisper-1"),
            (Task::DescribeImage, "gpt-4o-mini"),
            (Task::EnhanceImage, "gpt-image-1"),
            (Task::GenerateText, "gpt-4o-mini"),
            (Task::GenerateImage, "dall-e-3"),
            (Task::Extract, "gpt-4o-mini"),
            (Task::Moderate, "omni-moderation-latest"),
        ]
        .into_iter()
        .map(|(task, model)| (task, model.to_owned()))
        .collect();
        let prices = [
            (
                "gpt-4o-mini",
                ModelPrice {
                    input_per_1m_tokens: 0.15,
                    output_per_1m_tokens: 0.60,
                    ..ModelPrice::default()
                },
            ),
            (
                "whisper-1",
                ModelPrice {
                    per_audio_minute: 0.006,
                    ..ModelPrice::default()
                },
            ),
            (
                "dall-e-3",
                ModelPrice {
                    per_image: 0.04,
                    ..ModelPrice::default()
                },
            ),
            (
                // text input $5/1M, image input $10/1M, image output $40/1M: an edit is mostly
                // image input.
                "gpt-image-1",
                ModelPrice {
                    input_per_1m_tokens: 10.0,
                    output_per_1m_tokens: 40.0,
                    ..ModelPrice::default()
                },
            ),
            ("omni-moderation-latest", ModelPrice::default()),
        ]
        .into_iter()
        .map(|(model, price)| (model.to_owned(), price))
        .collect();
        Self {
            name: name.to_owned(),
            kind: ProviderKind::OpenAi,
            base_url: base_url.unwrap_or(OPENAI_BASE_URL).trim_end_matches('/').to_owned(),
            api_key,
            api_version: None,
            deployments: HashMap::new(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_retries: DEFAULT_MAX_RETRIES,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            tokens_per_minute: DEFAULT_TOKENS_PER_MINUTE,
            burst: default_burst(DEFAULT_REQUESTS_PER_MINUTE),
            max_audio_bytes: DEFAULT_MAX_AUDIO_BYTES,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: Duration::from_millis(DEFAULT_BREAKER_COOLDOWN_MS),
            models,
            prices,
        }
    }

    /// The model this provider uses for `task`, if it serves it.
    pub fn model(&self, task: Task) -> Option<&str> {
        self.models.get(&task).map(String::as_str)
    }

    /// Whether this provider has a model for `task`.
    pub fn serves(&self, task: Task) -> bool {
        self.models.contains_key(&task)
    }

    /// The prices of `model` (zero when not listed).
    pub fn price(&self, model: &str) -> ModelPrice {
        self.prices.get(model).copied().unwrap_or_default()
    }
}

/// The default burst for a rate: a tenth of a minute's requests, at least one.
pub fn default_burst(requests_per_minute: u32) -> u32 {
    (requests_per_minute / 6).max(1)
}

/// Whether prompts go through the provider's moderation endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModerationMode {
    /// `Gateway::moderate` lets everything through.
    #[default]
    Off,
    /// `Gateway::moderate` asks the first provider with a `moderate` model.
    Provider,
}

/// The default prompt of `describe_image`.
pub const DEFAULT_DESCRIBE_PROMPT: &str = "Describe this image for a media library. Give a one-sentence \
caption, up to ten short lowercase tags, the visible objects (name, confidence between 0 and 1, count) \
and a short scene label such as \"beach at sunset\" or \"office interior\".";

/// The default prompt of `enhance_image`.
pub const DEFAULT_ENHANCE_PROMPT: &str = "Improve lighting and sharpness; keep the person's identity unchanged.";

/// Settings shared by every provider.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Transcription language when the request has none; empty = let the model detect it.
    pub default_language: String,
    /// Prompt of `describe_image` when the caller gives none.
    pub describe_prompt: String,
    /// Default prompt for image enhancement (the service passes it to `enhance_image`).
    pub enhance_prompt: String,
    /// Whether `moderate` calls a provider.
    pub moderation: ModerationMode,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_language: String::new(),
            describe_prompt: DEFAULT_DESCRIBE_PROMPT.to_owned(),
            enhance_prompt: DEFAULT_ENHANCE_PROMPT.to_owned(),
            moderation: ModerationMode::Off,
        }
    }
}

/// Every provider and the shared settings.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Providers in failover order.
    pub providers: Vec<ProviderConfig>,
    /// Shared settings.
    pub settings: Settings,
}

impl GatewayConfig {
    /// The default provider from `MM_OPENAI_API_KEY` / `MM_OPENAI_BASE_URL` (named "default";
    /// the base URL defaults to <https://api.openai.com/v1>; a base URL without a key is allowed,
    /// for Ollama/vLLM/LocalAI), plus the providers and settings of the TOML file named by
    /// `MM_CONFIG`. Empty values count as unset. Errors (unreadable file, bad TOML, unknown task
    /// names, an unset key variable, a provider with no models, duplicate names, zero limits)
    /// have code `BadInput` and name the file, provider and field.
    pub fn load(
        openai_api_key: Option<String>,
        openai_base_url: Option<String>,
        config_file: Option<&Path>,
    ) -> Result<Self, Error> {
        let key = openai_api_key.filter(|k| !k.trim().is_empty());
        let base = openai_base_url.filter(|u| !u.trim().is_empty());
        let mut config = GatewayConfig::default();
        if key.is_some() || base.is_some() {
            let api_key = key
                .map(|k| ApiKey::new(k.trim()))
                .transpose()
                .map_err(|e| e.context("MM_OPENAI_API_KEY"))?;
            let base_url = base
                .as_deref()
                .map(|u| check_base_url(u.trim()))
                .transpose()
                .map_err(|e| e.context("MM_OPENAI_BASE_URL"))?;
            config.providers.push(ProviderConfig::openai_default(
                DEFAULT_PROVIDER,
                api_key,
                base_url.as_deref(),
            ));
        }
        if let Some(path) = config_file {
            let at = format!("config file {}", path.display());
            let text =
                std::fs::read_to_string(path).map_err(|e| Error::bad_input(format!("{at}: cannot read it: {e}")))?;
            let file = parse_toml(&text, &at, Some(path))?;
            for provider in file.providers {
                if config.providers.iter().any(|p| p.name == provider.name) {
                    return Err(Error::bad_input(format!(
                        "{at}: providers: the name {:?} is used twice (\"default\" is the provider from MM_OPENAI_*)",
                        provider.name
                    )));
                }
                config.providers.push(provider);
            }
            config.settings = file.settings;
        }
        Ok(config)
    }

    /// The providers and settings of a TOML text (no env default provider). Key variables and
    /// key files are resolved now; relative key files are relative to the working directory.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        parse_toml(text, "config", None)
    }

    /// Whether no provider is configured (every AI task is then unsupported).
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    default_language: Option<String>,
    describe_prompt: Option<String>,
    enhance_prompt: Option<String>,
    moderation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    kind: Option<String>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<String>,
    api_version: Option<String>,
    #[serde(default)]
    deployments: HashMap<String, String>,
    timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    burst: Option<u32>,
    max_audio_bytes: Option<u64>,
    breaker_failures: Option<u32>,
    breaker_cooldown_ms: Option<u64>,
    #[serde(default)]
    models: HashMap<String, String>,
    #[serde(default)]
    prices: HashMap<String, ModelPrice>,
}

fn parse_toml(text: &str, at: &str, file: Option<&Path>) -> Result<GatewayConfig, Error> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        // The error's Display quotes the source line, which could hold a secret pasted by
        // mistake: build the message from the line number and the parser's message only.
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = scrub_quoted(e.message());
        match line {
            Some(line) => Error::bad_input(format!("{at}: line {line}: {message}")),
            None => Error::bad_input(format!("{at}: {message}")),
        }
    })?;
    let settings = settings(raw.settings).map_err(|e| e.context(&format!("{at}: settings")))?;
    let mut providers: Vec<ProviderConfig> = Vec::new();
    for (index, raw) in raw.providers.into_iter().enumerate() {
        let label = if raw.name.is_empty() {
            format!("{at}: providers[{index}]")
        } else {
            format!("{at}: provider {:?}", raw.name)
        };
        let provider = provider(raw, file).map_err(|e| e.context(&label))?;
        if providers.iter().any(|p| p.name == provider.name) {
            return Err(Error::bad_input(format!("{label}: name: used by another provider")));
        }
        providers.push(provider);
    }
    Ok(GatewayConfig { providers, settings })
}

/// Replaces quoted values in a parser message (`invalid type: string "..."`) by `"…"`.
fn scrub_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quotes = false;
    for c in message.chars() {
        if c == '"' {
            if in_quotes {
                out.push('…');
            }
            in_quotes = !in_quotes;
            out.push(c);
        } else if !in_quotes {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

fn settings(raw: RawSettings) -> Result<Settings, Error> {
    let defaults = Settings::default();
    let moderation = match raw.moderation.as_deref().map(str::trim) {
        None | Some("off") => ModerationMode::Off,
        Some("provider") => ModerationMode::Provider,
        Some(other) => {
            return Err(Error::bad_input(format!(
                "moderation: {other:?} is neither \"provider\" nor \"off\""
            )));
        }
    };
    let prompt = |value: Option<String>, default: String, field: &str| match value {
        Some(p) if p.trim().is_empty() => Err(Error::bad_input(format!("{field}: empty"))),
        Some(p) => Ok(p),
        None => Ok(default),
    };
    Ok(Settings {
        default_language: raw.default_language.unwrap_or_default().trim().to_owned(),
        describe_prompt: prompt(raw.describe_prompt, defaults.describe_prompt, "describe_prompt")?,
        enhance_prompt: prompt(raw.enhance_prompt, defaults.enhance_prompt, "enhance_prompt")?,
        moderation,
    })
}

fn check_base_url(url: &str) -> Result<String, Error> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::bad_input(format!("base_url: not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::bad_input("base_url: not an http(s) URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::bad_input(
            "base_url: credentials in the URL are not allowed (use api_key_env or api_key_file)",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn positive<T: PartialEq + Default>(value: Option<T>, default: T, field: &str) -> Result<T, Error> {
    match value {
        Some(v) if v == T::default() => Err(Error::bad_input(format!("{field}: must be greater than zero"))),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn provider(raw: RawProvider, file: Option<&Path>) -> Result<ProviderConfig, Error> {
    let name = raw.name.trim().to_owned();
    if name.is_empty() {
        return Err(Error::bad_input("name: empty"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::bad_input("name: use letters, digits, '-', '_' and '.' only"));
    }
    let kind = match raw.kind.as_deref().map(str::trim) {
        None | Some("openai") => ProviderKind::OpenAi,
        Some("azure") => ProviderKind::Azure,
        Some(other) => {
            return Err(Error::bad_input(format!(
                "kind: {other:?} is neither \"openai\" nor \"azure\""
            )));
        }
    };
    let base_url = match (raw.base_url.as_deref(), kind) {
        (Some(url), _) => check_base_url(url.trim())?,
        (None, ProviderKind::OpenAi) => OPENAI_BASE_URL.to_owned(),
        (None, ProviderKind::Azure) => return Err(Error::bad_input("base_url: required for azure")),
    };
    let api_key = match (raw.api_key_env.as_deref(), raw.api_key_file.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Error::bad_input("api_key_env and api_key_file: give one, not both"));
        }
        (Some(var), None) => {
            let value = std::env::var(var.trim())
                .map_err(|_| Error::bad_input(format!("api_key_env: the environment variable {var} is not set")))?;
            Some(ApiKey::new(value.trim()).map_err(|e| e.context(&format!("api_key_env ({var})")))?)
        }
        (None, Some(path)) => {
            let path = Path::new(path.trim());
            let path = match file.and_then(Path::parent) {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path.to_path_buf(),
            };
            let value = std::fs::read_to_string(&path)
                .map_err(|e| Error::bad_input(format!("api_key_file: cannot read {}: {}", path.display(), e.kind())))?;
            Some(ApiKey::new(value.trim()).map_err(|e| e.context(&format!("api_key_file ({})", path.display())))?)
        }
        (None, None) => None,
    };
    let api_version = raw.api_version.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if kind == ProviderKind::Azure && api_version.is_none() {
        return Err(Error::bad_input("api_version: required for azure"));
    }
    if raw.models.is_empty() {
        return Err(Error::bad_input(
            "models: the provider has no models (list task = \"model\" pairs)",
        ));
    }
    let mut models = HashMap::new();
    let mut names: Vec<&String> = raw.models.keys().collect();
    names.sort();
    for task_name in names {
        let task = Task::parse(task_name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Task::ALL.iter().map(|t| t.as_str()).collect();
            Error::bad_input(format!(
                "models: unknown task {task_name:?} (known: {})",
                known.join(", ")
            ))
        })?;
        let model = raw.models[task_name].trim().to_owned();
        if model.is_empty() {
            return Err(Error::bad_input(format!("models.{task_name}: empty model name")));
        }
        if kind == ProviderKind::Azure && !raw.deployments.contains_key(&model) {
            return Err(Error::bad_input(format!(
                "deployments: azure needs a deployment for model {model:?} (models.{task_name})"
            )));
        }
        models.insert(task, model);
    }
    for (model, price) in &raw.prices {
        let values = [
            price.input_per_1m_tokens,
            price.output_per_1m_tokens,
            price.per_image,
            price.per_audio_minute,
        ];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::bad_input(format!(
                "prices.{model:?}: prices must be zero or positive"
            )));
        }
    }
    let requests_per_minute = positive(
        raw.requests_per_minute,
        DEFAULT_REQUESTS_PER_MINUTE,
        "requests_per_minute",
    )?;
    Ok(ProviderConfig {
        name,
        kind,
        base_url,
        api_key,
        api_version,
        deployments: raw.deployments,
        timeout: Duration::from_millis(positive(raw.timeout_ms, DEFAULT_TIMEOUT_MS, "timeout_ms")?),
        max_retries: raw.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        requests_per_minute,
        tokens_per_minute: positive(raw.tokens_per_minute, DEFAULT_TOKENS_PER_MINUTE, "tokens_per_minute")?,
        burst: positive(raw.burst, default_burst(requests_per_minute), "burst")?,
        max_audio_bytes: positive(raw.max_audio_bytes, DEFAULT_MAX_AUDIO_BYTES, "max_audio_bytes")?,
        breaker_failures: positive(raw.breaker_failures, DEFAULT_BREAKER_FAILURES, "breaker_failures")?,
        breaker_cooldown: Duration::from_millis(positive(
            raw.breaker_cooldown_ms,
            DEFAULT_BREAKER_COOLDOWN_MS,
            "breaker_cooldown_ms",
        )?),
        models,
        prices: raw.prices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_quoted_values() {
        assert_eq!(
            scrub_quoted("invalid type: string \"sk-secret\", expected u64"),
            "invalid type: string \"…\", expected u64"
        );
    }

    #[test]
    fn task_names_round_trip() {
        for task in Task::ALL {
            assert_eq!(Task::parse(task.as_str()), Some(task));
        }
    }
}
