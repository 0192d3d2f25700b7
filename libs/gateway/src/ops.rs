//! The tasks: request building and answer parsing for each gateway operation.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_openai::error::OpenAIError;
use async_openai::types::InputSource;
use async_openai::types::audio::{AudioInput, AudioResponseFormat, CreateTranscriptionRequest};
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestMessageContentPartImage,
    ChatCompletionRequestMessageContentPartText, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionRequestUserMessageContentPart, CreateChatCompletionRequest,
    ImageDetail, ImageUrl, ResponseFormat, ResponseFormatJsonSchema,
};
use async_openai::types::images::{
    CreateImageEditRequest, CreateImageRequest, ImageEditInput, ImageInput, ImageModel, ImageResponseFormat, ImageSize,
    ImageStyle,
};
use async_openai::types::moderations::{CreateModerationRequest, ModerationInput};
use base64::Engine as _;
use mediamesh_core::{Error, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{ModerationMode, Task};
use crate::types::{
    AudioIn, Call, Description, DetectedObject, Extracted, ImageIn, ImageOut, ImageRequest, Segment, TextOut,
    TextRequest, Transcript,
};
use crate::{Attempt, Failure, Gateway, Meter, OpFuture};

/// Token estimate of one image in a chat request.
const IMAGE_TOKENS: u64 = 1_000;
/// Token estimate of a structured answer.
const ANSWER_TOKENS: u64 = 1_000;
/// Largest image fetched when a provider answers with a URL.
const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// The JSON Schema of `describe_image` answers.
pub(crate) fn describe_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "caption": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "confidence": {"type": "number"},
                        "count": {"type": "integer"}
                    },
                    "required": ["name", "confidence", "count"],
                    "additionalProperties": false
                }
            },
            "scene": {"type": "string"}
        },
        "required": ["caption", "tags", "objects", "scene"],
        "additionalProperties": false
    })
}

pub(crate) fn describe_validator() -> Result<jsonschema::Validator, Error> {
    jsonschema::validator_for(&describe_schema())
        .map_err(|e| Error::internal(format!("the describe schema does not compile: {e}")))
}

/// Whether OpenAI's strict structured outputs accept `schema`: every object lists all its
/// properties as required and forbids others.
fn strict_compatible(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                let required: Vec<&str> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if properties.keys().any(|k| !required.contains(&k.as_str())) {
                    return false;
                }
                if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return false;
                }
            } else if map.get("type").and_then(Value::as_str) == Some("object")
                && map.get("additionalProperties") != Some(&Value::Bool(false))
            {
                return false;
            }
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "enum" | "const" | "default" | "examples"))
                .all(|(_, v)| strict_compatible(v))
        }
        Value::Array(items) => items.iter().all(strict_compatible),
        _ => true,
    }
}

fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(3)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "/".to_owned() } else { path };
            let message: String = e.to_string().chars().take(200).collect();
            format!("{path}: {message}")
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Lenient chat completion answer (local servers omit fields).
#[derive(Deserialize)]
struct ChatAnswer {
    #[serde(default)]
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct ChatChoice {
    #[serde(default)]
    message: ChatMessage,
}

#[derive(Deserialize, Default)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct TokenUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    seconds: Option<f64>,
}

impl TokenUsage {
    fn meter(usage: Option<TokenUsage>) -> Meter {
        let usage = usage.unwrap_or_default();
        Meter {
            tokens_in: usage.prompt_tokens.or(usage.input_tokens).unwrap_or(0),
            tokens_out: usage.completion_tokens.or(usage.output_tokens).unwrap_or(0),
            images: 0,
            audio_seconds: 0.0,
        }
    }
}

