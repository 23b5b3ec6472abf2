//! Fits the reference models that the engine is tested and benchmarked with until the trainer
//! exists. Deliberately tiny: no gradient descent.
//!
//! - Hidden linear layers get deterministic random integer weights in [-3, 3] (seeded ChaCha).
//! - Each hidden neuron is standardised on the training set: its bias removes the mean, its
//!   input scale divides by the standard deviation.
//! - Each neuron's activation is its own quadratic a·z²+b·z+c, fitted by least squares to ReLU
//!   over the neuron's observed pre-activations (per-element coefficients, as in Zhang et al.),
//!   requantized to 4 unsigned bits, clipped at the 99.5th percentile.
//! - The output layer is a ridge regression of the label on the last hidden integers.
//!
//! Usage: `cargo run --release -p hexray-trainer --example reference_model -- \
//!         a|b ../shared/data/pneumoniamnist.npz models/reference-a.hexray`

use std::path::Path;

use anyhow::{bail, Context, Result};
use hexray_crypto::params::DEFAULT_PARAMETER_SET;
use hexray_model::circuit::linear::{self, Affine};
use hexray_model::network::{
    Activation, Conv2d, Dense, InputSpec, Intensity, Layer, OutputSpec, Shape,
};
use hexray_model::network::{Function, Granularity, Quantizer};
use hexray_model::{borderline, simulate};
use hexray_model::{CompiledModel, Network};
use hexray_trainer::data::{load_npz, Dataset};
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ACT_BITS: u8 = 4;
/// Integer weights stay small: a bootstrap's output noise is fixed on the torus, so each unit
/// of integer weight magnifies it relative to the accumulator's range.
const HIDDEN_WEIGHT_MAX: i32 = 3;
const OUTPUT_WEIGHT_MAX: f64 = 7.0;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [topology, data, out] = args.as_slice() else {
        bail!("usage: reference_model a|b DATASET.npz OUT.hexray");
    };
    let input = InputSpec::square_8bit(28, Intensity::AsIs);
    let train = load_npz(Path::new(data), "train", &input)?;
    let test = load_npz(Path::new(data), "test", &input)?;
    let mut rng = ChaCha8Rng::seed_from_u64(2024);

    // Hidden linear layers, each followed by an activation; the output layer is fitted last.
    let hidden: Vec<Vec<Layer>> = match topology.as_str() {
        "a" => vec![
            vec![conv(&mut rng, 1, 4, 7, 3, 0)],
            vec![Layer::Flatten, dense(&mut rng, 256, 64)],
        ],
        "b" => vec![
            vec![conv(&mut rng, 1, 8, 3, 2, 1)],
            vec![conv(&mut rng, 8, 16, 3, 2, 1)],
            vec![Layer::Flatten, dense(&mut rng, 784, 32)],
        ],
        other => bail!("unknown topology {other}: expected a or b"),
    };

    let mut layers = Vec::new();
    let mut shape = Shape::Image { c: 1, h: 28, w: 28 };
    let mut x_train = flatten(&train);
    for stage in hidden {
        let mut forms = Affine::identity(shape.len());
        let mut stage_layers = Vec::new();
        for mut layer in stage {
            let next = layer.output_shape(shape)?;
            forms = linear::apply(
                layers.len() + stage_layers.len(),
                &layer,
                (shape, next),
                &forms,
                x_train.ncols(),
            )?;
            shape = next;
            if let Layer::Conv2d(Conv2d { bias, .. }) | Layer::Dense(Dense { bias, .. }) =
                &mut layer
            {
                bias.iter_mut().for_each(|b| *b = 0);
            }
            stage_layers.push(layer);
        }
        let acc = accumulate(&forms, &x_train);
        let (activation, centring) = fit_activation(&acc, shape);
        // The centring constants become the stage's last layer's bias (one per channel).
        if let Some(Layer::Conv2d(Conv2d { bias, .. }) | Layer::Dense(Dense { bias, .. })) =
            stage_layers.last_mut()
        {
            bias.copy_from_slice(&centring);
        }
        layers.extend(stage_layers);
        let acc = accumulate_with(&forms, &x_train, &layers);
        x_train = apply_activation(&activation, &acc);
        layers.push(Layer::Activation(activation));
    }
    let (weights, bias, logit_scale) = fit_output(&x_train, &train.labels);
    layers.push(Layer::Dense(Dense {
        inputs: x_train.ncols() as u32,
        outputs: 2,
        weights,
        bias,
    }));

    let network = Network {
        input,
        layers,
        output: OutputSpec {
            classes: vec!["normal".into(), "pneumonia".into()],
            logit_scale,
            logit_bound_log2: hexray_model::network::DEFAULT_LOGIT_BOUND_LOG2,
        },
    };
    let circuit = hexray_model::compile(&network, &DEFAULT_PARAMETER_SET.fhe_parameters())?;
    let val = load_npz(Path::new(data), "val", &network.input)?;
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let margin = borderline::measure(&circuit, &val.images, &mut rng)?;
    let model = CompiledModel::build(
        &format!("reference-{topology}"),
        "1",
        &format!(
            "Reference topology ({topology}) for engine tests: random integer features, per-element \
             quadratic activations fitted to ReLU, ridge-regression output. Fitted on PneumoniaMNIST \
             (CC BY 4.0) by trainer/examples/reference_model.rs."
        ),
        network,
        DEFAULT_PARAMETER_SET.fhe_parameters(),
        margin,
    )?;
    let (_, circuit) = CompiledModel::from_bytes(&model.to_bytes())?;
    let mut noise = ChaCha8Rng::seed_from_u64(7);
    let (mut exact, mut noisy) = (0, 0);
    for (img, &y) in test.images.iter().zip(&test.labels) {
        exact += usize::from(simulate::exact(&circuit, img.view())?.class() == y);
        noisy += usize::from(simulate::noisy(&circuit, img.view(), &mut noise)?.class() == y);
    }
    let n = test.len() as f64;
    println!(
        "reference-{topology}: {} bootstraps, test accuracy {:.3} exact, {:.3} noisy simulation",
        circuit.bootstrap_count(),
        exact as f64 / n,
        noisy as f64 / n,
    );
    std::fs::write(out, model.to_bytes()).with_context(|| format!("writing {out}"))?;
    Ok(())
}

