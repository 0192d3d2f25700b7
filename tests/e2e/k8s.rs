//! The Kubernetes manifests (`k8s/`): each overlay builds with `kubectl kustomize`, passes
//! `kubernetes-validate --strict` (the custom resources it has no schema for are checked here
//! instead), and holds what operators rely on: probes, resources and security contexts on
//! every container, a PodDisruptionBudget per service, only ingest reachable from outside the
//! namespace, and the dev/prod differences (NATS and PostgreSQL replicas, autoscaling, blobs).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// (service, gRPC port, metrics port)
const SERVICES: [(&str, u64, u64); 4] = [
    ("ingest", 50051, 9101),
    ("scheduler", 50052, 9102),
    ("media", 50053, 9103),
    ("inference", 50054, 9104),
];
/// The web console's HTTP port (probes /livez and /readyz).
const CONSOLE_PORT: u64 = 8080;
const NAMESPACE: &str = "mediamesh";
const NAME_LABEL: &str = "app.kubernetes.io/name";
/// MM_GRACE_MS: the pods' termination grace period must exceed it.
const GRACE_SECONDS: u64 = 30;
/// Kinds of custom resources kubernetes-validate has no schema for: left out of its input on
/// purpose and checked by this file.
const CUSTOM_KINDS: [(&str, &str); 4] = [
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("postgresql.cnpg.io/v1", "ScheduledBackup"),
];
/// The oldest Kubernetes we support (native gRPC probes are GA since 1.27) and the newest the
/// validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Namespaces other than ours that may reach pods here, and on which ports.
const OUTSIDE_ALLOWED: [(&str, &[u64]); 3] = [
    ("monitoring", &[9101, 9102, 9103, 9104]),
    ("keda", &[8222]),
    ("cnpg-system", &[8000, 5432]),
];

