//! The HE-friendly activation: a trainable quadratic a·z² + b·z + c.
//!
//! Coefficients are shared per layer or per channel (Baruch et al., "A methodology for training
//! HE-friendly neural networks") or trained per element, one set for every neuron (Zhang et al.,
//! "Batch-oriented element-wise approximate activation"). Under TFHE each neuron's bootstrap applies its own
//! table anyway, so per-element coefficients cost nothing extra at inference.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::relu;
use hexray_model::network::Granularity;
use hexray_model::network::Shape;

/// Least-squares fit of ReLU by c + b·z + a·z² for z ~ N(0, 1): with batch norm in front, the
/// best starting point for replacing a ReLU.
pub const RELU_FIT: [f64; 3] = [0.199_471, 0.5, 0.199_471];

/// A quadratic activation over the neurons of one layer, given flat as `[batch, neurons]`.
#[derive(Module, Debug)]
pub struct Quadratic {
    pub a: Param<Tensor<1>>,
    pub b: Param<Tensor<1>>,
    pub c: Param<Tensor<1>>,
    /// For each neuron, the index of its coefficient set.
    #[module(skip)]
    groups: Vec<i32>,
    /// Which neurons share a coefficient set.
    #[module(skip)]
    pub granularity: Granularity,
    /// False for the fixed x² baseline, whose coefficients never move.
    #[module(skip)]
    trainable: bool,
}

impl Quadratic {
    /// One coefficient set per group of `granularity` over a layer of `shape`, each starting at
    /// [`RELU_FIT`].
    pub fn new(granularity: Granularity, shape: Shape, device: &Device) -> Self {
        Self::with_coefficients(granularity, shape, RELU_FIT, true, device)
    }

    /// The fixed activation x², shared by the whole layer.
    pub fn square(shape: Shape, device: &Device) -> Self {
        Self::with_coefficients(Granularity::Layer, shape, [0.0, 0.0, 1.0], false, device)
    }

    fn with_coefficients(
        granularity: Granularity,
        shape: Shape,
        [c, b, a]: [f64; 3],
        trainable: bool,
        device: &Device,
    ) -> Self {
        let sets = granularity.count(shape);
        let init = |v: f64| Param::from_tensor(Tensor::<1>::full([sets], v, device));
        Quadratic {
            c: init(c),
            b: init(b),
            a: init(a),
            groups: (0..shape.len())
                .map(|i| granularity.index(shape, i) as i32)
                .collect(),
            granularity,
            trainable,
        }
    }

    /// a·z² + b·z + c, each neuron with its own group's coefficients.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let per_neuron = |p: &Param<Tensor<1>>| {
            let value = match self.trainable {
                true => p.val(),
                false => p.val().detach(),
            };
            let index = Tensor::<1, Int>::from_ints(self.groups.as_slice(), &value.device());
            value.select(0, index).unsqueeze_dim::<2>(0)
        };
        z.clone() * z.clone() * per_neuron(&self.a) + z * per_neuron(&self.b) + per_neuron(&self.c)
    }

    /// The gradual replacement schedule: (1 − λ)·ReLU(z) + λ·quadratic(z).
    pub fn blend(&self, z: Tensor<2>, lambda: f64) -> Tensor<2> {
        relu(z.clone()) * (1.0 - lambda) + self.forward(z) * lambda
    }

    /// The trained coefficients per set, as the model file stores them: `[c, b, a]`.
    pub fn coefficients(&self) -> Vec<[f64; 3]> {
        let values = |p: &Param<Tensor<1>>| {
            p.val()
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 coefficients")
        };
        let (a, b, c) = (values(&self.a), values(&self.b), values(&self.c));
        (0..a.len())
            .map(|k| [c[k] as f64, b[k] as f64, a[k] as f64])
            .collect()
    }
}
