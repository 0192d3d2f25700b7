//! Fault tests: the services run as separate OS processes (the release binaries, see
//! `mediamesh_testkit::process`), 1,000 `test.sleep` jobs are in flight, and one fault hits
//! them: media workers SIGKILLed, nats-server restarted, PostgreSQL restarted, the scheduler
//! SIGKILLed. Afterwards every job must end SUCCEEDED, with exactly one SUCCEEDED transition
//! and one SUCCEEDED attempt: none lost, none stuck, none recorded twice. Each job's body logs
//! its runs, and each test prints how many times the bodies ran: at least once each is the
//! promise, and a fault shows as jobs that ran twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use mediamesh_proto::v1 as pb;
use mediamesh_testkit::process::{Process, ProcessMesh};
use sqlx::PgPool;
use tonic_health::pb::health_check_response::ServingStatus;

const JOBS: usize = 1_000;
/// Each test ends within this, or fails.
const DEADLINE: Duration = Duration::from_secs(180);
/// Succeeded jobs before a fault hits, so that it hits a run under way.
const BEFORE_FAULT: i64 = 200;
/// After every job succeeded, the invariants must keep holding this long: longer than the
/// media consumer's ack_wait (2 s) and the scheduler's redispatch delay (2 s), so that a late
/// redelivery or re-dispatch would show.
const QUIET: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);

struct Run {
    mesh: ProcessMesh,
    db: PgPool,
    ids: Vec<String>,
    /// Where each run of a job's body appends `<job id> <attempt>` (test.sleep's `run_log`).
    run_log: std::path::PathBuf,
    started: Instant,
    deadline: Instant,
}

/// Starts the mesh as processes (two media workers with `concurrency` slots each) and submits
/// 1,000 jobs of 20 to 200 ms each in one `SubmitJobs`.
async fn start(concurrency: u32) -> Run {
    let started = Instant::now();
    let mesh = ProcessMesh::launch_with(2, |env| env.set_media("MM_WORKER_CONCURRENCY", concurrency))
        .await
        .unwrap();
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&mesh.database_url)
        .unwrap();
    let run_log = std::env::temp_dir().join(format!(
        "mediamesh-runs-{}-{}.log",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let specs = (0..JOBS)
        .map(|i| pb::JobSpec {
            kind: "test.sleep".to_owned(),
            payload_json: serde_json::json!({ "ms": 20 + (i * 7_919) % 181, "run_log": run_log }).to_string(),
            max_attempts: 20,
            timeout_ms: 30_000,
            ..Default::default()
        })
        .collect();
    let submitted = mesh
        .ingest()
        .submit_jobs(pb::SubmitJobsRequest { jobs: specs })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(submitted.len(), JOBS);
    assert!(submitted.iter().all(|r| !r.existing), "every job is new");
    let ids: Vec<String> = submitted.into_iter().map(|r| r.job.unwrap().id).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), JOBS, "1,000 distinct ids");
    println!("mesh up and 1,000 jobs submitted in {:?}", started.elapsed());
    Run {
        mesh,
        db,
        ids,
        run_log,
        started,
        deadline: started + DEADLINE,
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, failing at once if a service process
/// died and at `deadline` otherwise. A probe error (a server is down) counts as "not yet".
async fn poll_until<T>(
    mesh: &mut ProcessMesh,
    what: &str,
    deadline: Instant,
    mut probe: impl AsyncFnMut(&ProcessMesh) -> Result<Option<T>>,
) -> Result<T> {
    loop {
        mesh.check_running()
            .with_context(|| format!("while waiting for {what}"))?;
        let last = match probe(mesh).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out waiting for {what} (last probe: {last})"));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn count(db: &PgPool, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(db).await?)
}

async fn succeeded(db: &PgPool) -> Result<i64> {
    count(db, "SELECT count(*) FROM scheduler.jobs WHERE state = 'SUCCEEDED'").await
}

/// Attempts recorded for the worker process `pid` (worker ids are `<host>-<pid>-<random>`),
/// all of them or only those still running.
async fn attempts_of(db: &PgPool, pid: u32, only_running: bool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.attempts WHERE worker_id LIKE $1 AND (outcome = 'RUNNING' OR NOT $2)",
    )
    .bind(format!("%-{pid}-%"))
    .bind(only_running)
    .fetch_one(db)
    .await?)
}

