//! Every route answered by the fake and parsed by async-openai's typed API.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::audio::{
    AudioInput, AudioResponseFormat, CreateTranscriptionRequestArgs, TimestampGranularity,
};
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestMessageContentPartImageArgs,
    ChatCompletionRequestMessageContentPartTextArgs, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionRequestUserMessageContentPart, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionResponse, FinishReason, ImageUrlArgs, ResponseFormat,
    ResponseFormatJsonSchema,
};
use async_openai::types::images::{
    CreateImageEditRequestArgs, CreateImageRequestArgs, Image, ImageInput, ImageModel, ImageResponseFormat, ImageSize,
};
use async_openai::types::moderations::{CreateModerationRequestArgs, ModerationInput};
use common::{base64, decode_png, fixture, grey_png, read_fixture, unbase64};
use image::GenericImageView as _;
use mediamesh_fakeai::{FakeAi, Fault, Options, Route};
use serde::Deserialize;
use serde_json::json;

fn client(ai: &FakeAi) -> Client<OpenAIConfig> {
    Client::with_config(OpenAIConfig::new().with_api_base(ai.base_url()).with_api_key("sk-test"))
}

/// The structure a vision caller expects back; unknown fields are an error.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PhotoAnalysis {
    caption: String,
    scene_type: String,
    tags: Vec<String>,
    objects: Vec<DetectedObject>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct DetectedObject {
    label: String,
    confidence: f64,
    count: i64,
}

fn photo_schema() -> ResponseFormat {
    ResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            description: Some("what is in the photo".to_owned()),
            name: "photo_analysis".to_owned(),
            schema: photo_schema_value(),
            strict: Some(true),
        },
    }
}

fn photo_schema_value() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "caption": {"type": "string"},
            "scene_type": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "objects": {"type": "array", "items": {"$ref": "#/$defs/object"}}
        },
        "required": ["caption", "scene_type", "tags", "objects"],
        "additionalProperties": false,
        "$defs": {"object": {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "confidence": {"type": "number"},
                "count": {"type": "integer"}
            },
            "required": ["label", "confidence", "count"],
            "additionalProperties": false
        }}
    })
}

fn vision_request(image_bytes: &[u8], mime: &str) -> CreateChatCompletionRequest {
    let data_url = format!("data:{mime};base64,{}", base64(image_bytes));
    let system: ChatCompletionRequestMessage = ChatCompletionRequestSystemMessageArgs::default()
        .content("You analyse photos.")
        .build()
        .expect("system message")
        .into();
    let user: ChatCompletionRequestMessage = ChatCompletionRequestUserMessageArgs::default()
        .content(vec![
            ChatCompletionRequestMessageContentPartTextArgs::default()
                .text("Describe this photo")
                .build()
                .expect("text part")
                .into(),
            ChatCompletionRequestMessageContentPartImageArgs::default()
                .image_url(ImageUrlArgs::default().url(data_url).build().expect("image url"))
                .build()
                .expect("image part")
                .into(),
        ])
        .build()
        .expect("user message")
        .into();
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages(vec![system, user])
        .response_format(photo_schema())
        .max_completion_tokens(400u32)
        .build()
        .expect("request")
}

fn content(response: &CreateChatCompletionResponse) -> &str {
    response.choices[0].message.content.as_deref().expect("content")
}

