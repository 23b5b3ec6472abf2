//! Counters for `GET /metrics`, in Prometheus's text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub jobs_submitted: AtomicU64,
    pub jobs_completed: AtomicU64,
    pub jobs_failed: AtomicU64,
    /// Refused with 503 because the queue was full.
    pub jobs_rejected: AtomicU64,
    pub images_completed: AtomicU64,
    pub bootstraps: AtomicU64,
    /// Wall-clock time spent evaluating jobs.
    pub busy_nanos: AtomicU64,
}

/// Figures that are read from elsewhere at scrape time.
pub struct Gauges<'a> {
    /// The node answering, so a scrape of several nodes behind one address tells them apart.
    pub node: &'a str,
    /// `embedded` or `postgres`.
    pub storage: &'a str,
    pub queue_depth: usize,
    pub running: usize,
    pub keys_registered: usize,
    pub keys_cached: usize,
    pub key_cache_bytes: usize,
    pub models: usize,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Bootstraps per second of evaluation over the server's life, all threads together; `None`
    /// before the first job.
    pub fn bootstraps_per_second(&self) -> Option<f64> {
        let busy = self.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9;
        (busy > 0.0).then(|| self.bootstraps.load(Ordering::Relaxed) as f64 / busy)
    }

    /// The counters of this node, and the gauges; queue depths are what every node sharing
    /// this node's storage sees.
    pub fn render(&self, gauges: &Gauges) -> String {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let busy = read(&self.busy_nanos) as f64 * 1e-9;
        let rate = self.bootstraps_per_second().unwrap_or(0.0);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let jobs = [
            (
                "hexray_jobs_submitted_total",
                "Jobs accepted.",
                &self.jobs_submitted,
            ),
            (
                "hexray_jobs_completed_total",
                "Jobs finished with outputs.",
                &self.jobs_completed,
            ),
            (
                "hexray_jobs_failed_total",
                "Jobs that failed.",
                &self.jobs_failed,
            ),
            (
                "hexray_jobs_rejected_total",
                "Jobs refused with 503 because the queue was full.",
                &self.jobs_rejected,
            ),
            (
                "hexray_images_completed_total",
                "Encrypted images evaluated.",
                &self.images_completed,
            ),
            (
                "hexray_bootstraps_total",
                "Programmable bootstraps run.",
                &self.bootstraps,
            ),
        ];
        for (name, help, counter) in jobs {
            metric(name, "counter", help, read(counter) as f64);
        }
        metric(
            "hexray_busy_seconds_total",
            "counter",
            "Wall-clock seconds spent evaluating jobs.",
            busy,
        );
        metric(
            "hexray_bootstraps_per_second",
            "gauge",
            "Bootstraps per second of evaluation, over the server's life.",
            rate,
        );
        for (name, help, value) in [
            (
                "hexray_queue_depth",
                "Jobs waiting for a worker, on every node sharing this node's storage.",
                gauges.queue_depth,
            ),
            (
                "hexray_jobs_running",
                "Jobs being evaluated, on every node sharing this node's storage.",
                gauges.running,
            ),
            (
                "hexray_keys_registered",
                "Server key registrations stored.",
                gauges.keys_registered,
            ),
            (
                "hexray_keys_cached",
                "Expanded server keys in memory.",
                gauges.keys_cached,
            ),
            (
                "hexray_key_cache_bytes",
                "Bytes of expanded server keys in memory.",
                gauges.key_cache_bytes,
            ),
            ("hexray_models", "Models served.", gauges.models),
        ] {
            metric(name, "gauge", help, value as f64);
        }
        let label = |value: &str| {
            value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(
            out,
            "# HELP hexray_node_info The node that answered, and where it keeps keys and jobs.\n\
             # TYPE hexray_node_info gauge\n\
             hexray_node_info{{node=\"{}\",storage=\"{}\"}} 1",
            label(gauges.node),
            label(gauges.storage)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_a_label_escaped_as_prometheus_requires() {
        let gauges = Gauges {
            node: "ward \"7\"\\east\nwing",
            storage: "postgres",
            queue_depth: 3,
            running: 1,
            keys_registered: 0,
            keys_cached: 0,
            key_cache_bytes: 0,
            models: 1,
        };
        let text = Metrics::default().render(&gauges);
        assert!(
            text.contains(
                "hexray_node_info{node=\"ward \\\"7\\\"\\\\east\\nwing\",storage=\"postgres\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("hexray_queue_depth 3\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 15);
    }
}
