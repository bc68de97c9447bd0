//! Azure LLM inference trace 2023 (Azure/AzurePublicDataset, Splitwise, ISCA'24): CSV of
//! `TIMESTAMP,ContextTokens,GeneratedTokens`. Real arrivals and sizes, no prefix
//! information: every prompt is unique and every request its own workload.

use super::error::TraceError;
use super::request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
use std::path::Path;

pub fn read_azure(path: &Path) -> Result<Trace, TraceError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_azure(&text, &shown)
}

pub fn parse_azure(text: &str, origin: &str) -> Result<Trace, TraceError> {
    let err = |line: usize, message: String| TraceError::Parse {
        path: origin.to_owned(),
        line,
        message,
    };
    let mut requests = Vec::new();
    let mut first_us: Option<i64> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("TIMESTAMP")) {
            continue;
        }
        let mut cols = line.split(',');
        let (Some(ts), Some(ctx), Some(gen)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(err(
                i + 1,
                "expected TIMESTAMP,ContextTokens,GeneratedTokens".into(),
            ));
        };
        let at =
            parse_timestamp_us(ts).ok_or_else(|| err(i + 1, format!("bad timestamp '{ts}'")))?;
        let ctx: u32 = ctx
            .trim()
            .parse()
            .map_err(|_| err(i + 1, format!("bad ContextTokens '{ctx}'")))?;
        let gen: u32 = gen
            .trim()
            .parse()
            .map_err(|_| err(i + 1, format!("bad GeneratedTokens '{gen}'")))?;
        let base = *first_us.get_or_insert(at);
        let id = requests.len() as u64;
        requests.push(TraceRequest {
            arrival_us: u64::try_from(at - base).unwrap_or(0),
            // The trace has no session ids.
            session: None,
            prompt: Prompt {
                segments: vec![Segment {
                    seed: splitmix64(0x7072_6f6d ^ id),
                    len: ctx.max(1),
                }],
            },
            output_tokens: gen.max(1),
        });
    }
    if requests.is_empty() {
        return Err(TraceError::Empty(origin.to_owned()));
    }
    let mut t = Trace {
        name: "azure".into(),
        requests,
    };
    t.sort();
    Ok(t)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` to microseconds since 1970 (UTC, no time zone).
fn parse_timestamp_us(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let digits: String = frac.chars().take(6).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros = format!("{digits:0<6}").parse::<i64>().ok()?;
    Some(((days_from_civil(y, m, day) * 24 + h) * 60 + mi) * 60_000_000 + sec * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_relative_to_the_first() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5000000,374,44\n2023-11-17 00:00:01.2500000,10,0\n";
        let t = parse_azure(text, "a.csv").unwrap();
        assert_eq!(t.requests[0].arrival_us, 0);
        assert_eq!(t.requests[1].arrival_us, 1_750_000);
        assert_eq!(t.requests[0].prompt.len(), 374);
        assert_eq!(t.requests[1].output_tokens, 1);
        assert_eq!(t.requests[0].session, None);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_azure("TIMESTAMP,a,b\n2023-11-16 18:15:46,x,3\n", "a.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.csv:2") && e.contains("ContextTokens"), "{e}");
        assert!(parse_timestamp_us("2023-13-01 00:00:00").is_none());
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn reads_the_shared_trace() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/azure_conv_2023.csv");
        if !p.exists() {
            eprintln!("skipping: {} not present", p.display());
            return;
        }
        let t = read_azure(&p).unwrap();
        assert_eq!(t.requests.len(), 19_366);
        let span_min = t.span_us() as f64 / 60e6;
        assert!((55.0..=65.0).contains(&span_min), "{span_min}");
    }
}
