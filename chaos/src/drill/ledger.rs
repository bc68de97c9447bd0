//! The drill's ledger: every request the load generator sent and how it ended, and the
//! pure verdicts drawn from it. A request ends in exactly one way: a whole answer, an
//! explicit error (an HTTP error status, or a stream that ends with an error event), or
//! lost (no answer by its deadline, a connection dropped without a word, a stream cut
//! short without an error event, or a stream whose tokens do not add up).

use serde::Serialize;
use sluice_sim::outcome::Percentiles;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Explicit { why: String },
    Lost { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub id: u64,
    /// Milliseconds since the drill started.
    pub sent_ms: u64,
    pub done_ms: u64,
    /// Which node's front door it went to (index).
    pub node: usize,
    /// The model it asked for.
    pub model: &'static str,
    pub stream: bool,
    pub outcome: Outcome,
    /// When the first bytes of a streamed answer came back, in ms since the drill
    /// started (its time to first token); `None` for answers sent whole and for
    /// requests that got nothing.
    pub first_ms: Option<u64>,
}

/// One model's share of a drill's requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCount {
    pub model: &'static str,
    pub sent: u64,
    pub succeeded: u64,
    pub failed_explicit: u64,
    pub lost: u64,
}

/// What a drill reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub sent: u64,
    pub succeeded: u64,
    pub failed_explicit: u64,
    pub lost: u64,
    /// Of the requests sent after the first fault, the share that succeeded.
    pub success_rate_after_fault: f64,
    /// From the first fault until the success rate over a sliding window is back to
    /// `RECOVERED` for good; `None` if it never dipped, or never came back.
    pub recovery_s: Option<f64>,
    /// Why each lost request was lost (at most a few, for the report).
    pub lost_examples: Vec<String>,
    /// The first explicit failures and their reasons.
    pub explicit_examples: Vec<String>,
    /// The same counts for each model the requests asked for.
    pub by_model: Vec<ModelCount>,
    /// Time to first token of the streams answered whole, sent before the first fault
    /// (all of them when there is none) and sent after it: what a fault did to the
    /// latency of the requests it did not fail.
    pub ttft_before: Option<Ttft>,
    pub ttft_after: Option<Ttft>,
}

/// Time to first token over a set of streams.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ttft {
    pub streams: u64,
    pub ms: Percentiles,
}

impl Ttft {
    /// Over the streams of `records` answered whole; `None` if there are none.
    fn of<'a>(records: impl Iterator<Item = &'a Record>) -> Option<Self> {
        let mut ms: Vec<f64> = records
            .filter(|r| r.stream && r.outcome == Outcome::Ok)
            .filter_map(|r| Some(r.first_ms?.saturating_sub(r.sent_ms) as f64))
            .collect();
        (!ms.is_empty()).then(|| Self {
            streams: ms.len() as u64,
            ms: Percentiles::of(&mut ms),
        })
    }
}

/// The window over which recovery is judged, and the success rate that counts as
/// recovered.
pub const WINDOW_MS: u64 = 2_000;
pub const RECOVERED: f64 = 0.99;

pub fn summarize(scenario: &str, records: &[Record], fault_ms: Option<u64>) -> Summary {
    let count = |f: &dyn Fn(&Outcome) -> bool| records.iter().filter(|r| f(&r.outcome)).count();
    let succeeded = count(&|o| *o == Outcome::Ok) as u64;
    let failed_explicit = count(&|o| matches!(o, Outcome::Explicit { .. })) as u64;
    let lost_examples: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Lost { why } => Some(format!("request {} (node {}): {why}", r.id, r.node)),
            _ => None,
        })
        .take(5)
        .collect();
    let lost = count(&|o| matches!(o, Outcome::Lost { .. })) as u64;
    let explicit_examples: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Explicit { why } => Some(format!(
                "request {} at {:.1} s (node {}): {why}",
                r.id,
                r.sent_ms as f64 / 1e3,
                r.node
            )),
            _ => None,
        })
        .take(5)
        .collect();
    let after: Vec<&Record> = match fault_ms {
        Some(f) => records.iter().filter(|r| r.sent_ms >= f).collect(),
        None => records.iter().collect(),
    };
    let success_rate_after_fault = if after.is_empty() {
        1.0
    } else {
        after.iter().filter(|r| r.outcome == Outcome::Ok).count() as f64 / after.len() as f64
    };
    let before_fault = |r: &&Record| fault_ms.is_none_or(|f| r.sent_ms < f);
    Summary {
        ttft_before: Ttft::of(records.iter().filter(before_fault)),
        ttft_after: fault_ms.and_then(|f| Ttft::of(records.iter().filter(|r| r.sent_ms >= f))),
        scenario: scenario.to_owned(),
        sent: records.len() as u64,
        succeeded,
        failed_explicit,
        lost,
        success_rate_after_fault,
        recovery_s: fault_ms
            .and_then(|f| recovery_ms(records, f))
            .map(|ms| ms as f64 / 1e3),
        lost_examples,
        explicit_examples,
        by_model: by_model(records),
    }
}

