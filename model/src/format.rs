//! The model file: one versioned, self-describing document (see `docs/model-format.md`).
//!
//! On disk a model is the magic line `HEXRAY-MODEL <version>` followed by a JSON document. JSON
//! keeps the file readable and diffable; the magic line lets every tool reject a foreign file
//! before parsing it. Loading always re-validates shapes and numbers and recompiles the circuit,
//! then checks that the stored encoding is exactly the one the compiler derives, so a file that
//! was edited by hand can never smuggle in an encoding that overflows.

use serde::{Deserialize, Serialize};

use crate::activation::{Function, Granularity, Quantizer};
use crate::compile::{compile, Circuit};
use crate::error::ModelError;

/// First token of every model file.
pub const MAGIC: &str = "HEXRAY-MODEL";
/// The format version this build reads and writes.
/// Version 2 encodes inputs in the public unit and outputs around a common origin, so that the
/// client spec holds nothing derived from the weights.
pub const FORMAT_VERSION: u32 = 2;
/// Largest model file accepted, so a hostile file cannot make a loader allocate without bound.
pub const MAX_MODEL_BYTES: usize = 64 << 20;

/// A compiled model: the network, the TFHE parameters it was compiled for and the resulting
/// circuit encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledModel {
    /// Short identifier, e.g. `pneumonia-a`.
    pub name: String,
    /// Version of this model's weights, chosen by whoever trained it.
    pub model_version: String,
    /// Free text for people: what the model detects and on what data it was trained.
    pub description: String,
    /// The trained network, weights included.
    pub network: Network,
    /// The TFHE parameter set the circuit was compiled for.
    pub fhe: FheParameters,
    /// The encoding the compiler chose; loading recompiles and requires exactly this.
    pub encoding: Encoding,
}

/// The network as trained: integer layers with their activations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// What the client turns an image into before encrypting it.
    pub input: InputSpec,
    /// The layers in evaluation order; the last is a dense layer with one output per class.
    pub layers: Vec<Layer>,
    /// How the last layer's accumulators become class logits.
    pub output: OutputSpec,
}

/// What the client must do to an image before encrypting it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input width in pixels, after cropping and resizing.
    pub width: u32,
    /// Input height in pixels, after cropping and resizing.
    pub height: u32,
    /// Always 1: images are converted to grayscale (ITU-R BT.601 luma).
    pub channels: u32,
    /// Bits kept per pixel (1..=8). Input integer q = round(luma · (2^bits − 1) / 255).
    pub bits: u8,
    /// Real value of one input integer step, as the network was trained.
    pub scale: f64,
    /// How a non-square image is cropped before resizing.
    pub crop: Crop,
    /// Filter used to resize to `width`×`height`.
    pub resize_filter: ResizeFilter,
    /// Per-image intensity normalisation after resizing. Absent in files written before it
    /// existed, which means [`Intensity::AsIs`].
    #[serde(default)]
    pub intensity: Intensity,
}

