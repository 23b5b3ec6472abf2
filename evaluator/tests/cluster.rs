//! Two real `hexray serve` processes on one PostgreSQL database: a job submitted to a busy
//! node is evaluated by the other, a batch is split between them by image, either node answers
//! for any job, a node killed with SIGKILL in the middle of a job has it finished by the other
//! once its lease runs out, exactly once, a node stopped with SIGTERM (a pod scaled down)
//! hands its work over at once, and a client following a job waits through its node's restart.
//!
//! Each node has one evaluation thread, so one image fills it. The databases come from
//! the test kit (`hexray_test_kit::database`); they are ignored by a plain `cargo test`, and
//! `scripts/test.sh` runs them on its PostgreSQL.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::client::{ApiClient, ClientError};
use hexray_evaluator::server::jobs::JobState;
use hexray_model::preprocess::preprocess;
use hexray_model::simulate;
use ndarray::Array3;
use rand::SeedableRng;
use serde_json::Value;

use hexray_test_kit::database;
use hexray_test_kit::node::{kill, port, start, Server};

/// The tests share two cores: one runs at a time, so each node has its core.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Seconds a claim lasts unrenewed: short, so a dead node's work is taken again soon.
const LEASE_S: &str = "3";

/// A node: a `hexray serve` process on the shared database, with one evaluation thread.
struct Node {
    process: Server,
    api: ApiClient,
    _data: tempfile::TempDir,
}

fn node(url: &str, name: &str) -> Node {
    node_leased(url, name, LEASE_S)
}

/// A node whose claims last `lease` seconds unrenewed.
fn node_leased(url: &str, name: &str, lease: &str) -> Node {
    let data = tempfile::tempdir().unwrap();
    let port = port();
    let process = start(
        data.path(),
        port,
        &[
            "--database-url",
            url,
            "--node-name",
            name,
            "--threads",
            "1",
            "--lease-s",
            lease,
        ],
    );
    Node {
        process,
        api: ApiClient::new(&format!("http://127.0.0.1:{port}"), None),
        _data: data,
    }
}

/// The bundled model, as the nodes serve it.
fn model() -> LoadedModel {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pneumonia-a.hexray");
    LoadedModel::from_file(&path).unwrap()
}

/// Sample X-ray `i`, preprocessed for `model`.
fn sample(model: &LoadedModel, i: usize) -> Array3<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/pneumoniamnist");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    names.sort();
    preprocess(&std::fs::read(&names[i]).unwrap(), &model.spec().input).unwrap()
}

/// Encrypts `inputs` and submits them as one job to `api`; returns the job id.
fn submit(
    api: &ApiClient,
    client: &ClientKey,
    key: &str,
    model: &LoadedModel,
    inputs: &[Array3<i64>],
) -> String {
    let blobs: Vec<Vec<u8>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            client
                .encrypt_deterministic(model.spec(), input.view(), i as u128)
                .unwrap()
                .to_bytes()
                .unwrap()
        })
        .collect();
    let spec = api.spec("pneumonia-a").unwrap();
    api.submit("pneumonia-a", key, &spec, &batch_body::pack(&blobs))
        .unwrap()
}

fn status(api: &ApiClient, job: &str) -> Value {
    api.request(&format!("/api/v1/jobs/{job}"), None)
        .unwrap()
        .json()
        .unwrap()
}

