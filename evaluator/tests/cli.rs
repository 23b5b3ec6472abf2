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

    // One noisy run has no spread to compare with.
    let image = sample_file("covid-cxr-actualmed/covid-1.png")
        .display()
        .to_string();
    for runs in ["0", "1"] {
        let out = hexray(&["simulate", "--image", &image, "--noisy-runs", runs]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--noisy-runs {runs}");
        assert!(stderr.contains("must be at least 2"), "{stderr}");
    }

    // A file given as the folder is refused before any server is asked (none listens here).
    let dir = tempfile::tempdir().unwrap();
    let out_csv = dir.path().join("results.csv").display().to_string();
    let out = hexray(&[
        "bulk",
        "--server",
        "http://127.0.0.1:9",
        "--folder",
        &not_an_image,
        "--out",
        &out_csv,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a folder"), "{stderr}");
    assert!(
        !dir.path().join("results.csv").exists(),
        "no CSV is left behind"
    );
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

#[test]
fn serve_reads_a_switch_from_the_environment_as_the_docs_write_it() {
    // A file where the data folder should be: `serve` stops there, after reading its settings.
    let not_a_folder = tempfile::NamedTempFile::new().unwrap();
    let serve = |allow_open: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_hexray"))
            .args(["serve", "--data-dir"])
            .arg(not_a_folder.path())
            .env("HEXRAY_ALLOW_OPEN", allow_open)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The README's `HEXRAY_ALLOW_OPEN=1`, and what systemd units and manifests also write.
    for accepted in ["1", "true", "yes", "on", "0", "off"] {
        let stderr = serve(accepted);
        assert!(!stderr.contains("invalid value"), "{accepted}: {stderr}");
    }
    assert!(serve("maybe").contains("invalid value 'maybe'"));
    // A limit that would refuse everything is refused, not silently raised; so is a proxy
    // that is not an address.
    for (name, value, reason) in [
        ("HEXRAY_QUEUE_LIMIT", "0", "must be at least 1"),
        ("HEXRAY_DATABASE_CONNECTIONS", "2", "must be at least 3"),
        ("HEXRAY_JOB_RETENTION_S", "0", "must be at least 60"),
        (
            "HEXRAY_TRUSTED_PROXIES",
            "127.0.0.1,nginx",
            "`nginx` is not an IP address or a CIDR range",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hexray"))
            .arg("serve")
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value}");
        assert!(stderr.contains(reason), "{name}={value}: {stderr}");
    }

    // A default model that is not served stops the start, naming those that are.
    let out = Command::new(env!("CARGO_BIN_EXE_hexray"))
        .args(["serve", "--data-dir"])
        .arg(not_a_folder.path())
        .env("HEXRAY_DEFAULT_MODEL", "chest")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the default model `chest` is not among the served models (screen-mlp-32, covid-19-mlp-32, pneumonia-mlp-64, pneumonia-a)"),
        "{stderr}"
    );
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

#[test]
fn analyze_reaches_an_https_server_verified_against_the_hospital_ca_it_is_given() {
    // A CA of the hospital's own, and the certificate it signs for the server (localhost).
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [("ca", "/CN=Hospital CA"), ("other", "/CN=Another CA")] {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days", "2", "-subj", subject, "-keyout", &key, "-out", &crt,
                ],
            ]
            .concat(),
        );
    }
    openssl(
        &[
            &["req", "-new"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.path().join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    // A TLS server with that certificate, answering every request with a page that is not
    // the API's: reaching it proves the handshake and the verification.
    let port = hexray_test_kit::node::port();
    let server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-cert",
            "server.crt",
            "-key",
            "server.key",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Stop(server);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let image = sample_file("covid-cxr-actualmed/covid-1.png");
    let analyze = |ca: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hexray"));
        command
            .args(["analyze", "--server", &format!("https://localhost:{port}")])
            .arg("--image")
            .arg(&image)
            .arg("--keys-dir")
            .arg(dir.path().join("keys"));
        if let Some(ca) = ca {
            command.arg("--ca-file").arg(dir.path().join(ca));
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let trusted = analyze(Some("ca.crt"));
    assert!(trusted.contains("not what the API describes"), "{trusted}");
    // Neither another CA nor the system's vouch for the server: refused before any request.
    for refused in [analyze(Some("other.crt")), analyze(None)] {
        assert!(!refused.contains("not what the API describes"), "{refused}");
        assert!(
            refused.contains("UnknownIssuer") || refused.contains("CA file"),
            "{refused}"
        );
    }
    let not_a_ca = analyze(Some("san.ext"));
    assert!(not_a_ca.contains("holds no certificate"), "{not_a_ca}");
}
