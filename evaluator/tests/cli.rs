//! The `hexray` command line, run as a user would.

use std::process::Command;

use hexray_test_kit::fixtures::sample_file;

fn hexray(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hexray"))
        .args(args)
        .output()
        .expect("hexray runs")
}

#[test]
fn run_prints_a_diagnosis_costs_and_the_simulator_comparison() {
    let out = hexray(&[
        "run",
        "--image",
        &sample_file("covid-cxr-actualmed/covid-1.png")
            .display()
            .to_string(),
        "--noisy-runs",
        "50",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bootstraps 32"), "{stdout}");
    assert!(stdout.contains("diagnosis  "), "{stdout}");
    assert!(stdout.contains("evaluate (server)"), "{stdout}");
    assert!(stdout.contains("max |encrypted − exact|"), "{stdout}");
    // One line per class: its name (which may hold spaces), then its probability.
    let spec: serde_json::Value = serde_json::from_slice(&hexray(&["client-spec"]).stdout).unwrap();
    let classes: Vec<&str> = spec["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let percentages: f64 = stdout
        .lines()
        .filter_map(|l| {
            let (class, p) = l.trim().rsplit_once(' ')?;
            classes.contains(&class.trim()).then_some(())?;
            p.strip_suffix('%')?.parse::<f64>().ok()
        })
        .sum();
    assert!(
        (percentages - 100.0).abs() < 0.1,
        "class probabilities sum to {percentages}%"
    );
}

#[test]
fn inspect_reports_bootstraps_and_noise() {
    let out = hexray(&["inspect"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("bootstraps 32 per image"), "{stdout}");
    assert!(stdout.contains("output"), "{stdout}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let not_an_image = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let out = hexray(&["run", "--image", &not_an_image]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot decode the image"), "{stderr}");

    let out = hexray(&["inspect", "--model", &not_an_image]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a HEXray model"));
}

#[test]
fn commands_without_a_model_file_read_the_bundled_model_not_a_build_path() {
    // The build machine's checkout is not where the binary runs (a container, another host):
    // no default may name it.
    let build_dir = env!("CARGO_MANIFEST_DIR");
    for command in ["run", "simulate", "inspect", "client-spec"] {
        let out = hexray(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("bundled default model"), "{command}: {help}");
        assert!(
            !help.contains(build_dir),
            "{command} names {build_dir}: {help}"
        );
    }
    let out = hexray(&["inspect"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("screen-mlp-32"));
}

/// The binary a hospital installs carries no benchmarks: they are `hexray-bench`'s.
#[test]
fn the_product_binary_has_no_benchmark_commands() {
    let help = String::from_utf8_lossy(&hexray(&["--help"]).stdout).to_lowercase();
    assert!(help.contains("serve"), "{help}");
    assert!(!help.contains("bench"), "{help}");
    let out = hexray(&["bench"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}

#[test]
fn client_spec_prints_the_public_part_only() {
    let out = hexray(&["client-spec"]);
    assert!(out.status.success());
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spec["format"], "hexray-client-spec");
    assert_eq!(spec["fingerprint"].as_str().map(str::len), Some(64));
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["weights", "bias", "acc_min", "sigma", "layers"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// The container image and the Kubernetes manifests configure `hexray serve` through its
/// environment variables: every one they name must be one the server reads, the image must
/// run as a non-root user with models that exist, and the readiness probe must be the
/// unauthenticated health route.
#[test]
fn the_deployment_files_name_only_real_settings_and_routes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let help = hexray(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    let mut files = vec![root.join("Dockerfile")];
    for entry in std::fs::read_dir(root.join("deploy/kubernetes")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut named = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("HEXRAY_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            assert!(
                help.contains(&format!("[env: {name}")),
                "{} names {name}, which `hexray serve` does not read",
                file.display()
            );
            named += 1;
        }
    }
    assert!(named >= 10, "only {named} settings found");

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image sets a user");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "USER {user}"
    );
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY models/")) {
        for model in line.split_whitespace().filter(|w| w.starts_with("models/")) {
            assert!(root.join(model).is_file(), "the Dockerfile copies {model}");
        }
    }

    let deployment =
        std::fs::read_to_string(root.join("deploy/kubernetes/deployment.yaml")).unwrap();
    let probe = &deployment[deployment
        .find("readinessProbe:")
        .expect("a readiness probe")..];
    let path = probe
        .lines()
        .find_map(|l| l.trim().strip_prefix("path: "))
        .expect("the probe has a path");
    assert!(
        hexray_evaluator::server::routes::ROUTES.contains(&("get", path)),
        "the readiness probe asks for {path}"
    );
    assert_eq!(path, "/api/v1/health", "the route that needs no token");
}