#[tokio::test]
async fn chat_json_schema_with_jpeg_data_url_describes_the_image() {
    let ai = FakeAi::start().await.expect("start");
    let jpeg = read_fixture("Dragonfly_by_Bolly.jpg");
    let response = client(&ai)
        .chat()
        .create(vision_request(&jpeg, "image/jpeg"))
        .await
        .expect("chat");
    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, "gpt-4o-mini");
    assert_eq!(response.choices[0].finish_reason, Some(FinishReason::Stop));
    let analysis: PhotoAnalysis = serde_json::from_str(content(&response)).expect("content matches the schema");
    assert_eq!(
        analysis,
        PhotoAnalysis {
            caption: "a landscape photo, 4224x3168 [fake]".to_owned(),
            scene_type: "outdoor".to_owned(),
            tags: vec!["photo".to_owned(), "landscape".to_owned(), "4224x3168".to_owned()],
            objects: vec![
                DetectedObject {
                    label: "person".to_owned(),
                    confidence: 0.9,
                    count: 1
                },
                DetectedObject {
                    label: "chair".to_owned(),
                    confidence: 0.8,
                    count: 2
                },
            ],
        }
    );
    let usage = response.usage.clone().expect("usage");
    // "You analyse photos." (19 chars → 5) + "Describe this photo" (19 → 5) + 85 for the image.
    assert_eq!(usage.prompt_tokens, 5 + 5 + 85);
    assert_eq!(
        usage.completion_tokens,
        content(&response).chars().count().div_ceil(4) as u32
    );
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

    let seen = ai.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].route, Route::ChatCompletions);
    assert_eq!(seen[0].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        seen[0].prompt.as_deref(),
        Some("You analyse photos.\nDescribe this photo")
    );
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert!(seen[0].body_bytes > jpeg.len(), "the base64 image is in the body");
    assert_eq!(seen[0].fault, None);
}

#[tokio::test]
async fn chat_vision_honours_exif_orientation_and_provider_name() {
    let ai = FakeAi::start_with(Options {
        name: "second".to_owned(),
        ..Options::default()
    })
    .await
    .expect("start");
    // Stored 3088x2048 with EXIF orientation 6: displayed as a 2048x3088 portrait.
    let jpeg = read_fixture("friends_by_Aitzol_Berasategi_orient6.jpg");
    let response = client(&ai)
        .chat()
        .create(vision_request(&jpeg, "image/jpeg"))
        .await
        .expect("chat");
    let analysis: PhotoAnalysis = serde_json::from_str(content(&response)).expect("content matches the schema");
    assert_eq!(analysis.caption, "a portrait photo, 2048x3088 [second]");
    assert_eq!(analysis.scene_type, "indoor");
    assert_eq!(analysis.tags, ["photo", "portrait", "2048x3088"]);
}

#[tokio::test]
async fn chat_with_an_image_that_does_not_decode_is_400() {
    let ai = FakeAi::start().await.expect("start");
    let error = client(&ai)
        .chat()
        .create(vision_request(b"this is not an image at all", "image/jpeg"))
        .await
        .expect_err("must fail");
    let OpenAIError::ApiError(api) = error else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!(api.status_code.as_u16(), 400);
    assert_eq!(api.api_error.r#type.as_deref(), Some("invalid_request_error"));
    assert!(
        api.api_error.message.contains("could not process image"),
        "{}",
        api.api_error.message
    );
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Extraction {
    city: String,
    customer_need: String,
    quantity: i64,
    urgent: bool,
    keywords: Vec<String>,
    channel: String,
}

#[tokio::test]
async fn chat_json_schema_without_image_extracts_from_the_text() {
    let ai = FakeAi::start().await.expect("start");
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "customer_need": {"type": "string"},
            "quantity": {"type": "integer"},
            "urgent": {"type": "boolean"},
            "keywords": {"type": "array", "items": {"type": "string"}},
            "channel": {"type": "string", "enum": ["email", "phone"]}
        },
        "required": ["city", "customer_need", "quantity", "urgent", "keywords", "channel"],
        "additionalProperties": false
    });
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4.1-mini")
        .messages(vec![
            ChatCompletionRequestSystemMessageArgs::default()
                .content("Extract The Fields as JSON.")
                .build()
                .expect("system")
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content("we need 250 thumbnails for the Lisbon office by friday. Thanks!")
                .build()
                .expect("user")
                .into(),
        ])
        .response_format(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: None,
                name: "extraction".to_owned(),
                schema,
                strict: Some(true),
            },
        })
        .build()
        .expect("request");
    let response = client(&ai).chat().create(request).await.expect("chat");
    let extraction: Extraction = serde_json::from_str(content(&response)).expect("content matches the schema");
    assert_eq!(
        extraction,
        Extraction {
            city: "Lisbon".to_owned(),
            customer_need: "we need 250 thumbnails for the Lisbon office by friday.".to_owned(),
            quantity: 250,
            urgent: true,
            keywords: vec!["thumbnails".to_owned(), "lisbon".to_owned(), "office".to_owned()],
            channel: "email".to_owned(),
        }
    );
}

