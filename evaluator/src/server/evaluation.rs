//! The bridge from the job queues to the engines: one node's pool of evaluation threads, which
//! either back end hands its batches to (interactive batches to `hexray-engine`, bulk uploads
//! to `hexray-bulk`), and the counters of what it did.

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hexray_crypto::{EncryptedImage, EncryptedOutput};
use hexray_engine::evaluate_batch;

use super::auth::Owner;
use super::keys::KeyStorage;
use super::metrics::Metrics;
use super::models::ServedModel;
use super::store_error::StoreError;

/// Evaluates batches on one node's pool, for either back end, and counts what it did.
pub struct Evaluator {
    pool: rayon::ThreadPool,
    keys: Arc<dyn KeyStorage>,
    pub metrics: Arc<Metrics>,
}

impl Evaluator {
    /// A pool of `threads` evaluation threads.
    pub fn new(threads: usize, keys: Arc<dyn KeyStorage>, metrics: Arc<Metrics>) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hexray-fhe-{i}"))
            .build()
            .expect("the evaluation thread pool starts");
        Evaluator {
            pool,
            keys,
            metrics,
        }
    }

    /// Evaluates `inputs` with `owner`'s key, calling `progress` after each bootstrap; returns
    /// one serialized output per input, in order. A panic fails the batch, never the node.
    pub fn run(
        &self,
        model: &ServedModel,
        owner: &Owner,
        key_id: &str,
        inputs: Vec<EncryptedImage>,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let images = inputs.len();
        let bootstraps = AtomicUsize::new(0);
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let key = self.keys.server_key(owner, key_id)?;
            let counted = || {
                bootstraps.fetch_add(1, Ordering::Relaxed);
                progress();
            };
            let (outputs, _) = self
                .pool
                .install(|| evaluate_batch(&model.loaded, &key, inputs, &counted))?;
            outputs
                .iter()
                .map(EncryptedOutput::to_bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Internal(e.to_string()))
        }))
        .unwrap_or_else(|_| Err(StoreError::Internal("the evaluation panicked".into())));
        let metrics = &self.metrics;
        Metrics::add(&metrics.busy_nanos, started.elapsed().as_nanos() as u64);
        Metrics::add(
            &metrics.bootstraps,
            bootstraps.load(Ordering::Relaxed) as u64,
        );
        if result.is_ok() {
            Metrics::add(&metrics.images_completed, images as u64);
        }
        result
    }

    /// Evaluates a bulk upload ([`hexray_bulk::upload`], as the route checked it) with `model`'s
    /// packed circuit, calling `progress` after each packed neuron; returns the encrypted
    /// results' wire format. The upload is read here from its file, rather than kept decoded in
    /// the queue, where a 4096-image batch would take about 400 MB while it waits. Its time is
    /// not counted as busy: the bootstrap rate the page's time estimates come from is the
    /// interactive path's alone.
    pub fn run_bulk(
        &self,
        model: &ServedModel,
        upload: impl Read,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<u8>, StoreError> {
        let circuit = model
            .packed
            .as_ref()
            .ok_or_else(|| StoreError::Internal(format!("{} has no bulk circuit", model.id)))?;
        let (key, batch) = hexray_bulk::upload::read(BufReader::new(upload), circuit.input_len())?;
        let images = batch.images();
        let result = self
            .pool
            .install(|| hexray_bulk::evaluate(circuit, &key, batch, progress))
            .map(|outputs| outputs.to_bytes())
            .map_err(StoreError::Bulk);
        if result.is_ok() {
            Metrics::add(&self.metrics.images_completed, images as u64);
        }
        result
    }
}
