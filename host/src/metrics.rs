//! Prometheus metrics of the long-running parts (`d4c serve`, the snapshotter
//! and the codec runtime and mounts under them): counters and histograms in
//! one process-wide registry, rendered in Prometheus' text format for a
//! `/metrics` endpoint. Every metric is declared in [`METRICS`], which
//! docs/CLI.md lists.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// A metric's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Observations counted into [`BUCKETS`] (seconds).
    Histogram,
}

/// One declared metric.
#[derive(Debug)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// What it counts.
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        labels,
        help,
    }
}

/// Every metric d4c exports.
pub const METRICS: &[Metric] = &[
    counter(
        "d4c_serve_requests_total",
        &["route", "code"],
        "HTTP requests answered by d4c serve, by route and status code.",
    ),
    counter(
        "d4c_serve_blob_bytes_sent_total",
        &[],
        "Blob bytes d4c serve sent to clients.",
    ),
    counter(
        "d4c_serve_pulls_total",
        &["result"],
        "Pull negotiations: planned, or failed.",
    ),
    counter(
        "d4c_serve_pull_bytes_planned_total",
        &[],
        "Bytes the planned pulls download.",
    ),
    counter(
        "d4c_serve_pull_bytes_saved_total",
        &[],
        "Bytes planned pulls do not download: the target image's full cdimg minus the plan.",
    ),
    counter(
        "d4c_serve_merges_total",
        &["result"],
        "Server-side merges of delta chains: made, reused from the merge cache, or failed.",
    ),
    counter(
        "d4c_snapshotter_requests_total",
        &["method", "code"],
        "Snapshotter gRPC calls, by method and status code.",
    ),
    counter(
        "d4c_snapshotter_fetches_total",
        &["result"],
        "Images kubelet pulled that the snapshotter looked for d4c artifacts for: fetched, none attached, or failed (containerd then unpacks).",
    ),
    counter(
        "d4c_snapshotter_bytes_received_total",
        &[],
        "Blob bytes the snapshotter received from registries.",
    ),
    counter(
        "d4c_snapshotter_bytes_saved_total",
        &[],
        "Compressed layer bytes of fetched images the snapshotter did not download.",
    ),
    counter(
        "d4c_mount_cache_total",
        &["result"],
        "Files read through d4c mounts: from the content cache (hit) or rebuilt (miss).",
    ),
    counter(
        "d4c_codec_calls_total",
        &["codec", "op", "result"],
        "Codec component calls, by codec name, operation and outcome (ok, or the error kind).",
    ),
    Metric {
        name: "d4c_codec_call_seconds",
        kind: Kind::Histogram,
        labels: &["codec", "op"],
        help: "Time of codec component calls, instantiation included.",
    },
];

/// Histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

/// A histogram's state: per-bucket counts, the sum and the count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The values: by metric name, then by label values.
static VALUES: Mutex<BTreeMap<&'static str, BTreeMap<Vec<String>, Value>>> =
    Mutex::new(BTreeMap::new());

#[derive(Clone)]
enum Value {
    Counter(u64),
    Histogram(Box<Histogram>),
}

fn declared(name: &str, labels: usize) -> &'static Metric {
    let m = METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} is not declared"));
    assert_eq!(m.labels.len(), labels, "metric {name}: label count");
    m
}

/// Adds `by` to the counter `name` with these label values.
pub fn add(name: &'static str, labels: &[&str], by: u64) {
    declared(name, labels.len());
    let mut values = VALUES.lock().expect("metrics lock");
    let v = values
        .entry(name)
        .or_default()
        .entry(labels.iter().map(|l| l.to_string()).collect())
        .or_insert(Value::Counter(0));
    if let Value::Counter(n) = v {
        *n += by;
    }
}

/// Adds one to the counter `name` with these label values.
pub fn inc(name: &'static str, labels: &[&str]) {
    add(name, labels, 1);
}

/// Records `took` in the histogram `name` with these label values.
pub fn observe(name: &'static str, labels: &[&str], took: Duration) {
    declared(name, labels.len());
    let secs = took.as_secs_f64();
    let mut values = VALUES.lock().expect("metrics lock");
    let v = values
        .entry(name)
        .or_default()
        .entry(labels.iter().map(|l| l.to_string()).collect())
        .or_insert_with(|| Value::Histogram(Box::default()));
    if let Value::Histogram(h) = v {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }
}

/// Every metric in Prometheus' text exposition format (version 0.0.4).
pub fn render() -> String {
    let values = VALUES.lock().expect("metrics lock").clone();
    let mut out = String::new();
    for m in METRICS {
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {kind}", m.name);
        for (labels, v) in values.get(m.name).into_iter().flatten() {
            let pairs: Vec<String> = m
                .labels
                .iter()
                .zip(labels)
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            match v {
                Value::Counter(n) => {
                    let _ = writeln!(out, "{}{} {n}", m.name, braces(&pairs));
                }
                Value::Histogram(h) => render_histogram(&mut out, m.name, &pairs, h),
            }
        }
    }
    out
}

fn render_histogram(out: &mut String, name: &str, pairs: &[String], h: &Histogram) {
    for (bound, n) in BUCKETS.iter().zip(h.buckets) {
        let mut p = pairs.to_vec();
        p.push(format!("le=\"{bound}\""));
        let _ = writeln!(out, "{name}_bucket{} {n}", braces(&p));
    }
    let mut p = pairs.to_vec();
    p.push("le=\"+Inf\"".to_string());
    let _ = writeln!(out, "{name}_bucket{} {}", braces(&p), h.count);
    let _ = writeln!(out, "{name}_sum{} {}", braces(pairs), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", braces(pairs), h.count);
}

fn braces(pairs: &[String]) -> String {
    match pairs.is_empty() {
        true => String::new(),
        false => format!("{{{}}}", pairs.join(",")),
    }
}

/// A label value escaped as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves [`render`] at `GET /metrics` on `addr` (plain HTTP, one thread per
/// connection; keep it on loopback or a private network). Returns the bound
/// address.
pub fn serve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listening for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut line = String::new();
                    let mut r = BufReader::new(&conn);
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    // The headers, up to the blank line.
                    let mut h = String::new();
                    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                        h.clear();
                    }
                    let (status, body) = match line.split_whitespace().nth(1) {
                        Some("/metrics") if line.starts_with("GET ") => ("200 OK", render()),
                        _ => ("404 Not Found", "GET /metrics\n".to_string()),
                    };
                    let _ = std::io::Write::write_all(
                        &mut conn,
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        inc("d4c_serve_pulls_total", &["planned"]);
        add("d4c_serve_pulls_total", &["planned"], 2);
        observe(
            "d4c_codec_call_seconds",
            &["bsdiff", "diff"],
            Duration::from_millis(20),
        );
        let text = render();
        for m in METRICS {
            assert!(text.contains(&format!("# TYPE {} ", m.name)), "{}", m.name);
        }
        assert!(
            text.contains("d4c_serve_pulls_total{result=\"planned\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "d4c_codec_call_seconds_bucket{codec=\"bsdiff\",op=\"diff\",le=\"0.05\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "d4c_codec_call_seconds_bucket{codec=\"bsdiff\",op=\"diff\",le=\"0.01\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("d4c_codec_call_seconds_count{codec=\"bsdiff\",op=\"diff\"} 1\n"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn serves_get_metrics() {
        inc("d4c_mount_cache_total", &["hit"]);
        let addr = serve("127.0.0.1:0").unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("d4c_mount_cache_total{result=\"hit\"}"), "{ok}");
        assert!(get("/other").starts_with("HTTP/1.1 404"));
    }
}
