//! Encrypted inference on a sample of test images, through the evaluator library: the same
//! keys, encryption, engine and decryption the product uses. It is the ground truth the
//! simulator's predictions are checked against in every report.

use std::time::Instant;

use hexray_crypto::{ClientKey, CryptoError};
use hexray_evaluator::engine::{evaluate, EngineError};
use hexray_evaluator::model::LoadError;
use hexray_evaluator::LoadedModel;
use hexray_model::simulate::Prediction;
use hexray_model::{Circuit, CompiledModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::Dataset;
use crate::metrics::mean_sd;

/// Why an encrypted run failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptedError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] hexray_model::ModelError),
}

/// What encrypted inference gave on the sample.
#[derive(Clone, Debug, Serialize)]
pub struct EncryptedRun {
    /// Class probabilities per image, as decrypted.
    pub probabilities: Vec<Vec<f64>>,
    pub labels: Vec<usize>,
    /// Images whose decrypted class equals the exact simulation's.
    pub agree_with_simulator: usize,
    pub bootstraps_per_image: usize,
    /// Mean wall-clock seconds per image on this machine.
    pub seconds_per_image: f64,
    /// Mean single-core seconds per bootstrap, from the engine's own accounting.
    pub seconds_per_bootstrap: f64,
    pub threads: usize,
    pub calibration: Calibration,
}

/// How well the noisy simulator predicted the encrypted results.
///
/// Each image's decrypted decision margin (the accumulator of the exact simulation's class
/// minus the runner-up's) is scored against the simulator's draws for that image, as
/// z = (decrypted − mean) / sd. The z-scores' spread is 1 when the simulated noise is TFHE's.
/// A margin is a difference of outputs, so this also checks the noise's correlations, which
/// per-accumulator spreads cannot: a simulator that drew each output's noise independently
/// scored 1.68 here.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Calibration {
    /// Simulator draws per image.
    pub draws: usize,
    pub z_mean: f64,
    pub z_sd: f64,
    /// Correct encrypted classifications the simulator expected, with their standard deviation
    /// over the noise (each image is right with the probability its draws give).
    pub expected_correct: f64,
    pub expected_correct_sd: f64,
    pub correct: usize,
}

/// Simulator draws per image for [`Calibration`].
const CALIBRATION_DRAWS: usize = 100;

impl Calibration {
    /// Scores each image, given with its label and its exact and decrypted predictions.
    fn new(
        circuit: &Circuit,
        images: &[(ndarray::ArrayView3<i64>, usize, Prediction, Prediction)],
    ) -> Result<Self, hexray_model::ModelError> {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
        let mut calibration = Calibration {
            draws: CALIBRATION_DRAWS,
            ..Calibration::default()
        };
        let mut z = Vec::with_capacity(images.len());
        for &(image, label, ref exact, ref decrypted) in images {
            let margin = margin_of(exact);
            let mut margins = Vec::with_capacity(CALIBRATION_DRAWS);
            let mut right = 0;
            for _ in 0..CALIBRATION_DRAWS {
                let noisy = circuit.simulate_noisy(image, &mut rng)?;
                margins.push(margin(&noisy));
                right += usize::from(noisy.class() == label);
            }
            let (mean, sd) = mean_sd(&margins, 0);
            z.push((margin(decrypted) - mean) / sd.max(f64::MIN_POSITIVE));
            let p = right as f64 / CALIBRATION_DRAWS as f64;
            calibration.expected_correct += p;
            calibration.expected_correct_sd += p * (1.0 - p);
            calibration.correct += usize::from(decrypted.class() == label);
        }
        calibration.expected_correct_sd = calibration.expected_correct_sd.sqrt();
        (calibration.z_mean, calibration.z_sd) = mean_sd(&z, 0);
        Ok(calibration)
    }
}

/// The function that reads a prediction's margin between `exact`'s class and its runner-up.
fn margin_of(exact: &Prediction) -> impl Fn(&Prediction) -> f64 {
    let top = exact.class();
    let runner_up = (0..exact.accumulators.len())
        .filter(|&j| j != top)
        .max_by(|&a, &b| exact.accumulators[a].total_cmp(&exact.accumulators[b]))
        .unwrap_or(top);
    move |p: &Prediction| p.accumulators[top] - p.accumulators[runner_up]
}

/// Encrypts, evaluates and decrypts `count` images spread evenly over `test`, with a fresh key.
pub fn run(
    model: &CompiledModel,
    test: &Dataset,
    count: usize,
) -> Result<EncryptedRun, EncryptedError> {
    let loaded = LoadedModel::from_bytes(&model.to_bytes(), &model.name)?;
    let client = ClientKey::generate(loaded.parameter_set);
    let server = client.server_key().decompress();
    let circuit = &loaded.circuit;
    let count = count.min(test.len());
    let sample: Vec<usize> = (0..count).map(|i| i * test.len() / count).collect();
    let mut run = EncryptedRun {
        probabilities: Vec::with_capacity(count),
        labels: sample.iter().map(|&i| test.labels[i]).collect(),
        agree_with_simulator: 0,
        bootstraps_per_image: circuit.bootstrap_count(),
        seconds_per_image: 0.0,
        seconds_per_bootstrap: 0.0,
        threads: rayon::current_num_threads(),
        calibration: Calibration::default(),
    };
    let mut scored = Vec::with_capacity(count);
    let (mut wall, mut bootstrap_cpu) = (0.0, 0.0);
    for &i in &sample {
        let image = &test.images[i];
        let encrypted = client.encrypt(&loaded.spec, image.view())?;
        let start = Instant::now();
        let (output, stats) = evaluate(&loaded, &server, encrypted, &|| {})?;
        wall += start.elapsed().as_secs_f64();
        bootstrap_cpu += stats.bootstrap_cpu.as_secs_f64();
        let prediction = client.decrypt_prediction(circuit, &output)?;
        let exact = circuit.simulate(image.view())?;
        run.agree_with_simulator += usize::from(prediction.class() == exact.class());
        run.probabilities.push(prediction.probabilities.clone());
        scored.push((image.view(), test.labels[i], exact, prediction));
    }
    run.calibration = Calibration::new(circuit, &scored)?;
    let n = count.max(1) as f64;
    run.seconds_per_image = wall / n;
    run.seconds_per_bootstrap = bootstrap_cpu / (n * run.bootstraps_per_image.max(1) as f64);
    Ok(run)
}
