//! Builders of hand-written histories and a simulated linearizable register.
#![allow(dead_code)]

use faults::{History, Op, OpKind, Outcome, ReadMode, Ret};

/// Milliseconds to the history's nanoseconds.
pub const MS: u64 = 1_000_000;

fn op(client: u32, key: &str, kind: OpKind, invoke: u64, complete: u64, outcome: Outcome) -> Op {
    Op {
        client,
        key: key.to_string(),
        kind,
        invoke: invoke * MS,
        complete: Some(complete * MS),
        outcome,
    }
}

/// An acknowledged write of `value`, times in ms.
pub fn w(client: u32, key: &str, value: &str, invoke: u64, complete: u64) -> Op {
    op(
        client,
        key,
        OpKind::Write {
            value: value.to_string(),
        },
        invoke,
        complete,
        Outcome::Ok(Ret::Write),
    )
}

/// A default-mode read that returned `value`, times in ms.
pub fn r(client: u32, key: &str, value: Option<&str>, invoke: u64, complete: u64) -> Op {
    op(
        client,
        key,
        OpKind::Read {
            mode: ReadMode::Default,
        },
        invoke,
        complete,
        Outcome::Ok(Ret::Read(value.map(str::to_string))),
    )
}

/// A CAS `expected -> new` that completed with `swapped`, times in ms.
pub fn cas(
    client: u32,
    key: &str,
    expected: Option<&str>,
    new: &str,
    swapped: bool,
    invoke: u64,
    complete: u64,
) -> Op {
    op(
        client,
        key,
        OpKind::Cas {
            expected: expected.map(str::to_string),
            new: new.to_string(),
        },
        invoke,
        complete,
        Outcome::Ok(Ret::Cas(swapped)),
    )
}

/// The same operation with an unknown outcome (the client gave up at its
/// completion time).
pub fn unknown(mut op: Op) -> Op {
    op.outcome = Outcome::Unknown;
    op
}

/// The same operation, never completed.
pub fn pending(mut op: Op) -> Op {
    op.outcome = Outcome::Unknown;
    op.complete = None;
    op
}

/// The same operation, failed.
pub fn failed(mut op: Op) -> Op {
    op.outcome = Outcome::Fail;
    op
}

/// The same read, in another mode.
pub fn mode(mut op: Op, m: ReadMode) -> Op {
    op.kind = OpKind::Read { mode: m };
    op
}

pub fn history(ops: Vec<Op>) -> History {
    History::from(ops)
}

/// splitmix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    /// `true` with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

/// Parameters of a simulated workload.
pub struct Sim {
    pub clients: u32,
    pub ops_per_client: usize,
    pub keys: usize,
    /// Percent of mutations with an unknown outcome.
    pub unknown_pct: u64,
    /// Percent of operations that fail (not applied).
    pub fail_pct: u64,
    pub seed: u64,
}

