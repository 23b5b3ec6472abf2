//! The training math: the distillation loss and the quadratic activation's gradients.

use burn::module::Param;
use burn::prelude::*;
use hexray_model::network::Granularity;
use hexray_model::network::Shape;
use hexray_trainer::activation::{Quadratic, RELU_FIT};
use hexray_trainer::loss::{cross_entropy, Distillation};

fn device() -> Device {
    Device::flex().autodiff()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn scalar(t: Tensor<1>) -> f64 {
    values(t)[0] as f64
}

#[test]
fn distillation_loss_is_zero_when_the_student_equals_the_teacher() {
    let device = device();
    let logits = [[2.0f32, -1.0, 0.5], [0.1, 0.2, 3.0]];
    let student = Tensor::<2>::from_floats(logits, &device).require_grad();
    let teacher = Tensor::<2>::from_floats(logits, &device);
    let labels = Tensor::<1, Int>::from_ints([0, 2], &device);
    let kd = Distillation {
        temperature: 4.0,
        alpha: 1.0,
    };
    let loss = kd.loss(student.clone(), teacher.clone(), labels.clone());
    assert!(scalar(loss.clone()).abs() < 1e-6);
    let grads = loss.backward();
    let grad = values(student.grad(&grads).expect("student has a gradient"));
    assert!(
        grad.iter().all(|g| g.is_finite() && g.abs() < 1e-5),
        "{grad:?}"
    );

    // Away from the teacher the loss is positive, with finite gradients.
    let other =
        Tensor::<2>::from_floats([[0.0f32, 0.0, 0.0], [1.0, 1.0, -1.0]], &device).require_grad();
    let mixed = Distillation {
        temperature: 2.0,
        alpha: 0.7,
    };
    let loss = mixed.loss(other.clone(), teacher, labels.clone());
    assert!(scalar(loss.clone()) > 0.0);
    let grad = values(other.grad(&loss.backward()).unwrap());
    assert!(grad.iter().all(|g| g.is_finite()) && grad.iter().any(|g| g.abs() > 1e-3));

    // With α = 0 it is the cross-entropy: −log(1/3) for uniform logits.
    let uniform = Tensor::<2>::zeros([2, 3], &device);
    let ce = scalar(cross_entropy(uniform, labels));
    assert!((ce - 3f64.ln()).abs() < 1e-5, "{ce}");
}

/// `Σ w ⊙ quadratic(z)` for fixed weights w, as a function of every input and coefficient.
fn objective(q: &Quadratic, z: Tensor<2>, w: &Tensor<2>) -> Tensor<1> {
    (q.forward(z) * w.clone()).sum()
}

#[test]
fn quadratic_gradients_match_finite_differences() {
    let device = device();
    for granularity in [
        Granularity::Layer,
        Granularity::Channel,
        Granularity::Element,
    ] {
        // Two channels of a 1×2 image: four neurons.
        let shape = Shape::Image { c: 2, h: 1, w: 2 };
        let mut q = Quadratic::new(granularity, shape, &device);
        let sets = granularity.count(shape);
        let coefficient = |base: f32| {
            Param::from_tensor(Tensor::<1>::from_floats(
                (0..sets)
                    .map(|k| base + 0.1 * k as f32)
                    .collect::<Vec<_>>()
                    .as_slice(),
                &device,
            ))
        };
        q.a = coefficient(0.3);
        q.b = coefficient(-0.2);
        q.c = coefficient(0.05);
        let z_values = [[0.5f32, -1.2, 2.0, 0.3], [-0.7, 1.1, -0.4, 1.6]];
        let z = Tensor::<2>::from_floats(z_values, &device).require_grad();
        let w =
            Tensor::<2>::from_floats([[1.0f32, -2.0, 0.5, 3.0], [0.7, 1.5, -1.0, 2.0]], &device);
        let grads = objective(&q, z.clone(), &w).backward();

        // d/dz = (2a·z + b)·w, by central differences on each input.
        let analytic = values(z.grad(&grads).unwrap());
        let eps = 1e-2f32;
        for k in 0..8 {
            let shifted = |d: f32| {
                let mut v = z_values;
                v[k / 4][k % 4] += d;
                scalar(objective(&q, Tensor::<2>::from_floats(v, &device), &w))
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
            assert!(
                (numeric - analytic[k] as f64).abs() < 1e-2,
                "{granularity:?} z[{k}]: {numeric} vs {}",
                analytic[k]
            );
        }

        // d/da, d/db, d/dc per coefficient set.
        for (name, param) in [("a", &q.a), ("b", &q.b), ("c", &q.c)] {
            let analytic = values(param.val().grad(&grads).unwrap());
            for set in 0..sets {
                let shifted = |d: f32| {
                    let mut moved = q.clone();
                    let mut v = values(param.val());
                    v[set] += d;
                    let p = Param::from_tensor(Tensor::<1>::from_floats(v.as_slice(), &device));
                    match name {
                        "a" => moved.a = p,
                        "b" => moved.b = p,
                        _ => moved.c = p,
                    }
                    scalar(objective(
                        &moved,
                        Tensor::<2>::from_floats(z_values, &device),
                        &w,
                    ))
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[set] as f64).abs() < 1e-2,
                    "{granularity:?} {name}[{set}]: {numeric} vs {}",
                    analytic[set]
                );
            }
        }
    }
}

#[test]
fn the_blend_moves_from_relu_to_the_quadratic() {
    let device = Device::flex();
    let q = Quadratic::new(Granularity::Element, Shape::Flat(3), &device);
    let z = Tensor::<2>::from_floats([[-1.0f32, 0.0, 2.0]], &device);
    assert_eq!(values(q.blend(z.clone(), 0.0)), vec![0.0, 0.0, 2.0]);
    let quadratic: Vec<f32> = [-1.0f64, 0.0, 2.0]
        .iter()
        .map(|z| (RELU_FIT[0] + RELU_FIT[1] * z + RELU_FIT[2] * z * z) as f32)
        .collect();
    for (got, want) in values(q.blend(z, 1.0)).iter().zip(&quadratic) {
        assert!((got - want).abs() < 1e-5);
    }
    assert_eq!(q.coefficients().len(), 3);
}

/// Batch norm's running statistics are shared between burn clones; a student trained from a
/// copy of its teacher must leave the teacher's statistics where they were.
#[test]
fn training_an_independent_copy_leaves_the_original_untouched() {
    use hexray_trainer::net::{ActivationMode, Net, Pass};
    use hexray_trainer::topology::Topology;

    let device = device();
    let topology = Topology::parse("c2k3s1p0,d4").unwrap();
    let input = Shape::Image { c: 1, h: 6, w: 6 };
    let teacher = Net::new(&topology, input, 2, Granularity::Layer, &device);
    let statistics = |net: &Net| {
        values(
            net.hidden[0]
                .norm
                .as_ref()
                .unwrap()
                .running_mean
                .value_sync(),
        )
    };
    let before = statistics(&teacher);
    let images = Tensor::<4>::random([8, 1, 6, 6], burn::tensor::Distribution::Default, &device);

    let copy = teacher.independent_copy();
    copy.forward(images.clone(), &mut Pass::float(ActivationMode::Relu));
    assert_eq!(statistics(&teacher), before, "the copy moved the original");
    assert_ne!(
        statistics(&copy),
        before,
        "a training pass updates the copy's statistics"
    );

    // What `clone()` alone would have done:
    let shared = teacher.clone();
    shared.forward(images, &mut Pass::float(ActivationMode::Relu));
    assert_ne!(statistics(&teacher), before);
}

#[test]
fn one_argmax_rule_counts_a_tie_for_the_first_class_everywhere() {
    use hexray_trainer::metrics::Scores;
    use hexray_trainer::train::accuracy;
    let tied = vec![vec![0.5, 0.5]];
    // A tie names the first class: right for label 0, wrong for label 1, in training's
    // checkpoint choice and in the reports alike.
    assert_eq!(accuracy(&tied, &[0]), 1.0);
    assert_eq!(accuracy(&tied, &[1]), 0.0);
    assert_eq!(Scores::new(&tied, &[1]).accuracy, 0.0);
    assert_eq!(Scores::new(&tied, &[0]).accuracy, 1.0);
    assert_eq!(hexray_model::simulate::argmax(&[0.2, 0.7, 0.7]), 1);
}

#[test]
fn each_training_phase_shuffles_differently_and_repeatably() {
    use hexray_trainer::train::phase_rng;
    use rand::seq::SliceRandom;
    let order = |phase: &str| {
        let mut order: Vec<usize> = (0..64).collect();
        order.shuffle(&mut phase_rng(2024, phase));
        order
    };
    let phases = ["teacher", "replace", "student", "quantized"];
    for (i, a) in phases.iter().enumerate() {
        assert_eq!(order(a), order(a), "{a} repeats");
        for b in &phases[i + 1..] {
            assert_ne!(order(a), order(b), "{a} and {b} shuffle alike");
        }
    }
}

/// A `d8` teacher trained for 4 epochs on 64 random 6×6 images (the same every call), from
/// `start` when given and with `weight_decay`: small enough to train in a test, large enough
/// that every layer that may learn moves.
fn small_teacher(
    start: Option<hexray_trainer::net::Net>,
    weight_decay: Option<f64>,
) -> hexray_trainer::net::Net {
    use hexray_trainer::topology::Topology;
    use hexray_trainer::train::{train_teacher, Settings, Tensors};
    use rand::{Rng, SeedableRng};

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let data = Tensors {
        images: (0..64 * 36).map(|_| rng.gen::<f32>()).collect(),
        labels: (0..64).map(|i| i % 2).collect(),
        dims: [1, 6, 6],
    };
    let settings = Settings {
        batch_size: 16,
        learning_rate: 1e-2,
        weight_decay,
        seed: 3,
        progress: false,
    };
    let topology = Topology::parse("d8").unwrap();
    train_teacher(
        start,
        &topology,
        2,
        &data,
        &data,
        4,
        &settings,
        &mut Vec::new(),
    )
}

/// `--weight-decay`: the same training with an L2 penalty ends with smaller weights.
#[test]
fn weight_decay_pulls_the_weights_towards_zero() {
    let squared_weights = |weight_decay| {
        let net = small_teacher(None, weight_decay);
        let dense = net.hidden[0].dense.as_ref().unwrap();
        values(dense.weight.val().powf_scalar(2.0).sum().reshape([1]))[0]
    };
    let (plain, decayed) = (squared_weights(None), squared_weights(Some(0.5)));
    assert!(decayed < 0.9 * plain, "{decayed} vs {plain}");
}

/// Transfer's frozen front (`transfer`, `train --adult-pretraining frozen-front`): training a
/// pre-trained network with its front frozen moves its output layer and leaves its hidden
/// layer's weights exactly where pre-training put them; without the freeze, both move.
#[test]
fn a_frozen_front_keeps_its_weights_while_the_head_learns() {
    use hexray_trainer::net::Net;

    let front = |net: &Net| {
        let dense = net.hidden[0].dense.as_ref().unwrap();
        values(dense.weight.val().flatten::<1>(0, 1))
    };
    let head = |net: &Net| values(net.output.weight.val().flatten::<1>(0, 1));

    let pretrained = small_teacher(None, None);
    let frozen = small_teacher(
        Some(pretrained.independent_copy().with_frozen_front()),
        None,
    );
    assert_eq!(front(&frozen), front(&pretrained), "the frozen front moved");
    assert_ne!(head(&frozen), head(&pretrained), "the head did not learn");

    let fine_tuned = small_teacher(Some(pretrained.independent_copy()), None);
    assert_ne!(
        front(&fine_tuned),
        front(&pretrained),
        "fine-tuning left the front alone"
    );
}