impl InputSpec {
    /// Checks the numbers; `at` names the field in errors (`network.input` in a model file).
    pub fn validate(&self, at: &str) -> Result<(), ModelError> {
        if self.channels != 1 {
            return Err(ModelError::field(
                format!("{at}.channels"),
                "must be 1 (grayscale)",
            ));
        }
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || v > MAX_DIM {
                return Err(ModelError::field(
                    format!("{at}.{field}"),
                    format!("must be between 1 and {MAX_DIM}"),
                ));
            }
        }
        // Both sides are at most 2^14, so the product fits a u64 on any target.
        let pixels = u64::from(self.width) * u64::from(self.height);
        if pixels > MAX_INPUT_PIXELS as u64 {
            return Err(ModelError::field(
                at,
                format!(
                    "takes {}×{} = {pixels} pixels; at most {MAX_INPUT_PIXELS} (one ciphertext each)",
                    self.width, self.height
                ),
            ));
        }
        if !(1..=8).contains(&self.bits) {
            return Err(ModelError::field(
                format!("{at}.bits"),
                "must be between 1 and 8",
            ));
        }
        positive_finite(&format!("{at}.scale"), self.scale)
    }

    /// The input tensor's shape.
    pub fn shape(&self) -> Shape {
        Shape::Image {
            c: self.channels as usize,
            h: self.height as usize,
            w: self.width as usize,
        }
    }

    /// The largest input integer, `2^bits − 1`.
    pub fn max_value(&self) -> i64 {
        (1i64 << self.bits) - 1
    }

    /// Checks that `input` is this spec's `[channels][height][width]` tensor with every value
    /// in `0..=max_value()`: what a client may encrypt.
    pub fn check(&self, input: ndarray::ArrayView3<i64>) -> Result<(), ModelError> {
        let expected = self.shape();
        let (c, h, w) = input.dim();
        if (Shape::Image { c, h, w }) != expected {
            return Err(ModelError::field(
                "input",
                format!("expected a tensor of shape {expected:?}, found [{c}, {h}, {w}]"),
            ));
        }
        let max = self.max_value();
        if let Some(v) = input.iter().find(|v| !(0..=max).contains(*v)) {
            return Err(ModelError::field(
                "input",
                format!("value {v} is outside [0, {max}]"),
            ));
        }
        Ok(())
    }

    /// A grayscale `side`×`side` input of 8-bit pixels scaled to [0, 1], cropped to a centred
    /// square and resized with a triangle filter: the MedMNIST convention.
    pub fn square_8bit(side: u32, intensity: Intensity) -> Self {
        InputSpec {
            width: side,
            height: side,
            channels: 1,
            bits: 8,
            scale: 1.0 / 255.0,
            crop: Crop::CentreSquare,
            resize_filter: ResizeFilter::Triangle,
            intensity,
        }
    }
}

/// Per-image intensity normalisation. X-rays from different scanners, exposures and windowing
/// differ in brightness and contrast; normalising each image removes that difference before the
/// network sees it, on the client, in clear, so it costs no bootstrap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intensity {
    /// Pixels as resized.
    #[default]
    AsIs,
    /// Linear stretch of the 1st..99th percentile of the image's pixels to 0..255.
    Stretch,
    /// Histogram equalisation: each pixel becomes its rank (empirical CDF) scaled to 0..255.
    Equalize,
}

/// How a non-square image is cropped before resizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crop {
    /// Keep the largest centred square.
    CentreSquare,
    /// Resize the whole image, distorting its aspect ratio.
    None,
}

/// Resampling filter used to resize to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Nearest neighbour.
    Nearest,
    /// Linear (bilinear) interpolation; the MedMNIST convention.
    Triangle,
    /// Cubic Catmull-Rom spline.
    CatmullRom,
    /// Gaussian kernel.
    Gaussian,
    /// Lanczos windowed sinc with a radius of 3.
    Lanczos3,
}

/// One layer. Linear layers have clear integer weights and cost no bootstrap; each neuron of an
/// activation layer costs exactly one bootstrap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// 2-D convolution with zero padding. Weights are laid out `[out][in][ky][kx]`.
    Conv2d {
        /// Channels of the input image; must match the previous layer's.
        in_channels: u32,
        /// Channels produced, one filter each.
        out_channels: u32,
        /// Side of the square kernel, in pixels.
        kernel: u32,
        /// Step between window positions, in pixels.
        stride: u32,
        /// Zeros added on every side of the input, in pixels.
        padding: u32,
        /// `out_channels·in_channels·kernel²` integer weights.
        weights: Vec<i32>,
        /// One per output channel, in accumulator units (weight × input integer).
        bias: Vec<i64>,
    },
    /// Average pooling, computed as the integer window sum. The 1/size² factor belongs to the
    /// next activation's `input_scales`, where the exporter folds it.
    AvgPool {
        /// Side of the square window, in pixels.
        size: u32,
        /// Step between window positions, in pixels; no padding.
        stride: u32,
    },
    /// Flattens `[channel][y][x]` into a vector, in that order.
    Flatten,
    /// Fully connected layer. Weights are laid out `[out][in]`.
    Dense {
        /// Length of the flat input; must match the previous layer's output.
        inputs: u32,
        /// Number of neurons.
        outputs: u32,
        /// `outputs·inputs` integer weights.
        weights: Vec<i32>,
        /// One per neuron, in accumulator units (weight × input integer).
        bias: Vec<i64>,
    },
    /// A univariate activation per neuron, applied by its bootstrap.
    Activation(Activation),
}