/// Polls `job` on `api` until `ready` holds; panics after `limit`.
fn until(api: &ApiClient, job: &str, limit: Duration, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = status(api, job);
        if ready(&status) {
            return status;
        }
        assert_ne!(status["state"], "failed", "{status}");
        assert!(start.elapsed() < limit, "job {job}: still {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that the packed `outputs` decrypt, in order, to what the simulator allows for
/// `inputs`.
fn check(client: &ClientKey, model: &LoadedModel, inputs: &[Array3<i64>], outputs: &[u8]) {
    let blobs = batch_body::unpack(outputs, inputs.len()).unwrap();
    assert_eq!(blobs.len(), inputs.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (i, (blob, input)) in blobs.iter().zip(inputs).enumerate() {
        let classes = model.spec().classes.len();
        let output = EncryptedOutput::from_bytes(blob, ParameterSet::Ks32, classes).unwrap();
        let prediction = client.decrypt_prediction(model.circuit(), &output).unwrap();
        let spread = simulate::spread(model.circuit(), input.view(), 200, &mut rng).unwrap();
        assert!(
            spread.contains(&prediction, 0.25),
            "image {i}: {prediction:?}"
        );
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn a_busy_nodes_job_runs_on_the_other_a_batch_is_split_and_either_node_answers() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let url = database::fresh("cluster_share");
    let model = model();
    let (client, server_key) = ClientKey::generate_deterministic(ParameterSet::Ks32, 21);
    let a = node(&url, "a");
    let key = a.api.register_key(&server_key.to_bytes().unwrap()).unwrap();
    let inputs: Vec<_> = (0..6).map(|i| sample(&model, i)).collect();

    // Node A alone takes the first job, which fills its one thread.
    let first = submit(&a.api, &client, &key, &model, &inputs[..1]);
    until(&a.api, &first, Duration::from_secs(60), |s| {
        s["state"] == "running"
    });
    // The second, also submitted to A, goes to B as soon as B is up.
    let b = node(&url, "b");
    let second = submit(&a.api, &client, &key, &model, &inputs[1..2]);
    // B follows the second job's progress stream, though A took its submission.
    let events = std::thread::scope(|scope| {
        let stream = scope.spawn(|| {
            let reply = b
                .api
                .request(&format!("/api/v1/jobs/{second}/events"), None);
            String::from_utf8(reply.unwrap().body).unwrap()
        });
        for job in [&first, &second] {
            until(&a.api, job, Duration::from_secs(300), |s| {
                s["state"] == "done"
            });
        }
        stream.join().unwrap()
    });
    assert_eq!(status(&a.api, &first)["node"], "a");
    assert_eq!(status(&a.api, &second)["node"], "b", "A was busy");
    assert!(events.contains("\"node\":\"b\""), "{events}");
    assert!(events.trim_end().ends_with('}') && events.contains("\"state\":\"done\""));

    // Either node answers for either job, with the same status and the same outputs.
    for job in [&first, &second] {
        let (on_a, on_b) = (status(&a.api, job), status(&b.api, job));
        assert_eq!(on_a, on_b);
        let outputs = a.api.outputs(job).unwrap();
        assert_eq!(outputs, b.api.outputs(job).unwrap());
    }
    check(
        &client,
        &model,
        &inputs[..1],
        &a.api.outputs(&first).unwrap(),
    );
    check(
        &client,
        &model,
        &inputs[1..2],
        &b.api.outputs(&second).unwrap(),
    );

    // A batch of four, with both nodes idle: each node claims one image at a time, as it has
    // one core, never more (however the database plans the claim under concurrency); outputs
    // come back in order.
    // Statistics as autovacuum leaves them after the first small jobs make the planner expect
    // few rows per job: the plan under which a LIMIT inside the claim's UPDATE would run again
    // for every row, and claim the whole batch.
    database::execute(&url, "ANALYZE");
    let split = submit(&b.api, &client, &key, &model, &inputs[2..6]);
    let most_held = "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM job_images \
                     WHERE state = 'running' GROUP BY node) AS held";
    let done = loop {
        assert!(
            database::number(&url, most_held) <= 1,
            "a node claimed past its core"
        );
        let status = status(&b.api, &split);
        if status["state"] == "done" {
            break status;
        }
        assert_ne!(status["state"], "failed", "{status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["node"], "a,b", "split by image: {done}");
    assert_eq!(done["bootstraps_done"], done["bootstraps_total"]);
    check(
        &client,
        &model,
        &inputs[2..6],
        &a.api.outputs(&split).unwrap(),
    );

    // Both report the queue every node sees.
    for api in [&a.api, &b.api] {
        let health = api.request("/api/v1/health", None).unwrap().json().unwrap();
        assert_eq!(
            (
                health["queue_depth"].as_u64(),
                health["jobs_running"].as_u64()
            ),
            (Some(0), Some(0))
        );
    }
    kill(a.process);
    kill(b.process);
}

/// Node `a`, alone on a fresh database `name`, in the middle of a one-image job: it has
/// written progress.
struct MidJob {
    url: String,
    model: LoadedModel,
    client: ClientKey,
    inputs: [Array3<i64>; 1],
    job: String,
    a: Node,
}

fn mid_job(name: &str, seed: u128, lease: &str) -> MidJob {
    let url = database::fresh(name);
    let model = model();
    let (client, server_key) = ClientKey::generate_deterministic(ParameterSet::Ks32, seed);
    let a = node_leased(&url, "a", lease);
    let key = a.api.register_key(&server_key.to_bytes().unwrap()).unwrap();
    let inputs = [sample(&model, seed as usize % 8)];
    let job = submit(&a.api, &client, &key, &model, &inputs);
    until(&a.api, &job, Duration::from_secs(60), |s| {
        s["bootstraps_done"].as_u64().is_some_and(|n| n > 0)
    });
    MidJob {
        url,
        model,
        client,
        inputs,
        job,
        a,
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn a_node_killed_mid_job_has_it_finished_by_the_other_exactly_once() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mid = mid_job("cluster_kill", 22, LEASE_S);
    let (url, model, client, inputs, job) =
        (&mid.url, &mid.model, &mid.client, &mid.inputs, &mid.job);
    kill(mid.a.process);
    let killed = Instant::now();

    let b = node(url, "b");
    let done = until(&b.api, job, Duration::from_secs(300), |s| {
        s["state"] == "done"
    });
    eprintln!(
        "recovered {:.1} s after the kill (lease {LEASE_S} s)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(done["node"], "b");
    assert_eq!(done["bootstraps_done"], done["bootstraps_total"]);
    check(client, model, inputs, &b.api.outputs(job).unwrap());

    // Nothing duplicated or lost: one image, claimed twice, written once; one finished job.
    let number = |sql: &str| database::number(url, sql);
    assert_eq!(number("SELECT count(*) FROM job_images"), 1);
    assert_eq!(
        number("SELECT attempt::bigint FROM job_images"),
        2,
        "A's claim, then B's"
    );
    assert_eq!(
        number("SELECT count(*) FROM job_images WHERE state = 'done' AND output IS NOT NULL AND input IS NULL"),
        1
    );
    assert_eq!(number("SELECT count(*) FROM jobs WHERE state = 'done'"), 1);
    let metrics = String::from_utf8(b.api.request("/metrics", None).unwrap().body).unwrap();
    assert!(
        metrics.contains("hexray_images_completed_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hexray_jobs_completed_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("hexray_node_info{node=\"b\",storage=\"postgres\"} 1"));
    kill(b.process);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn a_node_stopped_with_sigterm_hands_its_job_over_before_its_lease_runs_out() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A lease far longer than the test may wait: only the hand-over can finish the job in time.
    let mut mid = mid_job("cluster_term", 23, "600");
    let (url, model, client, inputs, job) =
        (&mid.url, &mid.model, &mid.client, &mid.inputs, &mid.job);
    let b = node_leased(url, "b", "600");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &mid.a.process.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = mid.a.process.wait().unwrap();
    assert!(exit.success(), "a stopped node exits cleanly: {exit}");

    let done = until(&b.api, job, Duration::from_secs(120), |s| {
        s["state"] == "done"
    });
    assert_eq!(done["node"], "b");
    check(client, model, inputs, &b.api.outputs(job).unwrap());
    assert_eq!(
        database::number(url, "SELECT attempt::bigint FROM job_images"),
        2
    );
    kill(b.process);
}

/// A client following a job rides out its node's restart: while nothing answers at the node's
/// address, the status poll and the outputs fetch wait rather than fail, and the node back at
/// that address (the job is in the shared database) answers them.
#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn a_client_following_a_job_rides_out_its_nodes_restart() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let url = database::fresh("cluster_restart");
    let model = model();
    let (client, server_key) = ClientKey::generate_deterministic(ParameterSet::Ks32, 23);
    let (data, port) = (tempfile::tempdir().unwrap(), port());
    let flags = [
        "--database-url",
        &url,
        "--node-name",
        "a",
        "--threads",
        "1",
        "--lease-s",
        LEASE_S,
    ];
    let first = start(data.path(), port, &flags);
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
    let key = api.register_key(&server_key.to_bytes().unwrap()).unwrap();
    let inputs = [sample(&model, 0)];
    let job = submit(&api, &client, &key, &model, &inputs);
    kill(first);
    let (status, outputs) = std::thread::scope(|scope| {
        let follower = scope.spawn(|| {
            let status = api.wait(&job, Duration::from_secs(300))?;
            Ok::<_, ClientError>((status, api.outputs(&job)?))
        });
        std::thread::sleep(Duration::from_secs(2));
        let again = start(data.path(), port, &flags);
        let answer = follower.join().unwrap();
        kill(again);
        answer.expect("the follower waited for the node")
    });
    assert_eq!(status.state, JobState::Done, "{status:?}");
    check(&client, &model, &inputs, &outputs);
}
