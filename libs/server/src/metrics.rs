//! Prometheus metrics: a small registry of labelled counters, gauges and histograms rendered
//! in the text exposition format, and the HTTP server every service runs on `MM_METRICS_ADDR`
//! (`/metrics`, `/livez`, `/readyz`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Parses `MM_METRICS_ADDR`: an address, or an empty string for no metrics server.
pub fn parse_metrics_addr(text: &str) -> std::result::Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| format!("MM_METRICS_ADDR {text:?}: {e}"))
}

/// Histogram buckets for latencies, in seconds (5 ms .. 10 min).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

type Labels = Vec<String>;

fn key(names: &[&'static str], values: &[&str]) -> Labels {
    debug_assert_eq!(names.len(), values.len(), "label count");
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

/// `{a="x",b="y"}` (empty when there are no labels), with `extra` appended.
fn label_set(names: &[&'static str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{}\"", escape(v)));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

trait Collect: Send + Sync {
    fn render(&self, out: &mut String);
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

struct Scalar {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Labels, f64>>,
}

impl Scalar {
    fn update(&self, values: &[&str], f: impl FnOnce(&mut f64)) {
        if let Ok(mut map) = self.values.lock() {
            f(map.entry(key(self.labels, values)).or_insert(0.0));
        }
    }
}

impl Collect for Scalar {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        if let Ok(map) = self.values.lock() {
            for (values, v) in map.iter() {
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    self.name,
                    label_set(self.labels, values, None),
                    number(*v)
                );
            }
        }
    }
}

/// A counter with labels: only goes up.
#[derive(Clone)]
pub struct Counter(Arc<Scalar>);

impl Counter {
    pub fn inc(&self, labels: &[&str]) {
        self.inc_by(labels, 1.0);
    }

    pub fn inc_by(&self, labels: &[&str], by: f64) {
        if by >= 0.0 {
            self.0.update(labels, |v| *v += by);
        }
    }
}

/// A gauge with labels.
#[derive(Clone)]
pub struct Gauge(Arc<Scalar>);

impl Gauge {
    pub fn set(&self, labels: &[&str], value: f64) {
        self.0.update(labels, |v| *v = value);
    }

    pub fn add(&self, labels: &[&str], by: f64) {
        self.0.update(labels, |v| *v += by);
    }

    /// Replaces every series at once (a gauge refreshed from a query: series that disappeared
    /// are dropped).
    pub fn replace(&self, series: impl IntoIterator<Item = (Vec<String>, f64)>) {
        if let Ok(mut map) = self.0.values.lock() {
            *map = series.into_iter().collect();
        }
    }
}

#[derive(Clone, Default)]
struct Buckets {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

struct HistogramInner {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    values: Mutex<BTreeMap<Labels, Buckets>>,
}

/// A histogram with labels.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    pub fn observe(&self, labels: &[&str], value: f64) {
        let inner = &self.0;
        if let Ok(mut map) = inner.values.lock() {
            let b = map.entry(key(inner.labels, labels)).or_insert_with(|| Buckets {
                counts: vec![0; inner.bounds.len()],
                ..Buckets::default()
            });
            for (i, bound) in inner.bounds.iter().enumerate() {
                if value <= *bound {
                    b.counts[i] += 1;
                }
            }
            b.sum += value;
            b.count += 1;
        }
    }

    pub fn observe_duration(&self, labels: &[&str], d: Duration) {
        self.observe(labels, d.as_secs_f64());
    }
}

impl Collect for HistogramInner {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let Ok(map) = self.values.lock() else { return };
        for (values, b) in map.iter() {
            for (bound, count) in self.bounds.iter().zip(&b.counts) {
                let le = number(*bound);
                let labels = label_set(self.labels, values, Some(("le", &le)));
                let _ = writeln!(out, "{}_bucket{labels} {count}", self.name);
            }
            let labels = label_set(self.labels, values, Some(("le", "+Inf")));
            let _ = writeln!(out, "{}_bucket{labels} {}", self.name, b.count);
            let labels = label_set(self.labels, values, None);
            let _ = writeln!(out, "{}_sum{labels} {}", self.name, number(b.sum));
            let _ = writeln!(out, "{}_count{labels} {}", self.name, b.count);
        }
    }
}

/// Runs before each scrape, e.g. to refresh gauges from a database.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The metrics of one service.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Collect>>>>,
    refresh: Arc<Mutex<Vec<Refresh>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, family: Arc<dyn Collect>) {
        if let Ok(mut families) = self.families.lock() {
            families.push(family);
        }
    }

    fn scalar(
        &self,
        kind: &'static str,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<Scalar> {
        let scalar = Arc::new(Scalar {
            name,
            help,
            kind,
            labels,
            values: Mutex::new(BTreeMap::new()),
        });
        self.add(scalar.clone());
        scalar
    }

    pub fn counter(&self, name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Counter {
        Counter(self.scalar("counter", name, help, labels))
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Gauge {
        Gauge(self.scalar("gauge", name, help, labels))
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Histogram {
        let inner = Arc::new(HistogramInner {
            name,
            help,
            labels,
            bounds,
            values: Mutex::new(BTreeMap::new()),
        });
        self.add(inner.clone());
        Histogram(inner)
    }

    /// Runs `f` before every scrape (bounded to 2 s).
    pub fn on_scrape<F, Fut>(&self, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut refresh) = self.refresh.lock() {
            refresh.push(Arc::new(move || Box::pin(f())));
        }
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let families: Vec<_> = self.families.lock().map(|f| f.clone()).unwrap_or_default();
        let mut out = String::new();
        for family in families {
            family.render(&mut out);
        }
        out
    }

    /// Refreshes (see [`Registry::on_scrape`]), then renders.
    pub async fn scrape(&self) -> String {
        let refresh: Vec<_> = self.refresh.lock().map(|r| r.clone()).unwrap_or_default();
        for f in refresh {
            if tokio::time::timeout(Duration::from_secs(2), f()).await.is_err() {
                tracing::debug!("metrics refresh timed out");
            }
        }
        self.render()
    }
}

/// Whether the service is ready: follows the overall gRPC health status.
#[derive(Clone)]
pub struct Readiness {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    pub fn set(&self, ready: bool) {
        self.tx.send_replace(ready);
    }

    pub fn is_ready(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// Binds `addr` (nothing when `None`) and serves `/metrics`, `/livez` and `/readyz` until
/// `shutdown`. Returns the bound address.
pub async fn serve_metrics(
    addr: Option<SocketAddr>,
    registry: Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<Option<SocketAddr>> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        registry.scrape().await,
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    tracing::info!(addr = %bound, "metrics listening");
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = server.await {
            tracing::warn!(error = %err, "metrics server failed");
        }
    });
    Ok(Some(bound))
}

/// The worker loop's metrics (media and inference): jobs in flight, jobs run, run duration.
#[derive(Clone)]
pub struct WorkerMetrics {
    in_flight: Gauge,
    runs: Counter,
    duration: Histogram,
}

impl WorkerMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            in_flight: registry.gauge(
                "mediamesh_worker_jobs_in_flight",
                "Jobs this worker is running now",
                &["queue"],
            ),
            runs: registry.counter(
                "mediamesh_worker_jobs_total",
                "Job attempts this worker ran, by kind and outcome (OK or an error code)",
                &["kind", "outcome"],
            ),
            duration: registry.histogram(
                "mediamesh_worker_job_duration_seconds",
                "How long job attempts ran in this worker",
                &["kind", "outcome"],
                LATENCY_BUCKETS,
            ),
        }
    }
}

