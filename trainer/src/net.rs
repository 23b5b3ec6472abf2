//! The network both the teacher and the student are made of, and its float forward pass.
//!
//! One module type serves both roles: the teacher runs it with ReLU, the student with its
//! quadratics. Because their shapes match, the student starts from the teacher's weights
//! (transfer learning) and only the activations change.
//!
//! The forward pass has three switches, each an ablation row:
//! - the activation: ReLU, the gradual blend (1 − λ)·ReLU + λ·quadratic, or the quadratic;
//! - quantization ([`Quantization`]): weights and activations on the integer grids the circuit
//!   uses, trained through a straight-through estimator;
//! - noise ([`NoiseLevels`]): TFHE's noise as the compiler predicts it, added where it arises:
//!   on each stage's inputs (so the linear layer correlates it, as encryption does) and on each
//!   pre-activation (the switches before a bootstrap).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, conv2d, linear};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions};
use hexray_model::network::Granularity;
use hexray_model::network::Shape;
use rand::{Rng, RngCore};
use rand_distr::StandardNormal;

use crate::activation::Quadratic;
use crate::topology::{Block, Topology};

/// One hidden block: its linear front, its linear layer, optional pooling, batch norm, and the
/// activation. Each is one stage of the compiled circuit.
#[derive(Module, Debug)]
pub struct Hidden {
    /// The topology's linear blocks before this one. Trained layer by layer, so that the
    /// convolution's structure shapes what the stage learns; once quantized, the front and
    /// this block's dense layer run as their composition, one dense layer on the integer grid,
    /// which is what the server's one dot product per neuron computes
    /// ([`Hidden::composed`]).
    pub front: Vec<Front>,
    pub conv: Option<Conv2d>,
    pub dense: Option<Linear>,
    /// Batch norm keeps pre-activations in the range the quadratic was fitted on; it is folded
    /// into the linear layer before quantization ([`Net::fold_batch_norm`]).
    pub norm: Option<BatchNorm>,
    pub activation: Quadratic,
    #[module(skip)]
    pub pool: usize,
    /// The shape this block outputs.
    #[module(skip)]
    pub shape: Shape,
}

/// A linear block of a front: a convolution with its pooling, or a dense layer, and neither
/// batch norm nor activation.
#[derive(Module, Debug)]
pub struct Front {
    pub conv: Option<Conv2d>,
    pub dense: Option<Linear>,
    #[module(skip)]
    pub pool: usize,
}

/// A topology's hidden blocks and its output layer.
#[derive(Module, Debug)]
pub struct Net {
    pub hidden: Vec<Hidden>,
    pub output: Linear,
    #[module(skip)]
    pub input: Shape,
    /// What the network was built from, so that a fresh copy can be built.
    #[module(skip)]
    pub topology: Topology,
}

/// Which activation the hidden blocks apply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActivationMode {
    Relu,
    /// (1 − λ)·ReLU + λ·quadratic, the gradual replacement schedule.
    Blend(f64),
    Quadratic,
}

/// The integer grids of a quantized network, as the circuit will see them.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantization {
    /// Symmetric weight bits, per output channel (per tensor for the output layer).
    pub weight_bits: u8,
    /// Signed bits of every activation's output: what its lookup table produces.
    pub activation_bits: u8,
    /// Real value of one input integer.
    pub input_scale: f64,
    /// Real value of one output step of each hidden block's activation, calibrated on training
    /// data.
    pub activation_scales: Vec<f64>,
}

impl Quantization {
    /// Largest weight integer: 2^(bits−1) − 1.
    pub fn weight_max(&self) -> f64 {
        ((1i64 << (self.weight_bits - 1)) - 1) as f64
    }

    /// The signed integer range of an activation's output.
    pub fn activation_range(&self) -> (i64, i64) {
        let half = 1i64 << (self.activation_bits - 1);
        (-half, half - 1)
    }

    /// Real value of one step of block `layer`'s input.
    pub fn input_step(&self, layer: usize) -> f64 {
        match layer {
            0 => self.input_scale,
            l => self.activation_scales[l - 1],
        }
    }
}