async fn wait_succeeded(run: &mut Run, at_least: i64) -> i64 {
    let db = run.db.clone();
    poll_until(
        &mut run.mesh,
        &format!("{at_least} jobs SUCCEEDED"),
        run.deadline,
        async |_| Ok(Some(succeeded(&db).await?).filter(|n| *n >= at_least)),
    )
    .await
    .unwrap()
}

/// The invariants that must hold at every moment once every job has succeeded.
async fn settled(db: &PgPool) -> Result<()> {
    let total = count(db, "SELECT count(*) FROM scheduler.jobs").await?;
    let not_succeeded = count(db, "SELECT count(*) FROM scheduler.jobs WHERE state <> 'SUCCEEDED'").await?;
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id::text, count(*) FROM scheduler.job_events WHERE state = 'SUCCEEDED' \
         GROUP BY job_id HAVING count(*) <> 1 ORDER BY job_id LIMIT 20",
    )
    .fetch_all(db)
    .await?;
    let with_event = count(
        db,
        "SELECT count(DISTINCT job_id) FROM scheduler.job_events WHERE state = 'SUCCEEDED'",
    )
    .await?;
    let attempts_twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id::text, count(*) FROM scheduler.attempts WHERE outcome = 'SUCCEEDED' \
         GROUP BY job_id HAVING count(*) <> 1 ORDER BY job_id LIMIT 20",
    )
    .fetch_all(db)
    .await?;
    let with_attempt = count(
        db,
        "SELECT count(DISTINCT job_id) FROM scheduler.attempts WHERE outcome = 'SUCCEEDED'",
    )
    .await?;
    let running = count(db, "SELECT count(*) FROM scheduler.attempts WHERE outcome = 'RUNNING'").await?;
    let problems: Vec<String> = [
        (total != JOBS as i64).then(|| format!("{total} jobs, not {JOBS}")),
        (not_succeeded != 0).then(|| format!("{not_succeeded} jobs not SUCCEEDED")),
        (!twice.is_empty()).then(|| format!("SUCCEEDED events per job not 1: {twice:?}")),
        (with_event != JOBS as i64).then(|| format!("{with_event} jobs with a SUCCEEDED event, not {JOBS}")),
        (!attempts_twice.is_empty()).then(|| format!("SUCCEEDED attempts per job not 1: {attempts_twice:?}")),
        (with_attempt != JOBS as i64).then(|| format!("{with_attempt} jobs with a SUCCEEDED attempt, not {JOBS}")),
        (running != 0).then(|| format!("{running} attempts still RUNNING")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(problems.join("; ")))
    }
}

/// Id, state, attempt, dispatched, last error of a job.
type JobLine = (String, String, i32, bool, Option<String>);

/// A description of the jobs that are not SUCCEEDED, for the failure message.
async fn unfinished(db: &PgPool) -> String {
    let rows: Result<Vec<JobLine>, _> = sqlx::query_as(
        "SELECT id::text, state, attempt, dispatched_at IS NOT NULL, error_code FROM scheduler.jobs \
         WHERE state <> 'SUCCEEDED' ORDER BY id LIMIT 10",
    )
    .fetch_all(db)
    .await;
    let states: Result<Vec<(String, i64)>, _> =
        sqlx::query_as("SELECT state, count(*) FROM scheduler.jobs GROUP BY state ORDER BY state")
            .fetch_all(db)
            .await;
    format!("states: {states:?}; first unfinished: {rows:?}")
}