/// A history of a correct (linearizable) register: every operation that
/// takes effect does so atomically at a random point inside its interval
/// (for an unknown one, possibly long after the client gave up, or never).
pub fn simulate(sim: &Sim) -> History {
    struct Plan {
        client: u32,
        key: usize,
        invoke: u64,
        complete: u64,
        /// The linearization point; `None`: never applied.
        lin: Option<u64>,
        outcome: u8, // 0 ok, 1 fail, 2 unknown
        what: u8,    // 0 read, 1 write, 2 cas
        mode: ReadMode,
    }
    let mut rng = Rng::new(sim.seed);
    let mut plans = Vec::new();
    for client in 0..sim.clients {
        // Time in µs.
        let mut t = rng.range(0, 2_000);
        for _ in 0..sim.ops_per_client {
            let invoke = t + rng.range(0, 500);
            let duration = rng.range(100, 3_000);
            let complete = invoke + duration;
            let key = rng.range(0, sim.keys as u64) as usize;
            let what = match rng.range(0, 10) {
                0..=4 => 0,
                5..=7 => 1,
                _ => 2,
            };
            let mode = if rng.pct(50) {
                ReadMode::Default
            } else {
                ReadMode::Consistent
            };
            let (outcome, lin) = if rng.pct(sim.fail_pct) {
                (1, None)
            } else if what != 0 && rng.pct(sim.unknown_pct) {
                // Applied at any time after invoke (even long after the
                // timeout), or never.
                let lin = rng
                    .pct(60)
                    .then(|| invoke + rng.range(0, 20 * duration + 1));
                (2, lin)
            } else {
                (0, Some(invoke + rng.range(0, duration + 1)))
            };
            plans.push(Plan {
                client,
                key,
                invoke,
                complete,
                lin,
                outcome,
                what,
                mode,
            });
            t = complete;
        }
    }
    // Decide values in linearization order, so that CAS often swap.
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| (plans[i].lin.unwrap_or(u64::MAX), i));
    let mut state: Vec<Option<String>> = vec![None; sim.keys];
    let mut written: Vec<Vec<String>> = vec![Vec::new(); sim.keys];
    let mut counter = vec![0u32; sim.clients as usize];
    let mut ops: Vec<Option<Op>> = (0..plans.len()).map(|_| None).collect();
    for i in order {
        let p = &plans[i];
        let applied = p.lin.is_some();
        let cur = state[p.key].clone();
        let mut fresh = || {
            counter[p.client as usize] += 1;
            format!("c{}-{}", p.client, counter[p.client as usize])
        };
        let (kind, ret) = match p.what {
            0 => (OpKind::Read { mode: p.mode }, Ret::Read(cur.clone())),
            1 => {
                let v = fresh();
                if applied {
                    state[p.key] = Some(v.clone());
                }
                written[p.key].push(v.clone());
                (OpKind::Write { value: v }, Ret::Write)
            }
            _ => {
                let new = fresh();
                let expected = if rng.pct(50) {
                    cur.clone()
                } else if written[p.key].is_empty() || rng.pct(20) {
                    None
                } else {
                    let n = written[p.key].len() as u64;
                    Some(written[p.key][rng.range(0, n) as usize].clone())
                };
                let swapped = applied && expected == cur;
                if swapped {
                    state[p.key] = Some(new.clone());
                }
                written[p.key].push(new.clone());
                (OpKind::Cas { expected, new }, Ret::Cas(swapped))
            }
        };
        let outcome = match p.outcome {
            0 => Outcome::Ok(ret),
            1 => Outcome::Fail,
            _ => Outcome::Unknown,
        };
        ops[i] = Some(Op {
            client: p.client,
            key: format!("k{}", p.key),
            kind,
            invoke: p.invoke * 1_000,
            complete: Some(p.complete * 1_000),
            outcome,
        });
    }
    ops.into_iter().flatten().collect()
}

/// Turns one acknowledged read into a stale one: it now returns the value
/// of a write w1 that was followed by a write w2 invoked after w1 completed,
/// w2 completing before the read was invoked. Returns the modified read.
pub fn inject_stale_read(h: &mut History, rng: &mut Rng) -> Option<Op> {
    let acked = |o: &Op| match (&o.kind, &o.outcome) {
        (OpKind::Write { value }, Outcome::Ok(_)) => Some(value.clone()),
        (OpKind::Cas { new, .. }, Outcome::Ok(Ret::Cas(true))) => Some(new.clone()),
        _ => None,
    };
    let reads: Vec<usize> = (0..h.ops.len())
        .filter(|&i| matches!(h.ops[i].outcome, Outcome::Ok(Ret::Read(_))))
        .collect();
    let start = rng.range(0, reads.len() as u64) as usize;
    for k in 0..reads.len() {
        let ri = reads[(start + k) % reads.len()];
        let read = h.ops[ri].clone();
        let Outcome::Ok(Ret::Read(current)) = &read.outcome else {
            continue;
        };
        let muts: Vec<(&Op, String)> = h
            .ops
            .iter()
            .filter(|o| o.key == read.key)
            .filter_map(|o| acked(o).map(|v| (o, v)))
            .collect();
        for (w2, _) in &muts {
            if w2.complete.is_none_or(|c| c >= read.invoke) {
                continue;
            }
            if let Some((_, v1)) = muts.iter().find(|(w1, v1)| {
                w1.complete.is_some_and(|c| c < w2.invoke) && Some(v1) != current.as_ref()
            }) {
                let v1 = v1.clone();
                h.ops[ri].outcome = Outcome::Ok(Ret::Read(Some(v1)));
                return Some(h.ops[ri].clone());
            }
        }
    }
    None
}
