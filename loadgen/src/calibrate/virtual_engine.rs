//! The calibration procedure run against the pure engine model in virtual time: no HTTP,
//! no client delay, exact step times. It yields the simulated engine's true cost of a
//! request shape at a concurrency — the same closed loop, ramp and window as the HTTP
//! measurement, with each finished request replaced at the very end of its last step.
//!
//! [`VirtualEngine::with_noise`] makes it a noisy host instead: each measurement is
//! stretched by a random factor, as a busy machine stretches a real one, to exercise
//! the repeated rounds of the cost sweep.

use super::prompt::Rng;
use super::{summarize, Done, MeasureOptions, Measurement, PointSpec};
use sluice_engine::{EngineCore, EngineEvent, EngineParams, EngineRequest, RequestId};

/// Steps one point may take before the run is declared stuck.
const MAX_STEPS: u64 = 50_000_000;

/// The simulated engine's model, measured in virtual time.
#[derive(Debug, Clone)]
pub struct VirtualEngine {
    params: EngineParams,
    model: String,
    rng: Rng,
    /// Standard deviation of the log of each measurement's stretch factor (0: exact).
    noise: f64,
    noise_rng: Rng,
}

struct Worker {
    ramp: bool,
    start_us: u64,
    first_us: Option<u64>,
}

impl VirtualEngine {
    pub fn new(params: EngineParams, model: impl Into<String>, seed: u64) -> Self {
        Self {
            params,
            model: model.into(),
            rng: Rng::new(seed),
            noise: 0.0,
            noise_rng: Rng::new(seed ^ 0x0015_E000),
        }
    }

    /// Each measurement's times stretched by `exp(sd · z)`, `z` standard normal: the
    /// engine model on a noisy host.
    pub fn with_noise(mut self, sd: f64) -> Self {
        self.noise = sd.max(0.0);
        self
    }

    /// Whether a point measures the same every time.
    pub fn exact(&self) -> bool {
        self.noise == 0.0
    }

    pub fn describe(&self) -> String {
        format!(
            "the engine model of {} in virtual time (exact step times)",
            self.model
        )
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    /// Measures one point on a fresh engine.
    pub fn measure(
        &mut self,
        spec: &PointSpec,
        opts: &MeasureOptions,
    ) -> Result<Measurement, String> {
        let c = spec.concurrency.max(1);
        let target = opts.target_requests(c);
        let mut core = EngineCore::new(self.params.clone());
        let shapes = spec.shapes();
        // Each shape's shared prefix, and its unique part's length.
        let parts: Vec<(Vec<u32>, usize, u32)> = shapes
            .iter()
            .map(|s| {
                let prefix = self.rng.tokens(s.cached as usize);
                (
                    prefix,
                    s.input.saturating_sub(s.cached).max(1) as usize,
                    s.cached,
                )
            })
            .collect();
        let part_of = |k: usize| usize::from(spec.alternate.is_some() && k % 2 == 1);
        let mut next_id = 0u64;
        let mut now: u64 = 0;
        let mut steps = 0u64;

        // Cached shapes: one request computes the shared prefix first.
        for (prefix, unique, _) in &parts {
            if prefix.is_empty() {
                continue;
            }
            let mut prompt = prefix.clone();
            prompt.extend(self.rng.tokens(*unique));
            let req = EngineRequest::new(RequestId(next_id), prompt, 1, 1);
            next_id += 1;
            core.add_request(req, now).map_err(|e| e.to_string())?;
            while core.has_work() {
                now += core.step(now).duration_us;
                steps += 1;
            }
        }

        let mut workers: Vec<Worker> = Vec::with_capacity(c);
        // Request id → worker: ids are handed out in order from `base`.
        let base = next_id;
        let mut owner: Vec<usize> = Vec::new();
        let submit = |core: &mut EngineCore,
                      rng: &mut Rng,
                      owner: &mut Vec<usize>,
                      w: usize,
                      output: u32,
                      now: u64|
         -> Result<(), String> {
            let (prefix, unique, _) = &parts[part_of(w)];
            let mut prompt = prefix.clone();
            prompt.extend(rng.tokens(*unique));
            let id = RequestId(base + owner.len() as u64);
            owner.push(w);
            core.add_request(EngineRequest::new(id, prompt, output, output), now)
                .map_err(|e| format!("the engine refused a request of {spec:?}: {e}"))
        };
        for k in 0..c {
            workers.push(Worker {
                ramp: true,
                start_us: now,
                first_us: None,
            });
            submit(
                &mut core,
                &mut self.rng,
                &mut owner,
                k,
                spec.ramp_output(k),
                now,
            )?;
        }

        let mut ramp_left = c;
        let mut window_start: Option<u64> = None;
        let mut done: Vec<Done> = Vec::with_capacity(target);
        let mut finished: Vec<(usize, u32, u32, u32)> = Vec::new();
        while done.len() < target {
            if !core.has_work() {
                return Err("the engine ran out of work before the point was measured".into());
            }
            steps += 1;
            if steps > MAX_STEPS {
                return Err(format!("{spec:?} did not finish within {MAX_STEPS} steps"));
            }
            let out = core.step(now);
            let end = now + out.duration_us;
            if out.duration_us == 0 {
                return Err(format!("the engine cannot schedule {spec:?}"));
            }
            finished.clear();
            for ev in &out.events {
                match *ev {
                    EngineEvent::Token { id, index: 0 } => {
                        let w = owner[(id.0 - base) as usize];
                        workers[w].first_us.get_or_insert(end);
                    }
                    EngineEvent::Finished { id, usage, .. } => {
                        let w = owner[(id.0 - base) as usize];
                        finished.push((
                            w,
                            usage.prompt_tokens,
                            usage.completion_tokens,
                            usage.cached_tokens,
                        ));
                    }
                    _ => {}
                }
            }
            // Ramp completions first: a full request finishing in the step that ends the
            // ramp is inside the window.
            for &(w, ..) in &finished {
                if workers[w].ramp {
                    ramp_left -= 1;
                    if ramp_left == 0 {
                        window_start = Some(end);
                    }
                }
            }
            for &(w, prompt_tokens, completion_tokens, cached) in &finished {
                let wk = &mut workers[w];
                if !wk.ramp && window_start.is_some() && done.len() < target {
                    let ms = |us: u64| us as f64 / 1000.0;
                    done.push(Done {
                        end_ms: ms(end),
                        e2e_ms: ms(end - wk.start_us),
                        ttft_ms: wk.first_us.map(|f| ms(f - wk.start_us)),
                        prompt_tokens,
                        completion_tokens,
                        cached_tokens: Some(cached),
                        intended_cached: parts[part_of(w)].2,
                    });
                }
                *wk = Worker {
                    ramp: false,
                    start_us: end,
                    first_us: None,
                };
                let output = spec.shape_of(w).output;
                submit(&mut core, &mut self.rng, &mut owner, w, output, end)?;
            }
            now = end;
        }
        let mut m = summarize(*spec, &done)?;
        if self.noise > 0.0 {
            let f = (self.noise * self.noise_rng.normal()).exp();
            m.engine_ms_per_request *= f;
            m.throughput_rps /= f;
            m.window_ms *= f;
            for t in [&mut m.ttft_ms, &mut m.tpot_ms, &mut m.tpot_p90_ms] {
                *t = t.map(|x| x * f);
            }
        }
        Ok(m)
    }
}