#[test]
fn dev_overlay() {
    let docs = build("dev");
    validate("dev", &docs);
    assert_no_problems("dev", &common_problems(&docs));

    let nats = find(&docs, "StatefulSet", "nats");
    assert_eq!(nats["spec"]["replicas"], 1, "dev runs one NATS server");
    assert_eq!(
        config_value(&docs, "MM_STREAM_REPLICAS"),
        "1",
        "one server cannot hold more replicas"
    );
    let postgres = find(&docs, "StatefulSet", "postgres");
    assert_eq!(postgres["spec"]["replicas"], 1, "dev runs one PostgreSQL");
    assert!(of_kind(&docs, "Cluster").is_empty(), "dev has no CloudNativePG cluster");
    assert!(of_kind(&docs, "ScaledObject").is_empty(), "dev does not need KEDA");
    for (service, _, _) in SERVICES {
        let deployment = find(&docs, "Deployment", service);
        assert_eq!(deployment["spec"]["replicas"], 1, "{service}: one replica in dev");
        // dev generates the internal token the services share.
        let internal = arr(&deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"])
            .iter()
            .filter_map(|e| e["secretRef"]["name"].as_str())
            .find(|n| n.starts_with("mediamesh-internal"))
            .unwrap_or_else(|| panic!("{service}: no internal token"))
            .to_owned();
        assert!(
            !find(&docs, "Secret", &internal)["data"]["MM_INTERNAL_TOKEN"].is_null(),
            "{service}: dev makes {internal}"
        );
        // The blob store is a folder on a shared volume.
        let mounts = &deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
        let blobs = arr(mounts)
            .iter()
            .find(|m| m["mountPath"] == "/data/blobs")
            .unwrap_or_else(|| panic!("{service}: no volume at /data/blobs"));
        let volume = arr(&deployment["spec"]["template"]["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == blobs["name"])
            .unwrap();
        let claim = volume["persistentVolumeClaim"]["claimName"].as_str().unwrap();
        find(&docs, "PersistentVolumeClaim", claim);
    }
    assert_eq!(config_value(&docs, "MM_BLOB_URL"), "file:///data/blobs");
    let database_url = config_value_of_secret(&docs, "ingest", "MM_DATABASE_URL");
    assert!(
        database_url.contains("@postgres:5432/"),
        "dev's MM_DATABASE_URL points at the dev PostgreSQL: {database_url}"
    );
}

#[test]
fn prod_overlay() {
    let docs = build("prod");
    validate("prod", &docs);
    assert_no_problems("prod", &common_problems(&docs));
    assert_no_problems("prod", &custom_resource_problems(&docs));

    let nats = find(&docs, "StatefulSet", "nats");
    assert_eq!(nats["spec"]["replicas"], 3, "prod runs three NATS servers");
    assert_eq!(
        config_value(&docs, "MM_STREAM_REPLICAS"),
        "3",
        "prod streams live on all three servers"
    );
    let nats_conf = config_map_data(&docs, "nats-config", "nats.conf");
    for i in 0..3 {
        let route = format!("nats://nats-{i}.nats-headless:6222");
        assert!(nats_conf.contains(&route), "nats.conf lacks the route {route}");
    }
    assert!(
        arr(&nats["spec"]["volumeClaimTemplates"]).len() == 1,
        "NATS keeps JetStream on a PVC"
    );

    let clusters = of_kind(&docs, "Cluster");
    assert_eq!(clusters.len(), 1, "one CloudNativePG cluster");
    assert_eq!(clusters[0]["spec"]["instances"], 3);
    assert!(
        of_kind(&docs, "StatefulSet")
            .iter()
            .all(|s| s["metadata"]["name"] != "postgres"),
        "prod uses CloudNativePG, not the dev PostgreSQL"
    );
    let cluster = clusters[0]["metadata"]["name"].as_str().unwrap();
    for service in ["ingest", "scheduler", "inference"] {
        let reference = secret_ref(&docs, service, "MM_DATABASE_URL");
        assert_eq!(
            reference,
            (format!("{cluster}-app"), "uri".to_owned()),
            "{service}: MM_DATABASE_URL from the Secret CloudNativePG makes"
        );
    }
    assert!(config_value(&docs, "MM_BLOB_URL").starts_with("s3://"));

    // Autoscaling: HPA on CPU for ingest, KEDA for the workers. One scheduler: its dispatcher
    // counts the caps of what it holds in memory (ADR 7), until scheduler leases exist.
    assert!(
        of_kind(&docs, "HorizontalPodAutoscaler")
            .iter()
            .all(|h| h["spec"]["scaleTargetRef"]["name"] != "scheduler"),
        "no autoscaler for the scheduler"
    );
    assert_eq!(
        find(&docs, "Deployment", "scheduler")["spec"]["replicas"],
        1,
        "one scheduler in prod"
    );
    {
        let service = "ingest";
        let hpa = find(&docs, "HorizontalPodAutoscaler", service);
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], service);
        assert!(
            hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
            "{service}: at least 2 in prod"
        );
        assert!(
            arr(&hpa["spec"]["metrics"])
                .iter()
                .any(|m| m["resource"]["name"] == "cpu"),
            "{service}: HPA on CPU"
        );
    }
    for service in ["ingest", "media", "inference"] {
        assert!(
            find(&docs, "Deployment", service)["spec"].get("replicas").is_none(),
            "{service}: the autoscaler owns the replica count, the manifest must not reset it"
        );
    }
}

/// The checks above can fail: a manifest set with the usual mistakes is refused.
#[test]
fn checks_refuse_bad_manifests() {
    let mut docs = build("prod");
    assert_no_problems("prod", &common_problems(&docs));

    // The scheduler's gRPC port opened to every source.
    let mut exposed = docs.clone();
    exposed.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "oops", "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {NAME_LABEL: "scheduler"}},
                 "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 50052}]}]}
    }));
    let problems = common_problems(&exposed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("scheduler") && p.contains("outside")),
        "{problems:?}"
    );

    // Every port of every pod opened to another namespace.
    let mut exposed = docs.clone();
    exposed.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "oops", "namespace": NAMESPACE},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"namespaceSelector": {}}]}]}
    }));
    let problems = common_problems(&exposed);
    for (service, _, _) in SERVICES {
        assert!(
            problems.iter().any(|p| p.contains(service) && p.contains("outside")),
            "{problems:?}"
        );
    }

    // No default deny.
    let without_deny: Vec<Value> = docs
        .iter()
        .filter(|d| d["metadata"]["name"] != "default-deny-ingress")
        .cloned()
        .collect();
    assert!(
        common_problems(&without_deny)
            .iter()
            .any(|p| p.contains("default deny"))
    );

    // A container without probes, limits or a read-only root; a missing PDB.
    let media = docs
        .iter_mut()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "media")
        .unwrap();
    let container = &mut media["spec"]["template"]["spec"]["containers"][0];
    container.as_object_mut().unwrap().remove("livenessProbe");
    container["resources"].as_object_mut().unwrap().remove("limits");
    container["securityContext"]["readOnlyRootFilesystem"] = json!(false);
    docs.retain(|d| !(d["kind"] == "PodDisruptionBudget" && d["metadata"]["name"] == "inference"));
    let problems = common_problems(&docs);
    for expected in [
        "media: container media has no livenessProbe",
        "media: container media has no resources.limits.cpu",
        "media: container media: securityContext.readOnlyRootFilesystem",
        "inference: no PodDisruptionBudget",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected} not in {problems:?}"
        );
    }

    // A KEDA trigger on the wrong consumer.
    let mut docs = build("prod");
    let scaled = docs
        .iter_mut()
        .find(|d| d["kind"] == "ScaledObject" && d["metadata"]["name"] == "media")
        .unwrap();
    scaled["spec"]["triggers"][0]["metadata"]["consumer"] = json!("scheduler-events");
    let problems = custom_resource_problems(&docs);
    assert!(problems.iter().any(|p| p.contains("consumer")), "{problems:?}");
}