/// TFHE's noise, as the compiler predicts it, in real units, split by where it arises (see
/// `hexray_model::circuit`): what every input ciphertext of a stage carries, which the linear
/// layer carries on to all the neurons that read it, and what each bootstrap's switches add.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoiseLevels {
    /// Per stage (each hidden block, then the output layer), σ of each input's noise.
    pub inputs: Vec<f32>,
    /// Per hidden block, one σ per neuron: the keyswitch and modulus switch before its
    /// bootstrap.
    pub switches: Vec<Vec<f32>>,
}

/// How one forward pass runs.
pub struct Pass<'a> {
    pub mode: ActivationMode,
    pub quantization: Option<&'a Quantization>,
    /// Noise levels and the generator that draws them, when training noise-aware.
    pub noise: Option<(&'a NoiseLevels, &'a mut dyn RngCore)>,
}

impl<'a> Pass<'a> {
    /// A pass with `mode` and neither quantization nor noise.
    pub fn float(mode: ActivationMode) -> Self {
        Pass {
            mode,
            quantization: None,
            noise: None,
        }
    }
}

impl Net {
    /// A freshly initialised network of `topology` over `input`, with quadratics of
    /// `granularity` (unused until the student switches them on).
    pub fn new(
        topology: &Topology,
        input: Shape,
        classes: usize,
        granularity: Granularity,
        device: &Device,
    ) -> Self {
        let mut previous = input;
        let mut front = Vec::new();
        let mut hidden = Vec::new();
        for (block, shape) in topology.blocks.iter().zip(topology.shapes(input)) {
            let (conv, dense, pool, features) = match *block {
                Block::Conv { conv: c, .. } => {
                    let p = c.padding;
                    let conv = Conv2dConfig::new([previous.channels(), c.channels], [c.kernel; 2])
                        .with_stride([c.stride; 2])
                        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                        .init(device);
                    (Some(conv), None, c.pool, c.channels)
                }
                Block::Dense { outputs, .. } => {
                    let dense = LinearConfig::new(previous.len(), outputs).init(device);
                    (None, Some(dense), 1, outputs)
                }
            };
            previous = shape;
            if block.is_linear() {
                front.push(Front { conv, dense, pool });
                continue;
            }
            hidden.push(Hidden {
                front: std::mem::take(&mut front),
                conv,
                dense,
                norm: Some(BatchNormConfig::new(features).init(device)),
                activation: Quadratic::new(granularity, shape, device),
                pool,
                shape,
            });
        }
        Net {
            hidden,
            output: LinearConfig::new(previous.len(), classes).init(device),
            input,
            topology: topology.clone(),
        }
    }

    /// The shape hidden block `layer` reads.
    pub fn block_input(&self, layer: usize) -> Shape {
        match layer {
            0 => self.input,
            l => self.hidden[l - 1].shape,
        }
    }

    /// Logits for `[batch, c, h, w]` real-valued images.
    pub fn forward(&self, images: Tensor<4>, pass: &mut Pass) -> Tensor<2> {
        self.forward_with_activations(images, pass).0
    }

