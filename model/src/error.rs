//! Typed errors. Every message names the field or file position at fault, because the person
//! reading it is usually holding a model file that someone else produced.

use thiserror::Error;

/// A model file that cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    /// The file does not start with the magic line and a format version.
    #[error("not a HEXray model: the file must start with the magic line `{expected}`")]
    Magic {
        /// The magic line this build expects, version included.
        expected: String,
    },
    /// The model file or client spec is of a format version this build does not read.
    #[error("unsupported model format version {found} (this build reads version {supported})")]
    Version {
        /// The version the file declares, as written (truncated).
        found: String,
        /// The only version this build reads.
        supported: u32,
    },
    /// The model file or client spec is over its size limit; refused before parsing.
    #[error("model file is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size received, in bytes.
        size: usize,
        /// Largest size accepted, in bytes.
        limit: usize,
    },
    /// A field is missing, malformed, out of range or inconsistent with the rest of the model.
    #[error("model field `{field}`: {reason}")]
    Field {
        /// Path of the field at fault, e.g. `network.layers[2].weights`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The network is well formed, but has no safe encrypted circuit.
    #[error("model does not compile: {0}")]
    Compile(#[from] CompileError),
}

impl ModelError {
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A network for which no safe encrypted circuit exists.
#[derive(Debug, Error, PartialEq)]
pub enum CompileError {
    /// Folding consecutive linear layers into one affine form per neuron overflowed `i64`.
    #[error("layer {layer}: integer overflow while composing linear layers ({what})")]
    Overflow {
        /// Index of the network layer being folded in.
        layer: usize,
        /// The quantity that overflowed (a weight product, a bias).
        what: String,
    },
    /// A neuron's worst-case accumulator range, scaled to at least one torus unit per step and
    /// padded with noise margins, does not fit the half torus.
    #[error(
        "stage {stage}, neuron {neuron}: worst-case accumulator range {range} plus noise margins \
         cannot fit the half torus (2^63); the padding bit could overflow"
    )]
    RangeOverflow {
        /// Index of the circuit stage.
        stage: usize,
        /// Index of the neuron within the stage (the widest one if no single neuron overflows).
        neuron: usize,
        /// Width (max − min) of its integer accumulator range, in accumulator steps.
        range: i128,
    },
    /// The logits' worst-case range, at the declared output unit, exceeds the logit bound.
    #[error(
        "the logits span ±{half_width:.1} around their centre in the worst case, over the \
         ±{limit} the model declares (network.output.logit_bound_log2; \
         `circuit::fit_logit_bound` picks the smallest that fits)"
    )]
    LogitRange {
        /// Worst-case distance of a logit from the centre of their range, in logits.
        half_width: f64,
        /// The declared bound, 2^`logit_bound_log2`, in logits.
        limit: f64,
    },
    /// A stage's noise is so large that its margin alone takes a quarter of the torus or more.
    #[error("stage {stage}: noise margin ({sigma:.3e} of the torus) leaves no room for values")]
    NoiseOverflow {
        /// Index of the circuit stage.
        stage: usize,
        /// Standard deviation of the stage's worst-case noise, as a fraction of the torus.
        sigma: f64,
    },
    /// Bulk path: more activation layers than the noise budget allows squares.
    #[error(
        "the bulk path evaluates networks with one activation layer (one square fits the noise \
         budget of its parameters); this network has {activations}"
    )]
    PackedDepth {
        /// Activation layers in the network.
        activations: usize,
    },
    /// Bulk path: an activation the packed circuit cannot evaluate. Without a bootstrap only
    /// additions and one square per layer are available.
    #[error(
        "layer {layer}: the bulk path evaluates activations that are polynomials of degree at \
         most 2 (a·z² + b·z + c); found {found}"
    )]
    NotQuadratic {
        /// Index of the network layer.
        layer: usize,
        /// What the layer has instead.
        found: String,
    },
    /// Bulk path: a value's worst case does not fit the plaintext modulus, where BFV would
    /// wrap it silently, even with the activations' coefficients at their coarsest.
    #[error(
        "bulk stage {stage}, neuron {neuron}: the {what} reaches ±2^{bits:.1} in the worst \
         case, beyond the ±2^{limit_bits:.1} the bulk parameters hold exactly"
    )]
    PlaintextRange {
        /// Index of the packed stage.
        stage: usize,
        /// Index of the neuron within the stage.
        neuron: usize,
        /// Which value: an accumulator, a square, a term, an activation or a coefficient.
        what: &'static str,
        /// log2 of its worst-case magnitude.
        bits: f64,
        /// log2 of the largest magnitude allowed.
        limit_bits: f64,
    },
    /// Bulk path: even at the largest coefficient scale that fits, rounding a neuron's
    /// coefficients to integers moves its activation by more than the TFHE path's rounding.
    #[error(
        "bulk stage {stage}, neuron {neuron}: integer coefficients would move the activation by \
         up to {steps:.2} output steps where it matters, over the {allowed} allowed, at the \
         finest output unit its values fit"
    )]
    PackedPrecision {
        /// Index of the packed stage.
        stage: usize,
        /// Index of the neuron within the stage.
        neuron: usize,
        /// The worst-case error, in the TFHE path's output steps.
        steps: f64,
        /// The largest error allowed, in the same steps.
        allowed: f64,
    },
    /// Bulk path: the worst-case noise at decryption exceeds the parameters' budget.
    #[error(
        "the bulk circuit's worst-case noise is {bits:.1} bits, over the {budget:.1} bits the \
         bulk parameters leave: too many squares or too large weights"
    )]
    PackedNoise {
        /// Estimated noise at decryption, in bits.
        bits: f64,
        /// The parameters' budget, in bits.
        budget: f64,
    },
}

/// An image that cannot be turned into model input.
#[derive(Debug, Error)]
pub enum PreprocessError {
    /// The `image` crate cannot decode the bytes; carries its message.
    #[error("cannot decode the image (PNG, JPEG or DICOM expected): {0}")]
    Decode(String),
    /// The file is DICOM but cannot be read as an image.
    #[error(transparent)]
    Dicom(#[from] hexray_dicom::DicomError),
    /// The image is narrower or lower than the model's input; HEXray never upscales.
    #[error("image is {width}×{height} pixels; the model needs at least {min_width}×{min_height}")]
    TooSmall {
        /// Width of the image, in pixels.
        width: u32,
        /// Height of the image, in pixels.
        height: u32,
        /// Input width the model needs, in pixels.
        min_width: u32,
        /// Input height the model needs, in pixels.
        min_height: u32,
    },
}
