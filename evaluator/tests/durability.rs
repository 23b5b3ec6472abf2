//! The real `hexray serve` process, killed with SIGKILL in the middle of a key upload and of a
//! job, then restarted on the same data directory: no registered key is lost, a half-received
//! key leaves nothing behind, and the server serves again (its data folder's lock goes with
//! it, and a second server on that folder is refused while it runs); `hexray analyze` and
//! `hexray bulk` ride out the restart, submitting again the jobs it lost. Also the start-up
//! rules for open mode, tokens end to end, and the commands against the server's refusals.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hexray_crypto::{batch_body, ClientKey, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::client::ApiClient;
use hexray_evaluator::server::jobs::JobState;
use hexray_evaluator::server::keys::key_id;
use hexray_evaluator::server::models::bundled_default;
use hexray_model::client_spec::BORDERLINE_NOTE;
use hexray_model::preprocess::preprocess;
use hexray_model::simulate;

use hexray_test_kit::fixtures::sample_file;
use hexray_test_kit::misbehaving::stalled_upload;
use hexray_test_kit::node::{hexray, kill, port, serve, serve_with, start};

fn new_token(tokens: &Path) -> String {
    let out = hexray()
        .args([
            "token",
            "new",
            "--label",
            "durability test",
            "--tokens-file",
        ])
        .arg(tokens)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Samples near the default model's decision boundary, which `analyze` must mark borderline.
const BORDERLINE_IMAGES: [&str; 2] = [
    "pneumoniamnist/test-0309-normal.png",
    "pneumoniamnist/test-0234-normal.png",
];

/// Every file under `dir`, in its subfolders too.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn sigkill_during_an_upload_and_a_job_loses_no_registered_key() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let port = port();
    let base = format!("http://127.0.0.1:{port}");
    let api = ApiClient::new(&base, Some(&token));
    let (client, server_key) = ClientKey::generate_deterministic(ParameterSet::Ks32, 11);
    let server_key = server_key.to_bytes().unwrap();

    let server = serve(&data, &tokens, port);
    // A second server on the same data folder would empty the first one's spool: refused.
    let mut second = hexray();
    second
        .args(["serve", "--bind", &format!("127.0.0.1:{}", self::port())])
        .arg("--data-dir")
        .arg(&data)
        .arg("--tokens-file")
        .arg(&tokens);
    let second_server = within(Duration::from_secs(60), second);
    let stderr = String::from_utf8_lossy(&second_server.stderr);
    assert!(!second_server.status.success());
    assert!(
        stderr.contains("another hexray server is using the data directory"),
        "{stderr}"
    );
    let id = api.register_key(&server_key).unwrap();
    // A second key, half sent when the server dies.
    let (_, second) = ClientKey::generate_deterministic(ParameterSet::Ks32, 12);
    let second = second.to_bytes().unwrap();
    let mut upload = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        upload,
        "POST /api/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        second.len()
    )
    .unwrap();
    upload.write_all(&second[..second.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    kill(server);

    let server = serve(&data, &tokens, port);
    let reply = api.request(&format!("/api/v1/keys/{id}"), None).unwrap();
    assert_eq!(reply.status, 200, "the registered key survived");
    let keys: Vec<_> = files(&data.join("keys"));
    assert_eq!(
        keys.len(),
        1,
        "nothing of the half-sent key is left: {keys:?}"
    );

    // Kill it again while a job runs.
    let model =
        LoadedModel::from_bytes(include_bytes!("../../models/pneumonia-a.hexray"), "bundled")
            .unwrap();
    let spec = api.spec("pneumonia-a").unwrap();
    assert_eq!(&spec, model.spec());
    let image = std::fs::read(sample_file("covid-cxr-actualmed/covid-1.png")).unwrap();
    let input = preprocess(&image, &spec.input).unwrap();
    let batch = batch_body::pack(&[client
        .encrypt(&spec, input.view())
        .unwrap()
        .to_bytes()
        .unwrap()]);
    let job = api.submit("pneumonia-a", &id, &spec, &batch).unwrap();
    let start = Instant::now();
    loop {
        let status = api.request(&format!("/api/v1/jobs/{job}"), None).unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        if status["bootstraps_done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(server);

    let server = serve(&data, &tokens, port);
    let reply = api.request(&format!("/api/v1/keys/{id}"), None).unwrap();
    assert_eq!(reply.status, 200, "the key survived a kill during a job");
    // Jobs live in memory: the killed one is gone, and resubmitting works.
    let gone = api.request(&format!("/api/v1/jobs/{job}"), None).unwrap();
    assert_eq!(gone.status, 404);
    let job = api.submit("pneumonia-a", &id, &spec, &batch).unwrap();
    let status = api.wait(&job, Duration::from_secs(300)).unwrap();
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let outputs = api.outputs(&job).unwrap();
    let blobs = batch_body::unpack(&outputs, 1).unwrap();
    let output =
        hexray_crypto::EncryptedOutput::from_bytes(blobs[0], ParameterSet::Ks32, spec.output_len())
            .unwrap();
    let shown = client.decrypt(&spec, &output).unwrap();
    let exact = simulate::exact(model.circuit(), input.view()).unwrap();
    assert_eq!(
        shown.class,
        exact.class(),
        "covid-1 is far from the boundary"
    );
    kill(server);
}

#[test]
fn open_mode_is_refused_off_loopback_and_a_loopback_server_checks_the_host() {
    let out = hexray()
        .args(["serve", "--bind", "0.0.0.0:0", "--web-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let port = port();
    let server = start(dir.path(), port, &[]);
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
    assert_eq!(api.request("/api/v1/models", None).unwrap().status, 200);
    // A page whose own name was rebound to 127.0.0.1 sends its own Host, and may add
    // forwarding headers that name localhost: neither gets in, on the API or on /metrics.
    let answer = |path: &str, headers: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        answer
    };
    assert!(answer("/metrics", "Host: 127.0.0.1\r\n").starts_with("HTTP/1.1 200"));
    for path in ["/api/v1/models", "/metrics"] {
        for headers in [
            "Host: attacker.example\r\n",
            "Host: attacker.example\r\nX-Forwarded-Host: localhost\r\n",
            "Host: attacker.example\r\nForwarded: host=localhost\r\n",
            "Host: localhost\r\nOrigin: http://attacker.example\r\n",
        ] {
            let answer = answer(path, headers);
            // No token would help: the answer says so, and what the operator must change.
            assert!(
                answer.starts_with("HTTP/1.1 403") && answer.contains("\"code\":\"not_local\""),
                "{path} {headers}: {answer}"
            );
            assert!(answer.contains("--allow-open"), "{answer}");
        }
    }
    kill(server);
}

#[test]
fn token_new_stores_only_a_hash_and_serve_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let token = new_token(&tokens);
    assert!(token.starts_with("hxr_") && token.len() > 40);
    let file = std::fs::read_to_string(&tokens).unwrap();
    assert!(!file.contains(&token), "the file holds the token itself");
    assert!(file.contains("durability test"));
    let port = port();
    let server = serve(&dir.path().join("data"), &tokens, port);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        ApiClient::new(&base, None)
            .request("/api/v1/models", None)
            .unwrap()
            .status,
        401
    );
    let models = ApiClient::new(&base, Some(&token))
        .request("/api/v1/models", None)
        .unwrap()
        .json()
        .unwrap();
    // The default (the screen for both populations) first, then the COVID-19 model, then the
    // pediatric models it replaced.
    let ids: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "screen-mlp-32",
            "covid-19-mlp-32",
            "pneumonia-mlp-64",
            "pneumonia-a"
        ]
    );
    kill(server);
}