/// A univariate activation applied to every neuron of the previous linear layer.
///
/// The real pre-activation of neuron `j` is `z = accumulator · input_scale[j]`; the neuron outputs
/// the integer `output.quantize(function[j](z))`. Both vectors are given at `granularity`: one
/// entry for the layer, one per channel, or one per element (neuron).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// Which neurons share an entry of `functions` and `input_scales`.
    pub granularity: Granularity,
    /// The trained function of each entry.
    pub functions: Vec<Function>,
    /// Real value of one accumulator step, per entry; positive and finite.
    pub input_scales: Vec<f64>,
    /// How the function's real output becomes the next layer's integers.
    pub output: Quantizer,
}

/// How output accumulators become logits: `logit[c] = accumulator[c] · logit_scale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Class names, one per output neuron, 2 to [`MAX_CLASSES`].
    pub classes: Vec<String>,
    /// Real logit of one output accumulator step; positive and finite.
    pub logit_scale: f64,
    /// The model's public bound on its logits, ±2^this around their common centre: it sets the
    /// output encoding a client reads (see [`crate::compile::output_unit_log2`]). Absent means
    /// [`crate::compile::DEFAULT_LOGIT_BOUND_LOG2`].
    #[serde(default = "default_logit_bound")]
    pub logit_bound_log2: u32,
}

fn default_logit_bound() -> u32 {
    crate::compile::DEFAULT_LOGIT_BOUND_LOG2
}

/// The TFHE parameter set a model was compiled for, as the numbers the compiler needs.
///
/// Variances are of the torus normalised to [0, 1). They come from TFHE-rs's noise formulas
/// (see the `hexray-crypto` crate) and are recorded so that the simulator and the trainer, which
/// do not link TFHE-rs, see exactly what the compiler saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FheParameters {
    /// The TFHE-rs parameter set's name; keys and ciphertexts must carry the same name.
    pub name: String,
    /// GLWE polynomial size N: the bootstrap reads 2N positions of the torus, N of them in the
    /// half torus that the padding bit leaves.
    pub polynomial_size: u32,
    /// Noise of a freshly encrypted input.
    pub fresh_variance: f64,
    /// Noise of a bootstrap's output.
    pub bootstrap_variance: f64,
    /// Noise the keyswitch adds before a bootstrap.
    pub keyswitch_variance: f64,
    /// Noise the (centred) modulus switch adds before a bootstrap, excluding the rounding of the
    /// body, which the simulator models exactly.
    pub modulus_switch_variance: f64,
}

/// Bits each value of an output ciphertext keeps on its way back to the client. The server
/// keyswitches every output accumulator to the bootstrap's small LWE key and switches its
/// modulus to 2^16 (`hexray_crypto::EncryptedOutput::compress`): 1.8 KB per class instead of
/// the 16 KB of a big-key ciphertext, for noise well under the output's own.
pub const OUTPUT_LOG_MODULUS: u32 = 16;

/// The circuit encoding the compiler chose: one entry per stage (a linear map, then a bootstrap
/// per neuron, except in the output stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// One per circuit stage, the output stage last.
    pub stages: Vec<StageEncoding>,
}

