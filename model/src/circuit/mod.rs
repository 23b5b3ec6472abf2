//! The encrypted circuit: a network compiled into stages of dot products and bootstraps.
//!
//! A circuit is a list of stages. Each stage is a composed linear map over the previous stage's
//! integers, then (except in the last, the output stage) one bootstrap per neuron.
//!
//! **Encoding.** Stage inputs are encrypted as `q·Δ` on the 64-bit torus. A neuron's phase after
//! its dot product plus a clear constant is
//!
//! ```text
//! phase = (acc − acc_min)·Δ + margin,        acc ∈ [acc_min, acc_max]
//! ```
//!
//! where `[acc_min, acc_max]` is the worst case over every input the previous stage can produce
//! (range analysis: each input lies between the smallest and largest entry of the table that
//! produced it, or in the pixel range for stage 0), and `margin` is [`NOISE_MARGIN_SIGMAS`] standard deviations of the noise the
//! phase carries. Δ is the largest integer with `margin + R·Δ + margin ≤ 2^63` for the stage's
//! widest range R, so every reachable phase, noise included, stays in the half torus and the
//! padding bit can never be set. A network for which no Δ ≥ 1 exists is refused.
//!
//! **Noise.** Inputs to stage 0 carry fresh-encryption noise, later inputs carry bootstrap output
//! noise; a dot product multiplies their variance by ‖w‖². Before a bootstrap the keyswitch and
//! the modulus switch add their own, and so does the output compression to the output stage.
//! All variances come from [`FheParameters`](crate::FheParameters).
//!
//! A stage keeps the two sources apart ([`Stage::input_sigma`], [`Stage::switch_sigma`])
//! because they are not alike: the inputs' noise is shared by every neuron that reads the same
//! ciphertexts, so two neurons' (and two logits') errors are correlated, while the switches'
//! noise is fresh for every bootstrap. Each neuron's [`Neuron::sigma`] is the sum of both, the
//! figure the margins are sized from.
//!
//! **Tables.** A bootstrap over polynomial size N reads the phase at 2N positions of the torus.
//! TFHE-rs's centred modulus switch subtracts half a position before rounding, so position `p`
//! holds every phase in `[p, p+1)·2^64/2N` and its table entry is evaluated at the position's
//! centre. Each position is its own box (the finest the polynomial allows): a neuron's table
//! reads its accumulator at N points of its range, not at the 16 values a 2_2 shortint message
//! holds.
//!
//! The modules build on one another in this order:
//! - [`linear`]: composing a run of linear layers into one affine form per neuron;
//! - [`stages`]: the circuit's types and every method on them, including the phase and table
//!   arithmetic that the encrypted engine and the simulator must share exactly;
//! - [`compile`](mod@compile): range analysis, noise and encoding, network → circuit.

pub mod compile;
pub mod linear;
pub mod stages;

pub use compile::{compile, fit_logit_bound, NOISE_MARGIN_SIGMAS};
pub use linear::Affine;
pub use stages::{
    output_unit_log2, Circuit, Encoding, Neuron, Stage, StageActivation, StageEncoding,
    StageReport, INPUT_DELTA_LOG2,
};
