//! The benchmarks as a user runs them: a process, its figures on stdout. Timings are not
//! checked (they belong to the machine); that each command runs and prints its table is.

use std::process::Command;

/// Runs `hexray-bench` with `args` and returns its stdout, failing on a non-zero exit.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_hexray-bench"))
        .args(args)
        .output()
        .expect("hexray-bench runs");
    assert!(
        output.status.success(),
        "hexray-bench {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 figures")
}

#[test]
fn the_key_storage_benchmark_prints_a_row_for_the_embedded_store() {
    let figures = bench(&["keys", "--keys", "1"]);
    assert!(figures.contains("keys of 30.1 MB each"), "{figures}");
    let row = figures
        .lines()
        .find(|line| line.starts_with("embedded"))
        .unwrap_or_else(|| panic!("no embedded row in:\n{figures}"));
    let times: Vec<f64> = row
        .split_whitespace()
        .skip(1)
        .map(|cell| cell.parse().expect("a time in ms"))
        .collect();
    assert_eq!(times.len(), 4, "{row}");
    // Register, check, first use, cached use: a first use reads and expands the key, which a
    // cached use must not do again.
    assert!(
        times[2] > times[3],
        "a cached use costs as much as a first: {row}"
    );
}

#[test]
fn every_benchmark_is_a_command_of_hexray_bench() {
    let help = bench(&["--help"]);
    for command in ["engine", "server", "keys", "cluster", "load", "bulk"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
}

/// The bulk benchmark on a small batch: its last line is the JSON the issue specifies, and the
/// decrypted outputs equal the exact evaluation. It reads PneumoniaMNIST from `../shared`, so
/// it fails where the data is missing, as the trainer's tests do.
#[test]
fn the_bulk_benchmark_ends_with_its_json_line() {
    let figures = bench(&["bulk", "--images", "16", "--tfhe-images", "1"]);
    let last = figures.lines().last().expect("a last line");
    let json: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(json["images"], 16, "{last}");
    assert_eq!(json["agree_with_exact"], true, "{last}");
    assert_eq!(json["test_images"], 468, "{last}");
    for field in [
        "bulk_s_per_image",
        "tfhe_s_per_image",
        "upload_bytes_per_image",
    ] {
        assert!(
            json[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {last}"
        );
    }
    let gap =
        json["bulk_accuracy"].as_f64().unwrap() - json["interactive_accuracy"].as_f64().unwrap();
    assert!(
        gap.abs() <= 0.01,
        "bulk accuracy {gap:+} from the interactive path's: {last}"
    );
}
