//! `hexray bulk`: a folder of chest X-rays screened on a remote server by the bulk path
//! (`docs/bulk.md`). It fetches the model's bulk spec (never the model), reads every file in
//! the folder with the page's decoder and preprocessing, packs and encrypts up to 8192 images
//! per job under a secret key generated for this run, which never leaves this process, uploads
//! each job with its evaluation key, follows it with a progress bar, decrypts the results here
//! and writes them to a CSV with the page's columns.
//!
//! A file that cannot be read (not an image, a DICOM without pixels…) is listed with the reason
//! and left out; it never stops the batch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hexray_bulk::parameters::DEGREE;
use hexray_bulk::{upload, ClientKey, EncryptedOutputs};
use hexray_evaluator::client::ApiClient;
use hexray_evaluator::progress;
use hexray_model::bulk_spec::BulkSpec;

use crate::{read_image_file, ImageFile, ServerArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// The served model's id; without it, the first the server lists for the bulk path.
    #[arg(long)]
    model: Option<String>,
    /// The folder of X-rays (PNG, JPEG or DICOM), read with its subfolders.
    #[arg(long)]
    folder: PathBuf,
    /// The CSV to write; an existing file is never overwritten.
    #[arg(long, default_value = "hexray-bulk-results.csv")]
    out: PathBuf,
}

/// One image read from the folder.
struct Row {
    /// Its path below the folder, as the CSV names it.
    name: String,
    image: ImageFile,
}

pub fn bulk(args: Args) -> Result<()> {
    ensure!(
        !args.out.exists(),
        "{} exists already: name another file with --out",
        args.out.display()
    );
    let api = args.server.client();
    let model = match args.model {
        Some(model) => model,
        None => bulk_model(&api)?,
    };
    let spec = api
        .bulk_spec(&model)
        .with_context(|| format!("fetching the bulk spec of `{model}`"))?;
    let (rows, unreadable) = read_folder(&args.folder, &spec)?;
    for (name, reason) in &unreadable {
        eprintln!("skipped {name}: {reason}");
    }
    ensure!(
        !rows.is_empty(),
        "no image in {} could be read ({} files skipped)",
        args.folder.display(),
        unreadable.len()
    );
    eprintln!(
        "{} images to screen with {model} ({} skipped); generating a key for this run",
        rows.len(),
        unreadable.len()
    );
    let key = ClientKey::generate();
    let evaluation_key = key.evaluation_key()?;
    let mut outputs = Vec::with_capacity(rows.len());
    for (i, chunk) in rows.chunks(DEGREE).enumerate() {
        let pixels: Vec<Vec<i64>> = chunk
            .iter()
            .map(|row| row.image.input.iter().copied().collect())
            .collect();
        let started = Instant::now();
        let batch = key.encrypt(&spec.input, &pixels)?;
        let mut body = Vec::new();
        upload::write(&mut body, &evaluation_key, &batch)?;
        drop(batch);
        eprintln!(
            "batch {}: {} images packed and encrypted in {:.1} s; uploading {:.0} MB",
            i + 1,
            chunk.len(),
            started.elapsed().as_secs_f64(),
            body.len() as f64 / 1e6
        );
        let started = Instant::now();
        let job = api.submit_bulk(&model, &spec, &body)?;
        drop(body);
        eprintln!(
            "batch {}: accepted as job {job} in {:.1} s",
            i + 1,
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let bar = progress::bar(0, "neurons");
        bar.set_message(format!("job {job}"));
        let status = api.follow(&job, Duration::from_secs(3600), |status| {
            if let (Some(done), Some(total)) = (
                status["neurons_done"].as_u64(),
                status["neurons_total"].as_u64(),
            ) {
                bar.set_length(total);
                bar.set_position(done);
            }
        })?;
        bar.finish_and_clear();
        eprintln!(
            "job {job}: {} after {:.1} s ({} s evaluating on the server)",
            status["state"].as_str().unwrap_or("?"),
            started.elapsed().as_secs_f64(),
            status["seconds"]
        );
        if status["state"] != "done" {
            bail!(
                "the server could not evaluate job {job}: {}",
                status["error"]
            );
        }
        let results = EncryptedOutputs::read_from(&api.outputs(&job)?[..], spec.classes.len())?;
        ensure!(
            results.images() == chunk.len(),
            "job {job} returned {} results for {} images",
            results.images(),
            chunk.len()
        );
        outputs.extend(key.decrypt(&results)?);
    }
    std::fs::write(&args.out, csv(&spec, &rows, &outputs))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} results written to {}; decision support, not a diagnosis: a qualified clinician \
         reviews every result",
        rows.len(),
        args.out.display()
    );
    Ok(())
}

