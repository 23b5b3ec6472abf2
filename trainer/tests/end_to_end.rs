//! A tiny end-to-end run on real PneumoniaMNIST images: teacher, distilled quadratic student,
//! quantization- and noise-aware fine-tuning, export, and the circuit simulator. It takes a few
//! seconds and must beat chance; the export must match the simulator bit for bit.

mod common;

use burn::prelude::*;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use hexray_crypto::params::DEFAULT_PARAMETER_SET;
use hexray_model::network::Granularity;
use hexray_model::network::{Dense, InputSpec, Intensity, Layer, Shape};
use hexray_model::simulate;
use hexray_model::CompiledModel;
use hexray_trainer::data::{load_npz, Dataset};
use hexray_trainer::export::IntegerNet;
use hexray_trainer::loss::Distillation;
use hexray_trainer::net::{ActivationMode, Pass};
use hexray_trainer::pipeline::{
    export_mismatches, score_circuit, strong_teacher, teacher, train_and_compile, Config, Lesson,
};
use hexray_trainer::topology::Topology;
use hexray_trainer::train::{noise_levels, QatRecipe, Recipe, Settings, Tensors};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const INPUT: Shape = Shape::Image { c: 1, h: 28, w: 28 };

/// A short recipe on `topology`, distilled from `strong` when given.
fn tiny_config(topology: &str, strong: Option<&str>, epochs: [usize; 4]) -> Config {
    let [teacher_epochs, blend_epochs, student_epochs, quantized_epochs] = epochs;
    Config {
        topology: Topology::parse(topology).unwrap(),
        recipe: Recipe {
            square: false,
            granularity: Granularity::Element,
            from_teacher: true,
            distillation: Some(Distillation {
                temperature: 4.0,
                alpha: 0.7,
            }),
            blend_epochs,
            epochs: student_epochs,
            quantization: Some(QatRecipe {
                weight_bits: 4,
                activation_bits: 5,
                epochs: quantized_epochs,
                noise: true,
            }),
        },
        teacher_epochs,
        settings: Settings {
            batch_size: 32,
            learning_rate: 2e-3,
            weight_decay: None,
            seed: 5,
            progress: false,
        },
        input: InputSpec::square_8bit(28, Intensity::AsIs),
        classes: vec!["normal".into(), "pneumonia".into()],
        strong_teacher: strong.map(|spec| Topology::parse(spec).unwrap()),
        fhe: DEFAULT_PARAMETER_SET.fhe_parameters(),
    }
}

/// A quarter of the training split and the validation split, as the float network's tensors,
/// and the test split.
fn tiny_splits(input: &InputSpec) -> (Tensors, Tensors, Dataset, Dataset) {
    let path = common::shared_data("pneumoniamnist.npz");
    let train_full = load_npz(&path, "train", input).unwrap();
    let train = train_full.subset(&(0..train_full.len()).step_by(4).collect::<Vec<_>>());
    let val = load_npz(&path, "val", input).unwrap();
    let test = load_npz(&path, "test", input).unwrap();
    (
        Tensors::new(&train, input.scale),
        Tensors::new(&val, input.scale),
        val,
        test,
    )
}