    /// Logits and every hidden block's activation output `[batch, neurons]`, from which the
    /// activation grids are calibrated.
    pub fn forward_with_activations(
        &self,
        images: Tensor<4>,
        pass: &mut Pass,
    ) -> (Tensor<2>, Vec<Tensor<2>>) {
        let quantization = pass.quantization;
        let batch = images.dims()[0];
        let mut activations = Vec::with_capacity(self.hidden.len());
        let mut x = images;
        for (l, block) in self.hidden.iter().enumerate() {
            let step = quantization.map(|q| (q, q.input_step(l)));
            let x_noisy = match pass.noise.as_mut() {
                Some((levels, rng)) => x.clone() + gaussian_like(&x, &[levels.inputs[l]], *rng),
                None => x,
            };
            let z = block.pre_activation(x_noisy, self.block_input(l), step);
            let n = block.shape.len();
            let mut z = z.reshape([batch, n]);
            if let Some((levels, rng)) = pass.noise.as_mut() {
                z = z.clone() + gaussian_like(&z, &levels.switches[l], *rng);
            }
            let mut y = match pass.mode {
                ActivationMode::Relu => relu(z),
                ActivationMode::Blend(lambda) => block.activation.blend(z, lambda),
                ActivationMode::Quadratic => block.activation.forward(z),
            };
            if let Some(q) = quantization {
                y = fake_quantize_activation(y, q.activation_scales[l], q.activation_range());
            }
            activations.push(y.clone());
            x = match block.shape {
                Shape::Image { c, h, w } => y.reshape([batch, c, h, w]),
                Shape::Flat(n) => y.reshape([batch, n, 1, 1]),
            };
        }
        let mut features = x.flatten::<2>(1, 3);
        if let Some((levels, rng)) = pass.noise.as_mut() {
            let sigma = levels.inputs[self.hidden.len()];
            features = features.clone() + gaussian_like(&features, &[sigma], *rng);
        }
        let logits = match quantization {
            Some(q) => {
                let step = q.input_step(self.hidden.len());
                let device = self.output.weight.device();
                let bias = bias_or_zero(&self.output.bias, self.output.weight.dims()[1], &device);
                let (w, b) = fake_quantize_dense(
                    self.output.weight.val(),
                    bias,
                    step,
                    q.weight_max(),
                    false,
                );
                linear(features, w, Some(b))
            }
            None => self.output.forward(features),
        };
        (logits, activations)
    }

    /// A copy that shares nothing with `self`. `clone()` is not enough: burn's `RunningState`
    /// (batch norm's running statistics) is shared between clones, so training a clone would
    /// silently move the original's statistics too. Round-tripping through validation mode
    /// rebuilds every running state and keeps the parameters trainable.
    pub fn independent_copy(&self) -> Self {
        self.valid().train()
    }

    /// The same network with each batch norm folded into the linear layer before it, using
    /// its running statistics: the form that is quantized and exported.
    pub fn fold_batch_norm(mut self) -> Self {
        for block in &mut self.hidden {
            let Some(norm) = block.norm.take() else {
                continue;
            };
            let scale = norm.gamma.val() / (norm.running_var.value_sync() + norm.epsilon).sqrt();
            let shift = norm.beta.val() - norm.running_mean.value_sync() * scale.clone();
            if let Some(conv) = &mut block.conv {
                let [out, ..] = conv.weight.dims();
                let weight = conv.weight.val() * scale.clone().reshape([out, 1, 1, 1]);
                let bias = bias_or_zero(&conv.bias, out, &scale.device());
                conv.weight = Param::from_tensor(weight.detach());
                conv.bias = Some(Param::from_tensor((bias * scale + shift).detach()));
            } else if let Some(dense) = &mut block.dense {
                let [_, out] = dense.weight.dims();
                let weight = dense.weight.val() * scale.clone().reshape([1, out]);
                let bias = bias_or_zero(&dense.bias, out, &scale.device());
                dense.weight = Param::from_tensor(weight.detach());
                dense.bias = Some(Param::from_tensor((bias * scale + shift).detach()));
            }
        }
        self
    }

    /// The same network with every hidden block's linear layers and batch norm frozen (no
    /// gradients, running statistics fixed), so that only the activations and the output layer
    /// learn: the "frozen front" of transfer learning, where a pre-trained network keeps its
    /// features and learns a new head. The freeze survives [`Net::independent_copy`], so a
    /// student started from a frozen teacher keeps the front too.
    pub fn with_frozen_front(mut self) -> Self {
        for block in &mut self.hidden {
            block.front = std::mem::take(&mut block.front)
                .into_iter()
                .map(Module::freeze)
                .collect();
            block.conv = block.conv.take().map(Module::freeze);
            block.dense = block.dense.take().map(Module::freeze);
            block.norm = block.norm.take().map(Module::freeze);
        }
        self
    }

    /// The student's starting point: the teacher's weights, with fresh quadratics of
    /// `granularity` (initialised to the least-squares fit of ReLU).
    pub fn with_quadratics(mut self, granularity: Granularity, device: &Device) -> Self {
        for block in &mut self.hidden {
            block.activation = Quadratic::new(granularity, block.shape, device);
        }
        self
    }