/// Encoding of one stage's accumulators: phase = (acc − acc_min)·delta + margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEncoding {
    /// Torus value of one unit of this stage's input integers.
    pub delta: u64,
    /// Guard band, in torus units, kept free below and above every accumulator's range.
    pub margin: u64,
    /// Worst-case accumulator bounds per neuron, from range analysis.
    pub acc_min: Vec<i64>,
    /// Upper worst-case accumulator bound per neuron, as `acc_min`.
    pub acc_max: Vec<i64>,
    /// Standard deviation of each neuron's phase noise where it is read (before its bootstrap,
    /// or at decryption for the output stage), as a fraction of the torus.
    pub sigma: Vec<f64>,
}

impl CompiledModel {
    /// Compiles `network` for `fhe` and wraps it as a model file.
    pub fn build(
        name: &str,
        model_version: &str,
        description: &str,
        network: Network,
        fhe: FheParameters,
    ) -> Result<Self, ModelError> {
        let circuit = compile(&network, &fhe)?;
        Ok(CompiledModel {
            name: name.to_owned(),
            model_version: model_version.to_owned(),
            description: description.to_owned(),
            encoding: circuit.encoding(),
            network,
            fhe,
        })
    }

    /// Serialises to the on-disk form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {FORMAT_VERSION}\n").into_bytes();
        serde_json::to_writer(&mut out, self).expect("a model always serialises to JSON");
        out.push(b'\n');
        out
    }

    /// Parses and fully validates a model file, returning it with its compiled circuit.
    ///
    /// ```
    /// use hexray_model::CompiledModel;
    /// # let (model, _) = hexray_model::testing::tiny_model();
    /// let bytes = model.to_bytes();
    /// let (read, circuit) = CompiledModel::from_bytes(&bytes).unwrap();
    /// assert_eq!(read, model);
    /// assert_eq!(circuit.output_len(), 2);
    /// // A file whose stored encoding is not what its network compiles to is refused.
    /// let edited = String::from_utf8(bytes).unwrap().replacen("\"margin\":", "\"margin\":1", 1);
    /// assert!(CompiledModel::from_bytes(edited.as_bytes()).is_err());
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, Circuit), ModelError> {
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge {
                size: bytes.len(),
                limit: MAX_MODEL_BYTES,
            });
        }
        let magic_error = || ModelError::Magic {
            expected: format!("{MAGIC} {FORMAT_VERSION}"),
        };
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(magic_error)?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| magic_error())?;
        let version = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(magic_error)?;
        if version != FORMAT_VERSION.to_string() {
            return Err(ModelError::Version {
                found: version.chars().take(32).collect(),
                supported: FORMAT_VERSION,
            });
        }
        let mut json = serde_json::Deserializer::from_slice(&bytes[newline + 1..]);
        let model: CompiledModel = serde_path_to_error::deserialize(&mut json)
            .map_err(|e| ModelError::field(e.path().to_string(), e.inner().to_string()))?;
        json.end()
            .map_err(|e| ModelError::field("(end of file)", e.to_string()))?;
        let circuit = model.verify()?;
        Ok((model, circuit))
    }

    /// Checks the network, recompiles it and compares the stored encoding with the compiler's.
    fn verify(&self) -> Result<Circuit, ModelError> {
        let circuit = compile(&self.network, &self.fhe)?;
        let expected = circuit.encoding();
        if expected.stages.len() != self.encoding.stages.len() {
            return Err(ModelError::field(
                "encoding.stages",
                format!(
                    "{} stages stored, the network compiles to {}",
                    self.encoding.stages.len(),
                    expected.stages.len()
                ),
            ));
        }
        for (s, (stored, derived)) in self
            .encoding
            .stages
            .iter()
            .zip(&expected.stages)
            .enumerate()
        {
            let mismatch = |what: &str| {
                ModelError::field(
                    format!("encoding.stages[{s}].{what}"),
                    "differs from what the compiler derives for this network and parameter set",
                )
            };
            if stored.delta != derived.delta {
                return Err(mismatch("delta"));
            }
            if stored.margin != derived.margin {
                return Err(mismatch("margin"));
            }
            if stored.acc_min != derived.acc_min {
                return Err(mismatch("acc_min"));
            }
            if stored.acc_max != derived.acc_max {
                return Err(mismatch("acc_max"));
            }
            let close = stored.sigma.len() == derived.sigma.len()
                && stored
                    .sigma
                    .iter()
                    .zip(&derived.sigma)
                    .all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs());
            if !close {
                return Err(mismatch("sigma"));
            }
        }
        Ok(circuit)
    }
}

