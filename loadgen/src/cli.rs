//! The `sluice loadgen` command line.

use super::config::{Endpoint, LoadConfig, Mode};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::time::Duration;

/// `--endpoint` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointArg {
    /// POST /v1/chat/completions
    Chat,
    /// POST /v1/completions
    Completions,
}

/// Generate load against an OpenAI-compatible endpoint and report throughput and
/// latency percentiles. Give `--concurrency` for a closed loop or `--rate` for an open
/// loop (latency then counts from each request's scheduled start).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Base URL of the server (http only; only this address is contacted).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, value_enum, default_value_t = EndpointArg::Chat)]
    pub endpoint: EndpointArg,
    #[arg(long, default_value = "llama-3.1-8b-instruct")]
    pub model: String,
    /// Request SSE streams (each must end with `data: [DONE]`).
    #[arg(long)]
    pub stream: bool,
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// Approximate prompt length in words.
    #[arg(long, default_value_t = 32)]
    pub prompt_words: usize,
    /// Closed loop with N concurrent requests [default: 16 if --rate is not given].
    #[arg(long, value_name = "N", conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: start R requests per second on a fixed timetable.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Open loop: requests due while this many are outstanding are dropped.
    #[arg(long, value_name = "N", requires = "rate", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Measurement window in seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up in seconds before the window (sent, not counted).
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub warmup: f64,
    /// Distinct `x-session-id` values, sent round-robin (0: no header).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub sessions: usize,
    /// Send vLLM's `ignore_eos` so every answer is exactly --max-tokens long.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Per-request timeout in seconds.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub timeout: f64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
}

/// At most a day per run, and per request.
const MAX_SECONDS: f64 = 86_400.0;

fn seconds(name: &str, s: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    if !s.is_finite() || s < 0.0 || (s == 0.0 && !allow_zero) || s > MAX_SECONDS {
        bail!(
            "--{name} must be {} seconds, at most {MAX_SECONDS}, got {s}",
            if allow_zero { "≥ 0" } else { "> 0" }
        );
    }
    Ok(Duration::from_secs_f64(s))
}

impl LoadgenArgs {
    /// The run these flags describe.
    pub fn to_config(&self) -> anyhow::Result<LoadConfig> {
        let mode = match (self.concurrency, self.rate) {
            (_, Some(rate_per_s)) => Mode::Open {
                rate_per_s,
                max_in_flight: self.max_in_flight,
            },
            (Some(concurrency), None) => Mode::Closed { concurrency },
            (None, None) => Mode::Closed { concurrency: 16 },
        };
        let cfg = LoadConfig {
            url: self.url.clone(),
            endpoint: match self.endpoint {
                EndpointArg::Chat => Endpoint::Chat,
                EndpointArg::Completions => Endpoint::Completion,
            },
            model: self.model.clone(),
            stream: self.stream,
            max_tokens: self.max_tokens,
            prompt_tokens: self.prompt_words,
            mode,
            duration: seconds("duration", self.duration, false)?,
            warmup: seconds("warmup", self.warmup, true)?,
            sessions: self.sessions,
            ignore_eos: self.ignore_eos,
            request_timeout: seconds("timeout", self.timeout, false)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs the load, prints the report table on stdout and, with `--json`, writes it
/// as JSON. Fails if no request at all succeeded.
pub async fn cli_main(args: LoadgenArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    eprintln!(
        "loadgen: {:?} against {} for {:.1} s (+{:.1} s warm-up)",
        cfg.mode,
        cfg.url,
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64()
    );
    let report = super::run(&cfg).await?;
    print!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.sent > 0 && report.ok == 0 {
        bail!("none of the {} requests succeeded", report.sent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn parse(argv: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("loadgen").chain(argv.iter().copied())).map(|w| w.args)
    }

    #[test]
    fn flags_map_to_a_config() {
        let a = parse(&[
            "--url",
            "http://127.0.0.1:9000",
            "--endpoint",
            "completions",
            "--stream",
            "--max-tokens",
            "4",
            "--prompt-words",
            "100",
            "--rate",
            "500",
            "--max-in-flight",
            "8",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--sessions",
            "3",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert_eq!(c.endpoint, Endpoint::Completion);
        assert!(c.stream);
        assert_eq!((c.max_tokens, c.prompt_tokens, c.sessions), (4, 100, 3));
        assert_eq!(
            c.mode,
            Mode::Open {
                rate_per_s: 500.0,
                max_in_flight: 8
            }
        );
        assert_eq!(c.duration, Duration::from_millis(1500));
        assert_eq!(c.warmup, Duration::ZERO);

        let c = parse(&["--concurrency", "64"])
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(c.mode, Mode::Closed { concurrency: 64 });
        assert_eq!(c.endpoint, Endpoint::Chat);
        assert_eq!(
            parse(&[]).unwrap().to_config().unwrap().mode,
            Mode::Closed { concurrency: 16 }
        );
    }

    #[test]
    fn conflicting_or_bad_flags_are_rejected() {
        assert!(parse(&["--concurrency", "4", "--rate", "10"]).is_err());
        assert!(parse(&["--max-in-flight", "4"]).is_err());
        assert!(parse(&["--duration=-1"]).unwrap().to_config().is_err());
        assert!(parse(&["--duration", "NaN"]).unwrap().to_config().is_err());
        assert!(parse(&["--concurrency", "0"]).unwrap().to_config().is_err());
        assert!(parse(&["--url", "https://x"]).unwrap().to_config().is_err());
    }
}