#[test]
fn a_tiny_training_run_beats_chance_and_exports_bit_exactly() {
    // Distilled from a larger network than itself, as the method allows.
    let config = tiny_config("c-narrow", Some("c8k3s1p1x2,d32"), [8, 2, 4, 3]);
    let input = config.input.clone();
    let (tr, va, val, test) = tiny_splits(&input);
    let mut log = Vec::new();
    let teacher_net = teacher(None, &config, &tr, &va, &mut log);
    let strong = strong_teacher(&config, &tr, &va, &mut log).expect("the config names one");
    let lesson = Lesson {
        teacher: &teacher_net,
        strong: Some(&strong),
        train: &tr,
        val: &va,
        val_images: &val,
    };
    let student = train_and_compile(&config, &lesson, &mut log, "tiny", "test").unwrap();
    let (quantized, model, circuit) = student.quantized.unwrap();
    assert_eq!(log.len(), 8 + 8 + 2 + 4 + 3, "one log entry per epoch");

    // The file round-trips and loads as the evaluator would.
    let (reloaded, _) = CompiledModel::from_bytes(&model.to_bytes()).unwrap();
    assert_eq!(reloaded, model);
    assert_eq!(circuit.bootstrap_count(), 2 * 6 * 6 + 16);

    // Bit-exact: the trainer's integer forward pass equals the simulator on the test split.
    assert_eq!(
        export_mismatches(&quantized, &input, &config.classes, &circuit, &test).unwrap(),
        0
    );

    // Better than chance (0.5 on the balanced split), exact and under TFHE's noise.
    let exact = score_circuit(&circuit, &test, 0, 1).unwrap().0;
    let noisy = score_circuit(&circuit, &test, 3, 1).unwrap().0;
    assert!(exact.accuracy > 0.7, "exact accuracy {}", exact.accuracy);
    assert!(noisy.accuracy > 0.7, "noisy accuracy {}", noisy.accuracy);
    assert!(exact.auc > 0.8, "AUC {}", exact.auc);

    // The student trained under the circuit's noise: one image's logit margin spreads alike
    // under the trainer's noisy forward pass and the noisy simulator, which
    // `tests/noise_model.rs` and every encrypted report check against TFHE itself.
    let integer = IntegerNet::new(
        &quantized.net,
        &quantized.quantization,
        input.clone(),
        config.classes.clone(),
    );
    let (levels, _) = noise_levels(&integer, &config.fhe).unwrap();
    let (image, draws) = (7, 1000);
    let copies = Tensors::new(&test.subset(&vec![image; draws]), input.scale);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let logits = quantized.net.valid().forward(
        copies.batch(&(0..draws).collect::<Vec<_>>(), &Device::flex()),
        &mut Pass {
            mode: ActivationMode::Quadratic,
            quantization: Some(&quantized.quantization),
            noise: Some((&levels, &mut rng)),
        },
    );
    let logits = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let trained: Vec<f64> = logits.chunks(2).map(|l| (l[1] - l[0]) as f64).collect();
    let simulated: Vec<f64> = (0..draws)
        .map(|_| {
            let l = simulate::noisy(&circuit, test.images[image].view(), &mut rng)
                .unwrap()
                .logits;
            l[1] - l[0]
        })
        .collect();
    let ratio = sd(&trained) / sd(&simulated);
    assert!(
        (0.88..1.14).contains(&ratio),
        "the trainer's noise spreads {ratio:.2}× the simulator's"
    );
}

#[test]
fn a_linear_front_trains_as_layers_and_exports_its_composition_bit_exactly() {
    // A 5×5 convolution pooled 2×2 with no activation, then 16 neurons: 16 bootstraps.
    let config = tiny_config("c4k5s1p2x2l,d16", None, [4, 1, 2, 2]);
    assert_eq!(config.topology.bootstraps(INPUT), 16);
    let input = config.input.clone();
    let (tr, va, val, test) = tiny_splits(&input);
    let mut log = Vec::new();
    let teacher_net = teacher(None, &config, &tr, &va, &mut log);
    assert_eq!(
        teacher_net.hidden.len(),
        1,
        "the front belongs to the one stage"
    );
    assert_eq!(teacher_net.hidden[0].front.len(), 1);

    // The composed map is the layers' map: same pre-activations on real images.
    let block = &teacher_net.valid().hidden[0];
    let images = Tensors::new(&test.subset(&(0..8).collect::<Vec<_>>()), input.scale)
        .batch(&(0..8).collect::<Vec<_>>(), &Device::flex());
    let (weight, bias) = block.composed(INPUT);
    let composed = images.clone().flatten::<2>(1, 3).matmul(weight) + bias.unsqueeze();
    let layers = {
        let front = &block.front[0];
        let x = avg_pool2d(
            front.conv.as_ref().unwrap().forward(images),
            AvgPoolOptions::new([2, 2]),
        );
        block.dense.as_ref().unwrap().forward(x.flatten::<2>(1, 3))
    };
    let gap = (composed - layers).abs().max().into_scalar::<f32>();
    assert!(
        gap < 1e-3,
        "composed and layered pre-activations differ by {gap}"
    );

    let lesson = Lesson {
        teacher: &teacher_net,
        strong: None,
        train: &tr,
        val: &va,
        val_images: &val,
    };
    let student = train_and_compile(&config, &lesson, &mut log, "front", "test").unwrap();
    let (quantized, model, circuit) = student.quantized.unwrap();
    assert_eq!(circuit.bootstrap_count(), 16);
    // The file holds one dense layer over the pixels: the composition.
    assert!(matches!(
        model.network.layers[..2],
        [
            Layer::Flatten,
            Layer::Dense(Dense {
                inputs: 784,
                outputs: 16,
                ..
            })
        ]
    ));
    assert_eq!(
        export_mismatches(&quantized, &input, &config.classes, &circuit, &test).unwrap(),
        0
    );
    let exact = score_circuit(&circuit, &test, 0, 1).unwrap().0;
    assert!(exact.accuracy > 0.7, "exact accuracy {}", exact.accuracy);
}

fn sd(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}
