//! The client commands as a program uses them: the real `meshctl` binary against a mesh from
//! the test kit, `-o json` on every command, exit codes that mean something.

use mediamesh_testkit::{Mesh, Service, fixture};
use serde_json::Value;

struct Ctl {
    addr: String,
}

impl Ctl {
    async fn run(&self, args: &[&str]) -> (i32, Value) {
        self.run_env(args, &[]).await
    }

    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .args(["-o", "json"])
            .env("MM_ADDR", &self.addr)
            .env_remove("MM_API_KEY")
            .env_remove("MM_ADMIN_TOKEN")
            .envs(env.iter().copied())
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
    // The list by error code, newest first: the two BAD_INPUT jobs, the later one on top.
    let (code, listed) = ctl
        .run(&["list", "--state", "failed", "--code", "bad_input", "--newest"])
        .await;
    assert_eq!(code, 0, "{listed}");
    let listed: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![failed[1].as_str(), failed[0].as_str()]);
    let (code, timeouts) = ctl.run(&["list", "--code", "TIMEOUT"]).await;
    assert_eq!(code, 0, "{timeouts}");
    assert_eq!(timeouts["jobs"][0]["id"], failed[2].as_str(), "{timeouts}");
    assert_eq!(timeouts["jobs"].as_array().unwrap().len(), 1, "{timeouts}");
    let (code, refused) = ctl.run(&["list", "--code", "NONSENSE"]).await;
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown error code"),
        "{refused}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_quotas_lists_and_the_live_feed_from_the_command_line() {
    use tokio::io::AsyncBufReadExt;

    let mesh = Mesh::start_with(|c| c.ingest.auth.auth = mediamesh_server::auth::AuthMode::On)
        .await
        .unwrap();
    let ctl = Ctl {
        addr: format!("http://{}", mesh.addr(Service::Ingest)),
    };
    let admin_token = mesh.configs.ingest.admin_token.as_ref().unwrap().expose().to_owned();
    let admin = [("MM_ADMIN_TOKEN", admin_token.as_str())];

    // Keys: the admin token is needed; the key is printed once, as a field.
    let (code, refused) = ctl.run(&["keys", "list"]).await;
    assert_eq!(code, 1, "{refused}");
    let (code, created) = ctl
        .run_env(&["keys", "create", "--tenant", "cli-t", "--name", "laptop"], &admin)
        .await;
    assert_eq!(code, 0, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(created["prefix"].as_str().unwrap()), "{created}");
    let with_key = [("MM_API_KEY", key.as_str())];

    // Without a key: UNAUTHENTICATED; with it, the job is the key's tenant's.
    let submit = ["submit", "--kind", "test.sleep", "--payload", r#"{"ms": 0}"#];
    let (code, out) = ctl.run(&submit).await;
    assert_eq!(
        (code, out["error"]["code"].as_str()),
        (1, Some("UNAUTHENTICATED")),
        "{out}"
    );
    let (code, out) = ctl.run_env(&submit, &with_key).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["job"]["tenant"], "cli-t");
    let job_id = out["job"]["id"].as_str().unwrap().to_owned();

    // The live feed of the tenant's jobs: each change a JSON line with its cursor.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["watch", "--state", "SUCCEEDED", "-o", "json"])
        .env("MM_ADDR", &ctl.addr)
        .env("MM_API_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    // A job that works for 3 s ends well after the feed has started.
    let (_, out) = ctl
        .run_env(
            &["submit", "--kind", "test.sleep", "--payload", r#"{"ms": 3000}"#],
            &with_key,
        )
        .await;
    let second = out["job"]["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let change: Value = serde_json::from_str(&line).unwrap();
        if change["job_id"] == second.as_str() && change["state"] == "SUCCEEDED" {
            assert!(!change["cursor"].as_str().unwrap().is_empty());
            break;
        }
    }
    watch.kill().await.unwrap();

    // Lists with a time range, every page.
    let (code, out) = ctl
        .run_env(&["list", "--since", "1h", "--all", "--limit", "1"], &with_key)
        .await;
    assert_eq!(code, 0, "{out}");
    let ids: Vec<&str> = out["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![job_id.as_str(), second.as_str()]);
    let (_, out) = ctl.run_env(&["list", "--until", "1h"], &with_key).await;
    assert!(out["jobs"].as_array().unwrap().is_empty(), "{out}");

    // Quotas: set one, see it, be refused by it.
    let (code, out) = ctl
        .run_env(&["quotas", "set", "cli-t", "--payload-bytes", "5"], &admin)
        .await;
    assert_eq!(code, 0, "{out}");
    let (_, out) = ctl.run_env(&["quotas", "get", "cli-t"], &admin).await;
    assert_eq!(out["overrides"]["payload_bytes"], 5, "{out}");
    assert_eq!(out["usage"]["jobs_last_hour"], 2, "{out}");
    let (code, out) = ctl.run_env(&submit, &with_key).await;
    assert_eq!(
        (code, out["error"]["code"].as_str()),
        (1, Some("QUOTA_EXCEEDED")),
        "{out}"
    );

    // Revoked: refused at once.
    let (code, out) = ctl.run_env(&["keys", "list", "--tenant", "cli-t"], &admin).await;
    assert_eq!((code, out["keys"].as_array().unwrap().len()), (0, 1), "{out}");
    let (code, out) = ctl
        .run_env(&["keys", "revoke", created["prefix"].as_str().unwrap()], &admin)
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(!out["revoked_at"].is_null(), "{out}");
    let (code, out) = ctl.run_env(&["get", &job_id], &with_key).await;
    assert_eq!(
        (code, out["error"]["code"].as_str()),
        (1, Some("UNAUTHENTICATED")),
        "{out}"
    );
    mesh.shutdown().await.unwrap();
}