#[tokio::test]
async fn chat_plain_text_echoes_prompt_tone_and_audience() {
    let ai = FakeAi::start().await.expect("start");
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .max_tokens(100u32)
        .messages(vec![
            ChatCompletionRequestSystemMessageArgs::default()
                .content("You write product copy.\nTone: playful\nAudience: retired sailors")
                .build()
                .expect("system")
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content("Write a caption for a photo of a lighthouse at dawn, with waves crashing on the rocks below")
                .build()
                .expect("user")
                .into(),
        ])
        .build()
        .expect("request");
    let response = client(&ai).chat().create(request).await.expect("chat");
    assert_eq!(
        content(&response),
        "[fake] Generated text for: Write a caption for a photo of a lighthouse at dawn, with wa\n\
         tone: playful\naudience: retired sailors"
    );
    assert_eq!(response.choices[0].message.refusal, None);
}

#[tokio::test]
async fn chat_faults_refusal_and_invalid_answer_are_well_formed_completions() {
    let ai = FakeAi::start().await.expect("start");
    let png = grey_png(40, 40, 128);
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::Refusal);
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::InvalidAnswer);
    let client = client(&ai);

    let refused = client
        .chat()
        .create(vision_request(&png, "image/png"))
        .await
        .expect("refusal is a 200");
    assert_eq!(
        refused.choices[0].message.refusal.as_deref(),
        Some("I can't help with that")
    );
    assert_eq!(refused.choices[0].message.content, None);

    let invalid = client
        .chat()
        .create(vision_request(&png, "image/png"))
        .await
        .expect("invalid answer is a 200");
    let text = content(&invalid);
    assert!(
        serde_json::from_str::<PhotoAnalysis>(text).is_err(),
        "{text} must not match the schema"
    );

    let valid = client
        .chat()
        .create(vision_request(&png, "image/png"))
        .await
        .expect("third call is normal");
    let analysis: PhotoAnalysis = serde_json::from_str(content(&valid)).expect("matches the schema");
    assert_eq!(analysis.caption, "a square photo, 40x40 [fake]");
    assert_eq!(analysis.scene_type, "indoor");

    let faults: Vec<_> = ai.requests().into_iter().map(|s| s.fault).collect();
    assert_eq!(faults, [Some(Fault::Refusal), Some(Fault::InvalidAnswer), None]);
}

#[tokio::test]
async fn transcription_verbose_json_from_a_real_wav() {
    let ai = FakeAi::start().await.expect("start");
    let request = CreateTranscriptionRequestArgs::default()
        .file(AudioInput::from(fixture("speech_en.wav")))
        .model("whisper-1")
        .response_format(AudioResponseFormat::VerboseJson)
        .timestamp_granularities(vec![TimestampGranularity::Segment])
        .prompt("lazy dog")
        .build()
        .expect("request");
    let response = client(&ai)
        .audio()
        .transcription()
        .create_verbose_json(request)
        .await
        .expect("transcription");
    // 22.05 kHz mono s16: 325162 data bytes / 44100 bytes per second.
    assert!((response.duration - 7.373).abs() < 0.01, "{}", response.duration);
    assert_eq!(response.text, "transcript [fake] of 7.4s");
    assert_eq!(response.language, "english");
    let segments = response.segments.expect("segments");
    assert_eq!(segments.len(), 2);
    assert_eq!((segments[0].id, segments[0].start, segments[0].end), (0, 0.0, 5.0));
    assert_eq!(segments[0].text, "segment 0");
    assert_eq!(segments[1].seek, 500);
    assert!((segments[1].end - 7.373).abs() < 0.01);
    assert_eq!(segments[1].no_speech_prob, 0.01);
    assert!(response.words.is_none());
    assert_eq!(response.usage.seconds, 8.0);

    let seen = &ai.requests()[0];
    assert_eq!(seen.route, Route::Transcriptions);
    assert_eq!(seen.model.as_deref(), Some("whisper-1"));
    assert_eq!(seen.prompt.as_deref(), Some("lazy dog"));
    assert!(seen.body_bytes > 325_206);
}

