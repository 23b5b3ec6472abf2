//! From a quantization-aware float network to the integer network the server evaluates.
//!
//! [`IntegerNet`] holds exactly the integers and scales the model file will carry. It has two
//! uses, which must agree bit for bit:
//! - [`IntegerNet::network`] writes it as a [`Network`] for the model file;
//! - [`IntegerNet::forward`] is the trainer's own integer forward pass: burn's convolutions,
//!   pooling and matrix products on integer tensors, then each activation applied where its
//!   bootstrap reads it. The tests compare it with the circuit simulator on the test set, which
//!   checks batch-norm folding, weight layouts, flatten order, pooling scales and requantization.

use burn::prelude::*;
use burn::tensor::module::{avg_pool2d, conv2d, linear};
use burn::tensor::ops::AvgPoolOptions;
use hexray_model::network::{Conv2d, Dense, Function, Granularity, Quantizer};
use hexray_model::network::{InputSpec, Layer, Network, OutputSpec, Shape};
use hexray_model::Circuit;

use crate::net::{conv_options, weight_scales, Net, Quantization};

/// A hidden block on integers.
#[derive(Clone, Debug)]
pub struct IntegerBlock {
    /// The linear layer, with integer weights (in the model file's layout) and bias.
    pub layer: Layer,
    /// Window of the sum pooling after the convolution (1: none).
    pub pool: usize,
    pub shape: Shape,
    /// The activation exactly as the model file stores it.
    pub activation: hexray_model::network::Activation,
}

/// The whole network on integers.
#[derive(Clone, Debug)]
pub struct IntegerNet {
    pub input: InputSpec,
    pub blocks: Vec<IntegerBlock>,
    /// The output dense layer.
    pub output: Layer,
    pub classes: Vec<String>,
    pub logit_scale: f64,
}

/// A layer's weights on the integer grid: integers, bias integers and the real value of one
/// accumulator unit per output channel.
struct Grid {
    weights: Vec<i32>,
    bias: Vec<i64>,
    unit: Vec<f64>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float tensor")
}

/// Rounds `weight` (output channels first) and `bias` to the grids the fake quantizer trains on.
fn grid(
    weight_by_output: Tensor<2>,
    bias: Tensor<1>,
    step: f64,
    weight_max: f64,
    per_channel: bool,
) -> Grid {
    let [out, _] = weight_by_output.dims();
    let max_abs = match per_channel {
        true => weight_by_output.clone().max_abs_dims(&[1]).reshape([out]),
        false => weight_by_output.clone().max_abs().expand([out]),
    };
    let scales = weight_scales(max_abs, weight_max);
    let weights = values((weight_by_output / scales.clone().reshape([out, 1])).round());
    let bias = values((bias / (scales.clone() * step)).round());
    Grid {
        weights: weights.iter().map(|&w| w as i32).collect(),
        bias: bias.iter().map(|&b| b as i64).collect(),
        unit: values(scales).iter().map(|&s| s as f64 * step).collect(),
    }
}