/// The first model the server lists as taking the bulk path.
fn bulk_model(api: &ApiClient) -> Result<String> {
    let models = api
        .request("/api/v1/models", None)?
        .json()
        .context("asking the server for its models")?;
    models["models"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["bulk"] == true)
        .and_then(|m| m["id"].as_str())
        .map(str::to_owned)
        .context("the server serves no model on the bulk path")
}

/// Files that could not be read, by name, with the reason.
type Unreadable = Vec<(String, String)>;

/// Every file below `folder`, in path order, read for `spec`; and the files that could not be
/// read.
fn read_folder(folder: &Path, spec: &BulkSpec) -> Result<(Vec<Row>, Unreadable)> {
    let mut files = Vec::new();
    collect_files(folder, &mut files).with_context(|| format!("listing {}", folder.display()))?;
    files.sort();
    let (mut rows, mut unreadable) = (Vec::new(), Vec::new());
    for path in files {
        let name = path
            .strip_prefix(folder)
            .unwrap_or(&path)
            .display()
            .to_string();
        match read_image_file(&path, &spec.input) {
            Ok(image) => rows.push(Row { name, image }),
            Err(e) => unreadable.push((name, format!("{:#}", e))),
        }
    }
    Ok((rows, unreadable))
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_files(&entry.path(), files)?;
        } else {
            files.push(entry.path());
        }
    }
    Ok(())
}

/// The results as the page's CSV (RFC 4180, `web/results.js`): one row per image, the
/// probabilities as fractions, the model's name and version. The bulk path is exact (BFV
/// decrypts to the circuit's integers, with no bootstrapping noise), so no result is
/// borderline by encryption and that column stays empty.
fn csv(spec: &BulkSpec, rows: &[Row], outputs: &[Vec<i64>]) -> String {
    let mut header = vec![
        "file".to_owned(),
        "patient_name".into(),
        "study_date".into(),
    ];
    header.push("class".into());
    header.extend(spec.classes.iter().map(|c| format!("p_{c}")));
    header.extend(["borderline".into(), "model".into(), "model_version".into()]);
    let mut lines = vec![header];
    for (row, output) in rows.iter().zip(outputs) {
        let diagnosis = spec.decode(output);
        let mut line = vec![
            row.name.clone(),
            row.image
                .patient_name
                .as_deref()
                .map(person_name)
                .unwrap_or_default(),
            row.image
                .study_date
                .as_deref()
                .map(study_date)
                .unwrap_or_default(),
            spec.classes[diagnosis.class].clone(),
        ];
        line.extend(diagnosis.probabilities.iter().map(|p| format!("{p:.4}")));
        line.extend([String::new(), spec.name.clone(), spec.model_version.clone()]);
        lines.push(line);
    }
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line.iter().map(|c| csv_cell(c)).collect();
            cells.join(",") + "\r\n"
        })
        .collect()
}

/// A DICOM person name as the page shows it: `Doe^Jane` → `Doe, Jane`.
fn person_name(name: &str) -> String {
    let alphabetic = name.split('=').next().unwrap_or_default();
    alphabetic
        .replacen('^', ", ", 1)
        .replace('^', " ")
        .trim()
        .to_owned()
}

/// A DICOM date as the page shows it: `20200131` → `2020-01-31`; anything else as it is.
fn study_date(date: &str) -> String {
    if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..])
    } else {
        date.to_owned()
    }
}

/// A CSV cell a spreadsheet shows as text, as the page writes it: a cell starting with
/// = + - @, a tab or a carriage return gets a leading apostrophe (file and patient names come
/// from outside), then RFC 4180 quoting.
fn csv_cell(value: &str) -> String {
    let text = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if text.contains(['"', ',', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_dates_and_names_are_written_as_the_page_writes_them() {
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
        assert_eq!(study_date("20200131"), "2020-01-31");
        assert_eq!(study_date("2020"), "2020");
        assert_eq!(person_name("Doe^Jane^M"), "Doe, Jane M");
        assert_eq!(person_name("Doe^Jane=ideographic"), "Doe, Jane");
    }
}
