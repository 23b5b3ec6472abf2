//! Phases, bootstrap positions and lookup tables: the arithmetic that the encrypted engine and
//! the simulator must share exactly.
//!
//! A bootstrap over polynomial size N reads the phase at 2N positions of the torus. TFHE-rs's
//! centred modulus switch subtracts half a position before rounding, so position `p` holds every
//! phase in `[p, p+1)·2^64/2N` and its table entry is evaluated at the position's centre. Each
//! position is its own box (the finest the polynomial allows): a neuron's table reads its
//! accumulator at N points of its range, not at the 16 values a 2_2 shortint message holds.

use crate::compile::{Circuit, Stage};

impl Circuit {
    /// Bits of the phase below the bootstrap position: 64 − log2(2N).
    pub fn position_shift(&self) -> u32 {
        63 - self.polynomial_size.trailing_zeros()
    }
}

impl Stage {
    /// The clear constant added after the dot product: `(bias − acc_min)·Δ + margin` before a
    /// bootstrap, `(bias − origin)·Δ` in the output stage.
    pub fn constant(&self, j: usize) -> u64 {
        let n = &self.neurons[j];
        if self.activation.is_some() {
            (n.form.bias.wrapping_sub(n.acc_min) as u64)
                .wrapping_mul(self.delta)
                .wrapping_add(self.margin)
        } else {
            (n.form.bias.wrapping_sub(self.origin) as u64).wrapping_mul(self.delta)
        }
    }

    /// Noise-free phase of neuron `j` for stage inputs `x`: what the server's dot product
    /// encrypts.
    pub fn phase(&self, j: usize, x: &[i64]) -> u64 {
        self.neurons[j]
            .form
            .terms
            .iter()
            .fold(self.constant(j), |acc, &(i, w)| {
                acc.wrapping_add((w.wrapping_mul(x[i as usize]) as u64).wrapping_mul(self.delta))
            })
    }

    /// The accumulator that position `p` (0 ≤ p < N) of neuron `j`'s table stands for.
    ///
    /// Accumulators are integers, so the position's centre is decoded and rounded to the
    /// nearest one, then clamped to the proven range (noise at the edges reads the edge value).
    /// When Δ spans at least one position, every integer reads back as itself; a wider range
    /// shares each position between several integers, which all read its centre.
    pub fn position_accumulator(&self, j: usize, p: usize, shift: u32) -> i64 {
        let n = &self.neurons[j];
        let centre = (p as f64 + 0.5) * (1u64 << shift) as f64;
        let acc = n.acc_min as f64 + (centre - self.margin as f64) / self.delta as f64;
        (acc.round() as i64).clamp(n.acc_min, n.acc_max)
    }

    /// The accumulator neuron `j`'s table reads when its exact (noise-free) accumulator is
    /// `acc`: the representative of the position `acc`'s phase falls in. The trainer's integer
    /// forward pass applies the activation here, so that it matches the circuit bit for bit.
    pub fn read_accumulator(&self, j: usize, acc: i64, shift: u32) -> i64 {
        let n = &self.neurons[j];
        let phase = (acc.wrapping_sub(n.acc_min) as u64)
            .wrapping_mul(self.delta)
            .wrapping_add(self.margin);
        self.position_accumulator(j, (phase >> shift) as usize, shift)
    }

    /// The output integer of neuron `j`'s table at position `p` (0 ≤ p < N): the trained
    /// function of the position's accumulator, scaled to the pre-activation and requantized
    /// with clipping.
    pub fn table_entry(&self, j: usize, p: usize, shift: u32) -> i64 {
        let activation = self.activation.as_ref().expect("hidden stage");
        let (function, scale) = activation.of(j);
        let acc = self.position_accumulator(j, p, shift);
        activation
            .output
            .quantize(function.eval(acc as f64 * scale))
    }

    /// Neuron `j`'s lookup table for a bootstrap over `polynomial_size` positions, its outputs
    /// encoded for the next stage as `q·next_delta`.
    pub fn lookup_table(&self, j: usize, polynomial_size: u32, next_delta: u64) -> Vec<u64> {
        let shift = 63 - polynomial_size.trailing_zeros();
        (0..polynomial_size as usize)
            .map(|p| (self.table_entry(j, p, shift) as u64).wrapping_mul(next_delta))
            .collect()
    }

    /// What neuron `j`'s bootstrap outputs for `phase`: the table entry of its position, negated
    /// in the upper half torus (TFHE's negacyclic rotation), which the margins make unreachable.
    pub fn bootstrap(&self, j: usize, phase: u64, shift: u32) -> i64 {
        let half = 1usize << (63 - shift);
        let p = (phase >> shift) as usize;
        if p < half {
            self.table_entry(j, p, shift)
        } else {
            -self.table_entry(j, p - half, shift)
        }
    }

    /// The real accumulator an output-stage phase encodes.
    pub fn decode(&self, phase: u64) -> f64 {
        self.origin as f64 + phase as i64 as f64 / self.delta as f64
    }
}