impl FheParameters {
    /// Noise the output compression adds to each output phase: the keyswitch, plus the centred
    /// modulus switch to 2^[`OUTPUT_LOG_MODULUS`]. The switch's mask rounding is
    /// `modulus_switch_variance` (a switch to 2N) scaled by the square of the coarser step
    /// (2N / 2^16); its body rounding, uniform over one step, is 2^-32 / 12.
    ///
    /// ```
    /// # let (_, circuit) = hexray_model::testing::tiny_model();
    /// # let fhe = hexray_model::testing::test_fhe();
    /// // Compression noise is in the output stage's noise, which the simulator draws.
    /// let output = circuit.stages.last().unwrap();
    /// assert_eq!(output.switch_sigma, fhe.output_compression_variance().sqrt());
    /// ```
    pub fn output_compression_variance(&self) -> f64 {
        let step = 2.0 * f64::from(self.polynomial_size) / 2f64.powi(OUTPUT_LOG_MODULUS as i32);
        let body = 2f64.powi(-2 * OUTPUT_LOG_MODULUS as i32) / 12.0;
        self.keyswitch_variance + self.modulus_switch_variance * step * step + body
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        if !self.polynomial_size.is_power_of_two()
            || !(256..=1 << 16).contains(&self.polynomial_size)
        {
            return Err(ModelError::field(
                "fhe.polynomial_size",
                "must be a power of two between 256 and 65536",
            ));
        }
        for (field, v) in [
            ("fhe.fresh_variance", self.fresh_variance),
            ("fhe.bootstrap_variance", self.bootstrap_variance),
            ("fhe.keyswitch_variance", self.keyswitch_variance),
            ("fhe.modulus_switch_variance", self.modulus_switch_variance),
        ] {
            if !(v.is_finite() && (0.0..0.25).contains(&v)) {
                return Err(ModelError::field(
                    field,
                    "must be a finite variance in [0, 0.25)",
                ));
            }
        }
        Ok(())
    }
}

/// Shape of the tensor flowing between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `[channels][height][width]`
    Image {
        /// Channels.
        c: usize,
        /// Height, in pixels.
        h: usize,
        /// Width, in pixels.
        w: usize,
    },
    /// A vector of this many elements, after a flatten or dense layer.
    Flat(usize),
}

impl Shape {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Image { c, h, w } => c * h * w,
            Shape::Flat(n) => n,
        }
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channel count, for per-channel activation parameters (a flat vector has one channel per
    /// element, as a dense layer's neurons are its channels).
    pub fn channels(&self) -> usize {
        match *self {
            Shape::Image { c, .. } => c,
            Shape::Flat(n) => n,
        }
    }

    /// Channel of element `index` in `[c][y][x]` order.
    pub fn channel_of(&self, index: usize) -> usize {
        match *self {
            Shape::Image { h, w, .. } => index / (h * w),
            Shape::Flat(_) => index,
        }
    }
}

/// Most input integers a model may take: a client encrypts one ciphertext per integer, 8 bytes
/// each once seeded, so an upload stays within 1 MiB per image (a 362×362 input). The
/// encrypted-image size limit of `hexray-crypto` is derived from it, so a valid model's images
/// always fit.
pub const MAX_INPUT_PIXELS: usize = 1 << 17;

/// Upper bound on any dimension, so that shape arithmetic cannot overflow.
const MAX_DIM: u32 = 1 << 14;
/// Upper bound on the elements of any tensor.
const MAX_ELEMENTS: usize = 1 << 22;
/// Upper bound on bootstraps per image. Far beyond any practical network (each costs ~30 ms of
/// a core), and it bounds the work of loading a model, which reads every table once.
pub const MAX_BOOTSTRAPS: usize = 1 << 18;

