//! Univariate activations and the quantizer that turns their real output into the next layer's
//! integers. A bootstrap can apply any univariate function, so the trained polynomial, its
//! requantization and its clipping all fold into one table (see [`crate::circuit`]).

use serde::{Deserialize, Serialize};

use super::shape::Shape;

/// Which neurons share one set of activation parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One set for the whole layer.
    Layer,
    /// One set per channel (per output neuron of a dense layer).
    Channel,
    /// One set per element: every neuron has its own (Zhang et al.).
    Element,
}

impl Granularity {
    /// How many coefficient sets an activation over `shape` carries.
    pub fn count(self, shape: Shape) -> usize {
        match self {
            Granularity::Layer => 1,
            Granularity::Channel => shape.channels(),
            Granularity::Element => shape.len(),
        }
    }

    /// Which coefficient set neuron `index` of `shape` uses.
    pub fn index(self, shape: Shape, index: usize) -> usize {
        match self {
            Granularity::Layer => 0,
            Granularity::Channel => shape.channel_of(index),
            Granularity::Element => index,
        }
    }
}

/// A trained univariate activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Function {
    /// `c[0] + c[1]·z + c[2]·z² + …`; the HE-friendly quadratic a·z²+b·z+c is `[c, b, a]`.
    Polynomial {
        /// Coefficients from degree 0 up; 1 to [`MAX_DEGREE`] + 1 finite numbers.
        coefficients: Vec<f64>,
    },
    /// `max(z, 0)`, for teachers and baselines: under TFHE it costs the same as a polynomial.
    Relu,
}

/// Highest polynomial degree accepted; a table can hold any function, but a file with a
/// thousand coefficients is more likely corrupt than trained.
pub const MAX_DEGREE: usize = 16;

impl Function {
    /// The function's value at the real pre-activation `z` (Horner's rule for a polynomial).
    pub fn eval(&self, z: f64) -> f64 {
        match self {
            Function::Polynomial { coefficients } => {
                coefficients.iter().rev().fold(0.0, |acc, c| acc * z + c)
            }
            Function::Relu => z.max(0.0),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Function::Polynomial { coefficients } => {
                if coefficients.is_empty() || coefficients.len() > MAX_DEGREE + 1 {
                    return Err(format!("needs 1 to {} coefficients", MAX_DEGREE + 1));
                }
                match coefficients.iter().position(|c| !c.is_finite()) {
                    Some(k) => Err(format!("coefficient {k} is not a finite number")),
                    None => Ok(()),
                }
            }
            Function::Relu => Ok(()),
        }
    }
}

/// Uniform quantizer with clipping: q = clamp(round(y / scale), min, max).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantizer {
    /// Output bits, 1..=24.
    pub bits: u8,
    /// Two's-complement range when true, [0, 2^bits − 1] otherwise.
    pub signed: bool,
    /// Real value of one output step.
    pub scale: f64,
}

impl Quantizer {
    /// Smallest integer the quantizer produces.
    pub fn min(&self) -> i64 {
        if self.signed {
            -(1i64 << (self.bits - 1))
        } else {
            0
        }
    }

    /// Largest integer the quantizer produces.
    pub fn max(&self) -> i64 {
        if self.signed {
            (1i64 << (self.bits - 1)) - 1
        } else {
            (1i64 << self.bits) - 1
        }
    }

    /// The integer for the real value `y`: rounded to the nearest step and clipped to
    /// [`min`](Self::min)..=[`max`](Self::max); NaN gives `min`.
    pub fn quantize(&self, y: f64) -> i64 {
        let q = (y / self.scale).round();
        if q.is_nan() {
            return self.min();
        }
        (q as i64).clamp(self.min(), self.max())
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(1..=24).contains(&self.bits) {
            return Err("bits must be between 1 and 24".into());
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!(
                "scale must be a positive finite number, found {}",
                self.scale
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_is_horner() {
        let f = Function::Polynomial {
            coefficients: vec![1.0, -2.0, 0.5],
        };
        assert_eq!(f.eval(2.0), 1.0 - 4.0 + 2.0);
        assert_eq!(Function::Relu.eval(-3.0), 0.0);
    }

    #[test]
    fn quantizer_clips_both_ends() {
        let q = Quantizer {
            bits: 4,
            signed: true,
            scale: 0.5,
        };
        assert_eq!((q.min(), q.max()), (-8, 7));
        assert_eq!(q.quantize(100.0), 7);
        assert_eq!(q.quantize(-100.0), -8);
        assert_eq!(q.quantize(1.26), 3);
        let u = Quantizer {
            bits: 3,
            signed: false,
            scale: 1.0,
        };
        assert_eq!((u.quantize(-2.0), u.quantize(9.0)), (0, 7));
    }
}