/// The text of the first choice, or why there is none.
fn chat_text(answer: ChatAnswer) -> Result<(String, Meter), Failure> {
    let meter = TokenUsage::meter(answer.usage);
    let Some(choice) = answer.choices.into_iter().next() else {
        return Err(Failure::Invalid {
            reason: "the answer has no choices".to_owned(),
            meter,
        });
    };
    if let Some(refusal) = choice.message.refusal.filter(|r| !r.trim().is_empty()) {
        return Err(Failure::Refused {
            text: refusal.chars().take(500).collect(),
            meter,
        });
    }
    match choice.message.content.filter(|c| !c.trim().is_empty()) {
        Some(content) => Ok((content, meter)),
        None => Err(Failure::Invalid {
            reason: "the answer is empty".to_owned(),
            meter,
        }),
    }
}

/// Parses a structured answer and validates it.
fn structured(content: &str, validator: &jsonschema::Validator, meter: Meter) -> Result<Value, Failure> {
    let trimmed = content.trim();
    // Some local models wrap JSON in a Markdown fence.
    let trimmed = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .map_or(trimmed, str::trim);
    let value: Value = serde_json::from_str(trimmed).map_err(|e| Failure::Invalid {
        reason: format!("not JSON ({e})"),
        meter,
    })?;
    if let Some(errors) = schema_errors(validator, &value) {
        return Err(Failure::Invalid { reason: errors, meter });
    }
    Ok(value)
}

fn system(text: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
        content: ChatCompletionRequestSystemMessageContent::Text(text),
        name: None,
    })
}

fn user_text(text: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
        content: ChatCompletionRequestUserMessageContent::Text(text),
        name: None,
    })
}

fn json_schema_format(name: &str, schema: Value, strict: bool) -> ResponseFormat {
    ResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            description: None,
            name: name.to_owned(),
            schema,
            strict: Some(strict),
        },
    }
}

fn chars_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn image_extension(mime: &str) -> Option<&'static str> {
    match mime.trim().to_ascii_lowercase().as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some("jpg"),
        "image/png" => Some("png"),
        "image/webp" => Some("webp"),
        "image/gif" => Some("gif"),
        _ => None,
    }
}

fn canonical_image_mime(ext: &str) -> &'static str {
    match ext {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        _ => "image/gif",
    }
}

/// The MIME type of encoded image bytes.
fn sniff_image(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        "image/png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else {
        "application/octet-stream"
    }
}

fn audio_filename(audio: &AudioIn) -> String {
    let name = audio.filename.trim();
    let has_extension = std::path::Path::new(name).extension().is_some_and(|e| !e.is_empty());
    if !name.is_empty() && has_extension {
        return name.rsplit(['/', '\\']).next().unwrap_or(name).to_owned();
    }
    let extension = match audio.mime.trim().to_ascii_lowercase().as_str() {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/ogg" | "audio/opus" => "ogg",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "audio/aac" => "m4a",
        "audio/webm" | "video/webm" => "webm",
        "video/mp4" => "mp4",
        _ => "wav",
    };
    let stem = if name.is_empty() { "audio" } else { name };
    format!("{stem}.{extension}")
}

/// ISO-639-1 code of a language name as Whisper reports it ("english" -> "en").
fn language_code(language: &str) -> String {
    let lower = language.trim().to_ascii_lowercase();
    let code = match lower.as_str() {
        "english" => "en",
        "german" => "de",
        "french" => "fr",
        "spanish" => "es",
        "italian" => "it",
        "portuguese" => "pt",
        "dutch" => "nl",
        "polish" => "pl",
        "russian" => "ru",
        "ukrainian" => "uk",
        "turkish" => "tr",
        "arabic" => "ar",
        "hindi" => "hi",
        "chinese" => "zh",
        "japanese" => "ja",
        "korean" => "ko",
        "swedish" => "sv",
        "danish" => "da",
        "norwegian" => "no",
        "finnish" => "fi",
        "czech" => "cs",
        "greek" => "el",
        "hebrew" => "he",
        "hungarian" => "hu",
        "romanian" => "ro",
        "indonesian" => "id",
        "vietnamese" => "vi",
        "thai" => "th",
        "catalan" => "ca",
        _ => return lower,
    };
    code.to_owned()
}

