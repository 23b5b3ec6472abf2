//! The network schema: what a trained model is, layer by layer, and the checks that make a
//! file of it safe to compile.
//!
//! - [`shape`]: tensor shapes and the one rule for how each layer changes them;
//! - [`activation`]: the trained univariate functions and their requantization;
//! - this module: the network, its input and output specs, its layers and their validation.
//!
//! Nothing here knows about ciphertexts: the circuit ([`crate::circuit`]) is compiled from a
//! validated network.

pub mod activation;
pub mod shape;

use serde::{Deserialize, Serialize};

pub use activation::{Function, Granularity, Quantizer};
pub use shape::{Shape, ShapeError};

use crate::error::ModelError;

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
    /// 2-D convolution with zero padding.
    Conv2d(Conv2d),
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
    /// Fully connected layer.
    Dense(Dense),
    /// A univariate activation per neuron, applied by its bootstrap.
    Activation(Activation),
}

/// A 2-D convolution with zero padding. Weights are laid out `[out][in][ky][kx]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2d {
    /// Channels of the input image; must match the previous layer's.
    pub in_channels: u32,
    /// Channels produced, one filter each.
    pub out_channels: u32,
    /// Side of the square kernel, in pixels.
    pub kernel: u32,
    /// Step between window positions, in pixels.
    pub stride: u32,
    /// Zeros added on every side of the input, in pixels.
    pub padding: u32,
    /// `out_channels·in_channels·kernel²` integer weights.
    pub weights: Vec<i32>,
    /// One per output channel, in accumulator units (weight × input integer).
    pub bias: Vec<i64>,
}

impl Conv2d {
    /// The weights' shape, `[out][in][ky][kx]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        let k = self.kernel as usize;
        [self.out_channels as usize, self.in_channels as usize, k, k]
    }
}

/// A fully connected layer. Weights are laid out `[out][in]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    /// Length of the flat input; must match the previous layer's output.
    pub inputs: u32,
    /// Number of neurons.
    pub outputs: u32,
    /// `outputs·inputs` integer weights.
    pub weights: Vec<i32>,
    /// One per neuron, in accumulator units (weight × input integer).
    pub bias: Vec<i64>,
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
    /// output encoding a client reads (see [`crate::circuit::output_unit_log2`]). Absent means
    /// [`DEFAULT_LOGIT_BOUND_LOG2`].
    #[serde(default = "default_logit_bound")]
    pub logit_bound_log2: u32,
}

fn default_logit_bound() -> u32 {
    DEFAULT_LOGIT_BOUND_LOG2
}

/// The logit bound a model declares unless it says otherwise: ±32, which the bundled models
/// fit.
pub const DEFAULT_LOGIT_BOUND_LOG2: u32 = 5;
/// The widest logit bound a model may declare: ±2^20.
pub const MAX_LOGIT_BOUND_LOG2: u32 = 20;

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
            shape = check_layer(i, layer, shape)?;
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
            (Some(Layer::Dense(_)), Some(Shape::Flat(n))) if *n == self.output.classes.len() => {}
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
    if (1..=MAX_LOGIT_BOUND_LOG2).contains(&bound_log2) {
        Ok(())
    } else {
        Err(ModelError::field(
            field,
            format!("must be between 1 and {MAX_LOGIT_BOUND_LOG2}"),
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

impl Layer {
    /// The shape this layer outputs for an input of `input`: the one shape rule, shared by the
    /// loader, the compiler and the trainer. Only the geometry is checked here;
    /// [`Network::validate`] checks the numbers (channel counts, weights, limits).
    ///
    /// ```
    /// use hexray_model::network::{Layer, Shape};
    /// let pool = Layer::AvgPool { size: 2, stride: 2 };
    /// let image = Shape::Image { c: 4, h: 8, w: 8 };
    /// assert_eq!(pool.output_shape(image), Ok(Shape::Image { c: 4, h: 4, w: 4 }));
    /// assert_eq!(Layer::Flatten.output_shape(image), Ok(Shape::Flat(256)));
    /// assert!(pool.output_shape(Shape::Flat(256)).is_err());
    /// ```
    pub fn output_shape(&self, input: Shape) -> Result<Shape, ShapeError> {
        match self {
            Layer::Conv2d(conv) => input.windowed(
                conv.out_channels as usize,
                conv.kernel as usize,
                conv.stride as usize,
                conv.padding as usize,
            ),
            &Layer::AvgPool { size, stride } => {
                input.windowed(input.channels(), size as usize, stride as usize, 0)
            }
            Layer::Flatten => Ok(input.flattened()),
            Layer::Dense(dense) => match input {
                Shape::Flat(_) => Ok(Shape::Flat(dense.outputs as usize)),
                Shape::Image { .. } => Err(ShapeError::NotFlat),
            },
            Layer::Activation(_) => Ok(input),
        }
    }
}

/// Checks layer `i`'s numbers against its input's shape and returns its output's.
fn check_layer(i: usize, layer: &Layer, input: Shape) -> Result<Shape, ModelError> {
    let at = format!("network.layers[{i}]");
    let f = |name: &str| format!("{at}.{name}");
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
    // The numbers the geometry depends on come first, so that it never sees a zero stride.
    match layer {
        Layer::Conv2d(conv) => {
            for (name, v) in [
                ("in_channels", conv.in_channels),
                ("out_channels", conv.out_channels),
                ("kernel", conv.kernel),
                ("stride", conv.stride),
            ] {
                dim(name, v)?;
            }
            if conv.padding > MAX_DIM {
                return Err(ModelError::field(f("padding"), "is too large"));
            }
            if let Shape::Image { c, .. } = input {
                if conv.in_channels as usize != c {
                    return Err(ModelError::field(
                        f("in_channels"),
                        format!("is {} but the input has {c} channels", conv.in_channels),
                    ));
                }
            }
        }
        &Layer::AvgPool { size, stride } => {
            dim("size", size)?;
            dim("stride", stride)?;
        }
        Layer::Dense(dense) => {
            if dense.inputs as usize != input.len() {
                return Err(ModelError::field(
                    f("inputs"),
                    format!(
                        "is {} but the previous layer produces {}",
                        dense.inputs,
                        input.len()
                    ),
                ));
            }
            if dense.outputs == 0 || dense.outputs as usize > MAX_ELEMENTS {
                return Err(ModelError::field(f("outputs"), "is out of range"));
            }
        }
        Layer::Flatten | Layer::Activation(_) => {}
    }
    let output = layer.output_shape(input).map_err(|e| {
        let field = match (&e, layer) {
            (ShapeError::WindowTooLarge { .. }, Layer::Conv2d(_)) => f("kernel"),
            (ShapeError::WindowTooLarge { .. }, _) => f("size"),
            _ => at.clone(),
        };
        ModelError::field(field, e.to_string())
    })?;
    match layer {
        Layer::Conv2d(conv) => {
            expect_len(
                f("weights"),
                &conv.weights,
                elements(f("weights"), &conv.weight_shape())?,
            )?;
            expect_len(f("bias"), &conv.bias, conv.out_channels as usize)?;
            if let Shape::Image { c, h, w } = output {
                elements(f("out_channels"), &[c, h, w])?;
            }
        }
        Layer::Dense(dense) => {
            let (n_in, n_out) = (dense.inputs as usize, dense.outputs as usize);
            expect_len(
                f("weights"),
                &dense.weights,
                elements(f("weights"), &[n_in, n_out])?,
            )?;
            expect_len(f("bias"), &dense.bias, n_out)?;
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
        }
        Layer::AvgPool { .. } | Layer::Flatten => {}
    }
    Ok(output)
}
