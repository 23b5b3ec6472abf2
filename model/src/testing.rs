//! A tiny network and parameter set, for doc-tests and tests: small enough to read, and
//! compiled exactly as any model is. Not part of the contract.

use crate::circuit::Circuit;
use crate::file::CompiledModel;
use crate::network::{
    Activation, Conv2d, Dense, Function, Granularity, InputSpec, Intensity, Layer, Network,
    OutputSpec, Quantizer,
};
use crate::parameters::{BulkParameters, FheParameters};

/// Noise variances of the order of TFHE-rs's 2_2 parameter sets.
pub fn test_fhe() -> FheParameters {
    FheParameters {
        name: "TEST_PARAMS".into(),
        polynomial_size: 2048,
        fresh_variance: 1.6e-23,
        bootstrap_variance: 1.18e-9,
        keyswitch_variance: 2.33e-7,
        modulus_switch_variance: 1.14e-6,
    }
}

/// The numbers of `hexray-bulk`'s BFV parameter set (N = 8192, 217-bit q, 54-bit t).
pub fn test_bulk() -> BulkParameters {
    BulkParameters {
        name: "TEST_BULK".into(),
        degree: 8192,
        plaintext_modulus: 18_014_398_507_892_737,
        ciphertext_modulus_bits: 217,
        fresh_noise_bits: 5.0,
    }
}

/// [`tiny_network`] with a quadratic in place of its ReLU, so that the bulk path takes it.
pub fn tiny_quadratic_network() -> Network {
    let mut network = tiny_network();
    if let Layer::Activation(act) = &mut network.layers[1] {
        act.functions[1] = Function::Polynomial {
            coefficients: vec![0.0, 1.0, -0.125],
        };
    }
    network
}

/// conv(1→2, 3×3) → per-channel activation → flatten → dense(8→2), on a 4×4 input.
pub fn tiny_network() -> Network {
    Network {
        input: InputSpec::square_8bit(4, Intensity::AsIs),
        layers: vec![
            Layer::Conv2d(Conv2d {
                in_channels: 1,
                out_channels: 2,
                kernel: 3,
                stride: 1,
                padding: 0,
                weights: (0..18).map(|i| (i % 5) - 2).collect(),
                bias: vec![3, -4],
            }),
            Layer::Activation(Activation {
                granularity: Granularity::Channel,
                functions: vec![
                    Function::Polynomial {
                        coefficients: vec![0.1, 0.5, 0.25],
                    },
                    Function::Relu,
                ],
                input_scales: vec![0.01, 0.02],
                output: Quantizer {
                    bits: 4,
                    signed: false,
                    scale: 0.5,
                },
            }),
            Layer::Flatten,
            Layer::Dense(Dense {
                inputs: 8,
                outputs: 2,
                weights: (0..16).map(|i| (i % 7) - 3).collect(),
                bias: vec![1, -1],
            }),
        ],
        output: OutputSpec {
            classes: vec!["normal".into(), "pneumonia".into()],
            logit_scale: 0.1,
            logit_bound_log2: crate::network::DEFAULT_LOGIT_BOUND_LOG2,
        },
    }
}

/// [`tiny_network`] compiled for [`test_fhe`], with its circuit.
pub fn tiny_model() -> (CompiledModel, Circuit) {
    tiny_model_with(test_fhe())
}

/// [`tiny_network`] compiled for `fhe`, with its circuit.
pub fn tiny_model_with(fhe: FheParameters) -> (CompiledModel, Circuit) {
    let model = CompiledModel::build("tiny", "1", "test model", tiny_network(), fhe, 1.0)
        .expect("the tiny network compiles");
    let circuit = crate::compile(&model.network, &model.fhe).expect("and again");
    (model, circuit)
}
