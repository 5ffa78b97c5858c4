//! `/metrics` in Prometheus' text format: requests by endpoint and status, their latency, the
//! queue's depth, batch sizes and images processed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// Upper bounds of the latency histogram's buckets, seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size histogram's buckets, images.
const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The server's counters, shared by its threads.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Counters>>);

#[derive(Default)]
struct Counters {
    requests: BTreeMap<(String, u16), u64>,
    latency: Histogram,
    batches: Histogram,
    images: u64,
}

/// Counts per bucket (the last is +Inf), the sum and the count.
#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len() + 1];
        }
        let bucket = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        self.buckets[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        for (i, bound) in bounds
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".into()])
            .enumerate()
        {
            cumulative += self.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

impl Metrics {
    fn with(&self, update: impl FnOnce(&mut Counters)) {
        // A panic elsewhere while the lock was held leaves counts that are still counts.
        let mut counters = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(&mut counters);
    }

    /// A request answered.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.with(|c| {
            *c.requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1;
            c.latency.observe(&LATENCY_BOUNDS, seconds);
        });
    }

    /// A batch of the model's thread.
    pub fn batch(&self, images: usize) {
        self.with(|c| c.batches.observe(&BATCH_BOUNDS, images as f64));
    }

    /// Images answered.
    pub fn images(&self, count: usize) {
        self.with(|c| c.images += count as u64);
    }

    /// The text exposition, with the queue's depth now.
    pub fn prometheus(&self, queue_depth: usize) -> String {
        let mut out = String::new();
        self.with(|c| {
            out.push_str("# HELP vit_requests_total Requests answered, by endpoint and status.\n");
            out.push_str("# TYPE vit_requests_total counter\n");
            for ((endpoint, status), count) in &c.requests {
                let _ = writeln!(
                    out,
                    "vit_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
                );
            }
            out.push_str("# HELP vit_request_seconds Time to answer a request.\n");
            out.push_str("# TYPE vit_request_seconds histogram\n");
            c.latency
                .write(&mut out, "vit_request_seconds", &LATENCY_BOUNDS);
            out.push_str("# HELP vit_batch_images Images per batch of the model.\n");
            out.push_str("# TYPE vit_batch_images histogram\n");
            c.batches.write(&mut out, "vit_batch_images", &BATCH_BOUNDS);
            out.push_str("# HELP vit_images_total Images answered.\n");
            out.push_str("# TYPE vit_images_total counter\n");
            let _ = writeln!(out, "vit_images_total {}", c.images);
        });
        out.push_str("# HELP vit_queue_images Images waiting or running.\n");
        out.push_str("# TYPE vit_queue_images gauge\n");
        let _ = writeln!(out, "vit_queue_images {queue_depth}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_requests_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.request("/v1/classify", 200, 0.02);
        metrics.request("/v1/classify", 200, 0.3);
        metrics.request("/v1/classify", 503, 0.001);
        metrics.batch(3);
        metrics.images(3);
        let text = metrics.prometheus(2);
        assert!(text.contains("vit_requests_total{endpoint=\"/v1/classify\",status=\"200\"} 2"));
        assert!(text.contains("vit_requests_total{endpoint=\"/v1/classify\",status=\"503\"} 1"));
        assert!(text.contains("vit_request_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("vit_request_seconds_bucket{le=\"0.025\"} 2"));
        assert!(text.contains("vit_request_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("vit_batch_images_bucket{le=\"4\"} 1"));
        assert!(text.contains("vit_images_total 3"));
        assert!(text.contains("vit_queue_images 2"));
    }
}
