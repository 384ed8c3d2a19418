//! The operations kit against a real server: the Grafana dashboard
//! (`deploy/grafana/tessera.json`) and the Prometheus alert rules
//! (`deploy/prometheus/alerts.yml`) must only name metrics the server
//! exports, every query and rule must be valid PromQL, and every alert must
//! link a runbook section that exists in `docs/operations.md`.
//!
//! A dashboard query on a misspelt or never-exported metric draws an empty
//! panel, and an alert on one never fires: both fail silently in
//! production. So the scrape test starts a server with metrics on port 0,
//! runs a real round with distributed DP, scrapes `/metrics`, and checks
//! every name the two files use against the scrape.
//!
//! One test binary, one test that installs the process-wide recorder.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde::Deserialize;
use tessera_aggregation::Stage;
use tessera_client::Participation;
use tessera_server::config::DpMode;
use tessera_server::files::{Failure, FaultPlan, Op};
use tessera_tests::{ServerOptions, TestServer, update};

const DIM: u32 = 64;
const CLIENTS: u32 = 5;
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A file of the repository (the tests crate lives one level down).
fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// A Prometheus rule file, as much of it as the rules use; unknown fields
/// (a typo such as `anotations`) are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn alert_rules() -> Vec<Rule> {
    let file: RuleFile =
        serde_norway::from_str(&repo_file("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    assert!(!file.groups.is_empty());
    file.groups
        .into_iter()
        .inspect(|g| assert!(!g.name.is_empty() && !g.rules.is_empty(), "{g:?}"))
        .flat_map(|g| g.rules)
        .collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&repo_file("deploy/grafana/tessera.json")).expect("tessera.json")
}

/// Grafana's built-in interval variables, replaced as Grafana would before
/// the query reaches Prometheus. The only other variable allowed is
/// `$instance`, inside a label matcher's string.
const GRAFANA_VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
];

/// A dashboard query with Grafana's variables replaced.
fn as_promql(query: &str) -> String {
    let mut q = query.to_owned();
    for (var, value) in GRAFANA_VARIABLES {
        q = q.replace(var, value);
    }
    let rest = q.replace("\"$instance\"", "\"\"");
    assert!(!rest.contains('$'), "unknown Grafana variable in {query}");
    q
}

/// Every `expr` of every panel target, with the panel's title.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("panel title").to_owned();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            queries.push((title.clone(), expr.to_owned()));
        }
    }
    queries
}

/// Collects the metric names an expression selects; a selector without a
/// name (`{__name__=~"..."}`) is refused, since it cannot be checked.
#[derive(Default)]
struct MetricNames(BTreeSet<String>);

impl ExprVisitor for MetricNames {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let name = selector
            .name
            .clone()
            .ok_or_else(|| format!("a selector without a metric name: {selector}"))?;
        self.0.insert(name);
        Ok(true)
    }
}

/// Parses `expr` as PromQL and returns the metrics it names.
fn metrics_of(what: &str, expr: &str) -> BTreeSet<String> {
    let ast = parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {e}\n{expr}"));
    let mut names = MetricNames::default();
    walk_expr(&mut names, &ast).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!names.0.is_empty(), "{what} names no metric: {expr}");
    names.0
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Every metric name the dashboard and the alert rules use, with where.
fn referenced_metrics() -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    for rule in alert_rules() {
        for name in metrics_of(&rule.alert, &rule.expr) {
            used.entry(name).or_insert_with(|| rule.alert.clone());
        }
    }
    let dashboard = dashboard();
    for (title, query) in dashboard_queries(&dashboard) {
        for name in metrics_of(&title, &as_promql(&query)) {
            used.entry(name).or_insert(title.clone());
        }
    }
    // The server picker's `label_values(METRIC, instance)`.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(def) = variable["definition"].as_str() {
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unexpected variable query {def}"));
            let metric = inner.split(',').next().expect("metric").trim();
            used.entry(metric.to_owned())
                .or_insert_with(|| format!("variable {}", variable["name"]));
        }
    }
    used
}

