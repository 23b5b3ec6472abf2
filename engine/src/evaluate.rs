//! Encrypted evaluation of a compiled circuit.
//!
//! For a batch of up to 8 hidden neurons, one task computes each neuron's composed dot product
//! on the LWE ciphertexts with wrapping integer arithmetic (clear weights, no bootstrap), adds
//! its clear constant, and immediately applies the neurons' lookup tables with one batched
//! keyswitch and programmable bootstrap ([`ServerKey::bootstrap_batch`], bit for bit TFHE-rs's
//! `apply_lookup_table_assign`). Fusing the two keeps the work of every task alike, so rayon
//! keeps every core on bootstraps. The output stage is a leveled dot product only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hexray_crypto::{
    Ciphertext, Ciphertexts, CryptoError, EncryptedImage, EncryptedOutput, ServerKey,
};
use hexray_model::{Circuit, Stage};
use rayon::prelude::*;
use thiserror::Error;

use crate::model::LoadedModel;

/// Why the engine refused a batch. The server checks all of this before it queues a job, so
/// for it these are bugs; for a library caller they are its own mistakes, named.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A key or image of another parameter set than the model's
    /// ([`ParameterSet::require_set`](hexray_crypto::ParameterSet::require_set)).
    #[error(transparent)]
    Parameters(#[from] CryptoError),
    /// An image with another number of values than the model reads.
    #[error("the encrypted image holds {found} values, but the model reads {expected}")]
    InputLength {
        /// Values the model reads.
        expected: usize,
        /// Values the image holds.
        found: usize,
    },
    /// An empty batch.
    #[error("a batch needs at least one encrypted image")]
    EmptyBatch,
}

/// Where the time went, summed over threads for the parts that run in parallel.
#[derive(Clone, Debug, Default)]
pub struct EvaluationStats {
    /// Bootstraps run, all images together.
    pub bootstraps: usize,
    /// Time from the call to the outputs.
    pub wall: Duration,
    /// Expanding the seeded input ciphertexts.
    pub expand: Duration,
    /// Dot products, constants and table construction: everything but the bootstraps.
    pub linear_cpu: Duration,
    /// Keyswitch + bootstrap.
    pub bootstrap_cpu: Duration,
    /// Compressing the outputs for the trip back: one keyswitch and modulus switch per class.
    pub compress_cpu: Duration,
}

/// Evaluates `model` on one encrypted image. `progress` is called after every bootstrap.
///
/// The whole round trip, with the client's side in `hexray-crypto`:
///
/// ```
/// use hexray_crypto::{ClientKey, ParameterSet};
/// use hexray_engine::{evaluate, LoadedModel};
///
/// # let set = ParameterSet::Ks32;
/// # let (model, _) = hexray_model::testing::tiny_model_with(set.fhe_parameters());
/// let loaded = LoadedModel::from_bytes(&model.to_bytes(), "tiny.hexray").unwrap();
/// let (client, server_key) = ClientKey::generate_deterministic(set, 1);
/// let input = ndarray::Array3::<i64>::from_shape_fn((1, 4, 4), |(_, y, x)| (y * 60 + x * 5) as i64);
///
/// let encrypted = client.encrypt(loaded.spec(), input.view()).unwrap();
/// let (output, stats) = evaluate(&loaded, &server_key.decompress(), encrypted, &|| {}).unwrap();
/// assert_eq!(stats.bootstraps, loaded.circuit().bootstrap_count());
///
/// // The client decrypts what the simulator predicts, within the noise the compiler counts.
/// let decrypted = client.decrypt_prediction(loaded.circuit(), &output).unwrap();
/// let exact = hexray_model::simulate::exact(loaded.circuit(), input.view()).unwrap();
/// let stage = loaded.circuit().stages.last().unwrap();
/// for (j, (d, e)) in decrypted.accumulators.iter().zip(&exact.accumulators).enumerate() {
///     let sigma = stage.neurons[j].sigma * 2f64.powi(64) / stage.delta as f64;
///     assert!((d - e).abs() < 6.0 * sigma, "{d} vs {e}, σ {sigma}");
/// }
/// ```
pub fn evaluate(
    model: &LoadedModel,
    key: &ServerKey,
    input: EncryptedImage,
    progress: &(dyn Fn() + Sync),
) -> Result<(EncryptedOutput, EvaluationStats), EngineError> {
    let (mut outputs, stats) = evaluate_batch(model, key, vec![input], progress)?;
    Ok((outputs.remove(0), stats))
}

