//! Checking a scenario's history and printing the results.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::Scenario;
use crate::{
    CheckerConfig, Counts, History, LostReport, OpKind, ReadMode, Summary, Verdict, check,
    check_lost_writes,
};

/// The result of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario (`None` for a re-checked history file).
    pub scenario: Option<Scenario>,
    /// Operations by outcome (all kinds, final reads included).
    pub ops: Counts,
    /// Reads invoked during the fault window: (ok, all).
    pub fault_reads: (usize, usize),
    /// Writes and CAS invoked during the fault window: (ok, all).
    pub fault_writes: (usize, usize),
    /// The share of the clients' time during the fault window spent in
    /// operations that did not succeed (and the back-off after them): a
    /// time-based unavailability, as op counts over-weight fast clients.
    pub fault_stalled: f64,
    /// Linearizability with default-mode reads (and every mutation).
    pub default: Option<Verdict>,
    /// Linearizability with consistent reads (and every mutation).
    pub consistent: Option<Verdict>,
    /// The lost-write check (default and consistent reads).
    pub lost: Option<LostReport>,
    /// What the fault driver did.
    pub fault_log: Vec<String>,
    /// The scenario's directory (logs, data, `history.jsonl`).
    pub dir: PathBuf,
    /// Why the scenario could not run, if it could not.
    pub error: Option<String>,
}

impl ScenarioResult {
    /// A scenario that failed to run.
    pub fn error(scenario: Scenario, error: String, dir: PathBuf) -> Self {
        ScenarioResult {
            scenario: Some(scenario),
            ops: Counts::default(),
            fault_reads: (0, 0),
            fault_writes: (0, 0),
            fault_stalled: 0.0,
            default: None,
            consistent: None,
            lost: None,
            fault_log: Vec::new(),
            dir,
            error: Some(error),
        }
    }

    fn name(&self) -> String {
        self.scenario
            .map_or_else(|| "history".to_string(), |s| s.name().to_string())
    }

    /// Both verdicts are `Linearizable`.
    pub fn linearizable(&self) -> bool {
        self.error.is_none()
            && [&self.default, &self.consistent]
                .iter()
                .all(|v| v.as_ref().is_some_and(Verdict::is_linearizable))
    }

    /// Lost acknowledged writes.
    pub fn lost_writes(&self) -> usize {
        self.lost.as_ref().map_or(0, |l| l.lost.len())
    }

    /// Ran, linearizable, nothing lost.
    pub fn passed(&self) -> bool {
        self.linearizable() && self.lost_writes() == 0
    }

    /// The scenario's report: one summary line, then details of any
    /// violation, unproven verdict or lost write.
    pub fn line(&self) -> String {
        let name = self.name();
        if let Some(e) = &self.error {
            return format!(
                "scenario {name}: ERROR (not run to the end, counted as not linearizable): {e}\n  files: {}",
                self.dir.display()
            );
        }
        let pct = |(ok, all): (usize, usize)| {
            if all == 0 {
                "n/a".to_string()
            } else {
                format!("{:.0}% ok ({ok}/{all})", 100.0 * ok as f64 / all as f64)
            }
        };
        let short = |v: &Option<Verdict>| match v {
            Some(Verdict::Linearizable) => "linearizable".to_string(),
            Some(Verdict::NotLinearizable(_)) => "NOT linearizable".to_string(),
            Some(Verdict::Unknown { reason }) => {
                format!("not proven (checker gave up: {reason}; counted as not linearizable)")
            }
            None => "not checked".to_string(),
        };
        let mut out = format!(
            "scenario {name}: ops ok/fail/unknown = {}/{}/{}; during fault: reads {}, writes {}, clients stalled {:.0}% of the time; default reads: {}; consistent reads: {}; lost writes: {}",
            self.ops.ok,
            self.ops.fail,
            self.ops.unknown,
            pct(self.fault_reads),
            pct(self.fault_writes),
            100.0 * self.fault_stalled,
            short(&self.default),
            short(&self.consistent),
            self.lost_writes(),
        );
        if !self.fault_log.is_empty() {
            let _ = write!(out, "\n  faults: {}", self.fault_log.join("; "));
        }
        for (mode, verdict) in [("default", &self.default), ("consistent", &self.consistent)] {
            if let Some(Verdict::NotLinearizable(v)) = verdict {
                let _ = write!(out, "\n  {mode} reads violation:");
                let text = v.to_string();
                let lines: Vec<&str> = text.lines().collect();
                for line in lines.iter().take(VIOLATION_LINES) {
                    let _ = write!(out, "\n    {line}");
                }
                if lines.len() > VIOLATION_LINES {
                    let _ = write!(
                        out,
                        "\n    ... {} more lines in {}",
                        lines.len() - VIOLATION_LINES,
                        self.dir.join(format!("violation-{mode}.txt")).display()
                    );
                }
            }
        }
        if let Some(lost) = &self.lost
            && !lost.ok()
        {
            let _ = write!(out, "\n  lost writes: {lost}");
        }
        if !self.passed() {
            let _ = write!(
                out,
                "\n  history: {} (logs and data in the same directory)",
                self.dir.join("history.jsonl").display()
            );
        }
        out
    }
}

