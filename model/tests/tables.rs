//! The lookup-table arithmetic the engine and the simulator share (`circuit::stages`): the
//! negacyclic upper half of a bootstrap's table, and coarse boxes, where an accumulator range
//! wider than the polynomial makes several integers share one table position.

use hexray_model::network::{Conv2d, Layer};
use hexray_model::testing::{test_fhe, tiny_network};
use hexray_model::{compile, Circuit, Network};

/// The tiny network on `bits`-bit inputs with its convolution's weights multiplied by `gain`:
/// the accumulator range, against the same table size, grows with both.
fn with_range(bits: u8, gain: i32) -> (Network, Circuit) {
    let mut network = tiny_network();
    network.input.bits = bits;
    if let Layer::Conv2d(Conv2d { weights, .. }) = &mut network.layers[0] {
        weights.iter_mut().for_each(|w| *w *= gain);
    }
    let circuit = compile(&network, &test_fhe()).unwrap();
    (network, circuit)
}

#[test]
fn the_upper_half_of_the_torus_reads_the_table_negated() {
    let (_, circuit) = with_range(8, 1);
    let stage = &circuit.stages[0];
    let shift = circuit.position_shift();
    let n = circuit.polynomial_size as usize;
    for j in 0..stage.neurons.len() {
        let table = stage.lookup_table(j, circuit.polynomial_size, 1);
        assert_eq!(table.len(), n, "one entry per position of the half torus");
        let mut nonzero = 0;
        for p in (0..n).step_by(37) {
            let lower = (p as u64) << shift;
            let upper = ((p + n) as u64) << shift;
            let entry = stage.table_entry(j, p, shift);
            assert_eq!(table[p] as i64, entry);
            assert_eq!(stage.bootstrap(j, lower, shift), entry);
            // TFHE's negacyclic rotation: position p + N reads −table[p].
            assert_eq!(
                stage.bootstrap(j, upper, shift),
                -entry,
                "neuron {j}, p {p}"
            );
            nonzero += usize::from(entry != 0);
        }
        assert!(nonzero > 0, "a table of zeros would not test the sign");
    }
}

#[test]
fn the_margins_keep_every_reachable_phase_in_the_lower_half() {
    let (_, circuit) = with_range(8, 1);
    let stage = &circuit.stages[0];
    let half = 1u64 << 63;
    for (j, neuron) in stage.neurons.iter().enumerate() {
        for acc in [neuron.acc_min, neuron.acc_max] {
            let phase = ((acc - neuron.acc_min) as u64)
                .wrapping_mul(stage.delta)
                .wrapping_add(stage.margin);
            assert!(
                phase >= stage.margin && phase + stage.margin <= half,
                "neuron {j}"
            );
        }
    }
}

#[test]
fn fine_boxes_read_every_integer_back_as_itself() {
    // 6-bit inputs keep every accumulator range under the 2048 positions.
    let (_, circuit) = with_range(6, 1);
    let stage = &circuit.stages[0];
    let shift = circuit.position_shift();
    let n = circuit.polynomial_size as i64;
    for (j, neuron) in stage.neurons.iter().enumerate() {
        assert!(
            neuron.acc_max - neuron.acc_min < n,
            "neuron {j}'s boxes are fine"
        );
        for acc in neuron.acc_min..=neuron.acc_max {
            assert_eq!(stage.read_accumulator(j, acc, shift), acc);
        }
    }
}

#[test]
fn coarse_boxes_share_a_position_between_neighbouring_integers() {
    let (_, circuit) = with_range(8, 40);
    let stage = &circuit.stages[0];
    let shift = circuit.position_shift();
    let n = circuit.polynomial_size as i64;
    for (j, neuron) in stage.neurons.iter().enumerate() {
        let range = neuron.acc_max - neuron.acc_min;
        assert!(
            range > 4 * n,
            "gain 40 makes neuron {j}'s range ({range}) coarse"
        );
        // Integers per position, rounded up, and so the furthest a read may land.
        let per_box = (range + n - 1) / n;
        let reads: Vec<i64> = (neuron.acc_min..=neuron.acc_max)
            .map(|acc| stage.read_accumulator(j, acc, shift))
            .collect();
        for (acc, read) in (neuron.acc_min..).zip(&reads) {
            assert!(
                (read - acc).abs() <= per_box,
                "neuron {j}: {acc} reads {read}, more than a box ({per_box}) away"
            );
            assert!((neuron.acc_min..=neuron.acc_max).contains(read));
        }
        // Reads never go down as the accumulator goes up, and there are at most N of them.
        assert!(reads.windows(2).all(|w| w[0] <= w[1]), "neuron {j}");
        let mut distinct = reads.clone();
        distinct.dedup();
        assert!(
            distinct.len() as i64 <= n,
            "neuron {j}: {} reads",
            distinct.len()
        );
        assert!(
            distinct.len() < reads.len(),
            "neuron {j}: integers share positions"
        );
    }
}