// ---- building and validating ----------------------------------------------------------------

fn root() -> PathBuf {
    mediamesh_testkit::workspace_root()
}

/// `kubectl kustomize k8s/overlays/<overlay>`, parsed.
fn build(overlay: &str) -> Vec<Value> {
    let dir = root().join("k8s/overlays").join(overlay);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): the k8s tests need kubectl on PATH (its built-in kustomize builds the overlays)")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).unwrap();
    // kustomize separates resources with a `---` line
    let mut docs = Vec::new();
    for document in yaml.split("\n---\n") {
        let value: Value = serde_norway::from_str(document)
            .unwrap_or_else(|e| panic!("{overlay}: kustomize printed YAML that does not parse: {e}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    assert!(docs.len() > 20, "{overlay}: only {} resources", docs.len());
    docs
}

fn is_custom(doc: &Value) -> bool {
    CUSTOM_KINDS
        .iter()
        .any(|(api, kind)| doc["apiVersion"] == *api && doc["kind"] == *kind)
}

/// Every resource except the known custom ones through `kubernetes-validate --strict`, which
/// must pass each of them and skip none.
fn validate(overlay: &str, docs: &[Value]) {
    let validator = root().join(".mediamesh/venv/bin/kubernetes-validate");
    assert!(
        validator.is_file(),
        "{} is missing: run scripts/setup.sh, which installs PyPI's kubernetes-validate into .mediamesh/venv",
        validator.display()
    );
    let known: Vec<&Value> = docs.iter().filter(|d| !is_custom(d)).collect();
    let custom = docs.len() - known.len();
    if overlay == "prod" {
        assert!(custom >= 5, "prod has its KEDA, ServiceMonitor and CNPG resources");
    }
    let mut input = String::new();
    for doc in &known {
        input.push_str("---\n");
        input.push_str(&serde_norway::to_string(doc).unwrap());
    }
    // a file, not stdin: the validator reads its input once per Kubernetes version
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(input.as_bytes()).unwrap();
    let mut command = Command::new(&validator);
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["-k", version]);
    }
    let output = command
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", validator.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{overlay}: kubernetes-validate --strict failed:\n{report}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("WARN") || l.starts_with("ERROR")),
        "{overlay}: kubernetes-validate skipped or refused resources:\n{report}"
    );
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
        .count();
    assert_eq!(
        passed,
        known.len() * KUBERNETES_VERSIONS.len(),
        "{overlay}: not every resource was validated:\n{report}"
    );
}

fn assert_no_problems(overlay: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{overlay}:\n  {}", problems.join("\n  "));
}

// ---- what every overlay must hold -----------------------------------------------------------

fn common_problems(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    workload_problems(docs, &mut problems);
    service_problems(docs, &mut problems);
    network_problems(docs, &mut problems);
    config_problems(docs, &mut problems);
    problems
}