    /// The same network with every activation fixed to x² and no batch norm: the "no training
    /// tricks" baseline of Baruch et al.
    pub fn squared(mut self, device: &Device) -> Self {
        for block in &mut self.hidden {
            block.norm = None;
            block.activation = Quadratic::square(block.shape, device);
        }
        self
    }
}

impl Hidden {
    /// The block's pre-activation before flattening, with weights on the integer grid when
    /// `step` gives the quantization and this block's input step.
    fn pre_activation(
        &self,
        x: Tensor<4>,
        input: Shape,
        step: Option<(&Quantization, f64)>,
    ) -> Tensor<4> {
        let z = match step {
            Some((q, step)) if !self.front.is_empty() => {
                let (weight, bias) = self.composed(input);
                let (w, b) = fake_quantize_dense(weight, bias, step, q.weight_max(), true);
                dense_image(x, w, b)
            }
            Some((q, step)) => match (&self.conv, &self.dense) {
                (Some(conv), _) => {
                    let (w, b) = fake_quantize_conv(conv, step, q.weight_max());
                    pool_sum_average(conv2d(x, w, Some(b), conv_options(conv)), self.pool)
                }
                (None, Some(dense)) => {
                    let bias = bias_or_zero(&dense.bias, dense.weight.dims()[1], &x.device());
                    let (w, b) =
                        fake_quantize_dense(dense.weight.val(), bias, step, q.weight_max(), true);
                    dense_image(x, w, b)
                }
                (None, None) => unreachable!("a hidden block has a linear layer"),
            },
            None => {
                let x = self.front.iter().fold(x, |x, front| {
                    float_linear(&front.conv, &front.dense, front.pool, x)
                });
                float_linear(&self.conv, &self.dense, self.pool, x)
            }
        };
        match &self.norm {
            Some(norm) => norm.forward(z),
            None => z,
        }
    }

    /// The front and this block's linear layer (with its pooling) as one affine map over the
    /// flattened `input`: weights `[inputs, neurons]` and bias `[neurons]`, read off by
    /// passing the zero image and every unit image through the float layers. The map is what
    /// gets quantized and exported, so its norm, not the layers' own, sets the noise.
    pub fn composed(&self, input: Shape) -> (Tensor<2>, Tensor<1>) {
        let device = match (&self.conv, &self.dense) {
            (Some(conv), _) => conv.weight.device(),
            (None, Some(dense)) => dense.weight.device(),
            (None, None) => unreachable!("a hidden block has a linear layer"),
        };
        let n = input.len();
        let [c, h, w] = match input {
            Shape::Image { c, h, w } => [c, h, w],
            Shape::Flat(n) => [n, 1, 1],
        };
        let through = |x: Tensor<4>| {
            let x = self.front.iter().fold(x, |x, front| {
                float_linear(&front.conv, &front.dense, front.pool, x)
            });
            float_linear(&self.conv, &self.dense, self.pool, x).flatten::<2>(1, 3)
        };
        let bias = through(Tensor::zeros([1, c, h, w], &device));
        let weight = through(Tensor::<2>::eye(n, &device).reshape([n, c, h, w])) - bias.clone();
        let neurons = self.shape.len();
        (weight, bias.reshape([neurons]))
    }
}

/// A linear layer in float: the convolution then its average pool, or the dense layer over
/// the flattened input, its output `[batch, n, 1, 1]`.
fn float_linear(
    conv: &Option<Conv2d>,
    dense: &Option<Linear>,
    pool: usize,
    x: Tensor<4>,
) -> Tensor<4> {
    match (conv, dense) {
        (Some(conv), _) => pool_sum_average(conv.forward(x), pool),
        (None, Some(dense)) => dense_image(
            x,
            dense.weight.val(),
            bias_or_zero(&dense.bias, dense.weight.dims()[1], &dense.weight.device()),
        ),
        (None, None) => unreachable!("a linear block has a convolution or a dense layer"),
    }
}