impl IntegerNet {
    /// The integer form of `net`, whose batch norms are folded, for the grids of `q`.
    pub fn new(net: &Net, q: &Quantization, input: InputSpec, classes: Vec<String>) -> Self {
        let device = net.output.weight.device();
        let zeros = |n| Tensor::<1>::zeros([n], &device);
        let blocks = net
            .hidden
            .iter()
            .enumerate()
            .map(|(l, block)| {
                assert!(block.norm.is_none(), "batch norm is folded before export");
                let step = q.input_step(l);
                let (layer, out) = match (&block.conv, &block.dense) {
                    // A front exports as its composition with the block's dense layer.
                    _ if !block.front.is_empty() => {
                        let (weight, bias) = block.composed(net.block_input(l));
                        let [inputs, outputs] = weight.dims();
                        let g = grid(weight.transpose(), bias, step, q.weight_max(), true);
                        let layer = Layer::Dense(Dense {
                            inputs: inputs as u32,
                            outputs: outputs as u32,
                            weights: g.weights,
                            bias: g.bias,
                        });
                        (layer, g.unit)
                    }
                    (Some(conv), _) => {
                        let [out, cin, k, _] = conv.weight.dims();
                        let bias = conv.bias.as_ref().map_or(zeros(out), |b| b.val());
                        let g = grid(
                            conv.weight.val().reshape([out, cin * k * k]),
                            bias,
                            step,
                            q.weight_max(),
                            true,
                        );
                        let options = conv_options(conv);
                        let layer = Layer::Conv2d(Conv2d {
                            in_channels: cin as u32,
                            out_channels: out as u32,
                            kernel: k as u32,
                            stride: options.stride[0] as u32,
                            padding: options.padding[0].0 as u32,
                            weights: g.weights,
                            bias: g.bias,
                        });
                        (layer, g.unit)
                    }
                    (None, Some(dense)) => {
                        let [inputs, out] = dense.weight.dims();
                        let bias = dense.bias.as_ref().map_or(zeros(out), |b| b.val());
                        let g = grid(
                            dense.weight.val().transpose(),
                            bias,
                            step,
                            q.weight_max(),
                            true,
                        );
                        let layer = Layer::Dense(Dense {
                            inputs: inputs as u32,
                            outputs: out as u32,
                            weights: g.weights,
                            bias: g.bias,
                        });
                        (layer, g.unit)
                    }
                    (None, None) => unreachable!("a hidden block has a linear layer"),
                };
                // Pooling sums its window; the 1/size² it leaves out joins the input scale.
                let pooled: Vec<f64> = out
                    .iter()
                    .map(|u| u / (block.pool * block.pool) as f64)
                    .collect();
                let activation = export_activation(block, l, &pooled, q);
                IntegerBlock {
                    layer,
                    pool: block.pool,
                    shape: block.shape,
                    activation,
                }
            })
            .collect();
        let [inputs, outputs] = net.output.weight.dims();
        let bias = net.output.bias.as_ref().map_or(zeros(outputs), |b| b.val());
        let step = q.input_step(net.hidden.len());
        let g = grid(
            net.output.weight.val().transpose(),
            bias,
            step,
            q.weight_max(),
            false,
        );
        IntegerNet {
            input,
            blocks,
            output: Layer::Dense(Dense {
                inputs: inputs as u32,
                outputs: outputs as u32,
                weights: g.weights,
                bias: g.bias,
            }),
            classes,
            logit_scale: g.unit[0],
        }
    }

    /// The network as the model file stores it.
    pub fn network(&self) -> Network {
        let mut layers = Vec::new();
        let mut flat = false;
        for block in &self.blocks {
            if matches!(block.layer, Layer::Dense(_)) && !flat {
                layers.push(Layer::Flatten);
            }
            flat = matches!(block.shape, Shape::Flat(_));
            layers.push(block.layer.clone());
            if block.pool > 1 {
                layers.push(Layer::AvgPool {
                    size: block.pool as u32,
                    stride: block.pool as u32,
                });
            }
            layers.push(Layer::Activation(block.activation.clone()));
        }
        if !flat {
            layers.push(Layer::Flatten);
        }
        layers.push(self.output.clone());
        Network {
            input: self.input.clone(),
            layers,
            output: OutputSpec {
                classes: self.classes.clone(),
                logit_scale: self.logit_scale,
                // Exporters then declare the smallest bound that fits: `fit_logit_bound`.
                logit_bound_log2: hexray_model::network::DEFAULT_LOGIT_BOUND_LOG2,
            },
        }
    }