/// `hexray token list` shows who each token is for by the owner id the server's log carries,
/// never a token; `hexray token revoke` removes one, and the restarted server refuses it.
#[test]
fn a_token_is_listed_by_its_owner_id_and_a_revoked_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let token = |args: &[&str]| {
        let out = hexray()
            .arg("token")
            .args(args)
            .arg("--tokens-file")
            .arg(&tokens)
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (_, ward_a, _) = token(&["new", "--label", "ward A"]);
    let (_, ward_b, _) = token(&["new", "--label", "ward B"]);
    let owner = |token: &str| {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(token.trim().as_bytes());
        hexray_model::hex::encode(&digest)[..16].to_owned()
    };
    let (listed, list, _) = token(&["list"]);
    assert!(listed);
    for (t, label) in [(&ward_a, "ward A"), (&ward_b, "ward B")] {
        assert!(!list.contains(t.trim()), "the list shows a token");
        assert!(
            list.lines()
                .any(|l| l.starts_with(&owner(t)) && l.ends_with(label)),
            "{list}"
        );
    }
    // The file keeps who may read it: here its owner and group only (the server's user).
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;
    #[cfg(unix)]
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (revoked, _, said) = token(&["revoke", "--owner", &owner(&ward_a)]);
    assert!(revoked && said.contains("`ward A`"), "{said}");
    #[cfg(unix)]
    assert_eq!(
        std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let (_, list, _) = token(&["list"]);
    assert!(
        !list.contains("ward A") && list.contains("ward B"),
        "{list}"
    );
    let (refused, _, said) = token(&["revoke", "--owner", "0123456789abcdef"]);
    assert!(
        !refused && said.contains("no token of owner id 0123456789abcdef"),
        "{said}"
    );
    let port = port();
    let server = serve(&dir.path().join("data"), &tokens, port);
    let status = |t: &str| {
        ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(t.trim()))
            .request("/api/v1/models", None)
            .unwrap()
            .status
    };
    assert_eq!(status(&ward_a), 401, "the revoked token");
    assert_eq!(status(&ward_b), 200, "the other token");
    kill(server);
}