/// Evaluates `model` on a batch of encrypted images, as Zhang et al. ("Batch-oriented
/// element-wise approximate activation") intend, to lower the cost per image: each stage's neurons of
/// all images form one stream of bootstraps, so a batch keeps every core busy even when one
/// image's stage has fewer neurons than there are cores. Outputs come in input order.
/// `progress` is called after every bootstrap.
pub fn evaluate_batch(
    model: &LoadedModel,
    key: &ServerKey,
    inputs: Vec<EncryptedImage>,
    progress: &(dyn Fn() + Sync),
) -> Result<(Vec<EncryptedOutput>, EvaluationStats), EngineError> {
    let set = model.parameter_set();
    let circuit = &model.circuit();
    if inputs.is_empty() {
        return Err(EngineError::EmptyBatch);
    }
    set.require_set("server key", key.parameter_set())?;
    for input in &inputs {
        set.require_set("encrypted image", input.parameter_set())?;
        if input.len() != circuit.input_len() {
            return Err(EngineError::InputLength {
                expected: circuit.input_len(),
                found: input.len(),
            });
        }
    }

    let start = Instant::now();
    let mut values: Vec<_> = inputs.into_par_iter().map(EncryptedImage::expand).collect();
    let expand = start.elapsed();
    let timers = Timers::default();
    let (output, hidden) = circuit
        .stages
        .split_last()
        .expect("a circuit has an output stage");
    for index in 0..hidden.len() {
        values = run_hidden_stage(circuit, index, &values, key, progress, &timers);
    }
    let outputs = values
        .par_iter()
        .map(|image| {
            let linear_start = Instant::now();
            let neurons = (0..output.neurons.len())
                .map(|j| dot_product(output, j, image))
                .collect();
            let accumulators = Ciphertexts::concat(neurons);
            timers.add(&timers.linear, linear_start);
            let compress_start = Instant::now();
            let compressed = EncryptedOutput::compress(key, &accumulators);
            timers.add(&timers.compress, compress_start);
            compressed
        })
        .collect();

    let stats = EvaluationStats {
        bootstraps: circuit.bootstrap_count() * values.len(),
        wall: start.elapsed(),
        expand,
        linear_cpu: Duration::from_nanos(timers.linear.load(Ordering::Relaxed)),
        bootstrap_cpu: Duration::from_nanos(timers.bootstrap.load(Ordering::Relaxed)),
        compress_cpu: Duration::from_nanos(timers.compress.load(Ordering::Relaxed)),
    };
    Ok((outputs, stats))
}

/// One hidden stage for every image: a dot product and a bootstrap per (image, neuron), in
/// parallel. The outputs are the next stage's inputs, encoded with its Δ.
fn run_hidden_stage(
    circuit: &Circuit,
    index: usize,
    images: &[Ciphertexts],
    key: &ServerKey,
    progress: &(dyn Fn() + Sync),
    timers: &Timers,
) -> Vec<Ciphertexts> {
    let stage = &circuit.stages[index];
    let next_delta = circuit.stages[index + 1].delta;
    let width = stage.neurons.len();
    let work: Vec<(usize, usize)> = (0..images.len())
        .flat_map(|image| (0..width).map(move |j| (image, j)))
        .collect();
    // Batches share each bootstrapping-key load; keep at least one batch per thread.
    let batch = MAX_BATCH
        .min(work.len().div_ceil(rayon::current_num_threads()))
        .max(1);
    let mut outputs: Vec<Ciphertext> = work
        .par_chunks(batch)
        .flat_map_iter(|chunk| {
            let linear_start = Instant::now();
            let phases: Vec<_> = chunk
                .iter()
                .map(|&(image, j)| dot_product(stage, j, &images[image]))
                .collect();
            let tables: Vec<_> = chunk
                .iter()
                .map(|&(_, j)| {
                    key.lookup_table(&stage.lookup_table(j, circuit.polynomial_size, next_delta))
                })
                .collect();
            timers.add(&timers.linear, linear_start);
            let bootstrap_start = Instant::now();
            let outputs = key.bootstrap_batch(&phases, &tables);
            timers.add(&timers.bootstrap, bootstrap_start);
            outputs.into_iter().inspect(|_| progress())
        })
        .collect();
    images
        .iter()
        .map(|_| Ciphertexts::concat(outputs.drain(..width).collect()))
        .collect()
}

/// Most neurons bootstrapped together; past 8 the gain from sharing key loads levels off.
const MAX_BATCH: usize = 8;

/// Nanoseconds spent per kind of work, summed across threads.
#[derive(Default)]
struct Timers {
    linear: AtomicU64,
    bootstrap: AtomicU64,
    compress: AtomicU64,
}

impl Timers {
    fn add(&self, counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Neuron `j`'s phase: its dot product over the stage inputs plus its clear constant. Stage 0's
/// inputs arrive in the public input unit; its gain scales them to the stage's Δ.
pub fn dot_product(stage: &Stage, j: usize, inputs: &Ciphertexts) -> Ciphertext {
    let terms = stage.neurons[j]
        .form
        .terms
        .iter()
        .map(|&(i, w)| (i as usize, (w as u64).wrapping_mul(stage.input_gain)));
    inputs.dot_product(terms, stage.constant(j))
}