impl Network {
    /// The input tensor's shape.
    pub fn input_shape(&self) -> Shape {
        self.input.shape()
    }

    /// Checks every shape and number, returning the shape after each layer.
    pub fn validate(&self) -> Result<Vec<Shape>, ModelError> {
        self.input.validate("network.input")?;
        check_classes("network.output.classes", &self.output.classes)?;
        check_logit_bound(
            "network.output.logit_bound_log2",
            self.output.logit_bound_log2,
        )?;
        positive_finite("network.output.logit_scale", self.output.logit_scale)?;

        let mut shape = self.input_shape();
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            shape = layer_shape(i, layer, shape)?;
            if shape.is_empty() || shape.len() > MAX_ELEMENTS {
                return Err(ModelError::field(
                    format!("network.layers[{i}]"),
                    format!(
                        "output has {} elements (1..={MAX_ELEMENTS} allowed)",
                        shape.len()
                    ),
                ));
            }
            shapes.push(shape);
        }
        match (self.layers.last(), shapes.last()) {
            (Some(Layer::Dense { .. }), Some(Shape::Flat(n)))
                if *n == self.output.classes.len() => {}
            _ => {
                return Err(ModelError::field(
                    "network.layers",
                    format!(
                        "must end with a dense layer of {} outputs, one per class",
                        self.output.classes.len()
                    ),
                ))
            }
        }
        let bootstraps: usize = self
            .layers
            .iter()
            .zip(&shapes)
            .filter(|(layer, _)| matches!(layer, Layer::Activation(_)))
            .map(|(_, shape)| shape.len())
            .sum();
        if bootstraps > MAX_BOOTSTRAPS {
            return Err(ModelError::field(
                "network.layers",
                format!("the network needs {bootstraps} bootstraps per image; at most {MAX_BOOTSTRAPS} are supported"),
            ));
        }
        Ok(shapes)
    }
}

/// Positions of a `kernel`-wide window sliding by `stride` over `size + 2·padding` values.
/// Callers have checked that the window fits.
pub fn window_count(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

/// Most classes a model may have: the client decrypts one output per class.
pub const MAX_CLASSES: usize = 64;

pub(crate) fn check_classes(field: &str, classes: &[String]) -> Result<(), ModelError> {
    if (2..=MAX_CLASSES).contains(&classes.len()) {
        Ok(())
    } else {
        Err(ModelError::field(
            field,
            format!("needs 2 to {MAX_CLASSES} classes, found {}", classes.len()),
        ))
    }
}

pub(crate) fn check_logit_bound(field: &str, bound_log2: u32) -> Result<(), ModelError> {
    if (1..=crate::compile::MAX_LOGIT_BOUND_LOG2).contains(&bound_log2) {
        Ok(())
    } else {
        Err(ModelError::field(
            field,
            format!(
                "must be between 1 and {}",
                crate::compile::MAX_LOGIT_BOUND_LOG2
            ),
        ))
    }
}

fn positive_finite(field: &str, v: f64) -> Result<(), ModelError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ModelError::field(
            field,
            format!("must be a positive finite number, found {v}"),
        ))
    }
}

/// The product of `factors`, refused past [`MAX_ELEMENTS`]. Multiplied with checks, because
/// the wasm client's `usize` has 32 bits: unchecked, a crafted file's `cout·cin·k·k` would wrap
/// and could then match a short weight list.
fn elements(field: String, factors: &[usize]) -> Result<usize, ModelError> {
    factors
        .iter()
        .try_fold(1usize, |product, &f| product.checked_mul(f))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| ModelError::field(field, format!("needs more than {MAX_ELEMENTS} elements")))
}

fn expect_len<T>(field: String, v: &[T], n: usize) -> Result<(), ModelError> {
    if v.len() == n {
        Ok(())
    } else {
        Err(ModelError::field(
            field,
            format!("expected {n} values, found {}", v.len()),
        ))
    }
}

