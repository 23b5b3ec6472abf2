//! Training loops: the ReLU teacher, the quadratic student and its quantization- and
//! noise-aware fine-tuning. Every step of the method is a switch in [`Recipe`], so that the
//! ablation rows differ by exactly one setting.

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use hexray_model::circuit::fit_logit_bound;
use hexray_model::network::Granularity;
use hexray_model::network::{InputSpec, Layer};
use hexray_model::parameters::TORUS;
use hexray_model::simulate::argmax;
use hexray_model::FheParameters;
use hexray_model::{Circuit, ModelError};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::augment::augment;
use crate::data::Dataset;
use crate::export::IntegerNet;
use crate::loss::{cross_entropy, Distillation};
use crate::net::{ActivationMode, Net, NoiseLevels, Pass, Quantization};
use crate::topology::Topology;

/// Optimiser settings shared by every phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty λ: every trainable parameter's gradient gains λ·θ (Adam's coupled weight
    /// decay), or `None`. It trades fitting the training set for smaller weights, which a
    /// small set such as the 44 adult X-rays may need.
    pub weight_decay: Option<f64>,
    pub seed: u64,
    /// Show a progress bar per phase.
    #[serde(skip)]
    pub progress: bool,
}

/// How the student is made from the teacher.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recipe {
    /// Fixed x² with no batch norm, trained from scratch: the baseline without tricks.
    pub square: bool,
    pub granularity: Granularity,
    /// Start from the teacher's weights (transfer learning) rather than from scratch.
    pub from_teacher: bool,
    /// Distil from the teacher; plain cross-entropy when `None`.
    pub distillation: Option<Distillation>,
    /// Epochs of the gradual replacement, λ rising linearly to 1.
    pub blend_epochs: usize,
    /// Epochs with the quadratic alone.
    pub epochs: usize,
    /// Quantization-aware (and optionally noise-aware) fine-tuning.
    pub quantization: Option<QatRecipe>,
}

/// The quantized fine-tuning phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QatRecipe {
    pub weight_bits: u8,
    pub activation_bits: u8,
    pub epochs: usize,
    /// Inject each neuron's compiler-predicted TFHE noise.
    pub noise: bool,
}

/// One epoch's figures, for the training curves.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochLog {
    pub phase: String,
    pub epoch: usize,
    pub loss: f64,
    pub validation_accuracy: f64,
}

/// A quantized student ready to export.
pub struct QuantizedStudent {
    pub net: Net,
    pub quantization: Quantization,
}

/// The training device: flex (pure Rust, CPU) with autodiff.
pub fn training_device() -> Device {
    Device::flex().autodiff()
}

/// Images and labels held as tensors' raw values, batched on demand.
pub struct Tensors {
    /// Real pixel values, `[n, c, h, w]` flattened.
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    pub dims: [usize; 3],
}