#[tokio::test]
async fn transcription_json_of_an_mp3_uses_its_bit_rate_and_the_requested_language() {
    let ai = FakeAi::start().await.expect("start");
    let mp3 = read_fixture("speech_en.mp3");
    let request = CreateTranscriptionRequestArgs::default()
        .file(AudioInput::from_vec_u8("speech.mp3".to_owned(), mp3.clone()))
        .model("gpt-4o-transcribe")
        .language("en")
        .build()
        .expect("request");
    let client = client(&ai);
    let response = client
        .audio()
        .transcription()
        .create(request.clone())
        .await
        .expect("transcription");
    // 64 kbit/s constant bit rate: 7.44 s (as ffprobe says).
    assert_eq!(response.text, "transcript [fake] of 7.4s");

    let mut verbose = request;
    verbose.response_format = Some(AudioResponseFormat::VerboseJson);
    verbose.timestamp_granularities = Some(vec![TimestampGranularity::Word]);
    let response = client
        .audio()
        .transcription()
        .create_verbose_json(verbose)
        .await
        .expect("verbose");
    assert_eq!(response.language, "en");
    assert!(
        (f64::from(response.duration) - 7.44).abs() < 0.05,
        "{}",
        response.duration
    );
    let words = response.words.expect("words were requested");
    assert_eq!(words[0].word, "segment");
}

#[tokio::test]
async fn image_edit_of_a_real_jpeg_is_an_oriented_png() {
    let ai = FakeAi::start().await.expect("start");
    let request = CreateImageEditRequestArgs::default()
        .image(ImageInput::from(fixture("friends_by_Aitzol_Berasategi_orient6.jpg")))
        .prompt("make it sunny")
        .model(ImageModel::Other("gpt-image-1".to_owned()))
        .build()
        .expect("request");
    let response = client(&ai).images().edit(request).await.expect("edit");
    assert_eq!(response.data.len(), 1);
    let Image::B64Json {
        b64_json,
        revised_prompt,
    } = response.data[0].as_ref()
    else {
        panic!("expected b64_json, got {:?}", response.data[0]);
    };
    assert_eq!(revised_prompt.as_deref(), Some("make it sunny"));
    let png = decode_png(&unbase64(b64_json));
    // Displayed 2048x3088 (portrait), scaled to fit in 1536x1536.
    assert_eq!(png.height(), 1536);
    assert!((1017..=1019).contains(&png.width()), "{}", png.width());
    let usage = response.usage.expect("usage");
    assert_eq!(usage.input_tokens_details.image_tokens, 85);
    assert_eq!(ai.requests()[0].prompt.as_deref(), Some("make it sunny"));
}

#[tokio::test]
async fn image_edit_brightens_and_honours_size_and_n() {
    let ai = FakeAi::start().await.expect("start");
    let request = CreateImageEditRequestArgs::default()
        .image(ImageInput::from_vec_u8("grey.png".to_owned(), grey_png(64, 32, 100)))
        .prompt("brighter")
        .model(ImageModel::Other("gpt-image-1".to_owned()))
        .size(ImageSize::Other("32x16".to_owned()))
        .n(2u8)
        .build()
        .expect("request");
    let response = client(&ai).images().edit(request).await.expect("edit");
    assert_eq!(response.data.len(), 2);
    assert_eq!(response.size, Some(ImageSize::Other("32x16".to_owned())));
    let Image::B64Json { b64_json, .. } = response.data[1].as_ref() else {
        panic!("expected b64_json");
    };
    let png = decode_png(&unbase64(b64_json));
    assert_eq!(png.dimensions(), (32, 16));
    let level = png.to_rgb8().get_pixel(10, 10).0[0];
    assert!(level > 100 && level < 160, "brightened slightly: {level}");

    let bad = CreateImageEditRequestArgs::default()
        .image(ImageInput::from_vec_u8("x.png".to_owned(), b"not an image".to_vec()))
        .prompt("brighter")
        .build()
        .expect("request");
    let Err(OpenAIError::ApiError(api)) = client(&ai).images().edit(bad).await else {
        panic!("an undecodable image must be an API error");
    };
    assert_eq!(api.status_code.as_u16(), 400);
    assert!(api.api_error.message.contains("could not process image"));
}