/// The images of `data` as one row of input integers each.
fn flatten(data: &Dataset) -> Array2<i64> {
    let width = data.images.first().map_or(0, |image| image.len());
    Array2::from_shape_fn((data.len(), width), |(i, k)| {
        data.images[i].as_slice().expect("standard layout")[k]
    })
}

fn random_weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<i32> {
    (0..n)
        .map(|_| rng.gen_range(-HIDDEN_WEIGHT_MAX..=HIDDEN_WEIGHT_MAX))
        .collect()
}

fn conv(rng: &mut ChaCha8Rng, cin: u32, cout: u32, k: u32, stride: u32, padding: u32) -> Layer {
    Layer::Conv2d(Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride,
        padding,
        weights: random_weights(rng, (cin * cout * k * k) as usize),
        bias: vec![0; cout as usize],
    })
}

fn dense(rng: &mut ChaCha8Rng, inputs: u32, outputs: u32) -> Layer {
    Layer::Dense(Dense {
        inputs,
        outputs,
        weights: random_weights(rng, (inputs * outputs) as usize),
        bias: vec![0; outputs as usize],
    })
}

/// Accumulators `[image][neuron]` of the composed forms (biases excluded).
fn accumulate(forms: &[Affine], x: &Array2<i64>) -> Array2<f64> {
    Array2::from_shape_fn((x.nrows(), forms.len()), |(i, j)| {
        forms[j]
            .terms
            .iter()
            .map(|&(k, w)| (w * x[[i, k as usize]]) as f64)
            .sum()
    })
}

/// Accumulators including the biases now set on the stage's last layer.
fn accumulate_with(forms: &[Affine], x: &Array2<i64>, layers: &[Layer]) -> Array2<f64> {
    let bias = match layers.last() {
        Some(Layer::Conv2d(Conv2d { bias, .. })) => {
            let per = forms.len() / bias.len();
            (0..forms.len())
                .map(|j| bias[j / per] as f64)
                .collect::<Vec<_>>()
        }
        Some(Layer::Dense(Dense { bias, .. })) => bias.iter().map(|&b| b as f64).collect(),
        _ => vec![0.0; forms.len()],
    };
    let mut acc = accumulate(forms, x);
    for (mut col, b) in acc.axis_iter_mut(Axis(1)).zip(bias) {
        col += b;
    }
    acc
}

