//! Linear layers composed into one affine form per neuron.
//!
//! Between two activations every layer (convolution, pooling, flatten, dense) is linear with
//! clear integer weights, so the server can fold a whole run of them into a single dot product
//! per neuron over the stage's input ciphertexts. Composing them here gives the engine, the
//! simulator and the range analysis one representation to agree on.

use crate::error::CompileError;
use crate::network::{Layer, Shape};

/// `bias + Σ weight·input[index]` over the inputs of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affine {
    /// `(input index, weight)` pairs with nonzero weights, by increasing index.
    pub terms: Vec<(u32, i64)>,
    /// The constant, in accumulator units.
    pub bias: i64,
}

impl Affine {
    /// The forms of a stage's own inputs: input i is `1·input[i]`.
    pub fn identity(n: usize) -> Vec<Affine> {
        (0..n)
            .map(|i| Affine {
                terms: vec![(i as u32, 1)],
                bias: 0,
            })
            .collect()
    }

    /// Σ w² over the terms, which scales the noise of the inputs.
    pub fn squared_norm(&self) -> f64 {
        self.terms
            .iter()
            .map(|&(_, w)| (w as f64) * (w as f64))
            .sum()
    }
}

/// Dense scratch space to merge sparse affine forms without hashing.
struct Merger {
    dense: Vec<i64>,
    touched: Vec<u32>,
    layer: usize,
}

impl Merger {
    fn new(stage_inputs: usize, layer: usize) -> Self {
        Merger {
            dense: vec![0; stage_inputs],
            touched: Vec::new(),
            layer,
        }
    }

    fn overflow(&self, what: &str) -> CompileError {
        CompileError::Overflow {
            layer: self.layer,
            what: what.to_owned(),
        }
    }