#[test]
fn slow_bodies_time_out_and_each_token_has_few_upload_slots() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (slow, polite) = (new_token(&tokens), new_token(&tokens));
    let port = port();
    let flags = ["--body-timeout-s", "3", "--max-uploads-per-token", "2"];
    let server = serve_with(&dir.path().join("data"), &tokens, port, &flags);
    let base = format!("http://127.0.0.1:{port}");
    let (_, key) = ClientKey::generate_deterministic(ParameterSet::Ks32, 13);
    let key = key.to_bytes().unwrap();

    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| stalled_upload(port, &slow).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = ApiClient::new(&base, Some(&slow))
        .register_key(&key)
        .unwrap_err();
    assert_eq!(refused.code(), Some("too_many_uploads"), "{refused}");
    // Another token is not held up by the first one's stalled bodies.
    ApiClient::new(&base, Some(&polite))
        .register_key(&key)
        .unwrap();
    for stream in &mut stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // The server answers and closes the connection.
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(stream, &mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    // The slots are free again once the stalled bodies are dropped.
    ApiClient::new(&base, Some(&slow))
        .register_key(&key)
        .unwrap();
    kill(server);
}

/// `hexray analyze` against a real server with a token: more images than the server takes per
/// job go as several jobs, each class is the simulator's, borderline results say so, the key
/// pair stays private in the user's own folder, and a key the server lost is uploaded again.
#[test]
fn analyze_works_end_to_end_with_a_token_and_recovers_a_lost_key() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let port = port();
    // Three images per job: the four below go as two jobs, one after another.
    let server = serve_with(&data, &tokens, port, &["--max-batch", "3"]);
    let analyze = || {
        hexray()
            .args(["analyze", "--server", &format!("http://127.0.0.1:{port}")])
            // No --keys-dir: the user's own folder, under XDG_DATA_HOME.
            .env("XDG_DATA_HOME", dir.path().join("data-home"))
            .args(
                [
                    "covid-cxr-actualmed/covid-1.png",
                    "pneumoniamnist/test-0235-normal.png",
                ]
                .iter()
                .chain(&BORDERLINE_IMAGES)
                .flat_map(|name| {
                    [
                        "--image".to_owned(),
                        sample_file(name).display().to_string(),
                    ]
                }),
            )
            .env("HEXRAY_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = analyze();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("4 images go as 2 jobs"), "{stderr}");
    // Each job is named as it goes (scripts/container-test.sh follows a job by this line).
    let jobs = stderr
        .lines()
        .filter(|l| l.starts_with("job ") && l.contains(": "))
        .count();
    assert_eq!(jobs, 2, "{stderr}");
    // Without --model, analyze uses the server's default, the bundled default model. Each
    // class is its plaintext simulator's: both images are far from its boundary (no noisy
    // draw of `hexray simulate` changes their class).
    let model = bundled_default().unwrap();
    for name in [
        "covid-cxr-actualmed/covid-1.png",
        "pneumoniamnist/test-0235-normal.png",
    ] {
        let path = sample_file(name).display().to_string();
        let input = preprocess(&std::fs::read(&path).unwrap(), &model.spec().input).unwrap();
        let class = &model.spec().classes[simulate::exact(model.circuit(), input.view())
            .unwrap()
            .class()];
        assert!(stdout.contains(&format!("{path}: {class} (")), "{stdout}");
    }
    // A result is marked borderline, in words, exactly when its shown margin (the log ratio of
    // its top two printed probabilities, on the 0.25 grid of shown logits) is within the model's
    // published margin. The two borderline images are marked in almost every encryption (4995
    // and 4938 of 5000 simulated ones), the two above rarely or never.
    let band = model.spec().borderline_margin;
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("%)")).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for line in &lines {
        let mut percents: Vec<f64> = line
            .split(['(', ',', ')'])
            .filter_map(|part| {
                part.trim()
                    .rsplit(' ')
                    .next()?
                    .strip_suffix('%')?
                    .parse()
                    .ok()
            })
            .collect();
        percents.sort_by(|a, b| b.total_cmp(a));
        let margin = ((percents[0] / percents[1]).ln() / 0.25).round() * 0.25;
        assert_eq!(
            line.contains(BORDERLINE_NOTE),
            margin <= band,
            "margin {margin}, band {band}: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains(BORDERLINE_NOTE)),
        "{stdout}"
    );
    // The server loses the key (deleted here); the next run uploads it again by itself.
    for file in files(&data.join("keys")) {
        std::fs::remove_file(file).unwrap();
    }
    // The secret key is its user's alone, in a folder that is too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            let path = dir.path().join("data-home/hexray/keys").join(name);
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode("client.key"), 0o600, "client.key");
        assert_eq!(mode("server.key"), 0o600, "server.key");
        assert_eq!(mode(""), 0o700, "the keys folder");
    }
    kill(server);
    let server = serve(&data, &tokens, port);
    let out = analyze();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("uploading the evaluation key"), "{stderr}");
    assert!(
        !stderr.contains("generating a key pair"),
        "the key pair is kept: {stderr}"
    );
    // Without the token, the server refuses in words.
    let out = hexray()
        .args(["analyze", "--server", &format!("http://127.0.0.1:{port}")])
        .args(["--image", "x.png"])
        .env_remove("HEXRAY_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    kill(server);
}