#[derive(Deserialize)]
struct VerboseTranscript {
    text: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    segments: Option<Vec<VerboseSegment>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct VerboseSegment {
    start: f64,
    end: f64,
    text: String,
}

#[derive(Deserialize)]
struct ImagesAnswer {
    #[serde(default)]
    data: Vec<ImageDatum>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct ImageDatum {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    revised_prompt: Option<String>,
}

#[derive(Deserialize)]
struct ModerationAnswer {
    #[serde(default)]
    results: Vec<ModerationResult>,
}

#[derive(Deserialize)]
struct ModerationResult {
    #[serde(default)]
    flagged: bool,
    #[serde(default)]
    categories: BTreeMap<String, Value>,
}

/// The first image of an images answer, decoded (or fetched when given as a URL).
async fn first_image(answer: ImagesAnswer, http: reqwest::Client) -> Result<(ImageOut, Meter), Failure> {
    let mut meter = TokenUsage::meter(answer.usage);
    meter.images = answer.data.len().max(1) as u32;
    let Some(datum) = answer.data.into_iter().next() else {
        return Err(Failure::Invalid {
            reason: "the answer has no image".to_owned(),
            meter,
        });
    };
    let bytes = if let Some(b64) = datum.b64_json {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| Failure::Invalid {
                reason: format!("b64_json is not base64 ({e})"),
                meter,
            })?
    } else if let Some(url) = datum.url {
        let response = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(OpenAIError::Reqwest)?;
        if response.content_length().is_some_and(|l| l > MAX_IMAGE_BYTES as u64) {
            return Err(Failure::Invalid {
                reason: "the image at the answer's URL is too large".to_owned(),
                meter,
            });
        }
        response.bytes().await.map_err(OpenAIError::Reqwest)?.to_vec()
    } else {
        return Err(Failure::Invalid {
            reason: "the image has neither b64_json nor url".to_owned(),
            meter,
        });
    };
    if bytes.is_empty() {
        return Err(Failure::Invalid {
            reason: "the image is empty".to_owned(),
            meter,
        });
    }
    let mime = sniff_image(&bytes).to_owned();
    Ok((
        ImageOut {
            bytes,
            mime,
            revised_prompt: datum.revised_prompt.filter(|p| !p.is_empty()),
            usage: Default::default(),
        },
        meter,
    ))
}

fn valid_size(size: &str) -> bool {
    if size == "auto" {
        return true;
    }
    let mut parts = size.split('x');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(w), Some(h), None)
            if !w.is_empty() && !h.is_empty()
                && w.bytes().all(|b| b.is_ascii_digit())
                && h.bytes().all(|b| b.is_ascii_digit())
    )
}

fn json_malformed(error: serde_json::Error) -> Failure {
    Failure::Http(OpenAIError::JSONDeserialize(error, String::new()))
}

