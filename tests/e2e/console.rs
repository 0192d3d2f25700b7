//! The web console in headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `scripts/setup.sh` installs), driven over WebDriver: log in with a key, upload a fixture
//! photo from the page and watch its jobs reach SUCCEEDED without a reload, cancel a running
//! job, retry a failed one and every failed job matching a filter, and check that a second
//! tenant's key sees nothing of the first's; audio, video and AI results drawn as what they
//! are (waveform, playable preview, transcript, tags, spend) with a traced submit linking to
//! its trace. Each page is saved as a screenshot under
//! `target/console-screenshots/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_server::auth::AuthMode;
use mediamesh_testkit::Mesh;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long the page may take to show what the mesh did.
const UI_DEADLINE: Duration = Duration::from_secs(90);

/// chromedriver on a free port, stopped with its browsers (its process group) on drop.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("chromedriver is missing: scripts/setup.sh installs Debian's chromium and chromium-driver");
        let port = mediamesh_testkit::free_port().unwrap();
        // Its own process group, so that the browsers it starts go with it even when a test
        // panics before closing its session.
        let child = tokio::process::Command::new(binary)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        // Ready when it answers /status (it binds within a second or so).
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { child, url }
    }

    async fn browser(&self, width: u32, height: u32) -> Client {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromium is missing: scripts/setup.sh installs it");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-extensions", format!("--window-size={width},{height}")],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }
}

/// The mesh with API keys on, and the console in front of it.
struct Console {
    mesh: Mesh,
    url: String,
    stop: CancellationToken,
}

impl Console {
    async fn start() -> Console {
        Console::start_with(|_| {}).await
    }

    /// The console over a mesh configured by `configure` (API keys are always on).
    async fn start_with(configure: impl FnOnce(&mut mediamesh_testkit::Configs)) -> Console {
        let mesh = Mesh::start_with(|c| {
            c.ingest.auth.auth = AuthMode::On;
            configure(c);
        })
        .await
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], mediamesh_testkit::free_port().unwrap()));
        let mut config = mediamesh_console::ConsoleConfig::new(
            addr,
            format!("http://{}", mesh.addr(mediamesh_testkit::Service::Ingest)),
        );
        config.trace_url = "http://tracing.example/trace/{trace_id}".to_owned();
        let stop = CancellationToken::new();
        let serve = mediamesh_console::serve(config, stop.clone());
        tokio::spawn(async move {
            if let Err(err) = serve.await {
                panic!("console: {err}");
            }
        });
        let url = format!("http://{addr}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{url}/livez")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "the console did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Console { mesh, url, stop }
    }

    fn jobs(&self, key: &str) -> JobServiceClient<mediamesh_server::auth::AuthedChannel> {
        JobServiceClient::new(self.mesh.with_key(key))
    }

    fn ingest(&self, key: &str) -> IngestServiceClient<mediamesh_server::auth::AuthedChannel> {
        IngestServiceClient::new(self.mesh.with_key(key))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = mediamesh_testkit::workspace_root().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves what the browser shows, as a test artifact.
async fn shot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `check` holds on the page (the page changes by itself: live updates).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < UI_DEADLINE, "the page never showed: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn texts(browser: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in browser.find_all(Locator::Css(css)).await.unwrap_or_default() {
        out.push(element.text().await.unwrap_or_default());
    }
    out
}

async fn login(browser: &Client, console: &Console, key: &str) {
    browser.goto(&format!("{}/", console.url)).await.unwrap();
    // Not logged in: the overview sends the browser to the login page.
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.path(), "/login", "{url}");
    let form = browser.form(Locator::Css("form.login")).await.unwrap();
    form.set(Locator::Id("key"), key).await.unwrap();
    form.submit().await.unwrap();
    browser
        .wait()
        .at_most(UI_DEADLINE)
        .for_element(Locator::Css("ul.totals"))
        .await
        .unwrap();
}

