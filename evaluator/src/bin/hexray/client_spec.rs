//! `hexray client-spec`: prints a model's client spec, exactly the JSON that
//! `GET /api/v1/models/{id}` sends, so an auditor can see all a client receives.

use std::path::Path;

use anyhow::{Context, Result};
use hexray_engine::LoadedModel;

pub fn print(model: &Path) -> Result<()> {
    let loaded = LoadedModel::from_file(model).context("loading the model")?;
    let spec: serde_json::Value = serde_json::from_slice(&loaded.spec().to_json())?;
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(())
}
