//! Latency histograms, throughput and the Markdown table of `bench kv`.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in microseconds, from 1 µs to 10 minutes at 3 significant digits (bounded
/// memory however many operations are recorded).
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

const MAX_MICROS: u64 = 600_000_000;

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.0.saturating_record(micros);
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency below which a fraction `q` (0.5 for the median) of them lie, in
    /// microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// The largest, in microseconds.
    pub fn max_us(&self) -> u64 {
        self.0.max()
    }
}

/// One timed run of a workload against one system.
#[derive(Clone, Default)]
pub struct Run {
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// From the start signal until the last client stopped.
    pub elapsed: Duration,
    /// Latency of every successful operation.
    pub latencies: Latencies,
}

impl Run {
    /// Successful operations per second.
    pub fn ops_per_s(&self) -> f64 {
        per_second(self.ops, self.elapsed)
    }
}

/// The runs of one workload against one system, combined.
#[derive(Clone, Default)]
pub struct Combined {
    pub runs: Vec<Run>,
}

impl Combined {
    /// All operations over all the time spent in the runs.
    pub fn ops_per_s(&self) -> f64 {
        let ops = self.runs.iter().map(|r| r.ops).sum();
        per_second(ops, self.runs.iter().map(|r| r.elapsed).sum())
    }

    /// Every run's latencies together.
    pub fn latencies(&self) -> Latencies {
        let mut all = Latencies::default();
        for run in &self.runs {
            all.merge(&run.latencies);
        }
        all
    }

    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }

    /// Each run's throughput, e.g. `5012 / 4987`.
    pub fn per_round(&self) -> String {
        let each: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.ops_per_s()))
            .collect();
        each.join(" / ")
    }
}

fn per_second(ops: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        ops as f64 / elapsed.as_secs_f64()
    }
}

/// `a / b`, or `None` when `b` is 0.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Microseconds as milliseconds with two decimals: `1234` → `1.23 ms`.
pub fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// One row of the result table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub workload: String,
    pub system: String,
    /// `None` where throughput means nothing (watch fan-out).
    pub ops_per_s: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Throughput of each round, or another note.
    pub rounds: String,
    /// The agent/etcd comparison, on the agent's row.
    pub ratio: String,
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | system | ops/s | p50 | p99 | p99.9 | ops/s per round | agent/etcd |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let ops = row
            .ops_per_s
            .map(|o| format!("{o:.0}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.workload,
            row.system,
            ops,
            ms(row.p50_us),
            ms(row.p99_us),
            ms(row.p999_us),
            row.rounds,
            row.ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut latencies = Latencies::default();
        for micros in 1..=10_000u64 {
            latencies.record(Duration::from_micros(micros));
        }
        assert_eq!(latencies.count(), 10_000);
        let close = |got: u64, want: u64| got.abs_diff(want) <= want / 500 + 1;
        assert!(close(latencies.quantile_us(0.5), 5_000), "p50");
        assert!(close(latencies.quantile_us(0.99), 9_900), "p99");
        assert!(close(latencies.quantile_us(0.999), 9_990), "p99.9");
        assert!(close(latencies.max_us(), 10_000), "max");
    }

    #[test]
    fn an_empty_histogram_reads_zero_and_merging_adds() {
        let mut a = Latencies::default();
        assert_eq!(a.quantile_us(0.99), 0);
        let mut b = Latencies::default();
        b.record(Duration::from_millis(3));
        b.record(Duration::ZERO); // clamped to 1 µs
        b.record(Duration::from_secs(3600)); // clamped to the maximum
        a.merge(&b);
        a.merge(&b);
        assert_eq!(a.count(), 6);
        assert!(a.quantile_us(0.5).abs_diff(3_000) <= 3);
    }

    #[test]
    fn combined_runs_weigh_by_time() {
        let run = |ops, secs| Run {
            ops,
            elapsed: Duration::from_secs(secs),
            ..Default::default()
        };
        let combined = Combined {
            runs: vec![run(1000, 10), run(3000, 10)],
        };
        assert_eq!(combined.ops_per_s(), 200.0);
        assert_eq!(combined.per_round(), "100 / 300");
        assert_eq!(Combined::default().ops_per_s(), 0.0);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
    }

    #[test]
    fn the_table_is_markdown() {
        let rows = [
            Row {
                workload: "concurrent writes".into(),
                system: "agent".into(),
                ops_per_s: Some(1234.4),
                p50_us: 1500,
                p99_us: 12_345,
                p999_us: 100_000,
                rounds: "1200 / 1268".into(),
                ratio: "1.10×".into(),
            },
            Row {
                workload: "watch fan-out".into(),
                system: "etcd".into(),
                ops_per_s: None,
                p50_us: 7,
                p99_us: 8,
                p999_us: 9,
                rounds: String::new(),
                ratio: String::new(),
            },
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| workload | system | ops/s | p50 | p99 | p99.9 |"));
        assert_eq!(
            lines[2],
            "| concurrent writes | agent | 1234 | 1.50 ms | 12.35 ms | 100.00 ms | 1200 / 1268 | 1.10× |"
        );
        assert_eq!(
            lines[3],
            "| watch fan-out | etcd | - | 0.01 ms | 0.01 ms | 0.01 ms |  |  |"
        );
    }
}
