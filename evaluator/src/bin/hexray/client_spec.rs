//! `hexray client-spec`: prints a model's client spec, exactly the JSON that
//! `GET /api/v1/models/{id}` sends, so an auditor can see all a client receives.

use anyhow::Result;
use hexray_engine::LoadedModel;

pub fn print(loaded: &LoadedModel) -> Result<()> {
    let spec: serde_json::Value = serde_json::from_slice(&loaded.spec().to_json())?;
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(())
}
