//! The whole method, end to end: teacher, student, quantized student, model file, and the
//! scores of each on a test set.

use hexray_model::circuit::fit_logit_bound;
use hexray_model::network::InputSpec;
use hexray_model::FheParameters;
use hexray_model::{borderline, simulate};
use hexray_model::{Circuit, CompiledModel, ModelError};
use ndarray::Axis;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::Dataset;
use crate::export::IntegerNet;
use crate::metrics::Scores;
use crate::net::{ActivationMode, Net, Pass};
use crate::topology::Topology;
use crate::train::{
    predict, quantize_student, train_student, train_teacher, EpochLog, QuantizedStudent, Recipe,
    Settings, Tensors,
};

/// Everything one run needs besides the data.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub topology: Topology,
    pub recipe: Recipe,
    pub teacher_epochs: usize,
    pub settings: Settings,
    pub input: InputSpec,
    pub classes: Vec<String>,
    /// A larger ReLU network to distil the student from; `None`: the student-shaped teacher.
    pub strong_teacher: Option<Topology>,
    #[serde(skip)]
    pub fhe: FheParameters,
}

/// A trained student, and what it compiled to when the recipe quantized it.
pub struct Student {
    /// The float student (batch norm not folded).
    pub float: Net,
    pub quantized: Option<(QuantizedStudent, CompiledModel, Circuit)>,
}

/// What a student learns from: the teacher it starts from, the one it is distilled from, and
/// the data it is trained and chosen on.
pub struct Lesson<'a> {
    /// The ReLU network of the student's own shape, whose weights the student starts from.
    pub teacher: &'a Net,
    /// A larger ReLU network to distil from instead of `teacher` (Baruch et al. allow a teacher
    /// larger than its student).
    pub strong: Option<&'a Net>,
    pub train: &'a Tensors,
    pub val: &'a Tensors,
    /// The validation split as input integers, on which the compiled circuit's borderline
    /// margin is measured.
    pub val_images: &'a Dataset,
}

/// Trains the student of `config.recipe` from `lesson`, quantizing and compiling it when the
/// recipe asks.
pub fn train_and_compile(
    config: &Config,
    lesson: &Lesson,
    log: &mut Vec<EpochLog>,
    name: &str,
    description: &str,
) -> Result<Student, ModelError> {
    let recipe = &config.recipe;
    let Lesson {
        teacher,
        strong,
        train,
        val,
        val_images,
    } = *lesson;
    let distil_from = strong.unwrap_or(teacher);
    let float = train_student(
        teacher,
        distil_from,
        recipe,
        train,
        val,
        &config.settings,
        log,
    );
    let quantized = match &recipe.quantization {
        None => None,
        Some(qat) => {
            let q = quantize_student(
                float.independent_copy(),
                qat,
                recipe.distillation,
                distil_from,
                train,
                val,
                &config.input,
                &config.classes,
                &config.fhe,
                &config.settings,
                log,
            )?;
            let integer = IntegerNet::new(
                &q.net,
                &q.quantization,
                config.input.clone(),
                config.classes.clone(),
            );
            let mut network = integer.network();
            let circuit = fit_logit_bound(&mut network, &config.fhe)?;
            let mut rng = ChaCha8Rng::seed_from_u64(config.settings.seed);
            let margin = borderline::measure(&circuit, &val_images.images, &mut rng)?;
            let model =
                CompiledModel::build(name, "1", description, network, config.fhe.clone(), margin)?;
            let (model, circuit) = CompiledModel::from_bytes(&model.to_bytes())?;
            Some((q, model, circuit))
        }
    };
    Ok(Student { float, quantized })
}

/// Trains the teacher of `config`, from `start` when given (transfer learning).
pub fn teacher(
    start: Option<Net>,
    config: &Config,
    train: &Tensors,
    val: &Tensors,
    log: &mut Vec<EpochLog>,
) -> Net {
    relu_teacher(start, &config.topology, config, train, val, log)
}

/// Trains the config's strong teacher, when it names one: the same recipe as [`teacher`], on
/// the larger topology.
pub fn strong_teacher(
    config: &Config,
    train: &Tensors,
    val: &Tensors,
    log: &mut Vec<EpochLog>,
) -> Option<Net> {
    let topology = config.strong_teacher.as_ref()?;
    Some(relu_teacher(None, topology, config, train, val, log))
}

/// The teacher recipe of `config` on `topology`.
fn relu_teacher(
    start: Option<Net>,
    topology: &Topology,
    config: &Config,
    train: &Tensors,
    val: &Tensors,
    log: &mut Vec<EpochLog>,
) -> Net {
    train_teacher(
        start,
        topology,
        config.classes.len(),
        train,
        val,
        config.teacher_epochs,
        &config.settings,
        log,
    )
}

/// Scores of a float network.
pub fn score_float(net: &Net, mode: ActivationMode, test: &Tensors) -> (Scores, Vec<Vec<f64>>) {
    let probabilities = predict(net, test, &mut Pass::float(mode));
    (Scores::new(&probabilities, &test.labels), probabilities)
}

/// Scores of the circuit's simulator, exact (`draws` = 0) or averaged over `draws` noisy
/// draws per image.
pub fn score_circuit(
    circuit: &Circuit,
    test: &Dataset,
    draws: usize,
    seed: u64,
) -> Result<(Scores, Vec<Vec<f64>>), ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut probabilities = Vec::with_capacity(test.len());
    let mut labels = Vec::with_capacity(test.len());
    for (image, &label) in test.images.iter().zip(&test.labels) {
        if draws == 0 {
            probabilities.push(simulate::exact(circuit, image.view())?.probabilities);
            labels.push(label);
        } else {
            for _ in 0..draws {
                probabilities.push(simulate::noisy(circuit, image.view(), &mut rng)?.probabilities);
                labels.push(label);
            }
        }
    }
    Ok((Scores::new(&probabilities, &labels), probabilities))
}

/// Checks the trainer's integer forward pass against the circuit simulator on `test`: the
/// number of images whose output accumulators differ (0 when the export is right).
pub fn export_mismatches(
    student: &QuantizedStudent,
    input: &InputSpec,
    classes: &[String],
    circuit: &Circuit,
    test: &Dataset,
) -> Result<usize, ModelError> {
    let integer = IntegerNet::new(
        &student.net,
        &student.quantization,
        input.clone(),
        classes.to_vec(),
    );
    let device = burn::prelude::Device::flex();
    let mut mismatches = 0;
    for chunk in test.images.chunks(128) {
        let views: Vec<_> = chunk.iter().map(|i| i.view()).collect();
        let stacked = ndarray::stack(Axis(0), &views).expect("images of one shape");
        let dims = stacked.dim();
        let values: Vec<f32> = stacked.iter().map(|&v| v as f32).collect();
        let tensor = burn::prelude::Tensor::<4>::from_data(
            burn::prelude::TensorData::new(values, [dims.0, dims.1, dims.2, dims.3]),
            &device,
        );
        let trainer = integer.forward(tensor, circuit);
        for (image, mine) in chunk.iter().zip(trainer) {
            let simulated = simulate::exact(circuit, image.view())?.accumulators;
            let same = simulated
                .iter()
                .zip(&mine)
                .all(|(s, m)| s.round() as i64 == *m && (s - s.round()).abs() < 1e-6);
            mismatches += usize::from(!same);
        }
    }
    Ok(mismatches)
}
