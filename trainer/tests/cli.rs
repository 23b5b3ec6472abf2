//! The trainer's command line refuses counts and bit widths that would produce meaningless
//! reports, naming the flag, before it loads any data.

use std::process::Command;

fn refused(args: &[&str], flag: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_hexray-trainer"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} was accepted");
    assert!(stderr.contains(flag), "{args:?}: {stderr}");
}

#[test]
fn meaningless_counts_and_widths_are_refused() {
    refused(&["pareto", "--seeds", "0"], "--seeds");
    refused(&["ablation", "--seeds", "0"], "--seeds");
    refused(&["train", "--draws", "0"], "--draws");
    refused(&["train", "--weight-bits", "1"], "--weight-bits");
    refused(&["train", "--weight-bits", "17"], "--weight-bits");
    refused(&["pareto", "--topologies", "nonsense"], "nonsense");
    refused(
        &["train", "--adult-pretraining", "sideways"],
        "--adult-pretraining",
    );
}