fn workload_problems(docs: &[Value], problems: &mut Vec<String>) {
    let workloads = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet");
    for workload in workloads {
        let name = workload["metadata"]["name"].as_str().unwrap_or("?");
        let pod = &workload["spec"]["template"]["spec"];
        let containers = arr(&pod["containers"]);
        if containers.is_empty() {
            problems.push(format!("{name}: no containers"));
        }
        for container in containers {
            let c = container["name"].as_str().unwrap_or("?");
            for probe in ["livenessProbe", "readinessProbe"] {
                if !container[probe].is_object() {
                    problems.push(format!("{name}: container {c} has no {probe}"));
                }
            }
            for field in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if container["resources"][field][resource].is_null() {
                        problems.push(format!("{name}: container {c} has no resources.{field}.{resource}"));
                    }
                }
            }
            let context = &container["securityContext"];
            let expected = [
                ("runAsNonRoot", json!(true)),
                ("runAsUser", json!(65532)),
                ("readOnlyRootFilesystem", json!(true)),
                ("allowPrivilegeEscalation", json!(false)),
            ];
            for (field, value) in expected {
                if context[field] != value {
                    problems.push(format!(
                        "{name}: container {c}: securityContext.{field} is {}, not {value}",
                        context[field]
                    ));
                }
            }
            if !arr(&context["capabilities"]["drop"]).contains(&json!("ALL")) {
                problems.push(format!("{name}: container {c} does not drop all capabilities"));
            }
            if context["seccompProfile"]["type"] != "RuntimeDefault" {
                problems.push(format!("{name}: container {c}: seccompProfile is not RuntimeDefault"));
            }
        }
    }
}

fn service_problems(docs: &[Value], problems: &mut Vec<String>) {
    console_problems(docs, problems);
    for (service, grpc, metrics) in SERVICES {
        let Some(deployment) = get(docs, "Deployment", service) else {
            problems.push(format!("{service}: no Deployment"));
            continue;
        };
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        for probe in ["livenessProbe", "readinessProbe"] {
            if container[probe]["grpc"]["port"] != grpc {
                problems.push(format!("{service}: {probe} is not a gRPC probe on {grpc}"));
            }
        }
        for (port_name, port) in [("grpc", grpc), ("metrics", metrics)] {
            let declared = arr(&container["ports"])
                .iter()
                .any(|p| p["name"] == port_name && p["containerPort"] == port);
            if !declared {
                problems.push(format!("{service}: container port {port_name} {port} not declared"));
            }
        }
        let metrics_addr = env_value(container, "MM_METRICS_ADDR");
        if metrics_addr.as_deref() != Some(&format!("0.0.0.0:{metrics}")) {
            problems.push(format!("{service}: MM_METRICS_ADDR is {metrics_addr:?}"));
        }
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        if grace <= GRACE_SECONDS {
            problems.push(format!(
                "{service}: terminationGracePeriodSeconds {grace} <= MM_GRACE_MS"
            ));
        }
        if arr(&pod["topologySpreadConstraints"]).is_empty() {
            problems.push(format!("{service}: no topologySpreadConstraints"));
        }
        let tmp = arr(&container["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"] == "/tmp")
            .cloned();
        let tmp_is_empty_dir = tmp.is_some_and(|m| {
            arr(&pod["volumes"])
                .iter()
                .any(|v| v["name"] == m["name"] && v["emptyDir"].is_object())
        });
        if !tmp_is_empty_dir {
            problems.push(format!("{service}: /tmp (MM_TMP_DIR) is not an emptyDir"));
        }
        let labels = &pod_labels(deployment);

        match get(docs, "Service", service) {
            None => problems.push(format!("{service}: no Service")),
            Some(svc) => {
                if !selects(&svc["spec"]["selector"], labels, false) {
                    problems.push(format!("{service}: the Service does not select its pods"));
                }
                for (port_name, port) in [("grpc", grpc), ("metrics", metrics)] {
                    if !arr(&svc["spec"]["ports"])
                        .iter()
                        .any(|p| p["name"] == port_name && p["port"] == port)
                    {
                        problems.push(format!("{service}: the Service has no port {port_name} {port}"));
                    }
                }
            }
        }
        let pdb = of_kind(docs, "PodDisruptionBudget")
            .into_iter()
            .find(|p| selects(&p["spec"]["selector"], labels, true));
        if pdb.is_none() {
            problems.push(format!("{service}: no PodDisruptionBudget"));
        }
    }
}

