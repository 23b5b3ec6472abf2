//! Encrypted inference on a sample of test images, through the evaluator library: the same
//! keys, encryption, engine and decryption the product uses. It is the ground truth the
//! simulator's predictions are checked against in every report.

use std::time::Instant;

use hexray_crypto::{ClientKey, CryptoError};
use hexray_engine::evaluate::{evaluate, EngineError};
use hexray_engine::model::LoadError;
use hexray_engine::LoadedModel;
use hexray_model::simulate;
use hexray_model::simulate::Prediction;
use hexray_model::Diagnosis;
use hexray_model::{Circuit, CompiledModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::Dataset;
use crate::metrics::mean_sd;
use crate::train::progress_bar;

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
                let noisy = simulate::noisy(circuit, image, &mut rng)?;
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
    progress: bool,
) -> Result<EncryptedRun, EncryptedError> {
    let loaded = LoadedModel::from_bytes(&model.to_bytes(), &model.name)?;
    let client = ClientKey::generate(loaded.parameter_set());
    let server = client.server_key().decompress();
    let circuit = &loaded.circuit();
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
    let bar = progress_bar("encrypted", count as u64, progress);
    for &i in &sample {
        let image = &test.images[i];
        let encrypted = client.encrypt(loaded.spec(), image.view())?;
        let start = Instant::now();
        let (output, stats) = evaluate(&loaded, &server, encrypted, &|| {})?;
        wall += start.elapsed().as_secs_f64();
        bootstrap_cpu += stats.bootstrap_cpu.as_secs_f64();
        let prediction = client.decrypt_prediction(circuit, &output)?;
        let exact = simulate::exact(circuit, image.view())?;
        run.agree_with_simulator += usize::from(prediction.class() == exact.class());
        run.probabilities.push(prediction.probabilities.clone());
        scored.push((image.view(), test.labels[i], exact, prediction));
        bar.inc(1);
    }
    bar.finish_and_clear();
    run.calibration = Calibration::new(circuit, &scored)?;
    let n = count.max(1) as f64;
    run.seconds_per_image = wall / n;
    run.seconds_per_bootstrap = bootstrap_cpu / (n * run.bootstraps_per_image.max(1) as f64);
    Ok(run)
}

/// Whether an image encrypted again gets the same class, and how much the probability the
/// page shows moves: by the simulator over the whole test split, and by real re-encryptions
/// of a sample that holds every image the simulator calls borderline.
#[derive(Clone, Debug, Serialize)]
pub struct Stability {
    /// Encryptions (or simulator draws) per image.
    pub runs: usize,
    /// Simulator draws per image that decide whether it is borderline: it is when any of them
    /// changes the exact simulation's class.
    pub borderline_draws: usize,
    pub test_images: usize,
    pub borderline: usize,
    /// Test images whose class changed in any of `runs` simulator draws.
    pub simulated_flipping: usize,
    /// Mean and largest spread (max − min over the runs) of the probability shown for the
    /// exact simulation's class, by the simulator.
    pub simulated_spread: (f64, f64),
    /// Images encrypted `runs` times each, and how many of them are borderline.
    pub encrypted_images: usize,
    pub encrypted_borderline: usize,
    /// Encrypted images whose decrypted class changed between encryptions; and of those, the
    /// ones the simulator did not call borderline (the target is none).
    pub encrypted_flipping: usize,
    pub encrypted_flipping_unflagged: usize,
    /// The same spread as `simulated_spread`, as the page shows it after decryption.
    pub encrypted_spread: (f64, f64),
    /// The model's published borderline margin, in shown logits: a client marks a result
    /// borderline when its shown margin is at most this.
    pub borderline_margin: f64,
    /// Results a client would mark borderline, of all results: over `runs` simulator draws of
    /// every test image, and over the encrypted runs.
    pub simulated_marked: (usize, usize),
    pub encrypted_marked: (usize, usize),
    /// Results of images whose class changed between draws (encryptions) that were not
    /// marked borderline, of all such results: the mark's misses (the target is none).
    pub simulated_flipping_unmarked: (usize, usize),
    pub encrypted_flipping_unmarked: (usize, usize),
}

/// Results marked borderline, counted over images: the marked and all results, and of the
/// results of images whose class changed, the unmarked and all.
#[derive(Default)]
struct Marks {
    marked: (usize, usize),
    flipping_unmarked: (usize, usize),
}

impl Marks {
    /// Counts one image's results (at least one), and says whether its class changed.
    fn add(&mut self, results: &[Diagnosis], borderline_margin: f64) -> bool {
        let marked = results
            .iter()
            .filter(|d| d.is_borderline(borderline_margin))
            .count();
        self.marked.0 += marked;
        self.marked.1 += results.len();
        let changed = results.iter().any(|d| d.class != results[0].class);
        if changed {
            self.flipping_unmarked.0 += results.len() - marked;
            self.flipping_unmarked.1 += results.len();
        }
        changed
    }
}

