//! Smoke run of the placement simulator: small, deterministic, and through the CLI.

use lb_bench::placement::{self, Policy, SimConfig};

#[test]
fn quick_run_is_deterministic_and_sane() {
    let cfg = SimConfig::quick();
    let a = placement::report(&cfg);
    let b = placement::report(&cfg);
    assert_eq!(a, b, "same seed, same report");
    assert_eq!(placement::markdown(&a), placement::markdown(&b));
    assert_eq!(a.runs.len(), cfg.levels.len() * Policy::ALL.len());
    for run in &a.runs {
        assert!(run.sessions > 0, "{run:?}");
        assert_eq!(run.peak_ram_pct.len(), cfg.engines.len());
        let share: f64 = run.share_pct.iter().sum();
        assert!((share - 100.0).abs() < 1.0, "{run:?}");
        assert!(run.cold_loads as usize <= cfg.apps * cfg.engines.len() * 4);
    }
    // Same workload for every policy at a level.
    for level in &cfg.levels {
        let sessions: Vec<u64> = a
            .runs
            .iter()
            .filter(|r| r.level == *level)
            .map(|r| r.sessions)
            .collect();
        assert!(sessions.windows(2).all(|w| w[0] == w[1]), "{sessions:?}");
    }
    // Another seed, another workload.
    let other = placement::report(&SimConfig {
        seed: 2,
        ..cfg.clone()
    });
    assert_ne!(a.runs, other.runs);
}

#[test]
fn burst_meets_the_target() {
    let ranking = lb_module_api::RankPolicy::default();
    let ours = placement::burst(Policy::Ours, 1, &ranking);
    let [a, b, c] = ours.per_engine;
    assert_eq!(a + b + c, 60);
    assert!(a <= 40 && b <= 40 && c <= 40, "{ours:?}");
    assert!(c < a && c < b, "{ours:?}");
    // The plain ranking herds onto the engine that looked best.
    let herd = placement::burst(Policy::RankOnly, 1, &ranking);
    assert_eq!(herd.per_engine, [60, 0, 0]);
}

#[test]
fn cli_writes_table_json_and_svg() {
    let dir = std::env::temp_dir().join(format!("lb-placement-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("placement.json");
    let svg = dir.join("placement.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args(["placement", "--quick", "--seed", "3", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| load | policy |"), "{table}");
    assert!(table.contains("| ours |"), "{table}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["config"]["seed"], 3);
    assert!(v["runs"].as_array().is_some_and(|r| !r.is_empty()));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args([
            "placement",
            "--quick",
            "--ranking-json",
            "{\"no_such_key\": 1}",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