/// The console: HTTP probes on its port, a Service and a PodDisruptionBudget, and the public
/// API as its only upstream.
fn console_problems(docs: &[Value], problems: &mut Vec<String>) {
    let Some(deployment) = get(docs, "Deployment", "console") else {
        problems.push("console: no Deployment".to_owned());
        return;
    };
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        if container[probe]["httpGet"]["port"] != CONSOLE_PORT || container[probe]["httpGet"]["path"] != path {
            problems.push(format!("console: {probe} is not HTTP {path} on {CONSOLE_PORT}"));
        }
    }
    if env_value(container, "MM_ADDR").as_deref() != Some("http://ingest:50051") {
        problems.push("console: MM_ADDR is not ingest's gRPC API".to_owned());
    }
    let labels = &pod_labels(deployment);
    match get(docs, "Service", "console") {
        Some(svc)
            if selects(&svc["spec"]["selector"], labels, false)
                && arr(&svc["spec"]["ports"]).iter().any(|p| p["port"] == CONSOLE_PORT) => {}
        _ => problems.push(format!("console: no Service on {CONSOLE_PORT} selecting its pods")),
    }
    if !of_kind(docs, "PodDisruptionBudget")
        .into_iter()
        .any(|p| selects(&p["spec"]["selector"], labels, true))
    {
        problems.push("console: no PodDisruptionBudget".to_owned());
    }
}

/// Who may reach each pod: a default deny, then only ingest's gRPC port from anywhere, and the
/// listed operator namespaces on their ports.
fn network_problems(docs: &[Value], problems: &mut Vec<String>) {
    let policies = of_kind(docs, "NetworkPolicy");
    let default_deny = policies.iter().any(|p| {
        is_empty_object(&p["spec"]["podSelector"])
            && arr(&p["spec"]["policyTypes"]).contains(&json!("Ingress"))
            && arr(&p["spec"]["ingress"]).is_empty()
    });
    if !default_deny {
        problems.push("no default deny ingress NetworkPolicy for the namespace".to_owned());
    }

    // Every pod the manifests make, with its labels.
    let mut pods: Vec<(String, Value)> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .map(|d| (d["metadata"]["name"].as_str().unwrap_or("?").to_owned(), pod_labels(d)))
        .collect();
    for cluster in of_kind(docs, "Cluster") {
        let name = cluster["metadata"]["name"].as_str().unwrap_or("?");
        pods.push((format!("cnpg {name}"), json!({ "cnpg.io/cluster": name })));
    }

    let allowed: BTreeMap<&str, &[u64]> = OUTSIDE_ALLOWED.into_iter().collect();
    let grpc_of = |pod: &str| SERVICES.iter().find(|s| s.0 == pod).map(|s| s.1);
    for (pod, labels) in &pods {
        let mut reachable_from_anywhere = BTreeSet::new();
        let mut reachable_from_monitoring = BTreeSet::new();
        for policy in &policies {
            if !selects(&policy["spec"]["podSelector"], labels, true) {
                continue;
            }
            let policy_name = policy["metadata"]["name"].as_str().unwrap_or("?");
            for rule in arr(&policy["spec"]["ingress"]) {
                let ports: Option<Vec<u64>> = rule
                    .get("ports")
                    .map(|ports| arr(ports).iter().filter_map(|p| p["port"].as_u64()).collect());
                let ports_text = || ports.as_ref().map_or("every port".to_owned(), |p| format!("{p:?}"));
                for source in sources(rule) {
                    match source {
                        Source::SameNamespace => {}
                        Source::Anywhere => {
                            // The public doors: ingest's gRPC API and the console's HTTP port.
                            let ok = (pod == "ingest"
                                && ports.as_deref() == grpc_of("ingest").as_ref().map(std::slice::from_ref))
                                || (pod == "console" && ports.as_deref() == Some(&[CONSOLE_PORT][..]));
                            if ok {
                                reachable_from_anywhere.extend(ports.iter().flatten().copied());
                            } else {
                                problems.push(format!(
                                    "{pod}: reachable from outside the namespace on {} (policy {policy_name})",
                                    ports_text()
                                ));
                            }
                        }
                        Source::Namespace(namespace) => {
                            let ok = match (allowed.get(namespace.as_str()), &ports) {
                                (Some(allowed_ports), Some(ports)) => {
                                    ports.iter().all(|p| allowed_ports.contains(p))
                                        && ports.iter().all(|p| Some(*p) != grpc_of(pod))
                                }
                                _ => false,
                            };
                            if ok && namespace == "monitoring" {
                                reachable_from_monitoring.extend(ports.iter().flatten().copied());
                            }
                            if !ok {
                                problems.push(format!(
                                    "{pod}: reachable from outside the namespace ({namespace}) on {} (policy {policy_name})",
                                    ports_text()
                                ));
                            }
                        }
                    }
                }
            }
        }
        if pod == "console" && !reachable_from_anywhere.contains(&CONSOLE_PORT) {
            problems.push(format!(
                "console: HTTP {CONSOLE_PORT} is not reachable from outside the namespace"
            ));
        }
        if let Some((service, grpc, metrics)) = SERVICES.iter().find(|s| s.0 == pod) {
            if *service == "ingest" && !reachable_from_anywhere.contains(grpc) {
                problems.push(format!(
                    "ingest: gRPC {grpc} is not reachable from outside the namespace"
                ));
            }
            if !reachable_from_monitoring.contains(metrics) {
                problems.push(format!(
                    "{service}: metrics {metrics} not reachable from the monitoring namespace"
                ));
            }
        }
    }
}