/// Per-neuron standardisation and quadratic fit; returns the activation and each neuron's
/// centring bias (per channel for convolutions: the channel mean).
fn fit_activation(acc: &Array2<f64>, shape: Shape) -> (Activation, Vec<i64>) {
    let channels = shape.channels();
    let per = acc.ncols() / channels;
    let mut centring = Vec::with_capacity(channels);
    let mut scales = Vec::with_capacity(acc.ncols());
    let mut functions = Vec::with_capacity(acc.ncols());
    for c in 0..channels {
        let cols = acc.slice(ndarray::s![.., c * per..(c + 1) * per]);
        let mean = cols.mean().unwrap();
        centring.push(-mean.round() as i64);
        for j in 0..per {
            let z: Vec<f64> = cols.column(j).iter().map(|a| a - mean.round()).collect();
            let std = (z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64)
                .sqrt()
                .max(1.0);
            scales.push(1.0 / std);
            functions.push(Function::Polynomial {
                coefficients: fit_relu_quadratic(z.iter().map(|v| v / std)),
            });
        }
    }
    let activation = Activation {
        granularity: Granularity::Element,
        functions,
        input_scales: scales,
        output: Quantizer {
            bits: ACT_BITS,
            signed: false,
            scale: 1.0,
        },
    };
    // Clip at the 99.5th percentile of the activations' outputs.
    let outputs: Vec<f64> = (0..acc.nrows())
        .flat_map(|i| (0..acc.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| {
            let (f, s) = (&activation.functions[j], activation.input_scales[j]);
            f.eval((acc[[i, j]] + centring[j / per] as f64) * s)
        })
        .collect();
    let top = percentile(outputs, 0.995).max(1e-3);
    let scale = top / ((1 << ACT_BITS) - 1) as f64;
    (
        Activation {
            output: Quantizer {
                scale,
                ..activation.output
            },
            ..activation
        },
        centring,
    )
}

fn apply_activation(act: &Activation, acc: &Array2<f64>) -> Array2<i64> {
    Array2::from_shape_fn(acc.dim(), |(i, j)| {
        act.output
            .quantize(act.functions[j].eval(acc[[i, j]] * act.input_scales[j]))
    })
}

/// Least-squares fit of ReLU by c + b·z + a·z² over samples z: coefficients [c, b, a].
fn fit_relu_quadratic(z: impl Iterator<Item = f64>) -> Vec<f64> {
    let (mut ata, mut aty) = ([[0.0; 3]; 3], [0.0; 3]);
    for v in z {
        let row = [1.0, v, v * v];
        for r in 0..3 {
            for c in 0..3 {
                ata[r][c] += row[r] * row[c];
            }
            aty[r] += row[r] * v.max(0.0);
        }
    }
    solve(ata.iter().map(|r| r.to_vec()).collect(), aty.to_vec(), 1e-6)
}

/// Ridge regression of y ∈ {−1, +1} on the integer features, quantized to an output layer.
fn fit_output(x: &Array2<i64>, y: &[usize]) -> (Vec<i32>, Vec<i64>, f64) {
    let d = x.ncols() + 1;
    let mut ata = vec![vec![0.0; d]; d];
    let mut aty = vec![0.0; d];
    for (row, &label) in x.axis_iter(Axis(0)).zip(y) {
        let feats: Vec<f64> = row.iter().map(|&v| v as f64).chain([1.0]).collect();
        let target = if label == 1 { 1.0 } else { -1.0 };
        for r in 0..d {
            for c in 0..d {
                ata[r][c] += feats[r] * feats[c];
            }
            aty[r] += feats[r] * target;
        }
    }
    let w = solve(ata, aty, 1.0);
    let max = w[..d - 1].iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = OUTPUT_WEIGHT_MAX / max;
    let q: Vec<i32> = w[..d - 1]
        .iter()
        .map(|v| (v * scale).round() as i32)
        .collect();
    let b = (w[d - 1] * scale).round() as i64;
    // Class 1 scores +f, class 0 scores −f; logits ±2f make the ±1 targets confident.
    let weights = q.iter().map(|v| -v).chain(q.iter().copied()).collect();
    (weights, vec![-b, b], 2.0 / scale)
}

/// Solves (A + λI)x = b by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>, ridge: f64) -> Vec<f64> {
    let n = b.len();
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += ridge;
    }
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, bottom) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (offset, row) in bottom.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + offset] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        x[r] = (b[r] - (r + 1..n).map(|c| a[r][c] * x[c]).sum::<f64>()) / a[r][r];
    }
    x
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}
