//! `meshctl dev` as a user runs it: it starts its own nats-server and PostgreSQL, answers
//! health on all four ports, and on SIGTERM stops cleanly, leaving no process behind.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn children_of(pid: u32) -> BTreeSet<u32> {
    // Every descendant: walk /proc for processes whose parent is in the set.
    let mut found = BTreeSet::from([pid]);
    loop {
        let before = found.len();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let after_name = stat.rsplit(')').next().unwrap_or_default();
            let ppid: u32 = after_name
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if found.contains(&ppid) {
                found.insert(child);
            }
        }
        if found.len() == before {
            found.remove(&pid);
            return found;
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_all_four_and_the_console_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..5).map(|_| mediamesh_localsvc::free_port().unwrap()).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--ingest-addr",
            &addr(0),
            "--scheduler-addr",
            &addr(1),
            "--media-addr",
            &addr(2),
            "--inference-addr",
            &addr(3),
            "--console-addr",
            &addr(4),
        ])
        .args(["--log", "warn"])
        .env_remove("MM_NATS_URL")
        .env_remove("MM_DATABASE_URL")
        .env_remove("MM_BLOB_URL")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    for i in 0..4 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addr(i)))
            .unwrap()
            .connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map(|r| r.into_inner().status);
            if matches!(status, Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32) {
                break;
            }
            assert!(Instant::now() < deadline, "{} not serving: {status:?}", addr(i));
            assert!(child.try_wait().unwrap().is_none(), "meshctl dev exited early");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The console answers too: its login page asks for the key.
    let login = reqwest::get(format!("http://{}/login", addr(4))).await.unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::OK);
    assert!(login.text().await.unwrap().contains("API key"));
    let descendants = children_of(pid);
    assert!(
        descendants.len() >= 2,
        "nats-server and postgres run as children: {descendants:?}"
    );

    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("stops within a minute")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while descendants.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            descendants.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