fn layer_shape(i: usize, layer: &Layer, input: Shape) -> Result<Shape, ModelError> {
    let f = |name: &str| format!("network.layers[{i}].{name}");
    let image = || match input {
        Shape::Image { c, h, w } => Ok((c, h, w)),
        Shape::Flat(_) => Err(ModelError::field(
            format!("network.layers[{i}]"),
            "needs an image input, but the previous layer produced a flat vector",
        )),
    };
    let dim = |name: &str, v: u32| {
        if v == 0 || v > MAX_DIM {
            Err(ModelError::field(
                f(name),
                format!("must be between 1 and {MAX_DIM}"),
            ))
        } else {
            Ok(v as usize)
        }
    };
    match layer {
        Layer::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weights,
            bias,
        } => {
            let (c, h, w) = image()?;
            let (cin, cout) = (
                dim("in_channels", *in_channels)?,
                dim("out_channels", *out_channels)?,
            );
            let (k, s) = (dim("kernel", *kernel)?, dim("stride", *stride)?);
            if *padding > MAX_DIM {
                return Err(ModelError::field(f("padding"), "is too large"));
            }
            let p = *padding as usize;
            if cin != c {
                return Err(ModelError::field(
                    f("in_channels"),
                    format!("is {cin} but the input has {c} channels"),
                ));
            }
            if h + 2 * p < k || w + 2 * p < k {
                return Err(ModelError::field(
                    f("kernel"),
                    "is larger than the padded input",
                ));
            }
            expect_len(
                f("weights"),
                weights,
                elements(f("weights"), &[cout, cin, k, k])?,
            )?;
            expect_len(f("bias"), bias, cout)?;
            let (oh, ow) = (window_count(h, k, s, p), window_count(w, k, s, p));
            elements(f("out_channels"), &[cout, oh, ow])?;
            Ok(Shape::Image {
                c: cout,
                h: oh,
                w: ow,
            })
        }
        Layer::AvgPool { size, stride } => {
            let (c, h, w) = image()?;
            let (k, s) = (dim("size", *size)?, dim("stride", *stride)?);
            if h < k || w < k {
                return Err(ModelError::field(f("size"), "is larger than the input"));
            }
            Ok(Shape::Image {
                c,
                h: window_count(h, k, s, 0),
                w: window_count(w, k, s, 0),
            })
        }
        Layer::Flatten => Ok(Shape::Flat(input.len())),
        Layer::Dense {
            inputs,
            outputs,
            weights,
            bias,
        } => {
            let (n_in, n_out) = (*inputs as usize, *outputs as usize);
            if n_in != input.len() {
                return Err(ModelError::field(
                    f("inputs"),
                    format!("is {n_in} but the previous layer produces {}", input.len()),
                ));
            }
            if !matches!(input, Shape::Flat(_)) {
                return Err(ModelError::field(
                    format!("network.layers[{i}]"),
                    "a dense layer needs a flat input: add a flatten layer before it",
                ));
            }
            if n_out == 0 || n_out > MAX_ELEMENTS {
                return Err(ModelError::field(f("outputs"), "is out of range"));
            }
            expect_len(
                f("weights"),
                weights,
                elements(f("weights"), &[n_in, n_out])?,
            )?;
            expect_len(f("bias"), bias, n_out)?;
            Ok(Shape::Flat(n_out))
        }
        Layer::Activation(act) => {
            let n = act.granularity.count(input);
            expect_len(f("functions"), &act.functions, n)?;
            expect_len(f("input_scales"), &act.input_scales, n)?;
            for (j, s) in act.input_scales.iter().enumerate() {
                positive_finite(&f(&format!("input_scales[{j}]")), *s)?;
            }
            for (j, func) in act.functions.iter().enumerate() {
                func.validate()
                    .map_err(|reason| ModelError::field(f(&format!("functions[{j}]")), reason))?;
            }
            act.output
                .validate()
                .map_err(|reason| ModelError::field(f("output"), reason))?;
            Ok(input)
        }
    }
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