/// A JS marker set once per page load: if it survives, the page was not reloaded.
async fn mark_page(browser: &Client) {
    browser
        .execute("window.__unchanged = 'yes'; return true;", vec![])
        .await
        .unwrap();
}

async fn page_unchanged(browser: &Client) -> bool {
    browser
        .execute("return window.__unchanged === 'yes';", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_a_tenants_work_live_and_acts_on_it() {
    let console = Console::start().await;
    let key = console.mesh.create_key("acme").await.unwrap();
    let driver = Driver::start().await;
    let browser = driver.browser(1280, 900).await;

    // A wrong key is refused with a clear message, and nothing is set.
    browser.goto(&format!("{}/login", console.url)).await.unwrap();
    let form = browser.form(Locator::Css("form.login")).await.unwrap();
    form.set(Locator::Id("key"), "mm_not-a-real-key-000000000000")
        .await
        .unwrap();
    form.submit().await.unwrap();
    let alert = browser
        .wait()
        .at_most(UI_DEADLINE)
        .for_element(Locator::Css("p.error"))
        .await
        .unwrap();
    assert!(alert.text().await.unwrap().contains("UNAUTHENTICATED"));
    shot(&browser, "login-refused").await;

    login(&browser, &console, &key).await;
    let empty = texts(&browser, "div.empty").await.join(" ");
    assert!(empty.contains("No jobs yet"), "{empty}");
    shot(&browser, "overview-empty").await;

    // Upload a fixture photo from the page; its media page shows the jobs go to SUCCEEDED
    // by themselves, and the thumbnails appear.
    browser.goto(&format!("{}/upload", console.url)).await.unwrap();
    // chromedriver wants a canonical path (the fixtures sit beside the work tree).
    let photo = mediamesh_testkit::fixture("Kleiber_by_Lukas_Baubkus.jpg")
        .canonicalize()
        .unwrap();
    browser
        .find(Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(photo.to_str().unwrap())
        .await
        .unwrap();
    shot(&browser, "upload").await;
    browser
        .find(Locator::Css("form.upload button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(UI_DEADLINE)
        .for_element(Locator::Css("#live table.jobs"))
        .await
        .unwrap();
    let media_url = browser.current_url().await.unwrap();
    assert!(media_url.path().starts_with("/media/"), "{media_url}");
    let media_id = media_url.path().trim_start_matches("/media/").to_owned();
    let notice = texts(&browser, "p.notice").await.join(" ");
    assert!(notice.contains("Uploaded;"), "{notice}");
    // Shown once: the notice leaves the address, so a reload does not repeat it.
    let address = browser.current_url().await.unwrap();
    assert!(!address.query().unwrap_or_default().contains("notice"), "{address}");
    mark_page(&browser).await;
    let states = texts(&browser, "#live tr[data-job] td:nth-child(3)").await;
    assert!(!states.is_empty(), "the upload made jobs");
    until("every job of the upload SUCCEEDED", || async {
        let rows = browser
            .find_all(Locator::Css("#live tr[data-job]"))
            .await
            .unwrap_or_default();
        let done = browser
            .find_all(Locator::Css("#live tr[data-state=\"SUCCEEDED\"]"))
            .await
            .unwrap_or_default();
        !rows.is_empty() && rows.len() == done.len()
    })
    .await;
    until("the thumbnails", || async {
        browser
            .execute(
                "const img = document.querySelector('li.output[data-output=\"thumb\"] img'); \
                 return !!img && img.complete && img.naturalWidth > 0;",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    })
    .await;
    assert!(
        page_unchanged(&browser).await,
        "the jobs and thumbnails came without a reload"
    );
    let thumb_width = browser
        .execute(
            "return document.querySelector('li.output[data-output=\"thumb\"] img').naturalWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        thumb_width.as_u64(),
        Some(150),
        "the 150x150 thumbnail, decoded by the browser"
    );
    let outputs = texts(&browser, "li.output h3").await;
    for name in ["thumb", "medium", "large"] {
        assert!(outputs.iter().any(|o| o == name), "{name} in {outputs:?}");
    }
    browser.set_window_size(1280, 1500).await.unwrap();
    shot(&browser, "media-photo").await;
    browser.set_window_size(1280, 900).await.unwrap();

    // The API agrees with the page.
    let api_jobs = console
        .jobs(&key)
        .list_jobs(pb::ListJobsRequest {
            media_id: media_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(api_jobs.iter().all(|j| j.state == pb::JobState::Succeeded as i32));
    let thumbs = api_jobs.iter().find(|j| j.kind == "media.thumbnails").unwrap();

    // The job page: attempts as a timeline, the payload, the outputs, the trace link.
    browser
        .goto(&format!("{}/jobs/{}", console.url, thumbs.id))
        .await
        .unwrap();
    let timeline = texts(&browser, "ol.timeline li").await;
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert!(
        timeline[0].contains("SUCCEEDED") && timeline[0].contains("took"),
        "{timeline:?}"
    );
    // The trace id links to the tracing UI when the submit was traced (tests/e2e/traces.rs
    // checks that jobs carry it); this mesh exports no traces, and the page says so.
    if thumbs.trace_id.is_empty() {
        let details = texts(&browser, "dl.details dd").await.join(" ");
        assert!(details.contains("not traced"), "{details}");
    } else {
        let link = format!(
            "dl.details a[href=\"http://tracing.example/trace/{}\"]",
            thumbs.trace_id
        );
        assert!(
            browser.find(Locator::Css(&link)).await.is_ok(),
            "the trace id links to the tracing UI"
        );
    }
    assert!(
        browser
            .find(Locator::Css("li.output[data-output=\"large\"] img"))
            .await
            .is_ok()
    );
    shot(&browser, "job-succeeded").await;

    // Cancel a long-running job from its page: it ends CANCELLED, and the page shows it.
    let long = console
        .ingest(&key)
        .submit_job(pb::SubmitJobRequest {
            job: Some(pb::JobSpec {
                kind: "test.sleep".to_owned(),
                payload_json: json!({ "ms": 600_000, "subprocess": true }).to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    browser
        .goto(&format!("{}/jobs/{}", console.url, long.id))
        .await
        .unwrap();
    mark_page(&browser).await;
    until("the long job RUNNING", || async {
        texts(&browser, ".job-state .badge")
            .await
            .iter()
            .any(|t| t == "RUNNING")
    })
    .await;
    assert!(page_unchanged(&browser).await, "RUNNING arrived live");
    shot(&browser, "job-running").await;
    browser
        .find(Locator::Id("cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the long job CANCELLED", || async {
        texts(&browser, ".job-state .badge")
            .await
            .iter()
            .any(|t| t == "CANCELLED")
    })
    .await;
    let cancelled = console
        .jobs(&key)
        .get_job(pb::GetJobRequest {
            job_id: long.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    shot(&browser, "job-cancelled").await;

    // A failed job: retry it from its page; its second attempt succeeds.
    let failing = |n: u64| pb::JobSpec {
        kind: "test.sleep".to_owned(),
        payload_json: json!({ "ms": n, "fail": "BAD_INPUT", "fail_attempts": 1 }).to_string(),
        max_attempts: 3,
        ..Default::default()
    };
    let mut failed = Vec::new();
    for n in [1, 2, 3] {
        let job = console
            .ingest(&key)
            .submit_job(pb::SubmitJobRequest { job: Some(failing(n)) })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        failed.push(job.id);
    }
    for id in &failed {
        let job = crate::tenancy::wait_done(&mut console.jobs(&key), id).await;
        assert_eq!(job.state, pb::JobState::Failed as i32);
    }
    browser
        .goto(&format!("{}/jobs/{}", console.url, failed[0]))
        .await
        .unwrap();
    let error = texts(&browser, "#job-error").await.join(" ");
    assert!(error.contains("BAD_INPUT"), "{error}");
    shot(&browser, "job-failed").await;
    browser.find(Locator::Id("retry")).await.unwrap().click().await.unwrap();
    until("the retried job SUCCEEDED", || async {
        texts(&browser, ".job-state .badge")
            .await
            .iter()
            .any(|t| t == "SUCCEEDED")
    })
    .await;
    let timeline = texts(&browser, "ol.timeline li").await;
    assert_eq!(timeline.len(), 2, "two attempts: {timeline:?}");
    assert!(timeline[0].contains("BAD_INPUT"), "{timeline:?}");
    shot(&browser, "job-retried").await;

    // The job list, filtered by state and error code; retry every match after a confirmation
    // that says how many.
    browser
        .goto(&format!("{}/jobs?state=FAILED&code=BAD_INPUT", console.url))
        .await
        .unwrap();
    let rows = browser.find_all(Locator::Css("#live tr[data-job]")).await.unwrap();
    assert_eq!(rows.len(), 2, "the two jobs still FAILED");
    shot(&browser, "jobs-failed-filter").await;
    browser
        .find(Locator::Css("a.button.secondary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let count = browser
        .wait()
        .at_most(UI_DEADLINE)
        .for_element(Locator::Id("retry-count"))
        .await
        .unwrap();
    let count = count.text().await.unwrap();
    assert!(count.contains("Retry 2 FAILED jobs"), "{count}");
    shot(&browser, "retry-confirm").await;
    browser
        .find(Locator::Css("form.confirm button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = browser
        .wait()
        .at_most(UI_DEADLINE)
        .for_element(Locator::Css("p.notice"))
        .await
        .unwrap();
    assert!(notice.text().await.unwrap().contains("Retried 2 jobs"));
    for id in &failed[1..] {
        let job = crate::tenancy::wait_done(&mut console.jobs(&key), id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "retried from the list");
    }

    // The full list and the overview with work in them; spend with no AI calls.
    browser.goto(&format!("{}/jobs", console.url)).await.unwrap();
    let rows = browser.find_all(Locator::Css("#live tr[data-job]")).await.unwrap();
    assert_eq!(rows.len(), api_jobs.len() + 4);
    shot(&browser, "jobs").await;
    browser.goto(&format!("{}/", console.url)).await.unwrap();
    let kinds = browser
        .find_all(Locator::Css("table.queues tr[data-kind]"))
        .await
        .unwrap();
    assert!(kinds.len() >= 3, "probe, thumbnails and test.sleep");
    shot(&browser, "overview").await;
    browser.goto(&format!("{}/spend", console.url)).await.unwrap();
    let empty = texts(&browser, "div.empty").await.join(" ");
    assert!(empty.contains("No AI calls"), "{empty}");
    shot(&browser, "spend").await;

    // Readable on a phone: no sideways scrolling of the page itself.
    browser.set_window_size(390, 844).await.unwrap();
    browser
        .goto(&format!("{}/jobs/{}", console.url, thumbs.id))
        .await
        .unwrap();
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow.as_bool(), Some(true), "the job page fits a phone's width");
    shot(&browser, "job-phone").await;

    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_tenant_sees_none_of_the_firsts_work_in_the_console() {
    let console = Console::start().await;
    let first = console.mesh.create_key("first").await.unwrap();
    let second = console.mesh.create_key("second").await.unwrap();
    let photo = mediamesh_testkit::read_fixture("Dragonfly_by_Bolly.jpg");
    let uploaded = console
        .ingest(&first)
        .upload_media(tokio_stream::iter(mediamesh_testkit::upload_parts(
            "",
            "dragonfly.jpg",
            &photo,
        )))
        .await
        .unwrap()
        .into_inner();
    let media_id = uploaded.media.unwrap().id;
    let job_id = uploaded.jobs[0].id.clone();

    let driver = Driver::start().await;
    let browser = driver.browser(1280, 900).await;
    login(&browser, &console, &second).await;
    let empty = texts(&browser, "div.empty").await.join(" ");
    assert!(
        empty.contains("No jobs yet"),
        "the second tenant's overview is empty: {empty}"
    );
    browser.goto(&format!("{}/jobs", console.url)).await.unwrap();
    assert!(browser.find_all(Locator::Css("tr[data-job]")).await.unwrap().is_empty());
    // The first tenant's ids, typed in: not found, and nothing of theirs on the page.
    for path in [
        format!("/jobs/{job_id}"),
        format!("/media/{media_id}"),
        format!("/media/{media_id}/files/original"),
    ] {
        browser.goto(&format!("{}{path}", console.url)).await.unwrap();
        let source = browser.source().await.unwrap();
        assert!(source.contains("NOT_FOUND"), "{path}: {source}");
        assert!(
            !source.contains("dragonfly"),
            "{path} shows nothing of the first tenant"
        );
    }
    shot(&browser, "other-tenant-not-found").await;
    browser
        .goto(&format!("{}/jobs?media={media_id}", console.url))
        .await
        .unwrap();
    assert!(browser.find_all(Locator::Css("tr[data-job]")).await.unwrap().is_empty());

    // The first tenant sees its own.
    browser
        .find(Locator::Css("form.logout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    login(&browser, &console, &first).await;
    browser.goto(&format!("{}/jobs/{job_id}", console.url)).await.unwrap();
    let heading = texts(&browser, "h1").await.join(" ");
    assert!(heading.contains(&job_id[job_id.len() - 8..]), "{heading}");

    // Without the cookie, nothing: the pages send to the login and the files are not served.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/", "/jobs", &format!("/media/{media_id}/files/original"), "/events"] {
        let response = http.get(format!("{}{path}", console.url)).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::SEE_OTHER, "{path}");
        let location = response.headers().get("location").unwrap().to_str().unwrap();
        assert!(location.starts_with("/login"), "{path} -> {location}");
    }
    // A form posted from another site is refused even with the cookie.
    let response = http
        .post(format!("{}/jobs/{job_id}/cancel", console.url))
        .header("origin", "http://evil.example")
        .header("cookie", format!("mm_console_key={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    browser.close().await.unwrap();
}

/// Reads a whole output through the API, as the viewer's key.
async fn download_as(console: &Console, key: &str, media_id: &str, name: &str) -> (pb::DownloadHeader, Vec<u8>) {
    let stream = console
        .ingest(key)
        .download_media(pb::DownloadMediaRequest {
            media_id: media_id.to_owned(),
            name: name.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    mediamesh_proto::read_download(stream).await.unwrap()
}

/// Uploads a fixture through the API with a W3C `traceparent`, as an instrumented client would.
async fn upload_traced(console: &Console, key: &str, fixture: &str, traceparent: &str) -> pb::UploadMediaResponse {
    let data = mediamesh_testkit::read_fixture(fixture);
    let mut request = tonic::Request::new(tokio_stream::iter(mediamesh_testkit::upload_parts("", fixture, &data)));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    console.ingest(key).upload_media(request).await.unwrap().into_inner()
}

async fn js_bool(browser: &Client, script: &str) -> bool {
    browser
        .execute(script, vec![])
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_draws_audio_video_and_ai_results_and_links_traces() {
    // Spans get trace ids (nothing is exported), so a client's traceparent reaches the jobs.
    let _telemetry = mediamesh_telemetry::init(&mediamesh_telemetry::TelemetryConfig {
        service_name: "console-test".to_owned(),
        log_format: mediamesh_telemetry::LogFormat::Text,
        otlp_endpoint: None,
        filter: None,
    })
    .unwrap();
    let fake = crate::inference::fake("alpha", Some(crate::inference::KEY)).await;
    let console = Console::start_with(|c| crate::inference::default_provider(c, &fake, crate::inference::KEY)).await;
    let key = console.mesh.create_key("acme").await.unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let audio = upload_traced(
        &console,
        &key,
        "speech_en.wav",
        &format!("00-{trace_id}-00f067aa0ba902b7-01"),
    )
    .await;
    let video = upload_traced(
        &console,
        &key,
        "synthetic_testsrc_1280x720_5s.mp4",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    .await;
    let photo = upload_traced(
        &console,
        &key,
        "friends_by_Aitzol_Berasategi_orient6.jpg",
        "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-01",
    )
    .await;
    let mut done = Vec::new();
    for job in audio.jobs.iter().chain(&video.jobs).chain(&photo.jobs) {
        let job = crate::tenancy::wait_done(&mut console.jobs(&key), &job.id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        done.push(job);
    }
    let job_of = |kind: &str| {
        done.iter()
            .find(|j| j.kind == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let transcribe = job_of("inference.transcribe");
    assert_eq!(transcribe.trace_id, trace_id, "the job carries the client's trace");
    let audio_id = audio.media.unwrap().id;
    let video_id = video.media.unwrap().id;
    let photo_id = photo.media.unwrap().id;

    let driver = Driver::start().await;
    let browser = driver.browser(1280, 1400).await;
    login(&browser, &console, &key).await;

    // Audio: the waveform drawn from its peaks (one column per peak pair), its PNG, and the
    // transcript, on the media page.
    browser
        .goto(&format!("{}/media/{audio_id}", console.url))
        .await
        .unwrap();
    let (_, peaks) = download_as(&console, &key, &audio_id, "waveform").await;
    let peaks: serde_json::Value = serde_json::from_slice(&peaks).unwrap();
    let columns = browser
        .find(Locator::Css("li.output[data-output=\"waveform\"] svg.waveform"))
        .await
        .expect("the waveform drawn as SVG")
        .attr("data-columns")
        .await
        .unwrap();
    assert_eq!(
        columns.as_deref(),
        Some(peaks["length"].to_string().as_str()),
        "one column per peak pair of the waveform JSON"
    );
    let bars = browser
        .execute(
            "return document.querySelector('li.output[data-output=\"waveform\"] svg.waveform path') \
               .getAttribute('d').split('M').length - 1;",
            vec![],
        )
        .await
        .unwrap();
    let bars = bars.as_u64().unwrap();
    assert!(bars > 0 && bars <= 600, "{bars} bars");
    let png = done
        .iter()
        .flat_map(|j| j.result.iter().flat_map(|r| r.outputs.iter()))
        .find(|o| o.name == "waveform_png")
        .unwrap()
        .clone();
    until("the waveform PNG decoded", || {
        js_bool(
            &browser,
            "const img = document.querySelector('li.output[data-output=\"waveform_png\"] img'); \
             return !!img && img.complete && img.naturalWidth > 0;",
        )
    })
    .await;
    let width = browser
        .execute(
            "return document.querySelector('li.output[data-output=\"waveform_png\"] img').naturalWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(width.as_u64(), Some(u64::from(png.width)));
    let transcript = texts(&browser, "li.output[data-output=\"transcript\"] blockquote.transcript")
        .await
        .join(" ");
    assert!(transcript.starts_with("transcript [alpha] of"), "{transcript:?}");
    // The original recording plays in the page: the browser reads its length.
    until("the original audio's metadata", || {
        js_bool(
            &browser,
            "const a = document.querySelector('audio.original'); \
             return !!a && a.readyState >= 1 && a.duration > 0;",
        )
    })
    .await;
    let seconds = browser
        .execute("return document.querySelector('audio.original').duration;", vec![])
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    let probed = peaks["length"].as_f64().unwrap() * peaks["samples_per_pixel"].as_f64().unwrap()
        / peaks["sample_rate"].as_f64().unwrap();
    assert!(
        (seconds - probed).abs() < 0.1,
        "{seconds} s played, {probed} s in the waveform"
    );
    shot(&browser, "media-audio").await;

    // The transcription job's page links to its trace in the tracing UI.
    browser
        .goto(&format!("{}/jobs/{}", console.url, transcribe.id))
        .await
        .unwrap();
    let link = format!("dl.details a[href=\"http://tracing.example/trace/{trace_id}\"]");
    let linked = browser
        .find(Locator::Css(&link))
        .await
        .expect("the trace id links to the tracing UI");
    assert_eq!(linked.text().await.unwrap(), trace_id);
    shot(&browser, "job-traced").await;

    // Video: the preview plays in the browser (H.264/AAC, faststart) at its size and length,
    // and the poster frame decodes.
    browser
        .goto(&format!("{}/media/{video_id}", console.url))
        .await
        .unwrap();
    mark_page(&browser).await;
    until("the preview playing", || {
        js_bool(
            &browser,
            "const v = document.querySelector('li.output[data-output=\"preview\"] video'); \
             if (!v || v.error) return false; \
             if (v.paused) { v.muted = true; v.play().catch(() => {}); } \
             return v.readyState >= 2 && v.currentTime > 0.2;",
        )
    })
    .await;
    // Live refreshes of an unchanged page leave the playing element alone.
    let refreshed = browser
        .execute(
            "return document.getElementById('live').dataset.refreshed || '0';",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refreshed.as_str(), Some("0"), "nothing changed, nothing was swapped");
    let shape = browser
        .execute(
            "const v = document.querySelector('li.output[data-output=\"preview\"] video'); \
             return [v.videoWidth, v.videoHeight, v.duration];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shape[0].as_u64(), Some(1280), "{shape}");
    assert_eq!(shape[1].as_u64(), Some(720), "{shape}");
    let duration = shape[2].as_f64().unwrap();
    assert!((4.5..=5.5).contains(&duration), "the 5 s fixture: {duration}");
    until("the video thumbnail decoded", || {
        js_bool(
            &browser,
            "const img = document.querySelector('li.output[data-output=\"video_thumb\"] img'); \
             return !!img && img.complete && img.naturalWidth > 0;",
        )
    })
    .await;
    browser
        .execute(
            "document.querySelector('li.output[data-output=\"preview\"] video').pause(); return true;",
            vec![],
        )
        .await
        .unwrap();
    shot(&browser, "media-video").await;

    // The photo's description: caption and tags, as the model gave them.
    let describe = done
        .iter()
        .find(|j| j.kind == "inference.describe_image" && j.media_id == photo_id)
        .unwrap();
    let described: serde_json::Value = serde_json::from_str(&describe.result.as_ref().unwrap().metadata_json).unwrap();
    browser
        .goto(&format!("{}/jobs/{}", console.url, describe.id))
        .await
        .unwrap();
    let caption = texts(&browser, "p.caption").await.join(" ");
    assert_eq!(caption, described["caption"].as_str().unwrap());
    let tags = texts(&browser, "ul.tags li").await;
    let expected: Vec<String> = described["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(tags, expected);
    shot(&browser, "job-described").await;

    // Spend: what the API reports, by model and day.
    let spend = InferenceServiceClient::new(console.mesh.with_key(&key))
        .get_spend(pb::GetSpendRequest { days: 30 })
        .await
        .unwrap()
        .into_inner();
    assert!(spend.today_usd > 0.0, "{spend:?}");
    browser.goto(&format!("{}/spend", console.url)).await.unwrap();
    let budgets = texts(&browser, "div.budget p.n").await;
    assert_eq!(
        budgets.first().map(String::as_str),
        Some(format!("${:.4}", spend.today_usd).as_str()),
        "{budgets:?}"
    );
    let days = browser.find_all(Locator::Css("table.spend tbody tr")).await.unwrap();
    assert_eq!(days.len(), spend.lines.len(), "one row per day, provider and model");
    let page = texts(&browser, "main").await.join(" ");
    for line in &spend.lines {
        assert!(page.contains(&line.model), "{} on the page", line.model);
    }
    shot(&browser, "spend-with-calls").await;
    browser.close().await.unwrap();
}