#[tokio::test]
#[allow(deprecated)]
async fn image_generation_is_a_prompt_coloured_png_of_the_requested_size() {
    let ai = FakeAi::start().await.expect("start");
    let client = client(&ai);
    let generate = |prompt: &str, size: ImageSize| {
        CreateImageRequestArgs::default()
            .prompt(prompt)
            .model(ImageModel::Other("dall-e-3".to_owned()))
            .size(size)
            .style(async_openai::types::images::ImageStyle::Natural)
            .response_format(ImageResponseFormat::B64Json)
            .build()
            .expect("request")
    };
    let b64 = |image: &Image| match image {
        Image::B64Json { b64_json, .. } => unbase64(b64_json),
        Image::Url { .. } => panic!("expected b64_json"),
    };

    let lighthouse = client
        .images()
        .generate(generate("a lighthouse", ImageSize::S512x512))
        .await
        .expect("generate");
    let Image::B64Json { revised_prompt, .. } = lighthouse.data[0].as_ref() else {
        panic!("expected b64_json");
    };
    assert_eq!(revised_prompt.as_deref(), Some("a lighthouse (style: natural)"));
    let first = b64(&lighthouse.data[0]);
    assert_eq!(decode_png(&first).dimensions(), (512, 512));

    let again = client
        .images()
        .generate(generate("a lighthouse", ImageSize::S512x512))
        .await
        .expect("generate");
    assert_eq!(b64(&again.data[0]), first, "same prompt, same image");

    let other = client
        .images()
        .generate(generate("a forest", ImageSize::Other("300x200".to_owned())))
        .await
        .expect("generate");
    let other = decode_png(&b64(&other.data[0]));
    assert_eq!(other.dimensions(), (300, 200));
    assert_ne!(
        other.to_rgb8().get_pixel(0, 0),
        decode_png(&first).to_rgb8().get_pixel(0, 0),
        "colour depends on the prompt"
    );

    let auto = client
        .images()
        .generate(generate("auto size", ImageSize::Auto))
        .await
        .expect("generate");
    assert_eq!(decode_png(&b64(&auto.data[0])).dimensions(), (256, 256));

    let Err(OpenAIError::ApiError(api)) = client
        .images()
        .generate(generate("too big", ImageSize::Other("4096x1024".to_owned())))
        .await
    else {
        panic!("an oversized image must be refused");
    };
    assert_eq!(api.status_code.as_u16(), 400);
    assert_eq!(api.api_error.param.as_deref(), Some("size"));
}

#[tokio::test]
async fn image_generation_url_is_served_by_the_fake() {
    let ai = FakeAi::start().await.expect("start");
    let request = CreateImageRequestArgs::default()
        .prompt("a boat")
        .model(ImageModel::Other("dall-e-3".to_owned()))
        .size(ImageSize::S256x256)
        .build()
        .expect("request");
    #[allow(deprecated)]
    let request = async_openai::types::images::CreateImageRequest {
        response_format: Some(ImageResponseFormat::Url),
        ..request
    };
    let response = client(&ai).images().generate(request).await.expect("generate");
    let Image::Url { url, .. } = response.data[0].as_ref() else {
        panic!("expected a url");
    };
    let bytes = reqwest::get(url).await.expect("get").bytes().await.expect("body");
    assert_eq!(decode_png(&bytes).dimensions(), (256, 256));
}

