//! A short run of every chaos drill (`sluice chaos drill SCENARIO`) on three real nodes
//! in three racks: no request is lost, every node ends with the same committed state
//! (including a write made before the fault), at least 99% of the requests sent after
//! the fault succeed, and a silently hung replica is ejected within 15 s.
//! `docs/RELIABILITY.md` has the figures of longer runs.

use anyhow::{Context, Result};
use sluice_tests::sluice_bin;
use std::process::Command;

fn drill(scenario: &str, duration: &str) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("report.json");
    let out = Command::new(sluice_bin()?)
        .args([
            "chaos",
            "drill",
            scenario,
            "--duration",
            duration,
            "--rate",
            "8",
            "--json",
        ])
        .arg(&json)
        .output()
        .context("cannot run the drill")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    anyhow::ensure!(
        out.status.success(),
        "drill {scenario} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(serde_json::from_slice(&std::fs::read(&json)?)?)
}

#[test]
fn every_drill_loses_nothing_and_recovers() -> Result<()> {
    for scenario in [
        "leader-kill",
        "node-crash-restart",
        "rack-loss",
        "silent-hang",
        "partition",
        "slow-replica",
        "rolling-restart",
    ] {
        let r = drill(scenario, "15")?;
        assert_eq!(r["scenario"], scenario);
        assert_eq!(r["lost"], 0, "{scenario}: {r}");
        assert_eq!(r["state_agrees"], true, "{scenario}");
        let sent = r["sent"].as_u64().unwrap_or(0);
        assert!(sent >= 100, "{scenario}: only {sent} requests");
        assert_eq!(
            r["sent"].as_u64(),
            Some(
                r["succeeded"].as_u64().unwrap_or(0)
                    + r["failed_explicit"].as_u64().unwrap_or(0)
                    + r["lost"].as_u64().unwrap_or(0)
            ),
            "{scenario}: every request ends exactly one way"
        );
        let rate = r["success_rate_after_fault"].as_f64().unwrap_or(0.0);
        assert!(
            rate >= 0.99,
            "{scenario}: {:.2}% after the fault",
            rate * 100.0
        );
        if scenario == "silent-hang" {
            let down = r["replica_down_s"]
                .as_f64()
                .context("the hang was never detected")?;
            assert!(down < 15.0, "hung replica ejected after {down} s");
        }
    }
    Ok(())
}
