//! Network topologies: the shape of what the server evaluates, and so its cost.
//!
//! Every hidden block is a linear layer (a convolution, optionally followed by sum pooling, or
//! a dense layer), batch norm, and an activation over each of its outputs. Pooling sits
//! *before* the activation: both it and the convolution are linear, so they fold into one
//! stage and only the pooled neurons pay a bootstrap. A final dense layer gives the logits and
//! costs nothing. The bootstrap count is therefore the number of hidden neurons.
//!
//! A block may also be *linear* (suffix `l`): no batch norm and no activation. Linear depth is
//! free under TFHE, because a run of linear layers composes into one integer dot product per
//! neuron. Such a run, a *linear front*, must end in a dense block with an activation: the
//! trainer quantizes and exports the composed map as that block's one dense layer, so the
//! weight norm the noise depends on is the composed one (see `net::Hidden::front`).

use hexray_model::network::{Shape, ShapeError};
use serde::Serialize;

/// A convolution block's geometry: a convolution with zero padding, then a `pool`×`pool` sum
/// pooling (1: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Conv {
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub pool: usize,
}

impl Conv {
    /// The block's output shape for `input`, by the contract's rule ([`Shape::windowed`]): the
    /// convolution's, then its pooling's.
    pub fn output_shape(&self, input: Shape) -> Result<Shape, ShapeError> {
        input
            .windowed(self.channels, self.kernel, self.stride, self.padding)?
            .windowed(self.channels, self.pool, self.pool, 0)
    }

    /// The spec that [`Topology::parse`] reads back, without the linear suffix.
    fn spec(&self) -> String {
        let conv = format!(
            "c{}k{}s{}p{}",
            self.channels, self.kernel, self.stride, self.padding
        );
        match self.pool {
            1 => conv,
            pool => format!("{conv}x{pool}"),
        }
    }
}

/// One hidden block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// A convolution, then its pooling.
    Conv {
        #[serde(flatten)]
        conv: Conv,
        /// No activation: part of the next block's linear front.
        linear: bool,
    },
    /// A fully connected layer over the flattened previous block.
    Dense {
        outputs: usize,
        /// No activation: part of the next block's linear front.
        linear: bool,
    },
}

impl Block {
    /// Whether the block has no activation, and so costs no bootstrap.
    pub fn is_linear(&self) -> bool {
        match *self {
            Block::Conv { linear, .. } | Block::Dense { linear, .. } => linear,
        }
    }
}

/// A named stack of hidden blocks; the output layer is implied by the class count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub name: String,
    pub blocks: Vec<Block>,
}

/// The named topologies and their specs: the engine's two benchmark shapes, the shipped one,
/// and the candidates of the accuracy/bootstrap search (see `docs/ablation.md`).
pub const PRESETS: &[(&str, &str)] = &[
    // (a): 4×8×8 + 64 = 320 bootstraps.
    ("a", "c4k7s3p0,d64"),
    // (b): 8×14×14 + 16×7×7 + 32 = 2,384 bootstraps.
    ("b", "c8k3s2p1,c16k3s2p1,d32"),
    // (c): a 7×7 stride-2 convolution pooled 2×2 (4×6×6), then 16 neurons: 160.
    ("c", "c4k7s2p1x2,d16"),
    ("c-wide", "c8k7s2p1x2,d16"),
    ("c-narrow", "c2k7s2p1x2,d16"),
    ("c-tiny", "c2k7s2p1x2,d8"),
    ("c-deep", "c4k7s2p1x2,d32"),
    ("pool4", "c8k5s1p2x4,d16"),
    ("pool4-small", "c4k5s1p2x4,d8"),
    // No convolution: dense layers straight on the 784 pixels, one bootstrap per neuron.
    ("mlp-16", "d16"),
    ("mlp-32", "d32"),
    ("mlp-64", "d64"),
    ("mlp-64-16", "d64,d16"),
    // A linear front: a 5×5 convolution pooled 2×2 (8×14×14), with no activation, then 64
    // neurons. It composes into one 784→64 dense stage, so it costs what mlp-64 costs; the
    // convolution only shapes what that stage can learn.
    ("front-64", "c8k5s1p2x2l,d64"),
    // A cheaper strong teacher (`--strong-teacher cnn2`): two 3×3 convolutions, each pooled,
    // then 64 neurons; a fifth of cnn6's training time, so that cross-validation can retrain
    // it in every fold.
    ("cnn2", "c8k3s1p1x2,c16k3s1p1x2,d64"),
    // The strong plaintext teacher (`--strong-teacher cnn6`): six 3×3 convolutions in three
    // pooled pairs, then 128 neurons. Never compiled: it would cost 27,360 bootstraps.
    (
        "cnn6",
        "c16k3s1p1,c16k3s1p1x2,c32k3s1p1,c32k3s1p1x2,c64k3s1p1,c64k3s1p1x2,d128",
    ),
];

/// A topology spec that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "topology {spec:?}: {reason} (expected blocks like c4k7s2p1x2 or d16, comma-separated, \
     with a trailing l for a linear block)"
)]
pub struct TopologyError {
    pub spec: String,
    pub reason: String,
}