/// How many lines of a violation report are printed (all are saved).
const VIOLATION_LINES: usize = 24;

impl ScenarioResult {
    /// Writes each violation's full report to `<dir>/violation-<mode>.txt`.
    pub fn save_violations(&self) -> std::io::Result<()> {
        for (mode, verdict) in [("default", &self.default), ("consistent", &self.consistent)] {
            if let Some(Verdict::NotLinearizable(v)) = verdict {
                std::fs::write(
                    self.dir.join(format!("violation-{mode}.txt")),
                    v.to_string(),
                )?;
            }
        }
        if let Some(lost) = &self.lost
            && !lost.ok()
        {
            std::fs::write(self.dir.join("lost-writes.txt"), lost.to_string())?;
        }
        Ok(())
    }
}

/// The result of a suite.
#[derive(Debug, Clone)]
pub struct SuiteResult {
    /// Per scenario, in order.
    pub scenarios: Vec<ScenarioResult>,
    /// The kept directory (when something failed).
    pub kept: Option<PathBuf>,
}

impl SuiteResult {
    /// Operations of all scenarios.
    pub fn operations(&self) -> usize {
        self.scenarios.iter().map(|s| s.ops.total()).sum()
    }

    /// Every scenario ran and is linearizable (both read modes).
    pub fn linearizable(&self) -> bool {
        self.scenarios.iter().all(ScenarioResult::linearizable)
    }

    /// Lost writes of all scenarios.
    pub fn lost_writes(&self) -> usize {
        self.scenarios.iter().map(ScenarioResult::lost_writes).sum()
    }

    /// Linearizable and nothing lost.
    pub fn passed(&self) -> bool {
        self.scenarios.iter().all(ScenarioResult::passed)
    }

    /// The last line: `faults: N scenarios, M operations, linearizable: yes,
    /// lost writes: 0`.
    pub fn last_line(&self) -> String {
        format!(
            "faults: {} scenarios, {} operations, linearizable: {}, lost writes: {}",
            self.scenarios.len(),
            self.operations(),
            if self.linearizable() { "yes" } else { "no" },
            self.lost_writes()
        )
    }
}

/// Counts of ok and all operations invoked in `[from, to]` matching `pick`.
fn window(history: &History, from: u64, to: u64, pick: impl Fn(&OpKind) -> bool) -> (usize, usize) {
    let ops = history
        .ops
        .iter()
        .filter(|o| o.invoke >= from && o.invoke <= to && pick(&o.kind));
    let (mut ok, mut all) = (0, 0);
    for op in ops {
        all += 1;
        if op.outcome.is_ok() {
            ok += 1;
        }
    }
    (ok, all)
}

/// The share of the clients' time in `[from, to]` spent in operations that
/// did not succeed, plus the workload's back-off after each.
fn stalled(history: &History, from: u64, to: u64) -> f64 {
    if to <= from {
        return 0.0;
    }
    let backoff = u64::try_from(super::workload::BACKOFF.as_nanos()).unwrap_or(0);
    let mut clients = std::collections::BTreeSet::new();
    let mut lost: u64 = 0;
    for op in &history.ops {
        let end = op.complete.unwrap_or(to);
        if end < from || op.invoke > to {
            continue;
        }
        clients.insert(op.client);
        if !op.outcome.is_ok() {
            let (a, b) = (op.invoke.max(from), end.saturating_add(backoff).min(to));
            lost += b.saturating_sub(a);
        }
    }
    if clients.is_empty() {
        return 0.0;
    }
    (lost as f64 / (clients.len() as f64 * (to - from) as f64)).min(1.0)
}

/// Checks a history: both read modes' linearizability and lost writes;
/// availability over the fault window `[fault_start, fault_end]` (ns).
pub fn check_history(
    scenario: Option<Scenario>,
    history: &History,
    fault_start: u64,
    fault_end: u64,
) -> anyhow::Result<ScenarioResult> {
    let config = CheckerConfig::default();
    let summary = Summary::of(history);
    let default = check(&history.with_reads(&[ReadMode::Default]), &config)?.verdict;
    let consistent = check(&history.with_reads(&[ReadMode::Consistent]), &config)?.verdict;
    let lost = check_lost_writes(&history.with_reads(&[ReadMode::Default, ReadMode::Consistent]));
    Ok(ScenarioResult {
        scenario,
        ops: summary.all,
        fault_reads: window(history, fault_start, fault_end, |k| {
            matches!(k, OpKind::Read { .. })
        }),
        fault_writes: window(history, fault_start, fault_end, OpKind::is_mutation),
        fault_stalled: stalled(history, fault_start, fault_end),
        default: Some(default),
        consistent: Some(consistent),
        lost: Some(lost),
        fault_log: Vec::new(),
        dir: PathBuf::new(),
        error: None,
    })
}