/// Each model's counts, in the order the models first appear.
fn by_model(records: &[Record]) -> Vec<ModelCount> {
    let mut out: Vec<ModelCount> = Vec::new();
    for r in records {
        let i = match out.iter().position(|m| m.model == r.model) {
            Some(i) => i,
            None => {
                out.push(ModelCount {
                    model: r.model,
                    sent: 0,
                    succeeded: 0,
                    failed_explicit: 0,
                    lost: 0,
                });
                out.len() - 1
            }
        };
        let m = &mut out[i];
        m.sent += 1;
        match r.outcome {
            Outcome::Ok => m.succeeded += 1,
            Outcome::Explicit { .. } => m.failed_explicit += 1,
            Outcome::Lost { .. } => m.lost += 1,
        }
    }
    out
}

/// Milliseconds from `fault_ms` to the start of the last window (by send time) whose
/// success rate was below [`RECOVERED`], plus the window: after that every window is
/// healthy. `None` when no window after the fault was unhealthy.
fn recovery_ms(records: &[Record], fault_ms: u64) -> Option<u64> {
    let mut sorted: Vec<&Record> = records.iter().filter(|r| r.sent_ms >= fault_ms).collect();
    sorted.sort_by_key(|r| r.sent_ms);
    let last = sorted.last()?.sent_ms;
    let mut worst_end = None;
    let mut start = fault_ms;
    while start <= last {
        let end = start + WINDOW_MS;
        let window: Vec<&&Record> = sorted
            .iter()
            .filter(|r| r.sent_ms >= start && r.sent_ms < end)
            .collect();
        if !window.is_empty() {
            let ok = window.iter().filter(|r| r.outcome == Outcome::Ok).count();
            if (ok as f64) < RECOVERED * window.len() as f64 {
                worst_end = Some(end);
            }
        }
        start += WINDOW_MS / 4;
    }
    worst_end.map(|e| e.saturating_sub(fault_ms))
}

/// Checks one streamed answer (the SSE body): complete with `[DONE]`, or ended by an
/// error event; the content chunks add up to the usage the engine reported; and, when
/// the answer's text is known in advance (`expected`, a seeded request to the simulated
/// engine), it is exactly that text — no token lost, repeated or changed where a
/// continuation was spliced in.
pub fn judge_stream(body: &str, expected: Option<&str>) -> Outcome {
    let mut text = String::new();
    let mut chunks = 0u64;
    let mut usage = None;
    let mut done = false;
    let mut error = None;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return Outcome::Lost {
                why: "a stream event is not JSON".into(),
            };
        };
        if let Some(e) = v.get("error") {
            error = Some(
                e.get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("error")
                    .to_owned(),
            );
            continue;
        }
        if let Some(u) = v.get("usage").and_then(|u| u.get("completion_tokens")) {
            usage = u.as_u64();
        }
        let content = v["choices"][0]["delta"]["content"]
            .as_str()
            .or_else(|| v["choices"][0]["text"].as_str());
        if let Some(c) = content.filter(|c| !c.is_empty()) {
            chunks += 1;
            text.push_str(c);
        }
    }
    match (error, done, usage) {
        (Some(why), _, _) => Outcome::Explicit {
            why: format!("stream error event: {why}"),
        },
        (None, false, _) => Outcome::Lost {
            why: "stream cut short without an error event".into(),
        },
        (None, true, Some(u)) if u != chunks => Outcome::Lost {
            why: format!("{chunks} token chunks but usage says {u}: tokens skipped or duplicated"),
        },
        (None, true, _) => judge_text(&text, expected),
    }
}