/// A dense layer (`weight` is `[in, out]`) over the flattened `x`, its output shaped
/// `[batch, out, 1, 1]` like a convolution's, so that blocks chain on one tensor rank.
fn dense_image(x: Tensor<4>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<4> {
    let [batch, ..] = x.dims();
    let y = linear(x.flatten::<2>(1, 3), weight, Some(bias));
    let [_, n] = y.dims();
    y.reshape([batch, n, 1, 1])
}

/// A `pool`×`pool` average pool (1: none).
fn pool_sum_average(z: Tensor<4>, pool: usize) -> Tensor<4> {
    match pool {
        1 => z,
        k => avg_pool2d(z, AvgPoolOptions::new([k, k])),
    }
}

/// The convolution's options, for the functional form that takes quantized weights.
pub fn conv_options(conv: &Conv2d) -> ConvOptions<2> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, ..) => top,
        _ => 0,
    };
    ConvOptions::new(conv.stride, [padding; 2], conv.dilation, conv.groups)
}

fn bias_or_zero(bias: &Option<Param<Tensor<1>>>, n: usize, device: &Device) -> Tensor<1> {
    bias.as_ref()
        .map(|b| b.val())
        .unwrap_or_else(|| Tensor::zeros([n], device))
}

/// Per-output-channel weight scales: max |w| / `weight_max`, never zero.
pub fn weight_scales(max_abs: Tensor<1>, weight_max: f64) -> Tensor<1> {
    (max_abs / weight_max).clamp_min(1e-12)
}

/// `x` rounded to multiples of `scale` in the forward pass, passed through unchanged in the
/// backward pass (the straight-through estimator).
fn straight_through<const D: usize>(x: Tensor<D>, scale: Tensor<D>) -> Tensor<D> {
    let rounded = (x.clone() / scale.clone()).round() * scale;
    x.clone() + (rounded - x).detach()
}

/// A convolution's weights and bias on their integer grids: weights per output channel, the
/// bias in units of (weight scale × input step), as the exported accumulator adds it.
fn fake_quantize_conv(conv: &Conv2d, step: f64, weight_max: f64) -> (Tensor<4>, Tensor<1>) {
    let weight = conv.weight.val();
    let [out, ..] = weight.dims();
    let scales = weight_scales(
        weight
            .clone()
            .detach()
            .max_abs_dims(&[1, 2, 3])
            .reshape([out]),
        weight_max,
    );
    let w = straight_through(weight, scales.clone().reshape([out, 1, 1, 1]));
    let bias = bias_or_zero(&conv.bias, out, &w.device());
    (w, straight_through(bias, scales * step))
}

/// A dense layer's weights (`[in, out]`) and bias on their integer grids, per output channel
/// or, for the output layer whose logits share one scale, per tensor.
fn fake_quantize_dense(
    weight: Tensor<2>,
    bias: Tensor<1>,
    step: f64,
    weight_max: f64,
    per_channel: bool,
) -> (Tensor<2>, Tensor<1>) {
    let [_, out] = weight.dims();
    let max_abs = match per_channel {
        true => weight.clone().detach().max_abs_dims(&[0]).reshape([out]),
        false => weight.clone().detach().max_abs().expand([out]),
    };
    let scales = weight_scales(max_abs, weight_max);
    let w = straight_through(weight, scales.clone().reshape([1, out]));
    (w, straight_through(bias, scales * step))
}

/// An activation's output clipped to its table's range and rounded to its grid; gradients pass
/// inside the range and stop outside it, where the clip is flat.
fn fake_quantize_activation(y: Tensor<2>, scale: f64, (min, max): (i64, i64)) -> Tensor<2> {
    let clipped = y.clamp(min as f64 * scale, max as f64 * scale);
    let rounded = (clipped.clone() / scale).round() * scale;
    clipped.clone() + (rounded - clipped).detach()
}

/// Gaussian noise shaped like `x`, drawn from `rng` so that training is reproducible. Element
/// `i` (row-major) has standard deviation `sigma[i % sigma.len()]`: one σ for every element, or
/// one per column of a `[batch, neurons]` tensor.
fn gaussian_like<const D: usize>(x: &Tensor<D>, sigma: &[f32], rng: &mut dyn RngCore) -> Tensor<D> {
    let shape = x.dims();
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| sigma[i % sigma.len()] * rng.sample::<f32, _>(StandardNormal))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &x.device())
}