impl Gateway {
    /// Speech to text (`verbose_json`: segments, language, duration) with the transcribe
    /// model of the first provider that accepts the audio's size. `language` (or
    /// `settings.default_language`) is an ISO-639-1 hint; empty = auto-detect. Audio larger
    /// than every provider's `max_audio_bytes` → `TooLarge` before any call (the service
    /// splits first).
    pub async fn transcribe(&self, call: &Call, audio: AudioIn, language: Option<&str>) -> Result<Transcript, Error> {
        if !self.supports(Task::Transcribe) {
            return Err(Error::unsupported("no AI provider is configured for transcribe"));
        }
        if audio.bytes.is_empty() {
            return Err(Error::bad_input("the audio is empty"));
        }
        let size = audio.bytes.len() as u64;
        let largest = self
            .inner
            .providers
            .iter()
            .filter(|p| p.config.model(Task::Transcribe).is_some())
            .map(|p| p.config.max_audio_bytes)
            .max()
            .unwrap_or(0);
        if size > largest {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("the audio is {size} bytes; the transcription providers accept at most {largest}"),
            ));
        }
        let language = language
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .or_else(|| Some(self.inner.settings.default_language.clone()).filter(|l| !l.is_empty()));
        let filename = audio_filename(&audio);
        let bytes = audio.bytes.clone();
        let requested_language = language.clone();
        let op = move |attempt: Attempt| -> OpFuture<Transcript> {
            let request = CreateTranscriptionRequest {
                file: AudioInput {
                    source: InputSource::Bytes {
                        filename: filename.clone(),
                        bytes: bytes.clone(),
                    },
                },
                model: attempt.model.clone(),
                language: language.clone(),
                response_format: Some(AudioResponseFormat::VerboseJson),
                ..Default::default()
            };
            let requested_language = requested_language.clone();
            Box::pin(async move {
                let raw = attempt.api.audio().transcription().create_raw(request).await?;
                let answer: VerboseTranscript = serde_json::from_slice(&raw).map_err(json_malformed)?;
                let mut meter = TokenUsage::meter(answer.usage);
                let duration = answer
                    .duration
                    .or(answer.usage.and_then(|u| u.seconds))
                    .filter(|d| d.is_finite() && *d >= 0.0);
                meter.audio_seconds = duration.unwrap_or(0.0);
                let language = answer
                    .language
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| language_code(&l))
                    .or(requested_language)
                    .unwrap_or_default();
                let segments = answer
                    .segments
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| Segment {
                        start_s: s.start,
                        end_s: s.end,
                        text: s.text.trim().to_owned(),
                    })
                    .collect();
                Ok((
                    Transcript {
                        text: answer.text.trim().to_owned(),
                        language,
                        duration_s: duration,
                        segments,
                        usage: Default::default(),
                    },
                    meter,
                ))
            })
        };
        let allowed = move |p: &crate::ProviderConfig| p.max_audio_bytes >= size;
        let (mut transcript, usage) = self.run(call, Task::Transcribe, 1, &allowed, &op).await?;
        transcript.usage = usage;
        Ok(transcript)
    }

    /// Caption, tags, objects and scene of an image (chat completion with a strict JSON
    /// Schema; the image goes as a base64 data URL). `prompt` replaces
    /// `settings.describe_prompt`.
    pub async fn describe_image(
        &self,
        call: &Call,
        image: ImageIn,
        prompt: Option<&str>,
    ) -> Result<Description, Error> {
        let extension = image_extension(&image.mime).ok_or_else(|| {
            Error::unsupported(format!(
                "describe_image accepts jpeg, png, webp or gif, not {:?}",
                image.mime
            ))
        })?;
        if image.bytes.is_empty() {
            return Err(Error::bad_input("the image is empty"));
        }
        let prompt = prompt
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or(&self.inner.settings.describe_prompt)
            .to_owned();
        let data_url = format!(
            "data:{};base64,{}",
            canonical_image_mime(extension),
            base64::engine::general_purpose::STANDARD.encode(&image.bytes)
        );
        let estimate = chars_tokens(&prompt) + IMAGE_TOKENS + ANSWER_TOKENS;
        let validator = self.inner.describe_schema.clone();
        let op = move |attempt: Attempt| -> OpFuture<Description> {
            let request = CreateChatCompletionRequest {
                model: attempt.model.clone(),
                messages: vec![
                    system(
                        "You describe images for a media library. Answer with JSON only, matching the schema."
                            .to_owned(),
                    ),
                    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                        content: ChatCompletionRequestUserMessageContent::Array(vec![
                            ChatCompletionRequestUserMessageContentPart::Text(
                                ChatCompletionRequestMessageContentPartText {
                                    text: prompt.clone(),
                                    prompt_cache_breakpoint: None,
                                },
                            ),
                            ChatCompletionRequestUserMessageContentPart::ImageUrl(
                                ChatCompletionRequestMessageContentPartImage {
                                    image_url: ImageUrl {
                                        url: data_url.clone(),
                                        detail: Some(ImageDetail::Auto),
                                    },
                                    prompt_cache_breakpoint: None,
                                },
                            ),
                        ]),
                        name: None,
                    }),
                ],
                response_format: Some(json_schema_format("image_description", describe_schema(), true)),
                ..Default::default()
            };
            let validator = validator.clone();
            Box::pin(async move {
                let answer: ChatAnswer = attempt.api.chat().create_byot(request).await?;
                let (content, meter) = chat_text(answer)?;
                let value = structured(&content, &validator, meter)?;
                let description = parse_description(value).map_err(|reason| Failure::Invalid { reason, meter })?;
                Ok((description, meter))
            })
        };
        let (mut description, usage) = self.run(call, Task::DescribeImage, estimate, &|_| true, &op).await?;
        description.usage = usage;
        Ok(description)
    }

    /// An improved version of the image (image edit with `prompt`; an empty prompt uses
    /// `settings.enhance_prompt`). Accepts jpeg, png and webp.
    pub async fn enhance_image(&self, call: &Call, image: ImageIn, prompt: &str) -> Result<ImageOut, Error> {
        let extension = match image_extension(&image.mime) {
            Some(ext @ ("jpg" | "png" | "webp")) => ext,
            _ => {
                return Err(Error::unsupported(format!(
                    "enhance_image accepts jpeg, png or webp, not {:?}",
                    image.mime
                )));
            }
        };
        if image.bytes.is_empty() {
            return Err(Error::bad_input("the image is empty"));
        }
        let prompt = match prompt.trim() {
            "" => self.inner.settings.enhance_prompt.clone(),
            p => p.to_owned(),
        };
        let estimate = chars_tokens(&prompt) + IMAGE_TOKENS + ANSWER_TOKENS;
        let bytes = image.bytes.clone();
        let op = move |attempt: Attempt| -> OpFuture<ImageOut> {
            #[allow(deprecated)]
            let request = CreateImageEditRequest {
                image: ImageEditInput::Image(ImageInput {
                    source: InputSource::Bytes {
                        filename: format!("image.{extension}"),
                        bytes: bytes.clone(),
                    },
                }),
                prompt: prompt.clone(),
                model: ImageModel::Other(attempt.model.clone()),
                n: Some(1),
                response_format: attempt
                    .model
                    .starts_with("dall-e")
                    .then_some(ImageResponseFormat::B64Json),
                ..Default::default()
            };
            Box::pin(async move {
                let answer: ImagesAnswer = attempt.api.images().edit_byot(request).await?;
                first_image(answer, attempt.http).await
            })
        };
        let (mut out, usage) = self.run(call, Task::EnhanceImage, estimate, &|_| true, &op).await?;
        out.usage = usage;
        Ok(out)
    }

    /// Free text: a chat completion whose system message has `Tone: X` / `Audience: Y` lines
    /// when given.
    pub async fn generate_text(&self, call: &Call, req: &TextRequest) -> Result<TextOut, Error> {
        let prompt = req.prompt.trim().to_owned();
        if prompt.is_empty() {
            return Err(Error::bad_input("the prompt is empty"));
        }
        if req.max_tokens == Some(0) {
            return Err(Error::bad_input("max_tokens must be greater than zero"));
        }
        let mut instructions =
            "You are a careful writer. Answer with the requested text only, without preamble.".to_owned();
        if let Some(tone) = req.tone.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            instructions.push_str(&format!("\nTone: {tone}"));
        }
        if let Some(audience) = req.audience.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            instructions.push_str(&format!("\nAudience: {audience}"));
        }
        let max_tokens = req.max_tokens;
        let estimate = chars_tokens(&prompt) + chars_tokens(&instructions) + u64::from(max_tokens.unwrap_or(1_000));
        let op = move |attempt: Attempt| -> OpFuture<TextOut> {
            let request = CreateChatCompletionRequest {
                model: attempt.model.clone(),
                messages: vec![system(instructions.clone()), user_text(prompt.clone())],
                max_completion_tokens: max_tokens,
                ..Default::default()
            };
            Box::pin(async move {
                let answer: ChatAnswer = attempt.api.chat().create_byot(request).await?;
                let (content, meter) = chat_text(answer)?;
                Ok((
                    TextOut {
                        text: content.trim().to_owned(),
                        usage: Default::default(),
                    },
                    meter,
                ))
            })
        };
        let (mut out, usage) = self.run(call, Task::GenerateText, estimate, &|_| true, &op).await?;
        out.usage = usage;
        Ok(out)
    }

    /// An image from a prompt. `size` is `WxH` or `auto`; `style` `vivid`/`natural` is the
    /// dall-e-3 parameter, other styles are added to the prompt.
    pub async fn generate_image(&self, call: &Call, req: &ImageRequest) -> Result<ImageOut, Error> {
        let prompt = req.prompt.trim().to_owned();
        if prompt.is_empty() {
            return Err(Error::bad_input("the prompt is empty"));
        }
        let size = req
            .size
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(size) = &size
            && !valid_size(size)
        {
            return Err(Error::bad_input(format!(
                "size {size:?} is neither WIDTHxHEIGHT nor auto"
            )));
        }
        let style = req
            .style
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let estimate = chars_tokens(&prompt) + ANSWER_TOKENS;
        let op = move |attempt: Attempt| -> OpFuture<ImageOut> {
            let dalle = attempt.model.starts_with("dall-e");
            let (style_param, prompt) = match style.as_deref() {
                Some(s @ ("vivid" | "natural")) if attempt.model.starts_with("dall-e-3") => (
                    Some(if s == "vivid" {
                        ImageStyle::Vivid
                    } else {
                        ImageStyle::Natural
                    }),
                    prompt.clone(),
                ),
                Some(s) => (None, format!("{prompt}\nStyle: {s}")),
                None => (None, prompt.clone()),
            };
            #[allow(deprecated)]
            let request = CreateImageRequest {
                prompt,
                model: ImageModel::Other(attempt.model.clone()),
                n: Some(1),
                size: size.clone().map(ImageSize::Other),
                style: style_param,
                response_format: dalle.then_some(ImageResponseFormat::B64Json),
                ..Default::default()
            };
            Box::pin(async move {
                let answer: ImagesAnswer = attempt.api.images().generate_byot(request).await?;
                first_image(answer, attempt.http).await
            })
        };
        let (mut out, usage) = self.run(call, Task::GenerateImage, estimate, &|_| true, &op).await?;
        out.usage = usage;
        Ok(out)
    }

    /// A value extracted from `text` that is valid against the caller's JSON Schema (chat
    /// completion with `response_format` json_schema, strict when the schema allows it). A
    /// schema that is not a valid JSON Schema (or whose root is not an object schema) →
    /// `BadInput` before any call.
    pub async fn extract(&self, call: &Call, text: &str, schema: &Value) -> Result<Extracted, Error> {
        if !schema.is_object() {
            return Err(Error::bad_input("the extract schema must be a JSON object"));
        }
        if schema.get("type").is_some_and(|t| t != "object") {
            return Err(Error::bad_input("the extract schema's root must be of type object"));
        }
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| Error::bad_input(format!("the extract schema is not a valid JSON Schema: {e}")))?;
        let validator = Arc::new(validator);
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(Error::bad_input("the text is empty"));
        }
        let strict = strict_compatible(schema);
        let schema = schema.clone();
        let estimate = chars_tokens(&text) + chars_tokens(&schema.to_string()) + ANSWER_TOKENS;
        let op = move |attempt: Attempt| -> OpFuture<Value> {
            let request = CreateChatCompletionRequest {
                model: attempt.model.clone(),
                messages: vec![
                    system(
                        "Extract the requested information from the user's text. Answer with JSON only, matching \
                         the schema; use null where the schema allows it and the text has no value."
                            .to_owned(),
                    ),
                    user_text(text.clone()),
                ],
                response_format: Some(json_schema_format("extraction", schema.clone(), strict)),
                ..Default::default()
            };
            let validator = validator.clone();
            Box::pin(async move {
                let answer: ChatAnswer = attempt.api.chat().create_byot(request).await?;
                let (content, meter) = chat_text(answer)?;
                let value = structured(&content, &validator, meter)?;
                Ok((value, meter))
            })
        };
        let (value, usage) = self.run(call, Task::Extract, estimate, &|_| true, &op).await?;
        Ok(Extracted { value, usage })
    }

    /// Ok when moderation is off or the text passes; BadInput "the prompt was rejected by
    /// moderation (categories: …)" when flagged.
    pub async fn moderate(&self, call: &Call, text: &str) -> Result<(), Error> {
        if self.inner.settings.moderation == ModerationMode::Off || text.trim().is_empty() {
            return Ok(());
        }
        let text = text.to_owned();
        let estimate = chars_tokens(&text);
        let op = move |attempt: Attempt| -> OpFuture<Vec<String>> {
            let request = CreateModerationRequest {
                input: ModerationInput::String(text.clone()),
                model: Some(attempt.model.clone()),
            };
            Box::pin(async move {
                let answer: ModerationAnswer = attempt.api.moderations().create_byot(request).await?;
                if answer.results.is_empty() {
                    return Err(Failure::Invalid {
                        reason: "the moderation answer has no results".to_owned(),
                        meter: Meter::default(),
                    });
                }
                let mut flagged: Vec<String> = Vec::new();
                let mut any = false;
                for result in answer.results {
                    any |= result.flagged;
                    if result.flagged {
                        flagged.extend(
                            result
                                .categories
                                .into_iter()
                                .filter(|(_, v)| v.as_bool() == Some(true))
                                .map(|(k, _)| k),
                        );
                    }
                }
                flagged.sort();
                flagged.dedup();
                if any && flagged.is_empty() {
                    flagged.push("unspecified".to_owned());
                }
                Ok((flagged, Meter::default()))
            })
        };
        let (flagged, _usage) = self.run(call, Task::Moderate, estimate, &|_| true, &op).await?;
        if flagged.is_empty() {
            Ok(())
        } else {
            Err(Error::bad_input(format!(
                "the prompt was rejected by moderation (categories: {})",
                flagged.join(", ")
            )))
        }
    }
}

