//! The client commands as a program uses them: the real `meshctl` binary against a mesh from
//! the test kit, `-o json` on every command, exit codes that mean something.

use mediamesh_testkit::{Mesh, Service, fixture};
use serde_json::Value;

struct Ctl {
    addr: String,
}

impl Ctl {
    async fn run(&self, args: &[&str]) -> (i32, Value) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .args(["-o", "json"])
            .env("MM_ADDR", &self.addr)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "meshctl {args:?}: not one JSON document ({e}): {stdout:?} stderr {:?}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().unwrap_or(-1), value)
    }

    async fn text(&self, args: &[&str]) -> (i32, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .env("MM_ADDR", &self.addr)
            .output()
            .await
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_speaks_json_and_exits_with_meaning() {
    let mesh = Mesh::start().await.unwrap();
    let ctl = Ctl {
        addr: format!("http://{}", mesh.addr(Service::Ingest)),
    };
    let photo = fixture("Dragonfly_by_Bolly.jpg");

    let (code, up) = ctl.run(&["upload", "--watch", photo.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{up}");
    let upload = &up["uploads"][0];
    let media_id = upload["media"]["id"].as_str().unwrap().to_owned();
    assert_eq!(upload["media"]["content_type"], "image/jpeg");
    assert_eq!(upload["media"]["width"], 4224);
    let jobs = upload["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j["state"] == "SUCCEEDED"), "{up}");
    // No AI provider in this mesh: the upload says which job it did not create, and why.
    assert_eq!(upload["skipped"][0]["kind"], "inference.describe_image", "{up}");
    assert!(
        upload["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("MM_OPENAI_API_KEY")
    );
    let thumbs = jobs.iter().find(|j| j["kind"] == "media.thumbnails").unwrap();
    let thumbs_id = thumbs["id"].as_str().unwrap().to_owned();
    let outputs = thumbs["result"]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3);

    let (code, got) = ctl.run(&["get", &thumbs_id]).await;
    assert_eq!(code, 0);
    assert_eq!(got["job"]["state"], "SUCCEEDED");
    assert_eq!(got["job"]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(got["job"]["attempts"][0]["outcome"], "SUCCEEDED");

    let (code, listed) = ctl.run(&["list", "--media", &media_id]).await;
    assert_eq!(code, 0);
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2);
    let (_, succeeded) = ctl
        .run(&["list", "--state", "succeeded", "--kind", "media.probe"])
        .await;
    assert_eq!(succeeded["jobs"].as_array().unwrap().len(), 1);

    let (code, media) = ctl.run(&["media", &media_id]).await;
    assert_eq!(code, 0);
    let derivatives = media["media"]["derivatives"].as_array().unwrap();
    let medium = derivatives.iter().find(|d| d["name"] == "medium").unwrap();
    assert_eq!(
        (medium["width"].as_u64(), medium["height"].as_u64()),
        (Some(800), Some(600))
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jpg");
    let (code, downloaded) = ctl
        .run(&["download", &media_id, "medium", "-O", out.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{downloaded}");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, medium["bytes"].as_u64().unwrap());
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "a JPEG");

    let (code, submitted) = ctl
        .run(&["submit", "--kind", "media.probe", "--media", &media_id, "--watch"])
        .await;
    assert_eq!(code, 0, "{submitted}");
    assert_eq!(submitted["job"]["state"], "SUCCEEDED");
    assert_eq!(submitted["job"]["result"]["metadata"]["format"], "jpeg");
    let (code, watched) = ctl.run(&["watch", submitted["job"]["id"].as_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert_eq!(watched["job"]["state"], "SUCCEEDED");

    let speech = fixture("speech_en.wav");
    let (code, text) = ctl
        .text(&[
            "upload",
            "--watch",
            "--extract-schema",
            r#"{"type":"object","properties":{"name":{"type":"string"}}}"#,
            speech.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("inference.extract") && text.contains("not created: no AI provider"),
        "{text}"
    );
    let (code, stats) = ctl.run(&["stats"]).await;
    assert_eq!(code, 0);
    let probe = stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "media.probe")
        .unwrap();
    assert_eq!(probe["succeeded"], 3);
    assert_eq!(stats["ai_spend"]["today_usd"], 0.0, "{stats}");
    assert_eq!(stats["ai_spend"]["lines"], serde_json::json!([]));

    // Errors: a stable code in the JSON, a non-zero exit.
    let (code, refused) = ctl.run(&["cancel", &thumbs_id]).await;
    assert_eq!(code, 1);
    assert_eq!(refused["error"]["code"], "BAD_INPUT", "{refused}");
    let (code, refused) = ctl.run(&["retry", &thumbs_id]).await;
    assert_eq!(code, 1);
    assert_eq!(refused["error"]["code"], "BAD_INPUT");
    let (code, missing) = ctl.run(&["get", "01a20000-0000-7000-8000-000000000000"]).await;
    assert_eq!(code, 1);
    assert_eq!(missing["error"]["code"], "NOT_FOUND");
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let (code, refused) = ctl.run(&["upload", empty.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert_eq!(refused["uploads"][0]["error"]["code"], "BAD_INPUT", "{refused}");

    // Text for people: the job lines name the state and the outputs.
    let (code, text) = ctl.text(&["list", "--media", &media_id]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("media.thumbnails") && text.contains("SUCCEEDED") && text.contains("medium=800x600"),
        "{text}"
    );
    let (code, health) = ctl.run(&["health"]).await;
    assert_eq!(code, 0);
    assert_eq!(health["serving"], true);

    mesh.shutdown().await.unwrap();
    let (code, down) = ctl.run(&["health"]).await;
    assert_eq!(code, 1);
    assert_eq!(down["serving"], false);
}

/// Job control from the command line: submit with options and dependencies, cancel, retry
/// every failure that matches a filter, and the stats with their rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_by_filter_cancel_and_stats_from_the_command_line() {
    let mesh = Mesh::start().await.unwrap();
    let ctl = Ctl {
        addr: format!("http://{}", mesh.addr(Service::Ingest)),
    };
    // Two jobs whose first attempt fails BAD_INPUT (not retryable), one that fails TIMEOUT.
    let mut failed = Vec::new();
    for payload in [
        r#"{"fail":"BAD_INPUT","fail_attempts":1}"#,
        r#"{"fail":"BAD_INPUT","fail_attempts":1}"#,
        r#"{"fail":"TIMEOUT"}"#,
    ] {
        let (code, job) = ctl
            .run(&[
                "submit",
                "--kind",
                "test.sleep",
                "--payload",
                payload,
                "--max-attempts",
                "1",
                "--watch",
            ])
            .await;
        assert_eq!(code, 2, "a failed job exits 2: {job}");
        assert_eq!(job["job"]["state"], "FAILED");
        failed.push(job["job"]["id"].as_str().unwrap().to_owned());
    }
    let (code, dry) = ctl
        .run(&[
            "retry",
            "--failed",
            "--code",
            "bad_input",
            "--since",
            "600",
            "--dry-run",
        ])
        .await;
    assert_eq!(code, 0, "{dry}");
    assert_eq!(dry["job_ids"].as_array().unwrap().len(), 2, "{dry}");
    let (code, retried) = ctl.run(&["retry", "--failed", "--code", "BAD_INPUT"]).await;
    assert_eq!(code, 0, "{retried}");
    let mut ids: Vec<String> = retried["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = failed[..2].to_vec();
    expected.sort();
    assert_eq!(ids, expected);
    for id in &ids {
        let (code, watched) = ctl.run(&["watch", id]).await;
        assert_eq!(code, 0, "{watched}");
        assert_eq!(watched["job"]["state"], "SUCCEEDED");
    }
    let (code, still) = ctl.run(&["get", &failed[2]]).await;
    assert_eq!(code, 0);
    assert_eq!(still["job"]["state"], "FAILED");
    let (code, refused) = ctl.run(&["retry", "--failed", "--code", "NONSENSE"]).await;
    assert_eq!(code, 1, "{refused}");

    // An aggregate over two jobs, one of them delayed and then cancelled: policy skip.
    let (_, slow) = ctl
        .run(&[
            "submit",
            "--kind",
            "test.sleep",
            "--payload",
            r#"{"ms":1}"#,
            "--delay",
            "3600",
        ])
        .await;
    assert_eq!(slow["job"]["state"], "SCHEDULED", "{slow}");
    let slow_id = slow["job"]["id"].as_str().unwrap().to_owned();
    let (code, parent) = ctl
        .run(&[
            "submit",
            "--kind",
            "aggregate",
            "--payload",
            r#"{"count":["/slept_ms"]}"#,
            "--depends-on",
            &ids[0],
            "--depends-on",
            &slow_id,
            "--on-dependency-failure",
            "skip",
        ])
        .await;
    assert_eq!(code, 0, "{parent}");
    assert_eq!(parent["job"]["pending_dependencies"], 1, "{parent}");
    assert_eq!(parent["job"]["on_dependency_failure"], "SKIP");
    let (code, cancelled) = ctl.run(&["cancel", &slow_id]).await;
    assert_eq!(code, 0, "{cancelled}");
    assert_eq!(cancelled["job"]["state"], "CANCELLED");
    let (code, parent) = ctl.run(&["watch", parent["job"]["id"].as_str().unwrap()]).await;
    assert_eq!(code, 2, "{parent}");
    assert_eq!(parent["job"]["state"], "CANCELLED", "skipped with its dependency");

    let (code, stats) = ctl.run(&["stats"]).await;
    assert_eq!(code, 0);
    let sleep = stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "test.sleep")
        .unwrap()
        .clone();
    assert_eq!(
        (sleep["succeeded"].as_u64(), sleep["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(sleep["cancelled"], 1);
    assert!(sleep["succeeded_per_minute"].as_f64().unwrap() > 0.0, "{sleep}");
    assert!(sleep["mean_run_seconds"].as_f64().is_some(), "{sleep}");
    let (code, text) = ctl.text(&["stats"]).await;
    assert_eq!(code, 0);
    assert!(text.contains("OK/MIN") && text.contains("test.sleep"), "{text}");
    assert!(text.contains("AI spend: today $0.0000"), "{text}");
    mesh.shutdown().await.unwrap();
}