/// A server without a database loses its jobs when it restarts: `hexray analyze`, following
/// one, waits through the restart, finds the job unknown, and submits its images again once,
/// as the page does.
#[test]
fn analyze_submits_a_job_again_that_a_restarted_server_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let port = port();
    let server = serve(&data, &tokens, port);
    let keys = dir.path().join("keys");
    let mut analyze = Running::start(analyze(port, &token, "pneumonia-a", &LONG_JOB, &keys));
    analyze.until("job ");
    kill(server);
    let server = serve(&data, &tokens, port);
    let (out, said) = analyze.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the server lost it (restarted?); submitting its images again"),
        "{said}"
    );
    assert_eq!(stdout.matches("%)").count(), LONG_JOB.len(), "{stdout}");
    kill(server);
}

/// A job whose key the server no longer has when its turn comes (the key was deleted while the
/// job waited behind another) fails with `unknown_key`; `hexray analyze` then uploads the key
/// again and submits the images once more, as the page does.
#[test]
fn analyze_uploads_its_key_again_for_a_job_that_failed_for_want_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let port = port();
    // One job at a time on one thread: the second job waits while the first runs.
    let server = serve_with(&data, &tokens, port, &["--workers", "1", "--threads", "1"]);
    let mut first = Running::start(analyze(
        port,
        &token,
        "pneumonia-a",
        &LONG_JOB,
        &dir.path().join("first"),
    ));
    first.until("job ");
    let keys = dir.path().join("second");
    let second_images = ["pneumoniamnist/test-0000-pneumonia.png"];
    let mut second = Running::start(analyze(port, &token, "pneumonia-a", &second_images, &keys));
    let submitted = second.until("job ");
    let job = submitted["job ".len()..].split(':').next().unwrap();
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(&token));
    assert_eq!(
        api.status(job).unwrap().state,
        JobState::Queued,
        "the second job must wait behind the first for this test to mean anything"
    );
    // The clinician's other browser forgets this key while the job waits.
    let key = key_id(&std::fs::read(keys.join("server.key")).unwrap());
    let deleted = ureq::delete(&format!("http://127.0.0.1:{port}/api/v1/keys/{key}"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (out, said) = second.finish();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the server no longer had its key; submitting its images again"),
        "{said}"
    );
    assert!(said.contains("uploading the evaluation key"), "{said}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("%)").count(),
        1
    );
    let (out, said) = first.finish();
    assert!(out.status.success(), "{said}");
    kill(server);
}