/// The alert rules are valid: each expression parses as PromQL, each has
/// a severity, a summary, a description and a runbook link to a section
/// that exists, and the alerts are all there.
#[test]
fn alert_rules_parse_and_link_existing_runbook_sections() {
    let runbook = repo_file("docs/operations.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let rules = alert_rules();
    for rule in &rules {
        let what = &rule.alert;
        metrics_of(what, &rule.expr);
        if let Some(duration) = &rule.for_ {
            promql_parser::util::parse_duration(duration)
                .unwrap_or_else(|e| panic!("{what}: for {duration}: {e}"));
        }
        assert!(
            matches!(
                rule.labels.get("severity").map(String::as_str),
                Some("warning" | "critical")
            ),
            "{what}: severity"
        );
        for key in ["summary", "description", "runbook_url"] {
            let text = rule.annotations.get(key).map(String::as_str);
            assert!(text.is_some_and(|t| t.len() > 10), "{what}: {key}");
        }
        let url = &rule.annotations["runbook_url"];
        let (_, section) = url.split_once("docs/operations.md#").unwrap_or_else(|| {
            panic!("{what}: runbook_url {url} is not a docs/operations.md anchor")
        });
        assert!(
            anchors.contains(section),
            "{what}: docs/operations.md has no section #{section}; it has {anchors:?}"
        );
    }
    let named: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for required in [
        "TesseraRoundSuccessRateLow",
        "TesseraStageNearDeadline",
        "TesseraPrivacyBudgetNearlySpent",
        "TesseraReconstructionFailed",
        "TesseraConnectionCapReached",
        "TesseraDataDirWriteErrors",
    ] {
        assert!(named.contains(required), "missing alert {required}");
    }
    let cap = rules
        .iter()
        .find(|r| r.alert == "TesseraConnectionCapReached")
        .expect("cap alert");
    assert!(cap.expr.contains("reason=\"cap\""), "{}", cap.expr);
    promtool_agrees();
}

/// `promtool check rules`, where Prometheus's own tool is installed.
fn promtool_agrees() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("promtool not installed; checked with promql-parser only");
        }
        Err(e) => panic!("promtool: {e}"),
    }
}

/// The dashboard is a Grafana model with a Prometheus datasource variable
/// every panel uses, the three rows the runbook refers to, and queries that
/// parse.
#[test]
fn dashboard_has_its_rows_a_datasource_variable_and_valid_queries() {
    let dashboard = dashboard();
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().expect("row title"))
        .collect();
    assert_eq!(rows, ["Overview", "On call", "Debug"]);
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "duplicate id"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{panel}: gridPos.{key}");
        }
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
            assert_eq!(panel["datasource"]["type"], "prometheus", "{panel}");
        }
    }
    for (title, query) in dashboard_queries(&dashboard) {
        metrics_of(&title, &as_promql(&query));
    }
}

/// Asks the scrape endpoint for its exposition.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of one exact series (name and labels as rendered).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The metric names in an exposition.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .skip_while(|l| !l.is_empty())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().expect("name").to_owned())
        .collect()
}

fn distributed_dp_with_metrics(config: &mut tessera_server::ServerConfig) {
    config.dp.mode = DpMode::Distributed;
    config.dp.noise_multiplier = 0.5;
    config.dp.epsilon_budget = 100.0;
    config.network.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

/// A real server, a real round with distributed DP, a real scrape: every
/// metric the dashboard and the alerts use is exported, with the round's
/// values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_after_a_round() {
    let disk = FaultPlan::new();
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: CLIENTS,
        stage_timeout: STAGE_TIMEOUT,
        tweak: distributed_dp_with_metrics,
        faults: Some(disk.clone()),
        ..ServerOptions::default()
    })
    .await;
    let addr = ts.server.metrics_addr().expect("metrics are on");
    assert_ne!(addr.port(), 0, "the bound port, not the one asked for");

    let tasks: Vec<_> = (0..u64::from(CLIENTS))
        .map(|i| {
            let client = ts.client(None);
            tokio::spawn(async move { client.participate(&update(DIM, i)).await })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("task").expect("every client completes");
        assert_eq!(outcome.survivors, CLIENTS);
    }

    // The privacy gauges follow the ledger when the scheduler loops round;
    // give it a moment after the clients heard their result.
    let server_eps = "tessera_epsilon_spent{adversary=\"server\",delta=\"1e-5\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape(addr);
        if value(&body, server_eps).is_some_and(|e| e > 0.0) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The round's own figures.
    let expect = [
        ("tessera_rounds_started_total", 1.0),
        ("tessera_rounds_completed_total", 1.0),
        ("tessera_round_seconds_count{outcome=\"completed\"}", 1.0),
        ("tessera_unmasking_seconds_count", 1.0),
        ("tessera_clients_per_stage{stage=\"unmasking\"}", 5.0),
        (
            "tessera_stage_deadline_seconds{stage=\"masked-input\"}",
            STAGE_TIMEOUT.as_secs_f64(),
        ),
        ("tessera_epsilon_budget{delta=\"1e-5\"}", 100.0),
        // Registered at zero before the first event.
        (
            "tessera_rounds_aborted_total{reason=\"below-threshold\"}",
            0.0,
        ),
        (
            "tessera_reconstruction_failures_total{reason=\"shares-missing\"}",
            0.0,
        ),
        ("tessera_evictions_total{reason=\"invalid_advert\"}", 0.0),
        ("tessera_connections_refused_total{reason=\"cap\"}", 0.0),
        ("tessera_storage_write_errors_total{op=\"rename\"}", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&body, series), Some(want), "{series} in\n{body}");
    }
    let spent = value(&body, server_eps).expect("epsilon against the server");
    assert!(spent > 0.0 && spent < 100.0, "{spent}");
    let consumers = "tessera_epsilon_spent{adversary=\"model-consumers\",delta=\"1e-5\"}";
    assert_eq!(
        value(&body, consumers),
        Some(spent),
        "distributed DP holds against both"
    );
    assert!(value(&body, "tessera_bytes_received_total").is_some_and(|b| b > f64::from(DIM)));

    let exported = exported(&body);
    let missing: Vec<String> = referenced_metrics()
        .into_iter()
        .filter(|(name, _)| !exported.contains(name))
        .map(|(name, whom)| format!("{name} (used by {whom})"))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );

    aborted_round_is_counted(&ts, addr).await;
    storage_failure_is_counted(&ts, addr, &disk).await;
    ts.server.shutdown().await.expect("clean shutdown");
}

