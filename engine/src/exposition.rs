//! Reading the Prometheus text format that engines (vLLM, SGLang, the simulated one) and
//! Sluice nodes serve at `/metrics`: the prober reads engines' gauges with it, drills
//! and tests read nodes' counters.

/// One sample line, `name{labels} value [timestamp]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// What is between the braces, as written (empty without them).
    pub labels: &'a str,
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of label `key`, unescaped only as far as it needs no escape.
    pub fn label(&self, key: &str) -> Option<&'a str> {
        let mut rest = self.labels;
        loop {
            let (name, after) = rest.split_once("=\"")?;
            let end = closing_quote(after)?;
            if name.trim().trim_start_matches(',').trim() == key {
                return Some(&after[..end]);
            }
            rest = &after[end + 1..];
        }
    }
}

/// Where the quoted value that `s` starts inside ends (its closing quote's index).
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// One line's sample, or `None` for comments, blank lines and lines that do not parse.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(|c: char| c == '{' || c.is_whitespace()) {
        Some(i) if line[i..].starts_with('{') => {
            let inner = &line[i + 1..];
            // Label values may hold braces and spaces: find the brace after the last
            // closed quote.
            let mut at = 0;
            let close = loop {
                let tail = &inner[at..];
                let brace = tail.find('}')?;
                match tail[..brace].find('"') {
                    Some(q) => at += q + 1 + closing_quote(&tail[q + 1..])? + 1,
                    None => break at + brace,
                }
            };
            (&line[..i], &inner[..close], &inner[close + 1..])
        }
        Some(i) => (&line[..i], "", &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The samples of a `/metrics` page, in order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

/// The sum of every sample of `name` (or of the counter `name_total`) across its labels;
/// `None` when there is none.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .filter(|s| {
            s.name == name
                || s.name
                    .strip_prefix(name)
                    .is_some_and(|rest| rest == "_total")
        })
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1.5e3
sluice_routed_total{replica="7"} 42 1700000000000
odd{path="/a b}c",q="say \"hi\""} 5
bare 1

not a sample
"#;

    #[test]
    fn samples_carry_names_labels_and_values_and_skip_the_rest() {
        let all: Vec<Sample<'_>> = samples(PAGE).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].name, "vllm:num_requests_running");
        assert_eq!(all[0].labels, r#"engine="0",model_name="tiny""#);
        assert_eq!(all[0].value, 3.0);
        assert_eq!(all[2].value, 1500.0);
        // A timestamp after the value is not the value.
        assert_eq!((all[3].name, all[3].value), ("sluice_routed_total", 42.0));
        assert_eq!(all[3].label("replica"), Some("7"));
        // Braces, spaces and escaped quotes inside label values.
        assert_eq!((all[4].name, all[4].value), ("odd", 5.0));
        assert_eq!(all[4].label("path"), Some("/a b}c"));
        assert_eq!(all[4].label("q"), Some(r#"say \"hi\""#));
        assert_eq!(all[4].label("missing"), None);
        assert_eq!(
            (all[5].name, all[5].labels, all[5].value),
            ("bare", "", 1.0)
        );
    }

    #[test]
    fn sums_add_every_series_of_a_name_and_its_counter() {
        assert_eq!(sum(PAGE, "vllm:num_requests_running"), Some(5.0));
        assert_eq!(sum(PAGE, "vllm:prompt_tokens"), Some(1500.0));
        assert_eq!(sum(PAGE, "vllm:generation_tokens"), None);
        // A name that only starts another does not count.
        assert_eq!(sum(PAGE, "vllm:num_requests"), None);
    }
}