/// Four images, which `pneumonia-a` (320 bootstraps each) takes tens of seconds over: a job
/// still running when a test restarts the server, or one another job waits behind.
const LONG_JOB: [&str; 4] = [
    "covid-cxr-actualmed/covid-1.png",
    "pneumoniamnist/test-0235-normal.png",
    "pneumoniamnist/test-0000-pneumonia.png",
    "pneumoniamnist/test-0234-normal.png",
];

/// `hexray analyze` of `images` (sample files) with `model`, keeping its keys in `keys`.
fn analyze(
    port: u16,
    token: &str,
    model: &str,
    images: &[&str],
    keys: &Path,
) -> std::process::Command {
    let mut analyze = hexray();
    analyze
        .args(["analyze", "--server", &format!("http://127.0.0.1:{port}")])
        .args(["--model", model])
        .args(images.iter().flat_map(|name| {
            [
                "--image".to_owned(),
                sample_file(name).display().to_string(),
            ]
        }))
        .arg("--keys-dir")
        .arg(keys)
        .env("HEXRAY_TOKEN", token);
    analyze
}

/// A command running in the background, whose standard error is read as it comes.
struct Running {
    child: std::process::Child,
    stderr: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    /// What it has said so far.
    said: String,
}

impl Running {
    fn start(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        Running {
            child,
            stderr,
            said: String::new(),
        }
    }

    /// Reads what it says up to the first line that starts with `start`; returns that line.
    fn until(&mut self, start: &str) -> String {
        for line in self.stderr.by_ref() {
            let line = line.unwrap();
            self.said += &line;
            self.said.push('\n');
            if line.starts_with(start) {
                return line;
            }
        }
        panic!("it ended without a line starting {start:?}: {}", self.said);
    }

    /// Waits for its end: its output (standard error empty) and all it said.
    fn finish(mut self) -> (std::process::Output, String) {
        for line in self.stderr.by_ref() {
            self.said += &line.unwrap();
            self.said.push('\n');
        }
        (self.child.wait_with_output().unwrap(), self.said)
    }
}