/// Simulator draws that decide whether an image is borderline.
const BORDERLINE_DRAWS: usize = 200;

/// Re-encrypts `sample` test images `runs` times each (every borderline one first, then others
/// spread evenly over the split) with one key, and compares with the simulator.
pub fn stability(
    model: &CompiledModel,
    test: &Dataset,
    runs: usize,
    sample: usize,
    progress: bool,
) -> Result<Stability, EncryptedError> {
    let loaded = LoadedModel::from_bytes(&model.to_bytes(), &model.name)?;
    let circuit = &loaded.circuit();
    let mut rng = ChaCha8Rng::seed_from_u64(0x57ab);
    // Every class and probability below is the one the page would show: the simulator's
    // predictions decoded as the client decodes, rounding included.
    let shown = |prediction: &Prediction| Diagnosis::of_prediction(circuit, prediction);
    let spread = |values: &[f64]| {
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max - values.iter().copied().fold(f64::INFINITY, f64::min)
    };
    let margin = model.borderline_margin;
    let (mut borderline, mut simulated_flipping, mut simulated_spreads) =
        (Vec::new(), 0, Vec::new());
    let (mut simulated_marks, mut encrypted_marks) = (Marks::default(), Marks::default());
    for (i, image) in test.images.iter().enumerate() {
        let exact = shown(&simulate::exact(circuit, image.view())?).class;
        let draws = (0..BORDERLINE_DRAWS)
            .map(|_| Ok(shown(&simulate::noisy(circuit, image.view(), &mut rng)?)))
            .collect::<Result<Vec<_>, hexray_model::ModelError>>()?;
        if draws.iter().any(|d| d.class != exact) {
            borderline.push(i);
        }
        let first = &draws[..runs.min(BORDERLINE_DRAWS)];
        simulated_flipping += usize::from(first.iter().any(|d| d.class != exact));
        simulated_marks.add(first, margin);
        let values: Vec<f64> = first.iter().map(|d| d.probabilities[exact]).collect();
        simulated_spreads.push(spread(&values));
    }
    // Every borderline image, then evenly spread others, `sample` in all.
    let mut chosen: Vec<usize> = borderline.iter().copied().take(sample).collect();
    let others: Vec<usize> = (0..test.len())
        .filter(|i| !borderline.contains(i))
        .collect();
    let wanted = sample.saturating_sub(chosen.len()).min(others.len());
    chosen.extend((0..wanted).map(|k| others[k * others.len() / wanted.max(1)]));

    let client = ClientKey::generate(loaded.parameter_set());
    let server = client.server_key().decompress();
    let bar = progress_bar("stability", (chosen.len() * runs) as u64, progress);
    let (mut flipping, mut unflagged, mut spreads) = (0, 0, Vec::new());
    for &i in &chosen {
        let image = test.images[i].view();
        let exact = shown(&simulate::exact(circuit, image)?).class;
        let mut results = Vec::with_capacity(runs);
        let mut values = Vec::with_capacity(runs);
        for _ in 0..runs {
            let encrypted = client.encrypt(loaded.spec(), image)?;
            let (output, _) = evaluate(&loaded, &server, encrypted, &|| {})?;
            let diagnosis = client.decrypt(loaded.spec(), &output)?;
            values.push(diagnosis.probabilities[exact]);
            results.push(diagnosis);
            bar.inc(1);
        }
        if encrypted_marks.add(&results, margin) {
            flipping += 1;
            unflagged += usize::from(!borderline.contains(&i));
        }
        spreads.push(spread(&values));
    }
    bar.finish_and_clear();
    let mean_max = |v: &[f64]| {
        (
            v.iter().sum::<f64>() / v.len().max(1) as f64,
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    Ok(Stability {
        runs,
        borderline_draws: BORDERLINE_DRAWS,
        test_images: test.len(),
        borderline: borderline.len(),
        simulated_flipping,
        simulated_spread: mean_max(&simulated_spreads),
        encrypted_images: chosen.len(),
        encrypted_borderline: chosen.iter().filter(|i| borderline.contains(i)).count(),
        encrypted_flipping: flipping,
        encrypted_flipping_unflagged: unflagged,
        encrypted_spread: mean_max(&spreads),
        borderline_margin: margin,
        simulated_marked: simulated_marks.marked,
        encrypted_marked: encrypted_marks.marked,
        simulated_flipping_unmarked: simulated_marks.flipping_unmarked,
        encrypted_flipping_unmarked: encrypted_marks.flipping_unmarked,
    })
}