    /// `bias + Σ weight·form` as one affine form.
    fn combine(
        &mut self,
        bias: i64,
        parts: impl Iterator<Item = (i64, usize)>,
        forms: &[Affine],
    ) -> Result<Affine, CompileError> {
        let mut out_bias = bias;
        for (weight, index) in parts {
            if weight == 0 {
                continue;
            }
            let form = &forms[index];
            let scaled = weight
                .checked_mul(form.bias)
                .ok_or_else(|| self.overflow("bias"))?;
            out_bias = out_bias
                .checked_add(scaled)
                .ok_or_else(|| self.overflow("bias"))?;
            for &(i, w) in &form.terms {
                let sum = weight
                    .checked_mul(w)
                    .and_then(|add| self.dense[i as usize].checked_add(add))
                    .ok_or_else(|| self.overflow("weight"))?;
                if self.dense[i as usize] == 0 {
                    self.touched.push(i);
                }
                self.dense[i as usize] = sum;
            }
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        let terms = self
            .touched
            .drain(..)
            .filter_map(|i| {
                let w = std::mem::take(&mut self.dense[i as usize]);
                (w != 0).then_some((i, w))
            })
            .collect();
        Ok(Affine {
            terms,
            bias: out_bias,
        })
    }
}

/// Applies linear `layer` (index `layer_index`) to the current forms, one per element of its
/// `input` shape, giving one per element of its `output` shape ([`Layer::output_shape`]).
///
/// Panics if `layer` is an activation: stages are split at activations before this is called.
pub fn apply(
    layer_index: usize,
    layer: &Layer,
    (input, output): (Shape, Shape),
    forms: &[Affine],
    stage_inputs: usize,
) -> Result<Vec<Affine>, CompileError> {
    let mut merger = Merger::new(stage_inputs, layer_index);
    match (layer, input, output) {
        (Layer::Conv2d(conv), Shape::Image { c, h, w }, Shape::Image { h: oh, w: ow, .. }) => {
            let [_, _, k, _] = conv.weight_shape();
            let (s, p) = (conv.stride as usize, conv.padding as usize);
            let mut out = Vec::with_capacity(conv.bias.len() * oh * ow);
            for (o, &b) in conv.bias.iter().enumerate() {
                for y in 0..oh {
                    for x in 0..ow {
                        let taps = (0..c).flat_map(|i| {
                            (0..k).flat_map(move |ky| (0..k).map(move |kx| (i, ky, kx)))
                        });
                        let parts = taps.filter_map(|(i, ky, kx)| {
                            let (iy, ix) =
                                ((y * s + ky).checked_sub(p)?, (x * s + kx).checked_sub(p)?);
                            (iy < h && ix < w).then(|| {
                                let wi = ((o * c + i) * k + ky) * k + kx;
                                (conv.weights[wi] as i64, (i * h + iy) * w + ix)
                            })
                        });
                        out.push(merger.combine(b, parts, forms)?);
                    }
                }
            }
            Ok(out)
        }
        (
            Layer::AvgPool { size, stride },
            Shape::Image { c, h, w },
            Shape::Image { h: oh, w: ow, .. },
        ) => {
            let (k, s) = (*size as usize, *stride as usize);
            let mut out = Vec::with_capacity(c * oh * ow);
            for ch in 0..c {
                for y in 0..oh {
                    for x in 0..ow {
                        let parts = (0..k).flat_map(|ky| {
                            (0..k).map(move |kx| (1, (ch * h + y * s + ky) * w + x * s + kx))
                        });
                        out.push(merger.combine(0, parts, forms)?);
                    }
                }
            }
            Ok(out)
        }
        (Layer::Flatten, _, _) => Ok(forms.to_vec()),
        (Layer::Dense(dense), _, _) => {
            let n = dense.inputs as usize;
            let rows = dense.weights.chunks(n).zip(&dense.bias);
            rows.map(|(row, &b)| merger.combine(b, row.iter().map(|&w| w as i64).zip(0..n), forms))
                .collect()
        }
        (layer, input, _) => {
            unreachable!("validated network cannot apply {layer:?} to {input:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Conv2d, Dense};

    /// `layer`'s input and output shapes, by the contract's one shape rule.
    fn shapes(layer: &Layer, input: Shape) -> (Shape, Shape) {
        (input, layer.output_shape(input).unwrap())
    }

    #[test]
    fn dense_after_pool_composes_weights() {
        // 1×2×2 image, pool 2×2 → one value = sum of the four; then dense ×3 + 1.
        let forms = Affine::identity(4);
        let pool = Layer::AvgPool { size: 2, stride: 2 };
        let image = Shape::Image { c: 1, h: 2, w: 2 };
        let pooled = apply(0, &pool, shapes(&pool, image), &forms, 4).unwrap();
        let dense = Layer::Dense(Dense {
            inputs: 1,
            outputs: 1,
            weights: vec![3],
            bias: vec![1],
        });
        let out = apply(1, &dense, shapes(&dense, Shape::Flat(1)), &pooled, 4).unwrap();
        assert_eq!(
            out,
            vec![Affine {
                terms: vec![(0, 3), (1, 3), (2, 3), (3, 3)],
                bias: 1
            }]
        );
    }

    #[test]
    fn conv_padding_skips_outside_taps() {
        let conv = Layer::Conv2d(Conv2d {
            in_channels: 1,
            out_channels: 1,
            kernel: 3,
            stride: 1,
            padding: 1,
            weights: (1..=9).collect(),
            bias: vec![5],
        });
        let image = Shape::Image { c: 1, h: 2, w: 2 };
        let out = apply(0, &conv, shapes(&conv, image), &Affine::identity(4), 4).unwrap();
        // Top-left output sees kernel taps (1,1),(1,2),(2,1),(2,2) = weights 5,6,8,9.
        assert_eq!(
            out[0],
            Affine {
                terms: vec![(0, 5), (1, 6), (2, 8), (3, 9)],
                bias: 5
            }
        );
    }

    #[test]
    fn overflow_is_an_error() {
        let dense = Layer::Dense(Dense {
            inputs: 1,
            outputs: 1,
            weights: vec![i32::MAX],
            bias: vec![0],
        });
        let big = vec![Affine {
            terms: vec![(0, i64::MAX / 2)],
            bias: 0,
        }];
        let err = apply(7, &dense, shapes(&dense, Shape::Flat(1)), &big, 1).unwrap_err();
        assert!(matches!(err, CompileError::Overflow { layer: 7, .. }));
    }
}