enum Source {
    SameNamespace,
    Anywhere,
    Namespace(String),
}

/// Where the traffic a NetworkPolicy ingress rule admits may come from.
fn sources(rule: &Value) -> Vec<Source> {
    let peers = arr(&rule["from"]);
    if peers.is_empty() {
        return vec![Source::Anywhere];
    }
    peers
        .iter()
        .map(|peer| {
            if peer.get("ipBlock").is_some() {
                return Source::Anywhere;
            }
            match peer.get("namespaceSelector") {
                None => Source::SameNamespace,
                Some(selector) => {
                    let names = &selector["matchLabels"]["kubernetes.io/metadata.name"];
                    let only_name = selector.get("matchExpressions").is_none()
                        && selector["matchLabels"].as_object().is_some_and(|m| m.len() == 1);
                    match names.as_str() {
                        Some(NAMESPACE) if only_name => Source::SameNamespace,
                        Some(name) if only_name => Source::Namespace(name.to_owned()),
                        // an empty or label-based namespace selector may match any namespace
                        _ => Source::Anywhere,
                    }
                }
            }
        })
        .collect()
}

fn config_problems(docs: &[Value], problems: &mut Vec<String>) {
    let configs: Vec<&Value> = of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|c| name_of(c).starts_with("mediamesh-config"))
        .collect();
    if configs.len() != 1 {
        problems.push(format!("{} mediamesh-config ConfigMaps", configs.len()));
        return;
    }
    let data = configs[0]["data"].as_object().cloned().unwrap_or_default();
    for (key, value) in &data {
        // clap takes an empty variable as set: an empty value would be passed on as ""
        if value.as_str().is_none_or(str::is_empty) {
            problems.push(format!("ConfigMap: {key} is empty"));
        }
    }
    if data.get("MM_LOG_FORMAT") != Some(&json!("json")) {
        problems.push("ConfigMap: MM_LOG_FORMAT is not json".to_owned());
    }
    // Addresses point at Services of the manifests, on ports they serve.
    for key in ["MM_NATS_URL", "MM_SCHEDULER_ADDR", "MM_INFERENCE_ADDR", "MM_MEDIA_ADDR"] {
        let Some(url) = data.get(key).and_then(Value::as_str) else {
            problems.push(format!("ConfigMap: no {key}"));
            continue;
        };
        let host_port = url.split("://").nth(1).unwrap_or("");
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
        let served = get(docs, "Service", host).is_some_and(|s| {
            arr(&s["spec"]["ports"])
                .iter()
                .any(|p| Some(p["port"].as_u64()) == Some(port.parse::<u64>().ok()))
        });
        if !served {
            problems.push(format!("ConfigMap: {key}={url} is no Service port of the manifests"));
        }
    }
    for secret in of_kind(docs, "Secret") {
        let values = secret["data"]
            .as_object()
            .into_iter()
            .chain(secret["stringData"].as_object());
        for (key, _) in values.flatten() {
            if key.contains("OPENAI") || key.contains("AWS_SECRET") {
                problems.push(format!(
                    "Secret {}: holds {key}: keys are created out of band",
                    name_of(secret)
                ));
            }
        }
    }
    // Every service reads the internal token (required: a pod without it must not start).
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" && ["ingest", "scheduler", "media", "inference"].contains(&name_of(d)))
    {
        for container in arr(&workload["spec"]["template"]["spec"]["containers"]) {
            let reads = arr(&container["envFrom"]).iter().any(|e| {
                e["secretRef"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("mediamesh-internal"))
                    && e["secretRef"]["optional"] != true
            });
            if !reads {
                problems.push(format!(
                    "{}: does not read the Secret mediamesh-internal",
                    name_of(workload)
                ));
            }
        }
    }
    // Every required secret a container reads exists (or is made by CloudNativePG).
    let clusters: Vec<String> = of_kind(docs, "Cluster")
        .iter()
        .map(|c| format!("{}-app", name_of(c)))
        .collect();
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        for container in arr(&workload["spec"]["template"]["spec"]["containers"]) {
            for env in arr(&container["env"]) {
                let reference = &env["valueFrom"]["secretKeyRef"];
                if reference.is_null() || reference["optional"] == true {
                    continue;
                }
                let name = reference["name"].as_str().unwrap_or("");
                let key = reference["key"].as_str().unwrap_or("");
                let exists = get(docs, "Secret", name).is_some_and(|s| !s["data"][key].is_null())
                    || clusters.iter().any(|c| c == name);
                if !exists {
                    problems.push(format!(
                        "{}: {} from Secret {name}/{key}, which nothing makes",
                        name_of(workload),
                        env["name"]
                    ));
                }
            }
        }
    }
}