impl Tensors {
    /// The dataset's integers times the input scale.
    pub fn new(data: &Dataset, input_scale: f64) -> Self {
        let (c, h, w) = data.images.first().map_or((1, 0, 0), |i| i.dim());
        Tensors {
            images: data
                .images
                .iter()
                .flat_map(|i| i.iter().map(|&v| (v as f64 * input_scale) as f32))
                .collect(),
            labels: data.labels.clone(),
            dims: [c, h, w],
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The images at `indices` as a `[batch, c, h, w]` tensor.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let n = self.image_len();
        let values: Vec<f32> = indices
            .iter()
            .flat_map(|&i| self.images[i * n..(i + 1) * n].iter().copied())
            .collect();
        let [c, h, w] = self.dims;
        Tensor::from_data(TensorData::new(values, [indices.len(), c, h, w]), device)
    }

    fn labels(&self, indices: &[usize], device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        Tensor::from_data(TensorData::new(labels, [indices.len()]), device)
    }
}

/// Class probabilities for every image, in batches, on the plain (non-autodiff) device.
pub fn predict(net: &Net, data: &Tensors, pass: &mut Pass) -> Vec<Vec<f64>> {
    let net = net.valid();
    let device = Device::flex();
    let indices: Vec<usize> = (0..data.len()).collect();
    indices
        .chunks(256)
        .flat_map(|chunk| {
            let logits = net.forward(data.batch(chunk, &device), pass);
            let probabilities = burn::tensor::activation::softmax(logits, 1);
            let [_, classes] = probabilities.dims();
            let values = probabilities
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float probabilities");
            values
                .chunks(classes)
                .map(|p| p.iter().map(|&v| v as f64).collect())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Fraction of images whose most probable class is their label, by the one argmax rule the
/// simulator and the reports use (the first class on a tie), so a tie is never counted right
/// here and wrong there.
pub fn accuracy(probabilities: &[Vec<f64>], labels: &[usize]) -> f64 {
    let correct = probabilities
        .iter()
        .zip(labels)
        .filter(|(p, &label)| argmax(p) == label)
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// The random generator of one training phase: seeded by the run's seed and the phase's
/// name, so phases shuffle differently (`seed ^ name length` made "teacher", "replace" and
/// "student", all 7 letters, shuffle alike) and reruns repeat.
pub fn phase_rng(seed: u64, phase: &str) -> ChaCha8Rng {
    // FNV-1a: a stable hash, unlike std's, which may change between Rust releases.
    let name = phase.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ChaCha8Rng::seed_from_u64(seed ^ name)
}

/// One optimisation phase: `epochs` passes over `train` in shuffled batches, the loss given by
/// `batch_loss(net, indices, epoch)`, with validation accuracy after each epoch. It returns the
/// epoch with the best validation accuracy (the last on ties), so that a phase never ends on
/// a worse network than one it passed through.
#[allow(clippy::too_many_arguments)]
fn fit(
    mut net: Net,
    phase: &str,
    epochs: usize,
    train: &Tensors,
    settings: &Settings,
    log: &mut Vec<EpochLog>,
    mut batch_loss: impl FnMut(&Net, &[usize], usize) -> Tensor<1>,
    mut validate: impl FnMut(&Net, usize) -> f64,
) -> Net {
    let mut optimizer = AdamConfig::new()
        .with_weight_decay(
            settings
                .weight_decay
                .map(|l| WeightDecayConfig::new(l as f32)),
        )
        .init();
    let mut rng = phase_rng(settings.seed, phase);
    let batches = train.len().div_ceil(settings.batch_size);
    let bar = progress_bar(phase, (epochs * batches) as u64, settings.progress);
    let mut best: Option<(f64, Net)> = None;
    for epoch in 0..epochs {
        // Cosine decay over the phase.
        let lr = settings.learning_rate
            * 0.5
            * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos());
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let (mut total, mut count) = (0.0, 0);
        for chunk in order.chunks(settings.batch_size) {
            let loss = batch_loss(&net, chunk, epoch);
            total += loss.clone().into_scalar::<f32>() as f64 * chunk.len() as f64;
            count += chunk.len();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(lr, net, grads);
            bar.inc(1);
        }
        let validation_accuracy = validate(&net, epoch);
        let loss = total / count.max(1) as f64;
        bar.set_message(format!(
            "epoch {} loss {loss:.4} val acc {validation_accuracy:.3}",
            epoch + 1
        ));
        log.push(EpochLog {
            phase: phase.to_owned(),
            epoch: log.len() + 1,
            loss,
            validation_accuracy,
        });
        if best.as_ref().is_none_or(|(b, _)| validation_accuracy >= *b) {
            best = Some((validation_accuracy, net.independent_copy()));
        }
    }
    bar.finish();
    best.map_or(net, |(_, net)| net)
}

/// The trainer's progress bar: `len` steps of work named `prefix`, hidden when not `visible`.
pub fn progress_bar(prefix: &str, len: u64, visible: bool) -> ProgressBar {
    let bar = match visible {
        true => ProgressBar::new(len),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Trains the plaintext ReLU teacher with augmentation (shifts, rotations, contrast), from
/// `start` (a pre-trained teacher, for transfer learning) or from scratch.
#[allow(clippy::too_many_arguments)]
pub fn train_teacher(
    start: Option<Net>,
    topology: &Topology,
    classes: usize,
    train: &Tensors,
    val: &Tensors,
    epochs: usize,
    settings: &Settings,
    log: &mut Vec<EpochLog>,
) -> Net {
    let device = training_device();
    device.seed(settings.seed);
    let [c, h, w] = train.dims;
    let input = hexray_model::network::Shape::Image { c, h, w };
    let net =
        start.unwrap_or_else(|| Net::new(topology, input, classes, Granularity::Layer, &device));
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    fit(
        net,
        "teacher",
        epochs,
        train,
        settings,
        log,
        |net, indices, _| {
            let images =
                augment(train.batch(indices, &Device::flex()), &mut rng).to_device(&device);
            let logits = net.forward(images, &mut Pass::float(ActivationMode::Relu));
            cross_entropy(logits, train.labels(indices, &device))
        },
        |net, _| {
            accuracy(
                &predict(net, val, &mut Pass::float(ActivationMode::Relu)),
                &val.labels,
            )
        },
    )
}

/// Teacher logits for every training image, computed once for distillation.
fn teacher_logits(teacher: &Net, train: &Tensors) -> Vec<f32> {
    let net = teacher.valid();
    let device = Device::flex();
    let indices: Vec<usize> = (0..train.len()).collect();
    indices
        .chunks(256)
        .flat_map(|chunk| {
            net.forward(
                train.batch(chunk, &device),
                &mut Pass::float(ActivationMode::Relu),
            )
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float logits")
        })
        .collect()
}

/// The student's loss on one batch: distillation when the recipe has it, else cross-entropy.
struct Objective<'a> {
    train: &'a Tensors,
    teacher: Vec<f32>,
    classes: usize,
    distillation: Option<Distillation>,
}

impl Objective<'_> {
    fn loss(&self, logits: Tensor<2>, indices: &[usize]) -> Tensor<1> {
        let device = logits.device();
        let labels = self.train.labels(indices, &device);
        match self.distillation {
            Some(kd) => {
                let values: Vec<f32> = indices
                    .iter()
                    .flat_map(|&i| {
                        self.teacher[i * self.classes..(i + 1) * self.classes]
                            .iter()
                            .copied()
                    })
                    .collect();
                let teacher = Tensor::from_data(
                    TensorData::new(values, [indices.len(), self.classes]),
                    &device,
                );
                kd.loss(logits, teacher, labels)
            }
            None => cross_entropy(logits, labels),
        }
    }
}

/// Trains the float student from the teacher by `recipe` (without its quantization phase):
/// it starts from `teacher`, of its own topology, and is distilled from `distil_from`, which
/// may be a larger network (Baruch et al., "A methodology for training HE-friendly neural
/// networks", allow a teacher larger than its student).
pub fn train_student(
    teacher: &Net,
    distil_from: &Net,
    recipe: &Recipe,
    train: &Tensors,
    val: &Tensors,
    settings: &Settings,
    log: &mut Vec<EpochLog>,
) -> Net {
    let device = training_device();
    device.seed(settings.seed.wrapping_add(1));
    let classes = teacher.output.weight.dims()[1];
    let start = match recipe.from_teacher {
        true => teacher.independent_copy(),
        false => Net::new(
            &teacher.topology,
            teacher.input,
            classes,
            recipe.granularity,
            &device,
        ),
    };
    let net = match recipe.square {
        true => start.squared(&device),
        false => start.with_quadratics(recipe.granularity, &device),
    };
    let objective = Objective {
        train,
        teacher: teacher_logits(distil_from, train),
        classes,
        distillation: recipe.distillation,
    };
    let blend = |epoch: usize| (epoch + 1) as f64 / recipe.blend_epochs as f64;
    let validate_with = |mode: ActivationMode| {
        move |net: &Net, _| accuracy(&predict(net, val, &mut Pass::float(mode)), &val.labels)
    };
    let net = fit(
        net,
        "replace",
        recipe.blend_epochs,
        train,
        settings,
        log,
        |net, indices, epoch| {
            let mode = ActivationMode::Blend(blend(epoch));
            let logits = net.forward(train.batch(indices, &device), &mut Pass::float(mode));
            objective.loss(logits, indices)
        },
        |net, epoch| {
            let mode = ActivationMode::Blend(blend(epoch));
            accuracy(&predict(net, val, &mut Pass::float(mode)), &val.labels)
        },
    );
    fit(
        net,
        "student",
        recipe.epochs,
        train,
        settings,
        log,
        |net, indices, _| {
            let logits = net.forward(
                train.batch(indices, &device),
                &mut Pass::float(ActivationMode::Quadratic),
            );
            objective.loss(logits, indices)
        },
        validate_with(ActivationMode::Quadratic),
    )
}

/// Activation grids calibrated on training data: each block's grid covers the 99.9th
/// percentile of its |output|, so that rare outliers clip instead of coarsening every step.
pub fn calibrate(
    net: &Net,
    train: &Tensors,
    weight_bits: u8,
    activation_bits: u8,
    input_scale: f64,
) -> Quantization {
    let sample: Vec<usize> = (0..train.len().min(1024)).collect();
    let device = Device::flex();
    let (_, activations) = net.valid().forward_with_activations(
        train.batch(&sample, &device),
        &mut Pass::float(ActivationMode::Quadratic),
    );
    let top = ((1i64 << (activation_bits - 1)) - 1) as f64;
    let activation_scales = activations
        .into_iter()
        .map(|a| {
            let mut v: Vec<f32> = a
                .abs()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float activations");
            v.sort_by(f32::total_cmp);
            let p = v[((v.len() - 1) as f64 * 0.999) as usize] as f64;
            p.max(1e-6) / top
        })
        .collect();
    Quantization {
        weight_bits,
        activation_bits,
        input_scale,
        activation_scales,
    }
}

/// Compiles the quantized network and returns its noise in real units: each stage's input
/// σ and switch σ (fractions of the torus) over the stage's Δ, times the real value of one
/// input integer or one accumulator unit.
pub fn noise_levels(
    integer: &IntegerNet,
    fhe: &FheParameters,
) -> Result<(NoiseLevels, Circuit), ModelError> {
    let mut network = integer.network();
    let circuit = fit_logit_bound(&mut network, fhe)?;
    let input_steps = std::iter::once(integer.input.scale)
        .chain(integer.blocks.iter().map(|b| b.activation.output.scale));
    let inputs = circuit
        .stages
        .iter()
        .zip(input_steps)
        .map(|(stage, step)| (stage.input_sigma * TORUS / stage.delta as f64 * step) as f32)
        .collect();
    let switches = integer
        .blocks
        .iter()
        .zip(&circuit.stages)
        .map(|(block, stage)| {
            let act = &block.activation;
            let sigma = stage.switch_sigma * TORUS / stage.delta as f64;
            (0..stage.neurons.len())
                .map(|j| (sigma * act.input_scales[act.granularity.index(block.shape, j)]) as f32)
                .collect()
        })
        .collect();
    debug_assert!(matches!(network.layers.last(), Some(Layer::Dense(_))));
    Ok((NoiseLevels { inputs, switches }, circuit))
}

/// Folds batch norm, calibrates the grids and fine-tunes on them, with TFHE's predicted noise
/// when the recipe asks. The noise levels are recompiled after every epoch, since they follow
/// the integer weights.
#[allow(clippy::too_many_arguments)]
pub fn quantize_student(
    student: Net,
    qat: &QatRecipe,
    distillation: Option<Distillation>,
    teacher: &Net,
    train: &Tensors,
    val: &Tensors,
    input: &InputSpec,
    classes: &[String],
    fhe: &FheParameters,
    settings: &Settings,
    log: &mut Vec<EpochLog>,
) -> Result<QuantizedStudent, ModelError> {
    let device = training_device();
    // Fine-tuning: a quarter of the float phases' learning rate.
    let settings = &Settings {
        learning_rate: settings.learning_rate / 4.0,
        ..settings.clone()
    };
    let net = student.fold_batch_norm();
    let quantization = calibrate(
        &net,
        train,
        qat.weight_bits,
        qat.activation_bits,
        input.scale,
    );
    let levels = |net: &Net| -> Result<NoiseLevels, ModelError> {
        let integer = IntegerNet::new(&net.valid(), &quantization, input.clone(), classes.to_vec());
        Ok(noise_levels(&integer, fhe)?.0)
    };
    let current = std::cell::RefCell::new(levels(&net)?);
    let objective = Objective {
        train,
        teacher: teacher_logits(teacher, train),
        classes: classes.len(),
        distillation,
    };
    let mut noise_rng = ChaCha8Rng::seed_from_u64(settings.seed.wrapping_add(7));
    let mut failure = None;
    let net = fit(
        net,
        "quantized",
        qat.epochs,
        train,
        settings,
        log,
        |net, indices, _| {
            let levels = current.borrow();
            let mut pass = Pass {
                mode: ActivationMode::Quadratic,
                quantization: Some(&quantization),
                noise: qat
                    .noise
                    .then_some((&*levels, &mut noise_rng as &mut dyn rand::RngCore)),
            };
            let logits = net.forward(train.batch(indices, &device), &mut pass);
            objective.loss(logits, indices)
        },
        |net, _| {
            match levels(net) {
                Ok(l) => *current.borrow_mut() = l,
                Err(e) => failure = Some(e),
            }
            let mut pass = Pass {
                mode: ActivationMode::Quadratic,
                quantization: Some(&quantization),
                noise: None,
            };
            accuracy(&predict(net, val, &mut pass), &val.labels)
        },
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(QuantizedStudent {
            net: net.valid(),
            quantization,
        }),
    }
}