/// `hexray bulk` on a folder that mixes DICOM, PNG and a text file, against a real server: the
/// text file gets a row that says why it was not screened and the run exits with status 3,
/// every image gets a row with the page's columns, each class is the packed circuit's exact
/// class for that file, a DICOM's patient name, study date and warnings are written as the
/// page writes them, and an existing CSV is never overwritten.
#[test]
fn bulk_screens_a_folder_of_dicom_png_and_text_into_the_pages_csv() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let folder = dir.path().join("export");
    std::fs::create_dir_all(folder.join("dicom")).unwrap();
    let images = [
        ("covid-1.png", "covid-cxr-actualmed/covid-1.png"),
        (
            "test-0235-normal.png",
            "pneumoniamnist/test-0235-normal.png",
        ),
        ("dicom/normal-1.dcm", "dicom/chest/normal-1.dx-mono2.dcm"),
        (
            "dicom/test-0000.dcm",
            "dicom/chest/test-0000-pneumonia.jpeg-lossless-sv1.dcm",
        ),
        ("dicom/mr.dcm", "dicom/pydicom/MR_small_RLE.dcm"),
    ];
    for (name, source) in images {
        std::fs::copy(sample_file(source), folder.join(name)).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not an X-ray").unwrap();
    // A pipe left in an export would block a read for ever.
    let fifo = folder.join("pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let port = port();
    let server = serve(&data, &tokens, port);
    let out_csv = dir.path().join("results.csv");
    let bulk = || {
        within(
            Duration::from_secs(300),
            bulk(port, &token, &folder, &out_csv),
        )
    };
    let out = bulk();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("skipped notes.txt: decoding"),
        "the text file is listed with its reason: {stderr}"
    );
    assert!(stderr.contains("2 files were not screened"), "{stderr}");
    assert!(!dir.path().join("results.csv.partial").exists());
    let csv = std::fs::read_to_string(&out_csv).unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    // Without --model: the first model the server lists for the bulk path, the bundled default.
    let model = bundled_default().unwrap();
    let circuit =
        hexray_model::packed::compile(&model.model().network, &hexray_bulk::parameters::contract())
            .unwrap();
    let spec = hexray_model::bulk_spec::BulkSpec::of(model.model(), &circuit);
    let classes = &model.spec().classes;
    let header = format!(
        "file,patient_name,study_date,class,{},borderline,model,model_version,warnings,not_screened",
        classes
            .iter()
            .map(|c| format!("p_{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(lines[0], header);
    assert_eq!(lines.len(), 3 + images.len(), "{csv}");
    // The files that were not screened come first, with nothing but their names and why.
    for (line, (name, why)) in lines[1..3]
        .iter()
        .zip([("pipe", "not a regular file"), ("notes.txt", "decoding")])
    {
        let skipped = csv_fields(line);
        assert_eq!(skipped[0], name);
        assert!(skipped[1..skipped.len() - 1].iter().all(String::is_empty));
        assert!(skipped.last().unwrap().starts_with(why), "{skipped:?}");
    }
    let mut names: Vec<&str> = images.iter().map(|(name, _)| *name).collect();
    names.sort();
    for (line, name) in lines[3..].iter().zip(names) {
        let cells = csv_fields(line);
        assert_eq!(cells[0], name, "{line}");
        let bytes = std::fs::read(folder.join(name)).unwrap();
        let input = preprocess(&bytes, &circuit.input).unwrap();
        let pixels: Vec<i64> = input.iter().copied().collect();
        let exact = spec.decode(&circuit.evaluate(&pixels));
        assert_eq!(cells[3], classes[exact.class], "{line}");
        let shown: Vec<String> = exact
            .probabilities
            .iter()
            .map(|p| format!("{p:.4}"))
            .collect();
        assert_eq!(cells[4..4 + classes.len()], shown, "{line}");
        let [.., borderline, name_of_model, _, warnings, not_screened] = &cells[..] else {
            panic!("{line}")
        };
        assert_eq!([borderline, not_screened], ["", ""], "{line}");
        assert_eq!(name_of_model, &model.model().name, "{line}");
        match name {
            "dicom/mr.dcm" => assert!(warnings.starts_with("Modality MR: "), "{line}"),
            _ => assert_eq!(warnings, "", "{line}"),
        }
        if name.starts_with("dicom/test-") || name.starts_with("dicom/normal-") {
            assert_eq!(cells[1..3], ["DOE, JANE", "2024-01-31"], "{line}");
        } else if !name.ends_with(".dcm") {
            assert_eq!(cells[1..3], ["", ""], "{line}");
        }
    }
    // A second run refuses to overwrite the results.
    let out = bulk();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwritten"));
    assert_eq!(std::fs::read_to_string(&out_csv).unwrap(), csv);
    // Nor is what an interrupted run left: it is named, and kept.
    std::fs::rename(&out_csv, dir.path().join("results.csv.partial")).unwrap();
    let out = bulk();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left by an interrupted run"));
    assert!(!out_csv.exists());
    let partial = std::fs::read_to_string(dir.path().join("results.csv.partial")).unwrap();
    assert_eq!(partial, csv);
    kill(server);
}

/// A folder screened when the token's bulk image quota is used up (one job's 8192 places here,
/// kept for the shortest retention, a minute) waits for the older job to pass the retention,
/// asking with empty room checks, rather than failing, and then screens.
#[test]
fn bulk_waits_for_its_image_quota_to_free() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let folder = one_xray_folder(dir.path());
    let port = port();
    let flags = [
        "--max-bulk-images-per-token",
        "8192",
        "--job-retention-s",
        "60",
    ];
    let server = serve_with(&data, &tokens, port, &flags);
    let bulk = |out: &str| {
        bulk(port, &token, &folder, &dir.path().join(out))
            .output()
            .unwrap()
    };
    let first = bulk("first.csv");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let started = Instant::now();
    let second = bulk("second.csv");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(
        stderr.contains("`image_quota`") && stderr.contains("asking again in 30 s"),
        "{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_secs(60));
    let rows = |out: &str| std::fs::read_to_string(dir.path().join(out)).unwrap();
    assert_eq!(
        rows("first.csv"),
        rows("second.csv"),
        "the same exact results"
    );
    kill(server);
}

/// A server without a database loses its bulk jobs when it restarts: `hexray bulk`, following
/// one, waits through the restart and uploads the batch again, once, and the results come.
#[test]
fn bulk_uploads_a_batch_again_that_a_restarted_server_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tokens) = (dir.path().join("data"), dir.path().join("tokens"));
    let token = new_token(&tokens);
    let folder = one_xray_folder(dir.path());
    let port = port();
    let server = serve(&data, &tokens, port);
    let out_csv = dir.path().join("results.csv");
    let mut bulk = Running::start(bulk(port, &token, &folder, &out_csv));
    // Killed as soon as the job is accepted: reading its 176 MB upload back and evaluating it
    // take the server longer than that.
    bulk.until("batch 1: accepted as job");
    kill(server);
    let server = serve(&data, &tokens, port);
    let (out, said) = bulk.finish();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the server lost it (restarted?); submitting its images again"),
        "{said}"
    );
    assert_eq!(said.matches("accepted as job").count(), 2, "{said}");
    let csv = std::fs::read_to_string(&out_csv).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().starts_with("covid-1.png,"),
        "{csv}"
    );
    kill(server);
}

/// `hexray bulk` of `folder` into the CSV `out`, as `token`.
fn bulk(port: u16, token: &str, folder: &Path, out: &Path) -> std::process::Command {
    let mut bulk = hexray();
    bulk.args(["bulk", "--server", &format!("http://127.0.0.1:{port}")])
        .arg("--folder")
        .arg(folder)
        .arg("--out")
        .arg(out)
        .env("HEXRAY_TOKEN", token);
    bulk
}

/// A folder `export` in `dir` holding one adult X-ray.
fn one_xray_folder(dir: &Path) -> std::path::PathBuf {
    let folder = dir.join("export");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        sample_file("covid-cxr-actualmed/covid-1.png"),
        folder.join("covid-1.png"),
    )
    .unwrap();
    folder
}

/// Runs `command` to its end, or kills it after `limit` and fails: what it must not do is wait
/// for ever (a second server that starts, a read that blocks on a pipe).
fn within(limit: Duration, mut command: std::process::Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{command:?} still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// One line of RFC 4180 CSV, split into its fields.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}
