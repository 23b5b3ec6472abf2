//! Tensor shapes and the one rule for how each kind of layer changes them.
//!
//! The model loader, the compiler and the trainer's topologies all infer shapes here, so a
//! network the trainer builds is, by construction, one the loader accepts.

use thiserror::Error;

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

/// Why a layer cannot read a tensor of some shape.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ShapeError {
    /// A convolution or pooling reads an image, not a flat vector.
    #[error("needs an image input, but the previous layer produced a flat vector")]
    NotAnImage,
    /// A window or stride of zero pixels.
    #[error("window size and stride must be positive")]
    ZeroWindow,
    /// A dense layer reads a flat vector.
    #[error("a dense layer needs a flat input: add a flatten layer before it")]
    NotFlat,
    /// A sliding window wider than the (padded) input.
    #[error("a {window}×{window} window does not fit the {h}×{w} input (padding {padding})")]
    WindowTooLarge {
        /// Window side, in pixels.
        window: usize,
        /// Zero padding on each side.
        padding: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
    },
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

    /// The shape a `window`×`window` window sliding by `stride` over this image, zero-padded by
    /// `padding` on each side, produces with `channels` output channels: a convolution's, or a
    /// pooling's with the input's own channels.
    ///
    /// ```
    /// use hexray_model::network::Shape;
    /// let image = Shape::Image { c: 1, h: 28, w: 28 };
    /// // A 7×7 convolution with stride 3 and 4 output channels, then a 2×2 pooling.
    /// let conv = image.windowed(4, 7, 3, 0).unwrap();
    /// assert_eq!(conv, Shape::Image { c: 4, h: 8, w: 8 });
    /// assert_eq!(conv.windowed(4, 2, 2, 0).unwrap(), Shape::Image { c: 4, h: 4, w: 4 });
    /// assert!(image.windowed(4, 29, 1, 0).is_err());
    /// assert!(Shape::Flat(784).windowed(4, 3, 1, 1).is_err());
    /// ```
    pub fn windowed(
        self,
        channels: usize,
        window: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Shape, ShapeError> {
        let Shape::Image { h, w, .. } = self else {
            return Err(ShapeError::NotAnImage);
        };
        if window == 0 || stride == 0 {
            return Err(ShapeError::ZeroWindow);
        }
        let positions = |size: usize| {
            (size + 2 * padding)
                .checked_sub(window)
                .map(|room| room / stride + 1)
        };
        match (positions(h), positions(w)) {
            (Some(oh), Some(ow)) => Ok(Shape::Image {
                c: channels,
                h: oh,
                w: ow,
            }),
            _ => Err(ShapeError::WindowTooLarge {
                window,
                padding,
                h,
                w,
            }),
        }
    }

    /// The flat vector of the same elements, in `[c][y][x]` order.
    pub fn flattened(self) -> Shape {
        Shape::Flat(self.len())
    }
}
