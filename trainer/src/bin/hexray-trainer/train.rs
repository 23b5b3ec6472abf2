//! `train`: one topology with the shipped recipe; the model file, its report and curves.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hexray_trainer::encrypted;
use hexray_trainer::metrics::{roc_curve, Scores};
use hexray_trainer::net::ActivationMode;
use hexray_trainer::pipeline::{
    export_mismatches, score_circuit, score_float, strong_teacher, teacher, train_and_compile,
    Lesson,
};
use hexray_trainer::plots::{line_chart, roc_chart, Series};
use hexray_trainer::report::{Row, RunReport, StageSummary};
use hexray_trainer::train::EpochLog;

use crate::common::*;

/// The training curves of one run: loss and validation accuracy per epoch.
fn curves(path: &Path, epochs: &[EpochLog]) -> Result<()> {
    let series = |name: &str, f: fn(&EpochLog) -> f64| Series {
        name: name.into(),
        points: epochs.iter().map(|e| (e.epoch as f64, f(e))).collect(),
    };
    line_chart(
        path,
        "Training: teacher, replacement, student, quantized",
        "epoch (all phases)",
        "loss / accuracy",
        &[
            series("training loss", |e| e.loss),
            series("validation accuracy", |e| e.validation_accuracy),
        ],
    )?;
    Ok(())
}

pub(crate) fn train(
    common: &Common,
    topology: &str,
    out: &Path,
    model_copy: Option<&Path>,
    sample: usize,
    (stability_sample, stability_runs): (usize, usize),
) -> Result<()> {
    let config = common.config(topology, common.shipped(), &classes())?;
    let ([_, val, test], [tr, va, te]) = common.splits_and_tensors()?;
    let start = Instant::now();
    let mut log = Vec::new();
    let teacher_net = teacher(None, &config, &tr, &va, &mut log);
    let strong = strong_teacher(&config, &tr, &va, &mut log);
    let distilled_from = match &config.strong_teacher {
        Some(strong) => format!("a larger ReLU CNN ({})", strong.spec()),
        None => "a ReLU teacher of its own topology".to_owned(),
    };
    let description = format!(
        "Pneumonia vs normal on 28×28 chest X-rays. Topology {} ({}); per-element quadratic \
         student distilled from {distilled_from}, quantization- and noise-aware. Trained on \
         PneumoniaMNIST (CC BY 4.0) by `hexray-trainer train`.",
        config.topology.name,
        config.topology.spec()
    );
    let name = format!("pneumonia-{}", config.topology.name);
    let lesson = Lesson {
        teacher: &teacher_net,
        strong: strong.as_ref(),
        train: &tr,
        val: &va,
        val_images: &val,
    };
    let student = train_and_compile(&config, &lesson, &mut log, &name, &description)?;
    let training_seconds = start.elapsed().as_secs_f64();
    let (quantized, model, circuit) = student.quantized.expect("the shipped recipe quantizes");
    let bootstraps = circuit.bootstrap_count();

    let (teacher_scores, teacher_p) = score_float(&teacher_net, ActivationMode::Relu, &te);
    let (student_scores, student_p) = score_float(&student.float, ActivationMode::Quadratic, &te);
    let (exact, _) = score_circuit(&circuit, &test, 0, common.seed)?;
    let (noisy, noisy_p) = score_circuit(&circuit, &test, common.draws, common.seed)?;
    let mismatches =
        export_mismatches(&quantized, &config.input, &config.classes, &circuit, &test)?;
    if mismatches > 0 {
        bail!("export check failed: {mismatches} test images differ between the trainer and the simulator");
    }
    let row = |name: &str, scores: Scores| Row {
        name: name.into(),
        scores,
        bootstraps,
    };
    let aucs = [teacher_scores.auc, student_scores.auc, noisy.auc];
    let mut rows = vec![row("ReLU teacher (float)", teacher_scores)];
    if let Some(strong) = &strong {
        rows.push(Row {
            name: "strong ReLU teacher, distilled from (float)".into(),
            scores: score_float(strong, ActivationMode::Relu, &te).0,
            bootstraps: strong.topology.bootstraps(INPUT_SHAPE),
        });
    }
    rows.extend([
        row("quadratic student (float)", student_scores),
        row("quantized student (exact simulation)", exact),
        row(
            &format!(
                "quantized student (noisy simulation, {} draws)",
                common.draws
            ),
            noisy,
        ),
    ]);
    let encrypted = match sample {
        0 => None,
        n => {
            let run = encrypted::run(&model, &test, n, !common.quiet)?;
            rows.push(row(
                &format!("encrypted ({} test images)", run.labels.len()),
                Scores::new(&run.probabilities, &run.labels),
            ));
            Some(run)
        }
    };
    let report = RunReport {
        predicted_latency_seconds: encrypted
            .as_ref()
            .map(|e| bootstraps as f64 * e.seconds_per_bootstrap / e.threads as f64),
        config,
        bootstraps,
        stages: circuit
            .report()
            .iter()
            .map(|s| StageSummary {
                bootstraps: s.bootstraps,
                accumulator_bits: s.accumulator_bits,
                max_fan_in: s.max_fan_in,
                max_sigma_positions: s.max_sigma_positions,
            })
            .collect(),
        rows,
        export_mismatches: mismatches,
        test_images: test.len(),
        encrypted,
        stability: match stability_sample {
            0 => None,
            n => Some(encrypted::stability(
                &model,
                &test,
                stability_runs,
                n,
                !common.quiet,
            )?),
        },
        validation_noisy_accuracy: score_circuit(&circuit, &val, common.draws, common.seed)?
            .0
            .accuracy,
        training_seconds,
        epochs: log,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let model_path = out.join("model.hexray");
    std::fs::write(&model_path, model.to_bytes())
        .with_context(|| format!("writing {}", model_path.display()))?;
    if let Some(copy) = model_copy {
        std::fs::write(copy, model.to_bytes())
            .with_context(|| format!("writing {}", copy.display()))?;
    }
    write(&out.join("report.md"), &report.markdown())?;
    write(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    curves(&out.join("curves.png"), &report.epochs)?;
    let positive = |p: &[Vec<f64>]| p.iter().map(|p| p[1]).collect::<Vec<_>>();
    let truth = |labels: &[usize], repeat: usize| {
        labels
            .iter()
            .flat_map(|&l| std::iter::repeat_n(l == 1, repeat))
            .collect::<Vec<_>>()
    };
    let curve = |name: &str, p: &[Vec<f64>], repeat: usize, auc: f64| {
        (
            name.to_owned(),
            auc,
            roc_curve(&positive(p), &truth(&test.labels, repeat)),
        )
    };
    roc_chart(
        &out.join("roc.png"),
        "ROC on the PneumoniaMNIST test split",
        &[
            curve("ReLU teacher", &teacher_p, 1, aucs[0]),
            curve("float student", &student_p, 1, aucs[1]),
            curve("noisy simulation", &noisy_p, common.draws, aucs[2]),
        ],
    )?;
    println!("{}", report.markdown());
    println!("wrote {}", out.display());
    Ok(())
}