/// A whole answer's text against the text it must be, when known.
pub fn judge_text(text: &str, expected: Option<&str>) -> Outcome {
    match expected {
        Some(want) if want != text => Outcome::Lost {
            why: format!(
                "the text differs from the request's after {} bytes: tokens lost, repeated or changed",
                text.bytes().zip(want.bytes()).take_while(|(a, b)| a == b).count()
            ),
        },
        _ => Outcome::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, sent_ms: u64, ok: bool) -> Record {
        Record {
            id,
            sent_ms,
            done_ms: sent_ms + 10,
            node: 0,
            model: "m",
            stream: false,
            outcome: if ok {
                Outcome::Ok
            } else {
                Outcome::Explicit { why: "503".into() }
            },
            first_ms: None,
        }
    }

    #[test]
    fn time_to_first_token_is_told_before_and_after_the_fault_over_whole_streams() {
        // Streams sent every 100 ms; their first token 20 ms after, 200 ms after from
        // the fault at 5 s on; one stream after it failed (its first token 5 s late does
        // not count), and answers sent whole never count.
        let mut records: Vec<Record> = (0..100)
            .map(|i| {
                let sent_ms = i * 100;
                let wait = if sent_ms < 5_000 { 20 } else { 200 };
                Record {
                    stream: i % 2 == 0,
                    first_ms: Some(sent_ms + wait),
                    ..rec(i, sent_ms, true)
                }
            })
            .collect();
        records[60].outcome = Outcome::Explicit { why: "cut".into() };
        records[60].first_ms = Some(6_000 + 5_000);
        let s = summarize("x", &records, Some(5_000));
        let (before, after) = (s.ttft_before.unwrap(), s.ttft_after.unwrap());
        assert_eq!((before.streams, after.streams), (25, 24));
        assert_eq!((before.ms.p50, before.ms.p99), (20.0, 20.0));
        assert_eq!((after.ms.p50, after.ms.p99), (200.0, 200.0));
        let calm = summarize("x", &records, None);
        assert_eq!(calm.ttft_before.unwrap().streams, 49);
        assert_eq!(calm.ttft_after, None);
        assert_eq!(summarize("x", &records[..1], Some(0)).ttft_before, None);
    }

    #[test]
    fn streams_are_whole_explicitly_failed_or_lost() {
        let chunk =
            |t: &str| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n");
        let usage = "data: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\n";
        let whole = format!("{}{}{usage}data: [DONE]\n\n", chunk("a"), chunk("b"));
        assert_eq!(judge_stream(&whole, None), Outcome::Ok);
        assert_eq!(judge_stream(&whole, Some("ab")), Outcome::Ok);
        // A splice that repeated a token and dropped another: the count adds up, the
        // text does not.
        let spliced = format!("{}{}{usage}data: [DONE]\n\n", chunk("a"), chunk("a"));
        assert_eq!(judge_stream(&spliced, None), Outcome::Ok);
        assert!(matches!(
            judge_stream(&spliced, Some("ab")),
            Outcome::Lost { .. }
        ));
        let dup = format!(
            "{}{}{}{usage}data: [DONE]\n\n",
            chunk("a"),
            chunk("b"),
            chunk("b")
        );
        assert!(matches!(judge_stream(&dup, None), Outcome::Lost { .. }));
        let cut = chunk("a");
        assert!(matches!(judge_stream(&cut, None), Outcome::Lost { .. }));
        let failed = format!(
            "{}data: {{\"error\":{{\"message\":\"replica lost\"}}}}\n\n",
            chunk("a")
        );
        assert!(matches!(
            judge_stream(&failed, None),
            Outcome::Explicit { .. }
        ));
    }

    #[test]
    fn summary_counts_each_request_once_and_measures_recovery() {
        let mut records: Vec<Record> = (0..100).map(|i| rec(i, i * 100, true)).collect();
        // Failures from 3.0 s to 4.0 s; the fault at 3.0 s.
        for r in records
            .iter_mut()
            .filter(|r| (3000..4000).contains(&r.sent_ms))
        {
            r.outcome = Outcome::Explicit { why: "503".into() };
        }
        records[99].outcome = Outcome::Lost {
            why: "no answer".into(),
        };
        let s = summarize("x", &records[..99], Some(3000));
        assert_eq!(
            (s.sent, s.succeeded, s.failed_explicit, s.lost),
            (99, 89, 10, 0)
        );
        assert!((s.success_rate_after_fault - 59.0 / 69.0).abs() < 1e-9);
        let rec_s = s.recovery_s.unwrap();
        assert!((1.0..=3.0).contains(&rec_s), "{rec_s}");
        let s = summarize("x", &records, Some(3000));
        assert_eq!(s.lost, 1);
        assert_eq!(s.lost_examples.len(), 1);
        let calm = summarize("x", &records[..20], Some(0));
        assert_eq!(calm.recovery_s, None);
    }

    #[test]
    fn each_model_is_counted_apart() {
        let mut records = vec![rec(1, 0, true), rec(2, 0, false), rec(3, 0, true)];
        records[1].model = "other";
        let lost = Record {
            outcome: Outcome::Lost { why: "gone".into() },
            ..rec(4, 0, true)
        };
        records.push(Record {
            model: "other",
            ..lost
        });
        let s = summarize("x", &records, None);
        let counts: Vec<(&str, u64, u64, u64, u64)> = s
            .by_model
            .iter()
            .map(|m| (m.model, m.sent, m.succeeded, m.failed_explicit, m.lost))
            .collect();
        assert_eq!(counts, [("m", 2, 2, 0, 0), ("other", 2, 0, 1, 1)]);
    }
}