#[tokio::test]
async fn moderation_flags_inputs_with_the_flagged_word() {
    let ai = FakeAi::start_with(Options {
        flagged_word: "Kraken".to_owned(),
        ..Options::default()
    })
    .await
    .expect("start");
    let request = CreateModerationRequestArgs::default()
        .input(ModerationInput::StringArray(vec![
            "a quiet harbour".to_owned(),
            "release the KRAKEN now".to_owned(),
        ]))
        .model("omni-moderation-latest")
        .build()
        .expect("request");
    let response = client(&ai).moderations().create(request).await.expect("moderation");
    assert_eq!(response.model, "omni-moderation-latest");
    assert_eq!(response.results.len(), 2);
    assert!(!response.results[0].flagged);
    assert!(!response.results[0].categories.violence);
    assert!(response.results[1].flagged);
    assert!(response.results[1].categories.violence);
    assert!(response.results[1].category_scores.violence > 0.5);
    assert_eq!(
        ai.requests()[0].prompt.as_deref(),
        Some("a quiet harbour\nrelease the KRAKEN now")
    );

    let single = CreateModerationRequestArgs::default()
        .input("nothing forbidden here")
        .build()
        .expect("request");
    let response = client(&ai).moderations().create(single).await.expect("moderation");
    assert!(
        !response.results[0].flagged,
        "the default word is replaced by the option"
    );
}

#[tokio::test]
async fn models_are_listed_and_retrieved() {
    let ai = FakeAi::start_with(Options {
        name: "acme".to_owned(),
        ..Options::default()
    })
    .await
    .expect("start");
    let client = client(&ai);
    let list = client.models().list().await.expect("list");
    assert_eq!(list.object, "list");
    assert!(list.data.iter().any(|m| m.id == "gpt-4o-mini" && m.owned_by == "acme"));
    let model = client.models().retrieve("whisper-1").await.expect("retrieve");
    assert_eq!(model.id, "whisper-1");
    let Err(OpenAIError::ApiError(api)) = client.models().retrieve("nope").await else {
        panic!("unknown model must be an API error");
    };
    assert_eq!(api.status_code.as_u16(), 404);
    assert_eq!(ai.count(Route::Models), 3);
}

#[tokio::test]
async fn typed_client_sees_auth_rate_limit_and_transport_errors() {
    let ai = FakeAi::start_with(Options {
        api_key: Some("sk-right".to_owned()),
        ..Options::default()
    })
    .await
    .expect("start");
    let wrong = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(ai.base_url())
            .with_api_key("sk-wrong"),
    );
    let Err(OpenAIError::ApiError(api)) = wrong.models().list().await else {
        panic!("wrong key must be an API error");
    };
    assert_eq!(api.status_code.as_u16(), 401);
    assert_eq!(api.api_error.code.as_deref(), Some("invalid_api_key"));

    let right = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(ai.base_url())
            .with_api_key("sk-right"),
    );
    right.models().list().await.expect("right key");

    // async-openai's default client retries 429 and 5xx up to 3 times, honouring `Retry-After`
    // (whole seconds): one 429 is hidden from the caller, four are not.
    ai.clear_log();
    let zero = Fault::RateLimited {
        retry_after: Some(std::time::Duration::ZERO),
    };
    ai.fail_next(None, 1, zero.clone());
    right.models().list().await.expect("one 429 is retried");
    assert_eq!(ai.count(Route::Models), 2);
    ai.fail_next(None, 4, zero);
    let result = right.models().list().await;
    let Err(OpenAIError::ApiError(api)) = result else {
        panic!("rate limit must be an API error: {result:?}");
    };
    assert_eq!(api.status_code.as_u16(), 429);
    assert_eq!(api.api_error.r#type.as_deref(), Some("rate_limit_error"));
    assert_eq!(ai.count(Route::Models), 6);

    ai.set_persistent_fault(Some(Route::Models), Some(Fault::ServerError));
    let Err(OpenAIError::ApiError(api)) = right.models().list().await else {
        panic!("server error must be an API error");
    };
    assert_eq!(api.status_code.as_u16(), 500);
    assert_eq!(ai.count(Route::Models), 10);
    ai.set_persistent_fault(Some(Route::Models), None);

    ai.fail_next(None, 1, Fault::MalformedJson);
    let error = right.models().list().await.expect_err("malformed body");
    assert!(matches!(error, OpenAIError::JSONDeserialize(..)), "{error:?}");

    ai.fail_next(None, 1, Fault::ConnectionReset);
    let error = right.models().list().await.expect_err("reset");
    assert!(matches!(error, OpenAIError::Reqwest(_)), "{error:?}");
    assert_eq!(
        ai.count(Route::Models),
        12,
        "a reset after the request was sent is not retried"
    );

    right.models().list().await.expect("recovers");
}