// ---- custom resources (no schema in kubernetes-validate) ------------------------------------

fn custom_resource_problems(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let prefetch: u64 = config_value(docs, "MM_PREFETCH").parse().unwrap_or(32);
    for service in ["media", "inference"] {
        let Some(scaled) = get(docs, "ScaledObject", service) else {
            problems.push(format!("{service}: no ScaledObject"));
            continue;
        };
        let spec = &scaled["spec"];
        if spec["scaleTargetRef"]["name"] != service || get(docs, "Deployment", service).is_none() {
            problems.push(format!("{service}: ScaledObject does not target its Deployment"));
        }
        let min = spec["minReplicaCount"].as_u64().unwrap_or(0);
        let max = spec["maxReplicaCount"].as_u64().unwrap_or(100);
        if min < 1 || max < min {
            problems.push(format!("{service}: ScaledObject replicas {min}..{max}"));
        }
        let triggers = arr(&spec["triggers"]);
        if triggers.len() != 1 {
            problems.push(format!("{service}: {} triggers", triggers.len()));
        }
        for trigger in triggers {
            let m = &trigger["metadata"];
            if trigger["type"] != "nats-jetstream" {
                problems.push(format!("{service}: trigger type {}", trigger["type"]));
            }
            if m["stream"] != "MM_JOBS" {
                problems.push(format!("{service}: trigger stream {}", m["stream"]));
            }
            if m["consumer"] != service {
                problems.push(format!(
                    "{service}: trigger consumer {} (the queue's durable consumer is {service})",
                    m["consumer"]
                ));
            }
            if m["account"].as_str().is_none() {
                problems.push(format!("{service}: trigger has no account"));
            }
            // the headless Service: KEDA reaches the consumer's leader at <server>.<endpoint>
            let endpoint = m["natsServerMonitoringEndpoint"].as_str().unwrap_or("");
            if endpoint != format!("nats-headless.{NAMESPACE}.svc.cluster.local:8222") {
                problems.push(format!("{service}: natsServerMonitoringEndpoint {endpoint}"));
            }
            // KEDA wants strings; the lag never exceeds MM_PREFETCH, so the threshold must
            // stay well under it for the maximum to be reachable.
            match m["lagThreshold"].as_str().and_then(|t| t.parse::<u64>().ok()) {
                Some(threshold) if threshold > 0 && threshold * 2 <= prefetch => {}
                other => problems.push(format!("{service}: lagThreshold {other:?} with MM_PREFETCH {prefetch}")),
            }
        }
    }

    let monitors = of_kind(docs, "ServiceMonitor");
    if monitors.len() != 1 {
        problems.push(format!("{} ServiceMonitors", monitors.len()));
    }
    for monitor in monitors {
        let spec = &monitor["spec"];
        let endpoints = arr(&spec["endpoints"]);
        if !endpoints
            .iter()
            .any(|e| e["port"] == "metrics" && e["path"] == "/metrics")
        {
            problems.push("ServiceMonitor: no endpoint on port metrics, path /metrics".to_owned());
        }
        if !arr(&spec["namespaceSelector"]["matchNames"]).contains(&json!(NAMESPACE)) {
            problems.push("ServiceMonitor: does not look in the mediamesh namespace".to_owned());
        }
        for (service, _, _) in SERVICES {
            let labels = get(docs, "Service", service)
                .map(|s| s["metadata"]["labels"].clone())
                .unwrap_or_default();
            if !selects(&spec["selector"], &labels, true) {
                problems.push(format!("ServiceMonitor: does not select the {service} Service"));
            }
        }
    }

    for cluster in of_kind(docs, "Cluster") {
        let spec = &cluster["spec"];
        if spec["instances"].as_u64().is_none_or(|n| n < 3) {
            problems.push("CNPG Cluster: fewer than 3 instances".to_owned());
        }
        if spec["storage"]["size"].as_str().is_none() {
            problems.push("CNPG Cluster: no storage.size".to_owned());
        }
        if spec["bootstrap"]["initdb"]["database"] != "mediamesh" {
            problems.push("CNPG Cluster: does not create the mediamesh database".to_owned());
        }
    }
    for backup in of_kind(docs, "ScheduledBackup") {
        let target = backup["spec"]["cluster"]["name"].as_str().unwrap_or("");
        if get(docs, "Cluster", target).is_none() || backup["spec"]["schedule"].as_str().is_none() {
            problems.push(format!(
                "ScheduledBackup {}: no schedule or unknown cluster {target}",
                name_of(backup)
            ));
        }
    }
    problems
}