/// Every job listed by the API, page by page, with `state` as filter.
async fn list_all(mesh: &ProcessMesh, state: pb::JobState) -> Result<Vec<pb::Job>> {
    let mut jobs = mesh.jobs();
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = jobs
            .list_jobs(pb::ListJobsRequest {
                state: state as i32,
                page_size: 250,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

struct Outcome {
    /// Jobs that needed more than one attempt.
    retried: usize,
    /// Attempts in all.
    attempts: usize,
}

/// Waits for all 1,000 jobs to succeed, watches the invariants hold for `QUIET`, then checks
/// everything through the API and in PostgreSQL.
async fn finish(run: &mut Run, fault: &str) -> Outcome {
    let db = run.db.clone();
    let all_done = poll_until(
        &mut run.mesh,
        &format!("all {JOBS} jobs SUCCEEDED after {fault}"),
        run.deadline,
        async |_| Ok(Some(succeeded(&db).await?).filter(|n| *n >= JOBS as i64)),
    )
    .await;
    if let Err(e) = all_done {
        panic!("{e:#}\n{}", unfinished(&db).await);
    }
    let done_at = run.started.elapsed();
    // Every service answers again.
    run.mesh.wait_all_serving(Duration::from_secs(30)).await.unwrap();
    let quiet_until = Instant::now() + QUIET;
    while Instant::now() < quiet_until {
        run.mesh.check_running().unwrap();
        if let Err(e) = settled(&db).await {
            panic!("after {fault}: {e:#}\n{}", unfinished(&db).await);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The public API: 1,000 jobs, all SUCCEEDED, each with exactly one SUCCEEDED attempt and
    // every other attempt FAILED.
    let submitted: HashSet<&str> = run.ids.iter().map(String::as_str).collect();
    let listed = list_all(&run.mesh, pb::JobState::Succeeded).await.unwrap();
    let listed_ids: HashSet<&str> = listed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed.len(), JOBS, "ListJobs(SUCCEEDED) lists each job once");
    assert_eq!(
        listed_ids, submitted,
        "ListJobs(SUCCEEDED) lists exactly the submitted jobs"
    );
    let everything = list_all(&run.mesh, pb::JobState::Unspecified).await.unwrap();
    assert_eq!(everything.len(), JOBS, "no job besides the submitted ones");
    let mut retried = 0;
    let mut attempts = 0;
    for job in &everything {
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "job {}: {job:?}", job.id);
        let won: Vec<&pb::Attempt> = job
            .attempts
            .iter()
            .filter(|a| a.outcome == pb::JobState::Succeeded as i32)
            .collect();
        assert_eq!(
            won.len(),
            1,
            "job {}: one SUCCEEDED attempt: {:?}",
            job.id,
            job.attempts
        );
        assert_eq!(
            won[0].attempt, job.attempt,
            "job {}: the last attempt succeeded",
            job.id
        );
        for lost in job.attempts.iter().filter(|a| a.attempt != job.attempt) {
            assert_eq!(
                lost.outcome,
                pb::JobState::Failed as i32,
                "job {}: an attempt that did not succeed is FAILED: {:?}",
                job.id,
                job.attempts
            );
        }
        assert!(job.attempts.len() <= 20, "job {}: within its attempt budget", job.id);
        attempts += job.attempts.len();
        if job.attempts.len() > 1 {
            retried += 1;
        }
    }
    let stats = run
        .mesh
        .jobs()
        .get_queue_stats(pb::GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats;
    let sleep = stats.iter().find(|s| s.kind == "test.sleep").unwrap();
    assert_eq!(
        (
            sleep.queued,
            sleep.scheduled,
            sleep.running,
            sleep.succeeded,
            sleep.failed,
            sleep.cancelled
        ),
        (0, 0, 0, JOBS as u64, 0, 0),
        "queue stats: {sleep:?}"
    );
    // And PostgreSQL itself, once more.
    settled(&db).await.unwrap();
    let runs = body_runs(&run.run_log, &submitted);
    let _ = std::fs::remove_file(&run.run_log);
    println!(
        "{fault}: all {JOBS} jobs SUCCEEDED exactly once after {done_at:?} ({attempts} attempts, \
         {retried} jobs retried); bodies ran {runs}; test took {:?}",
        run.started.elapsed()
    );
    Outcome { retried, attempts }
}

/// How many times each job's body ran, from the run log: every submitted job at least once
/// (the promise is at least once), nothing else. Returns a summary such as
/// `1,012 times: 988 jobs once, 12 twice`.
fn body_runs(run_log: &std::path::Path, submitted: &HashSet<&str>) -> String {
    let text = std::fs::read_to_string(run_log).unwrap_or_else(|e| panic!("run log {}: {e}", run_log.display()));
    let mut per_job: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for line in text.lines() {
        let id = line.split(' ').next().unwrap_or_default();
        assert!(
            submitted.contains(id),
            "a run of a job that was not submitted: {line:?}"
        );
        *per_job.entry(id).or_default() += 1;
    }
    assert_eq!(per_job.len(), submitted.len(), "every job's body ran at least once");
    let mut by_count: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for n in per_job.values() {
        *by_count.entry(*n).or_default() += 1;
    }
    let total: usize = per_job.values().sum();
    let parts: Vec<String> = by_count
        .iter()
        .map(|(runs, jobs)| format!("{jobs} jobs {runs} time{}", if *runs == 1 { "" } else { "s" }))
        .collect();
    format!("{total} times: {}", parts.join(", "))
}

/// Five times, while media worker 0 runs jobs: SIGKILL it and start it again, and wait until
/// the new process has taken jobs. Worker 1 keeps running throughout. The killed jobs are
/// redelivered after the 2 s ack_wait and run again as a new attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_worker_sigkilled_five_times_loses_no_job() {
    let mut run = start(8).await;
    let db = run.db.clone();
    for kill in 1..=5i64 {
        let pid = run.mesh.pid(Process::Media(0)).unwrap();
        let at_least = 150 * kill;
        let (done, running) = poll_until(
            &mut run.mesh,
            &format!("kill {kill}: {at_least} jobs SUCCEEDED and media-0 running jobs"),
            run.deadline,
            async |_| {
                let done = succeeded(&db).await?;
                assert!(
                    done < JOBS as i64,
                    "kill {kill}: every job finished before the kill; make the run longer"
                );
                let running = attempts_of(&db, pid, true).await?;
                Ok((done >= at_least && running > 0).then_some((done, running)))
            },
        )
        .await
        .unwrap();
        run.mesh.kill(Process::Media(0)).await.unwrap();
        println!(
            "kill {kill} at {:?}: media-0 (pid {pid}) SIGKILLed with {running} jobs running, {done} succeeded",
            run.started.elapsed()
        );
        run.mesh.start(Process::Media(0)).await.unwrap();
        let new_pid = run.mesh.pid(Process::Media(0)).unwrap();
        poll_until(
            &mut run.mesh,
            &format!("restarted media-0 (pid {new_pid}) taking jobs after kill {kill}"),
            run.deadline,
            async |_| {
                let taken = attempts_of(&db, new_pid, false).await?;
                Ok((taken > 0 && succeeded(&db).await? > done).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    let outcome = finish(&mut run, "5 SIGKILLs of a media worker").await;
    assert!(
        outcome.retried > 0,
        "the kills hit running jobs, which ran again as a new attempt"
    );
    // Every attempt that did not succeed was lost with a killed worker.
    let lost: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT job_id::text, attempt, error_code FROM scheduler.attempts \
         WHERE outcome <> 'SUCCEEDED' AND error_code IS DISTINCT FROM 'UNAVAILABLE' LIMIT 10",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(lost.is_empty(), "lost attempts are FAILED with UNAVAILABLE: {lost:?}");
    assert!(outcome.attempts > JOBS);
    run.mesh.shutdown().await.unwrap();
}

/// nats-server stops (SIGTERM) while 1,000 jobs run and starts again on the same port with
/// the same JetStream store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_loses_no_job() {
    let mut run = start(16).await;
    let done = wait_succeeded(&mut run, BEFORE_FAULT).await;
    run.mesh.stop_nats().await.unwrap();
    println!("nats-server stopped at {:?}, {done} succeeded", run.started.elapsed());
    // The services notice it is gone.
    for process in [Process::Scheduler, Process::Media(0)] {
        run.mesh
            .wait_status(process, ServingStatus::NotServing, Duration::from_secs(15))
            .await
            .unwrap();
        println!("{process} NOT_SERVING at {:?}", run.started.elapsed());
    }
    run.mesh.start_nats().await.unwrap();
    println!("nats-server started again at {:?}", run.started.elapsed());
    run.mesh.wait_all_serving(Duration::from_secs(60)).await.unwrap();
    println!("all SERVING again at {:?}", run.started.elapsed());
    finish(&mut run, "a nats-server restart").await;
    run.mesh.shutdown().await.unwrap();
}

/// PostgreSQL stops (fast shutdown) while 1,000 jobs run and starts again with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_loses_no_job() {
    let mut run = start(16).await;
    let done = wait_succeeded(&mut run, BEFORE_FAULT).await;
    run.mesh.stop_postgres().await.unwrap();
    println!("PostgreSQL stopped at {:?}, {done} succeeded", run.started.elapsed());
    for process in [Process::Scheduler, Process::Ingest] {
        run.mesh
            .wait_status(process, ServingStatus::NotServing, Duration::from_secs(15))
            .await
            .unwrap();
        println!("{process} NOT_SERVING at {:?}", run.started.elapsed());
    }
    run.mesh.start_postgres().await.unwrap();
    println!("PostgreSQL started again at {:?}", run.started.elapsed());
    run.mesh.wait_all_serving(Duration::from_secs(60)).await.unwrap();
    println!("all SERVING again at {:?}", run.started.elapsed());
    finish(&mut run, "a PostgreSQL restart").await;
    run.mesh.shutdown().await.unwrap();
}

/// The scheduler is SIGKILLed while 1,000 jobs run (dispatching, applying reports), stays down
/// for a second while the workers go on reporting into JetStream, and starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_sigkill_loses_no_job() {
    let mut run = start(16).await;
    let done = wait_succeeded(&mut run, BEFORE_FAULT).await;
    run.mesh.kill(Process::Scheduler).await.unwrap();
    println!("scheduler SIGKILLed at {:?}, {done} succeeded", run.started.elapsed());
    // The outage itself is the fault: one second without a scheduler.
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.mesh.start(Process::Scheduler).await.unwrap();
    println!("scheduler started again at {:?}", run.started.elapsed());
    finish(&mut run, "a scheduler SIGKILL").await;
    run.mesh.shutdown().await.unwrap();
}

/// A poison job: each delivery kills the worker process that runs it (abort, as an OOM kill
/// would). Each death is recorded as a lost attempt, and once the deliveries pass the budget
/// the next worker refuses it: the job ends FAILED instead of killing workers forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_workers_ends_failed_after_its_budget() {
    let mut mesh = ProcessMesh::launch(1).await.unwrap();
    let job = mesh
        .ingest()
        .submit_job(pb::SubmitJobRequest {
            job: Some(pb::JobSpec {
                kind: "test.sleep".to_owned(),
                payload_json: serde_json::json!({ "crash": true }).to_string(),
                max_attempts: 2,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut crashes = 0;
    let job = loop {
        assert!(
            Instant::now() < deadline,
            "job {} did not end; {crashes} crashes",
            job.id
        );
        if !mesh.is_running(Process::Media(0)) {
            crashes += 1;
            mesh.start(Process::Media(0)).await.unwrap();
        }
        let current = mesh
            .jobs()
            .get_job(pb::GetJobRequest { job_id: job.id.clone() })
            .await
            .map(|r| r.into_inner().job.unwrap());
        if let Ok(current) = current
            && current.state == pb::JobState::Failed as i32
        {
            break current;
        }
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(crashes, 2, "one crash per attempt of the budget");
    assert!(mesh.is_running(Process::Media(0)), "the third delivery did not run");
    let error = job.error.as_ref().unwrap();
    assert_eq!(error.code, pb::ErrorCode::Unavailable as i32);
    assert!(error.message.contains("attempt budget of 2 spent"), "{}", error.message);
    let outcomes: Vec<(u32, i32, String)> = job
        .attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.outcome,
                a.error.as_ref().map(|e| e.message.clone()).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    for (attempt, outcome, message) in &outcomes[..2] {
        assert_eq!(*outcome, pb::JobState::Failed as i32, "attempt {attempt}");
        assert!(message.contains("stopped reporting"), "attempt {attempt}: {message}");
    }
    mesh.shutdown().await.unwrap();
}

/// The sum of the samples of `name` whose labels include `label` in a `/metrics` scrape.
async fn metric_sum(addr: std::net::SocketAddr, name: &str, label: &str) -> Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Jobs whose messages wait in JetStream (no worker running) when the scheduler is SIGKILLed
/// are not sent again by the next scheduler: a dispatch still unstarted after a second is
/// recorded in its row, and a scheduler that starts reads those back as sent. Seen from
/// outside: the new scheduler dispatches only the jobs the old one had not sent, and the
/// worker runs each job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_does_not_send_waiting_jobs_again() {
    const N: usize = 50;
    let deadline = Instant::now() + DEADLINE;
    let mut mesh = ProcessMesh::launch_with(1, |_| {}).await.unwrap();
    mesh.stop(Process::Media(0)).await.unwrap();
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&mesh.database_url)
        .unwrap();
    let specs = (0..N)
        .map(|_| pb::JobSpec {
            kind: "test.sleep".to_owned(),
            payload_json: r#"{"ms": 5}"#.to_owned(),
            ..Default::default()
        })
        .collect();
    let ids: Vec<String> = mesh
        .ingest()
        .submit_jobs(pb::SubmitJobsRequest { jobs: specs })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|created| created.job.unwrap().id)
        .collect();
    assert_eq!(ids.len(), N);

    // The first scheduler sends as many as the queue's prefetch lets it (32) and, once they
    // have waited a second, records them.
    let scheduler_metrics = mesh.metrics_addr(Process::Scheduler).unwrap();
    let dispatches = "mediamesh_scheduler_dispatch_wait_seconds_count";
    let sent_before = poll_until(&mut mesh, "the first dispatches", deadline, async |_| {
        let sent = metric_sum(scheduler_metrics, dispatches, r#"kind="test.sleep""#).await?;
        Ok((sent > 0.0).then_some(sent))
    })
    .await
    .unwrap();
    let recorded = poll_until(&mut mesh, "the waiting dispatches recorded", deadline, async |_| {
        let recorded = count(
            &db,
            "SELECT count(*) FROM scheduler.jobs WHERE dispatched_at IS NOT NULL",
        )
        .await?;
        Ok((recorded as f64 == sent_before).then_some(recorded))
    })
    .await
    .unwrap();
    assert!(
        (1..N as i64).contains(&recorded),
        "the prefetch holds some jobs back: {recorded} of {N} sent"
    );
    println!("{recorded} of {N} jobs sent and recorded; SIGKILL the scheduler");

    mesh.kill(Process::Scheduler).await.unwrap();
    mesh.start(Process::Scheduler).await.unwrap();
    mesh.start(Process::Media(0)).await.unwrap();
    poll_until(&mut mesh, "every job SUCCEEDED", deadline, async |_| {
        Ok(Some(succeeded(&db).await?).filter(|n| *n == N as i64))
    })
    .await
    .unwrap();

    let scheduler_metrics = mesh.metrics_addr(Process::Scheduler).unwrap();
    let sent_after = metric_sum(scheduler_metrics, dispatches, r#"kind="test.sleep""#)
        .await
        .unwrap();
    assert_eq!(
        sent_after,
        (N as i64 - recorded) as f64,
        "the new scheduler sends only the jobs the old one had not sent"
    );
    let worker_metrics = mesh.metrics_addr(Process::Media(0)).unwrap();
    let runs = metric_sum(worker_metrics, "mediamesh_worker_jobs_total", r#"kind="test.sleep""#)
        .await
        .unwrap();
    println!("body runs: {runs} for {N} jobs; dispatches after the restart: {sent_after}");
    assert_eq!(runs, N as f64, "each job's body ran once");
    for id in &ids {
        let job = mesh
            .jobs()
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(
            (job.state, job.attempt, job.attempts.len()),
            (pb::JobState::Succeeded as i32, 1, 1),
            "job {id}: one attempt, succeeded: {job:?}"
        );
    }
    mesh.shutdown().await.unwrap();
}