impl mediamesh_bus::worker::JobObserver for WorkerMetrics {
    fn started(&self, queue: &str, _kind: &str) {
        self.in_flight.add(&[queue], 1.0);
    }

    fn finished(&self, queue: &str, kind: &str, outcome: &str, elapsed: Duration) {
        self.in_flight.add(&[queue], -1.0);
        self.runs.inc(&[kind, outcome]);
        self.duration.observe_duration(&[kind, outcome], elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let registry = Registry::new();
        let c = registry.counter("mm_c_total", "A counter", &["kind", "outcome"]);
        c.inc(&["media.thumbnails", "OK"]);
        c.inc_by(&["media.thumbnails", "OK"], 2.0);
        c.inc(&["a\"b\\c\nd", "x"]);
        let g = registry.gauge("mm_g", "A gauge", &[]);
        g.set(&[], 1.5);
        let h = registry.histogram("mm_h_seconds", "A histogram", &["kind"], &[0.1, 1.0]);
        h.observe(&["k"], 0.25);
        h.observe(&["k"], 0.5);
        h.observe(&["k"], 4.0);
        let text = registry.render();
        let expected = "\
# HELP mm_c_total A counter
# TYPE mm_c_total counter
mm_c_total{kind=\"a\\\"b\\\\c\\nd\",outcome=\"x\"} 1
mm_c_total{kind=\"media.thumbnails\",outcome=\"OK\"} 3
# HELP mm_g A gauge
# TYPE mm_g gauge
mm_g 1.5
# HELP mm_h_seconds A histogram
# TYPE mm_h_seconds histogram
mm_h_seconds_bucket{kind=\"k\",le=\"0.1\"} 0
mm_h_seconds_bucket{kind=\"k\",le=\"1\"} 2
mm_h_seconds_bucket{kind=\"k\",le=\"+Inf\"} 3
mm_h_seconds_sum{kind=\"k\"} 4.75
mm_h_seconds_count{kind=\"k\"} 3
";
        assert_eq!(text, expected);
    }

    #[test]
    fn gauge_replace_drops_old_series() {
        let registry = Registry::new();
        let g = registry.gauge("mm_jobs", "Jobs", &["state"]);
        g.set(&["QUEUED"], 3.0);
        g.replace([(vec!["RUNNING".to_owned()], 2.0)]);
        let text = registry.render();
        assert!(text.contains("mm_jobs{state=\"RUNNING\"} 2\n"));
        assert!(!text.contains("QUEUED"));
    }

    #[test]
    fn metrics_addr_parses_and_empty_disables() {
        assert_eq!(parse_metrics_addr("").unwrap(), None);
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9101").unwrap(),
            Some("0.0.0.0:9101".parse().unwrap())
        );
        assert!(parse_metrics_addr("nope").is_err());
    }
}