fn schema_request(
    schema: &serde_json::Value,
    user: Vec<ChatCompletionRequestUserMessageContentPart>,
) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages(vec![
            ChatCompletionRequestUserMessageArgs::default()
                .content(user)
                .build()
                .expect("user")
                .into(),
        ])
        .response_format(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: None,
                name: "answer".to_owned(),
                schema: schema.clone(),
                strict: Some(true),
            },
        })
        .build()
        .expect("request")
}

#[tokio::test]
async fn schema_answers_validate_against_their_schemas_and_invalid_answers_do_not() {
    let ai = FakeAi::start().await.expect("start");
    let client = client(&ai);
    let schemas = [
        photo_schema_value(),
        // Shapes produced by schemars and by hand-written strict schemas.
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Listing",
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 3, "maxLength": 12},
                "price": {"type": "number", "minimum": 1, "maximum": 99},
                "stock": {"type": "integer", "format": "uint32", "minimum": 0},
                "discount": {"type": ["integer", "null"], "exclusiveMinimum": 5},
                "kind": {"oneOf": [{"const": "new"}, {"const": "used"}]},
                "condition": {"$ref": "#/definitions/Condition"},
                "labels": {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 6},
                "dimensions": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "seller": {"anyOf": [{"$ref": "#/definitions/Seller"}, {"type": "null"}]},
                "listed_at": {"type": "string", "format": "date-time"},
                "contact": {"type": "string", "format": "email"}
            },
            "required": ["title", "price", "stock", "discount", "kind", "condition", "labels",
                         "dimensions", "seller", "listed_at", "contact"],
            "additionalProperties": false,
            "definitions": {
                "Condition": {"type": "string", "enum": ["mint", "worn"]},
                "Seller": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "verified": {"type": "boolean"}},
                    "required": ["name", "verified"],
                    "additionalProperties": false
                }
            }
        }),
    ];
    let png = grey_png(30, 20, 90);
    let image_part: ChatCompletionRequestUserMessageContentPart =
        ChatCompletionRequestMessageContentPartImageArgs::default()
            .image_url(
                ImageUrlArgs::default()
                    .url(format!("data:image/png;base64,{}", base64(&png)))
                    .build()
                    .expect("url"),
            )
            .build()
            .expect("image part")
            .into();
    let text_part = |text: &str| -> ChatCompletionRequestUserMessageContentPart {
        ChatCompletionRequestMessageContentPartTextArgs::default()
            .text(text)
            .build()
            .expect("text")
            .into()
    };
    for schema in &schemas {
        let validator = jsonschema::validator_for(schema).expect("valid schema");
        let inputs = [
            vec![text_part(
                "Selling a Vintage bicycle for 3 dollars, barely ridden. Call Anna.",
            )],
            vec![text_part("what is this?"), image_part.clone()],
            vec![text_part("")],
        ];
        for input in inputs {
            let response = client
                .chat()
                .create(schema_request(schema, input.clone()))
                .await
                .expect("chat");
            let value: serde_json::Value = serde_json::from_str(content(&response)).expect("content is JSON");
            let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{value} does not match {schema}: {errors:?}");
        }
        ai.fail_next(Some(Route::ChatCompletions), 1, Fault::InvalidAnswer);
        let response = client
            .chat()
            .create(schema_request(schema, vec![text_part("anything")]))
            .await
            .expect("chat");
        let value: serde_json::Value = serde_json::from_str(content(&response)).expect("content is JSON");
        assert!(!validator.is_valid(&value), "{value} must not match the schema");
    }
}