    /// The trainer's integer forward pass: output accumulators for `[batch, c, h, w]` input
    /// integers, each activation read where `circuit`'s bootstrap reads it.
    pub fn forward(&self, inputs: Tensor<4>, circuit: &Circuit) -> Vec<Vec<i64>> {
        let device = inputs.device();
        let batch = inputs.dims()[0];
        let shift = circuit.position_shift();
        let mut x = inputs;
        for (block, stage) in self.blocks.iter().zip(&circuit.stages) {
            let acc = match &block.layer {
                Layer::Conv2d(conv) => {
                    let w = int_tensor(
                        conv.weights.iter().map(|&w| w as f32),
                        conv.weight_shape(),
                        &device,
                    );
                    let b = int_tensor(
                        conv.bias.iter().map(|&b| b as f32),
                        [conv.bias.len()],
                        &device,
                    );
                    let options = burn::tensor::ops::ConvOptions::new(
                        [conv.stride as usize; 2],
                        [conv.padding as usize; 2],
                        [1, 1],
                        1,
                    );
                    let z = conv2d(x, w, Some(b), options);
                    match block.pool {
                        1 => z,
                        // Average times window size, rounded: the exact integer window sum.
                        k => (avg_pool2d(z, AvgPoolOptions::new([k, k])) * (k * k) as f64).round(),
                    }
                }
                Layer::Dense(layer) => dense(x, layer).reshape([batch, layer.bias.len(), 1, 1]),
                _ => unreachable!("hidden blocks are convolutions or dense layers"),
            };
            let n = block.shape.len();
            let act = &block.activation;
            let next: Vec<f32> = values(acc.reshape([batch, n]))
                .chunks(n)
                .flat_map(|neurons| {
                    neurons
                        .iter()
                        .enumerate()
                        .map(|(j, &a)| {
                            let read = stage.read_accumulator(j, a as i64, shift);
                            let k = act.granularity.index(block.shape, j);
                            act.output
                                .quantize(act.functions[k].eval(read as f64 * act.input_scales[k]))
                                as f32
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            x = match block.shape {
                Shape::Image { c, h, w } => int_tensor(next, [batch, c, h, w], &device),
                Shape::Flat(n) => int_tensor(next, [batch, n, 1, 1], &device),
            };
        }
        let Layer::Dense(output) = &self.output else {
            unreachable!("the output layer is dense")
        };
        values(dense(x, output))
            .chunks(output.bias.len())
            .map(|c| c.iter().map(|&v| v as i64).collect())
            .collect()
    }
}

fn int_tensor<const D: usize>(
    values: impl IntoIterator<Item = f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values.into_iter().collect::<Vec<_>>(), shape),
        device,
    )
}

/// An integer dense layer over the flattened `x`, weights in the file's `[out][in]` layout.
fn dense(x: Tensor<4>, layer: &Dense) -> Tensor<2> {
    let device = x.device();
    let (inputs, outputs) = (layer.inputs as usize, layer.outputs as usize);
    let w = int_tensor(
        layer.weights.iter().map(|&w| w as f32),
        [outputs, inputs],
        &device,
    )
    .transpose();
    let b = int_tensor(layer.bias.iter().map(|&b| b as f32), [outputs], &device);
    linear(x.flatten::<2>(1, 3), w, Some(b))
}

/// The model file's activation for a trained block: its coefficients at a granularity at least
/// as fine as the per-channel input scales need.
fn export_activation(
    block: &crate::net::Hidden,
    layer: usize,
    channel_scales: &[f64],
    q: &Quantization,
) -> hexray_model::network::Activation {
    let shape = block.shape;
    let coefficients = block.activation.coefficients();
    let granularity = match block.activation.granularity {
        Granularity::Layer | Granularity::Channel => Granularity::Channel,
        Granularity::Element => Granularity::Element,
    };
    let sets = granularity.count(shape);
    // The first neuron of each set tells which trained coefficients and channel it has.
    let first: Vec<usize> = (0..sets)
        .map(|k| {
            (0..shape.len())
                .find(|&j| granularity.index(shape, j) == k)
                .expect("every set has a neuron")
        })
        .collect();
    hexray_model::network::Activation {
        granularity,
        functions: first
            .iter()
            .map(|&j| Function::Polynomial {
                coefficients: coefficients[block.activation.granularity.index(shape, j)].to_vec(),
            })
            .collect(),
        input_scales: first
            .iter()
            .map(|&j| channel_scales[shape.channel_of(j)])
            .collect(),
        output: Quantizer {
            bits: q.activation_bits,
            signed: true,
            scale: q.activation_scales[layer],
        },
    }
}