fn parse_description(value: Value) -> Result<Description, String> {
    #[derive(Deserialize)]
    struct Answer {
        caption: String,
        tags: Vec<String>,
        objects: Vec<Object>,
        scene: String,
    }
    #[derive(Deserialize)]
    struct Object {
        name: String,
        confidence: f64,
        count: i64,
    }
    let answer: Answer = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(Description {
        caption: answer.caption.trim().to_owned(),
        tags: answer
            .tags
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        objects: answer
            .objects
            .into_iter()
            .map(|o| DetectedObject {
                name: o.name.trim().to_owned(),
                confidence: o.confidence.clamp(0.0, 1.0) as f32,
                count: o.count.clamp(0, i64::from(u32::MAX)) as u32,
            })
            .collect(),
        scene: answer.scene.trim().to_owned(),
        usage: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictness_of_schemas() {
        assert!(strict_compatible(&describe_schema()));
        assert!(!strict_compatible(
            &json!({"type": "object", "properties": {"a": {"type": "string"}}})
        ));
        assert!(!strict_compatible(&json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "required": ["a"],
            "additionalProperties": false
        })));
    }

    #[test]
    fn describe_answers_are_validated() {
        let validator = describe_validator().unwrap();
        let good = json!({"caption": "c", "tags": ["a"], "objects": [{"name": "x", "confidence": 0.5, "count": 1}], "scene": "s"});
        assert!(structured(&good.to_string(), &validator, Meter::default()).is_ok());
        let bad = json!({"unexpected": true});
        assert!(matches!(
            structured(&bad.to_string(), &validator, Meter::default()),
            Err(Failure::Invalid { .. })
        ));
        assert!(matches!(
            structured("not json", &validator, Meter::default()),
            Err(Failure::Invalid { .. })
        ));
    }

    #[test]
    fn helpers() {
        assert_eq!(language_code("English"), "en");
        assert_eq!(language_code("en"), "en");
        assert!(valid_size("1024x1024"));
        assert!(valid_size("auto"));
        assert!(!valid_size("big"));
        assert_eq!(sniff_image(&[0x89, b'P', b'N', b'G', 0]), "image/png");
        let audio = AudioIn {
            bytes: bytes::Bytes::new(),
            filename: "clip".into(),
            mime: "audio/mpeg".into(),
        };
        assert_eq!(audio_filename(&audio), "clip.mp3");
    }
}