impl Topology {
    /// A preset's name, or a spec: comma-separated blocks, `c<channels>k<kernel>s<stride>
    /// p<padding>[x<pool>]` for a convolution and `d<outputs>` for a dense layer, each with a
    /// trailing `l` when it is linear (no activation).
    ///
    /// ```
    /// use hexray_model::network::Shape;
    /// use hexray_trainer::topology::Topology;
    ///
    /// let input = Shape::Image { c: 1, h: 28, w: 28 };
    /// let front = Topology::parse("front-64").unwrap();
    /// assert_eq!(front.spec(), "c8k5s1p2x2l,d64");
    /// // The linear convolution's 8×14×14 outputs cost nothing; the 64 neurons cost one each.
    /// assert_eq!(front.bootstraps(input), 64);
    /// // A front must end in a dense block, and the last block needs an activation.
    /// assert!(Topology::parse("c8k3s1p1l,c4k3s1p1,d16").is_err());
    /// assert!(Topology::parse("d64,d16l").is_err());
    /// ```
    pub fn parse(name_or_spec: &str) -> Result<Topology, TopologyError> {
        let spec = PRESETS
            .iter()
            .find(|(name, _)| *name == name_or_spec)
            .map_or(name_or_spec, |(_, spec)| spec);
        let fail = |reason: String| TopologyError {
            spec: name_or_spec.to_owned(),
            reason,
        };
        let mut blocks = Vec::new();
        for part in spec.split(',') {
            let (part, linear) = match part.strip_suffix('l') {
                Some(rest) => (rest, true),
                None => (part, false),
            };
            let numbers = |keys: &[char]| -> Result<Vec<usize>, TopologyError> {
                let mut rest = part;
                keys.iter()
                    .map(|key| {
                        let tail = rest
                            .strip_prefix(*key)
                            .ok_or_else(|| fail(format!("{part:?} lacks {key:?}")))?;
                        let digits = tail
                            .find(|c: char| !c.is_ascii_digit())
                            .unwrap_or(tail.len());
                        rest = &tail[digits..];
                        match tail[..digits].parse::<usize>() {
                            Ok(n) if n > 0 || *key == 'p' => Ok(n),
                            _ => Err(fail(format!(
                                "{part:?} needs a positive number after {key:?}"
                            ))),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|v| match rest.is_empty() {
                        true => Ok(v),
                        false => Err(fail(format!("{part:?} has trailing {rest:?}"))),
                    })
            };
            let block = if part.starts_with('d') {
                Block::Dense {
                    outputs: numbers(&['d'])?[0],
                    linear,
                }
            } else {
                let keys: &[char] = match part.contains('x') {
                    true => &['c', 'k', 's', 'p', 'x'],
                    false => &['c', 'k', 's', 'p'],
                };
                let v = numbers(keys)?;
                let conv = Conv {
                    channels: v[0],
                    kernel: v[1],
                    stride: v[2],
                    padding: v[3],
                    pool: v.get(4).copied().unwrap_or(1),
                };
                Block::Conv { conv, linear }
            };
            if matches!(block, Block::Conv { .. })
                && matches!(blocks.last(), Some(Block::Dense { .. }))
            {
                return Err(fail("a convolution cannot follow a dense layer".into()));
            }
            if matches!(blocks.last(), Some(b) if Block::is_linear(b))
                && matches!(block, Block::Conv { linear: false, .. })
            {
                return Err(fail(
                    "a linear front must end in a dense block with an activation".into(),
                ));
            }
            blocks.push(block);
        }
        if blocks.last().is_some_and(Block::is_linear) {
            return Err(fail("the last hidden block needs an activation".into()));
        }
        Ok(Topology {
            name: name_or_spec.to_owned(),
            blocks,
        })
    }

    /// The spec that [`Topology::parse`] reads back.
    pub fn spec(&self) -> String {
        self.blocks
            .iter()
            .map(|b| {
                let layer = match b {
                    Block::Conv { conv, .. } => conv.spec(),
                    Block::Dense { outputs, .. } => format!("d{outputs}"),
                };
                match b.is_linear() {
                    true => layer + "l",
                    false => layer,
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Checks that every block fits the image it reads.
    pub fn check(&self, input: Shape) -> Result<(), TopologyError> {
        self.try_shapes(input).map(drop).map_err(|e| TopologyError {
            spec: self.name.clone(),
            reason: e.to_string(),
        })
    }

    /// The shape each block outputs (after pooling), for an input of `input`. Panics if a
    /// block does not fit: call [`Topology::check`] first.
    pub fn shapes(&self, input: Shape) -> Vec<Shape> {
        self.try_shapes(input)
            .unwrap_or_else(|e| panic!("topology {} does not fit {input:?}: {e}", self.name))
    }

    /// Each block's output shape, by the contract's shape rule.
    fn try_shapes(&self, input: Shape) -> Result<Vec<Shape>, ShapeError> {
        let mut shape = input;
        self.blocks
            .iter()
            .map(|block| {
                shape = match block {
                    Block::Conv { conv, .. } => conv.output_shape(shape)?,
                    Block::Dense { outputs, .. } => Shape::Flat(*outputs),
                };
                Ok(shape)
            })
            .collect()
    }

    /// Bootstraps per image: one per neuron of each block with an activation.
    pub fn bootstraps(&self, input: Shape) -> usize {
        self.blocks
            .iter()
            .zip(self.shapes(input))
            .filter(|(block, _)| !block.is_linear())
            .map(|(_, shape)| shape.len())
            .sum()
    }
}
