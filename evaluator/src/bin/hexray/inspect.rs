//! `hexray inspect`: the compile report of a model.

use anyhow::Result;
use hexray_engine::LoadedModel;

/// Prints the model's identity and its per-stage cost and noise.
pub fn print_report(loaded: &LoadedModel) -> Result<()> {
    let (model, circuit) = (&loaded.model(), &loaded.circuit());
    println!(
        "model      {} v{} ({})",
        model.name, model.model_version, model.fhe.name
    );
    println!("classes    {}", circuit.classes.join(", "));
    println!("bootstraps {} per image", circuit.bootstrap_count());
    println!(
        "{:<6} {:>8} {:>6} {:>8} {:>9} {:>9} {:>11} {:>11}",
        "stage", "neurons", "PBS", "acc bits", "fan-in", "max ‖w‖₂", "σ (acc)", "σ (boxes)"
    );
    for (i, r) in circuit.report().iter().enumerate() {
        println!(
            "{:<6} {:>8} {:>6} {:>8} {:>9} {:>9.1} {:>11.3} {:>11.2}",
            if i + 1 == circuit.stages.len() {
                "output".to_string()
            } else {
                i.to_string()
            },
            r.neurons,
            r.bootstraps,
            r.accumulator_bits,
            r.max_fan_in,
            r.max_weight_norm,
            r.max_sigma_acc,
            r.max_sigma_positions
        );
    }
    Ok(())
}