/// A second round in which three of the five clients hang up before their
/// masked input: two survivors are below the minimum aggregate size, the
/// round aborts, and the abort, its duration and the dropouts are counted.
async fn aborted_round_is_counted(ts: &TestServer, addr: SocketAddr) {
    let tasks: Vec<_> = (0..u64::from(CLIENTS))
        .map(|i| {
            let client = ts.client(None);
            tokio::spawn(async move {
                let update = update(DIM, 10 + i);
                match i {
                    0..3 => {
                        client
                            .participate_or_drop(&update, Stage::MaskedInput)
                            .await
                    }
                    _ => client
                        .participate(&update)
                        .await
                        .map(Participation::Completed),
                }
            })
        })
        .collect();
    for task in tasks {
        // The survivors hear that the round aborted; the others hung up.
        let _ = task.await.expect("task");
    }
    let aborted = "tessera_rounds_aborted_total{reason=\"below-threshold\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape(addr);
        if value(&body, aborted) == Some(1.0) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expect = [
        (aborted, 1.0),
        ("tessera_rounds_started_total", 2.0),
        ("tessera_rounds_completed_total", 1.0),
        ("tessera_round_seconds_count{outcome=\"aborted\"}", 1.0),
        ("tessera_unmasking_seconds_count", 1.0),
        ("tessera_dropouts_total{stage=\"masked-input\"}", 3.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&body, series), Some(want), "{series} in\n{body}");
    }
}

/// A third round whose model the disk cannot store (ENOSPC on the model
/// file, through the storage seam): the write error and the `storage` abort
/// are both exported, the series the data-directory alert and the abort
/// panel watch.
async fn storage_failure_is_counted(ts: &TestServer, addr: SocketAddr, disk: &FaultPlan) {
    disk.fail_matching(Some(Op::Write), "model-", Failure::StorageFull);
    let tasks: Vec<_> = (0..u64::from(CLIENTS))
        .map(|i| {
            let client = ts.client(None);
            tokio::spawn(async move { client.participate(&update(DIM, 20 + i)).await })
        })
        .collect();
    for task in tasks {
        let result = task.await.expect("task");
        assert!(result.is_err(), "a round that was not stored: {result:?}");
    }
    let aborted = "tessera_rounds_aborted_total{reason=\"storage\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape(addr);
        if value(&body, aborted) == Some(1.0) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    disk.clear();
    assert_eq!(value(&body, aborted), Some(1.0), "{aborted} in\n{body}");
    let writes = "tessera_storage_write_errors_total{op=\"write\"}";
    assert!(
        value(&body, writes).is_some_and(|n| n >= 1.0),
        "{writes} in\n{body}"
    );
}