// ---- helpers --------------------------------------------------------------------------------

fn arr(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("?")
}

fn is_empty_object(value: &Value) -> bool {
    value.as_object().is_some_and(serde_json::Map::is_empty)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// A resource by kind and name; generated ConfigMaps and Secrets match on their name before
/// kustomize's hash suffix.
fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    get(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod_labels(workload: &Value) -> Value {
    workload["spec"]["template"]["metadata"]["labels"].clone()
}

/// Whether a label selector matches `labels`. `structured`: a LabelSelector (matchLabels,
/// matchExpressions); otherwise a Service's plain map.
fn selects(selector: &Value, labels: &Value, structured: bool) -> bool {
    let label = |key: &str| labels[key].as_str().map(str::to_owned);
    let match_labels = if structured { &selector["matchLabels"] } else { selector };
    let labels_ok = match_labels
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k).as_deref() == v.as_str()));
    let expressions_ok = !structured
        || arr(&selector["matchExpressions"]).iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = arr(&e["values"]).iter().filter_map(Value::as_str).collect();
            match (e["operator"].as_str().unwrap_or(""), label(key)) {
                ("In", Some(v)) => values.contains(&v.as_str()),
                ("NotIn", Some(v)) => !values.contains(&v.as_str()),
                ("NotIn", None) | ("DoesNotExist", None) | ("Exists", Some(_)) => true,
                _ => false,
            }
        });
    labels_ok && expressions_ok
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    arr(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

fn config_map_data(docs: &[Value], prefix: &str, key: &str) -> String {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .find(|c| name_of(c).starts_with(prefix))
        .and_then(|c| c["data"][key].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no ConfigMap {prefix}* with {key}"))
}

fn config_value(docs: &[Value], key: &str) -> String {
    config_map_data(docs, "mediamesh-config", key)
}

/// (Secret, key) a service's variable is read from.
fn secret_ref(docs: &[Value], service: &str, variable: &str) -> (String, String) {
    let container = &find(docs, "Deployment", service)["spec"]["template"]["spec"]["containers"][0];
    let env = arr(&container["env"])
        .iter()
        .find(|e| e["name"] == variable)
        .unwrap_or_else(|| panic!("{service}: no {variable}"));
    let reference = &env["valueFrom"]["secretKeyRef"];
    (
        reference["name"].as_str().unwrap_or("").to_owned(),
        reference["key"].as_str().unwrap_or("").to_owned(),
    )
}

/// The decoded value of a variable a service reads from a Secret of the manifests.
fn config_value_of_secret(docs: &[Value], service: &str, variable: &str) -> String {
    let (secret, key) = secret_ref(docs, service, variable);
    let encoded = find(docs, "Secret", &secret)["data"][&key]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let decoded = Command::new("base64")
        .args(["-d"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(encoded.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(decoded.stdout).unwrap()
}
