//! The provider settings every service reads the same way (`MM_OPENAI_API_KEY`,
//! `MM_OPENAI_BASE_URL`, `MM_CONFIG`): inference to call the providers, ingest and the
//! scheduler to know which `inference.*` kinds exist.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use mediamesh_core::Error;

use crate::{GatewayConfig, Task};

/// A secret read from the environment; its `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretArg(pub String);

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

impl fmt::Display for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for SecretArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// AI provider settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ProviderArgs {
    /// API key of the default OpenAI-compatible provider
    #[arg(long, env = "MM_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<SecretArg>,
    /// Base URL of the default provider (https://api.openai.com/v1; an Ollama, vLLM or
    /// LocalAI server's /v1 works without a key)
    #[arg(long, env = "MM_OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// TOML file with more providers, models per task, limits, prices and settings
    #[arg(long = "config", env = "MM_CONFIG")]
    pub config_file: Option<PathBuf>,
}

impl ProviderArgs {
    /// The gateway configuration these settings describe.
    pub fn load(&self) -> Result<GatewayConfig, Error> {
        GatewayConfig::load(
            self.openai_api_key
                .as_ref()
                .map(|k| k.0.clone())
                .filter(|k| !k.is_empty()),
            self.openai_base_url.clone().filter(|u| !u.is_empty()),
            self.config_file.as_deref(),
        )
    }

    /// The tasks some provider serves (empty without a provider).
    pub fn tasks(&self) -> Result<Vec<Task>, Error> {
        let config = self.load()?;
        Ok(Task::ALL
            .into_iter()
            .filter(|task| config.providers.iter().any(|p| p.serves(*task)))
            .collect())
    }
}

impl Task {
    /// The job kind that runs this task (moderation runs inside the generation kinds).
    pub fn job_kind(self) -> Option<mediamesh_core::JobKind> {
        use mediamesh_core::JobKind;
        Some(match self {
            Task::Transcribe => JobKind::InferenceTranscribe,
            Task::DescribeImage => JobKind::InferenceDescribeImage,
            Task::EnhanceImage => JobKind::InferenceEnhanceImage,
            Task::GenerateText => JobKind::InferenceGenerateText,
            Task::GenerateImage => JobKind::InferenceGenerateImage,
            Task::Extract => JobKind::InferenceExtract,
            Task::Moderate => return None,
        })
    }
}
