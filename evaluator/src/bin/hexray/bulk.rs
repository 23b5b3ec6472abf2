//! `hexray bulk`: a folder of chest X-rays screened on a remote server by the bulk path
//! (`docs/bulk.md`). It fetches the model's bulk spec (never the model), reads every file in
//! the folder with the page's decoder and preprocessing, packs and encrypts up to 8192 images
//! per job under a secret key generated for this run, which never leaves this process, uploads
//! each job with its evaluation key (again, once, should the server lose the job), follows it
//! with a progress bar, decrypts the results here and writes them to a CSV with the page's
//! columns, batch by batch, so that a batch that fails (a full queue that stays full, the
//! token's image quota) loses none that came before it.
//!
//! A file that cannot be read (not an image, a DICOM without pixels…) never stops the batch: it
//! gets a row that says why (`not_screened`), and the command then exits with status 3 (1 is
//! a failure, 2 a usage error), so that a script does not take the folder for screened whole.
//! The CSV is written as `<out>.partial` and takes its name when every batch is in it
//! ([`Results`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hexray_bulk::parameters::DEGREE;
use hexray_bulk::{upload, ClientKey, EncryptedOutputs, EvaluationKey};
use hexray_evaluator::client::{ApiClient, ClientError};
use hexray_evaluator::remote_job;
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
    // Checked before anything is created or asked of the server.
    ensure!(
        args.folder.is_dir(),
        "{} is not a folder",
        args.folder.display()
    );
    let mut out = Results::new(&args.out)?;
    let not_screened = match screen_folder(&args, &mut out) {
        Ok(not_screened) => not_screened,
        Err(e) => return Err(out.failed(e)),
    };
    let written = out.finish()?;
    eprintln!(
        "{written} results written to {}; decision support, not a diagnosis: a qualified \
         clinician reviews every result",
        args.out.display()
    );
    if not_screened > 0 {
        // Scripts must not take a folder for screened whole: 3 says "done, but not all".
        eprintln!(
            "{not_screened} files were not screened: their rows in {} say why (not_screened)",
            args.out.display()
        );
        std::process::exit(3);
    }
    Ok(())
}

/// The results CSV as it is written: to `<out>.partial`, created with the first batch's rows
/// and synced after each batch, then given the name asked for when every batch is in, so that
/// a file under that name is always complete, and never one that was there before.
struct Results {
    out: PathBuf,
    partial: PathBuf,
    file: Option<std::fs::File>,
    /// Results written so far.
    written: usize,
}

impl Results {
    /// Refuses an `out`, or a `<out>.partial` an interrupted run left, that exists already.
    fn new(out: &Path) -> Result<Self> {
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        ensure!(
            !out.exists(),
            "{} exists, and an existing file is never overwritten: name another with --out",
            out.display()
        );
        ensure!(
            !partial.exists(),
            "{} exists, left by an interrupted run: keep or remove it, or name another --out",
            partial.display()
        );
        Ok(Results {
            out: out.to_owned(),
            partial,
            file: None,
            written: 0,
        })
    }

    /// Appends `text`, holding `results` results, and syncs it to disk.
    fn append(&mut self, text: &str, results: usize) -> Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&self.partial)
                    .with_context(|| format!("creating {}", self.partial.display()))?,
            ),
        };
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.written += results;
        Ok(())
    }

    /// Gives the file its name (never over a file made there meanwhile); returns how many
    /// results it holds.
    fn finish(self) -> Result<usize> {
        std::fs::hard_link(&self.partial, &self.out).with_context(|| {
            format!(
                "naming {} {} (the results stay in the first)",
                self.partial.display(),
                self.out.display()
            )
        })?;
        std::fs::remove_file(&self.partial)?;
        Ok(self.written)
    }

    /// `error`, saying where the results written before it are.
    fn failed(self, error: anyhow::Error) -> anyhow::Error {
        match self.written {
            0 => error,
            written => error.context(format!(
                "{written} results are in {}; the images after them were not screened",
                self.partial.display()
            )),
        }
    }
}

/// Screens the folder into `out`: with the first batch's rows, a row for each file that could
/// not be read, with the reason, then each batch's rows as soon as they are decrypted. Returns
/// how many files were not screened.
fn screen_folder(args: &Args, out: &mut Results) -> Result<usize> {
    let api = args.server.client()?;
    let model = match &args.model {
        Some(model) => model.clone(),
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
    let header = header(&spec);
    let mut preamble = csv_line(&header);
    for (name, reason) in &unreadable {
        preamble += &csv_line(&not_screened(header.len(), name, reason));
    }
    for (i, chunk) in rows.chunks(DEGREE).enumerate() {
        let batch = Batch {
            api: &api,
            model: &model,
            spec: &spec,
            number: i + 1,
        };
        let outputs = batch.screen(&key, &evaluation_key, chunk)?;
        let lines: String = chunk
            .iter()
            .zip(&outputs)
            .map(|(row, output)| csv_line(&result(&spec, row, output)))
            .collect();
        out.append(&(std::mem::take(&mut preamble) + &lines), chunk.len())?;
    }
    Ok(unreadable.len())
}

/// How long a batch keeps asking through a refusal that passes with time, by its kind: a full
/// queue empties as jobs run; a used-up image quota frees as this token's older bulk jobs pass
/// the server's retention (`--job-retention-s`, an hour by default), so a folder of more images
/// than the quota goes on in the next hour rather than failing; and a request that broke off
/// (a node restarting, or a batch the server refused while it was still going out, which
/// reaches the client only as a broken connection) is asked again, the room check then saying
/// why. `None` for a refusal that time does not change.
fn patience(refusal: &ClientError) -> Option<(&'static str, Duration)> {
    match refusal.code() {
        Some("queue_full") => Some(("queue_full", Duration::from_secs(600))),
        Some("image_quota") => Some(("image_quota", Duration::from_secs(7200))),
        _ if refusal.is_transient() => Some(("interrupted", Duration::from_secs(600))),
        _ => None,
    }
}

/// The pause between two room checks while a refusal passes.
const ROOM_CHECK_PAUSE: Duration = Duration::from_secs(30);

/// One job of up to 8192 images.
struct Batch<'a> {
    api: &'a ApiClient,
    model: &'a str,
    spec: &'a BulkSpec,
    number: usize,
}

impl Batch<'_> {
    /// Packs, encrypts, uploads, follows and decrypts `rows`: the output integers of each.
    fn screen(
        &self,
        key: &ClientKey,
        evaluation_key: &EvaluationKey,
        rows: &[Row],
    ) -> Result<Vec<Vec<i64>>> {
        let (api, number) = (self.api, self.number);
        let pixels: Vec<Vec<i64>> = rows
            .iter()
            .map(|row| row.image.input.iter().copied().collect())
            .collect();
        let started = Instant::now();
        let batch = key.encrypt(&self.spec.input, &pixels)?;
        let mut body = Vec::new();
        upload::write(&mut body, evaluation_key, &batch)?;
        drop(batch);
        eprintln!(
            "batch {number}: {} images packed and encrypted in {:.1} s; uploading {:.0} MB",
            rows.len(),
            started.elapsed().as_secs_f64(),
            body.len() as f64 / 1e6
        );
        // The upload is kept until the job is done: a job the server lost (a restart, without
        // a database) is uploaded again, once.
        let first_sent = Instant::now();
        let finished = remote_job::run(api, "neurons", || {
            let sent = Instant::now();
            let job = self.submit(&body)?;
            eprintln!(
                "batch {number}: accepted as job {job} in {:.1} s",
                sent.elapsed().as_secs_f64()
            );
            Ok(job)
        })?;
        drop(body);
        let job = &finished.status.job_id;
        eprintln!(
            "job {job}: done {:.1} s after the batch was first sent ({:.1} s evaluating on the \
             server)",
            first_sent.elapsed().as_secs_f64(),
            finished.status.seconds.unwrap_or_default()
        );
        let results = EncryptedOutputs::read_from(&finished.outputs[..], self.spec.classes.len())?;
        ensure!(
            results.images() == rows.len(),
            "job {job} returned {} results for {} images",
            results.images(),
            rows.len()
        );
        Ok(key.decrypt(&results)?)
    }

    /// Submits the upload once the server has room for it, waiting through refusals that
    /// pass with time ([`patience`]) with empty room checks rather than the upload itself.
    /// Each kind of refusal gets its patience from when it began: an hour's wait for the image
    /// quota does not use up the ten minutes a full queue gets after it. (Should a broken
    /// connection have been an accepted job's lost reply, the batch runs twice; only this
    /// run's copy is read.)
    fn submit(&self, body: &[u8]) -> Result<String, ClientError> {
        let mut waiting: Option<(&str, Instant)> = None;
        loop {
            let answer = self
                .room()
                .and_then(|()| self.api.submit_bulk(self.model, self.spec, body));
            let refusal = match answer {
                Ok(job) => return Ok(job),
                Err(e) => e,
            };
            let Some((kind, patience)) = patience(&refusal) else {
                return Err(refusal);
            };
            let began = match waiting {
                Some((since, at)) if since == kind => at,
                _ => Instant::now(),
            };
            waiting = Some((kind, began));
            if began.elapsed() + ROOM_CHECK_PAUSE > patience {
                return Err(refusal);
            }
            eprintln!(
                "batch {}: {refusal}; asking again in {} s",
                self.number,
                ROOM_CHECK_PAUSE.as_secs()
            );
            std::thread::sleep(ROOM_CHECK_PAUSE);
        }
    }

    /// Whether the server has room for the batch now. A server older than room checks takes
    /// the empty upload for a batch and finds no key in it (`malformed_key`): that one is sent
    /// the batch straight away, as before.
    fn room(&self) -> Result<(), ClientError> {
        match self.api.bulk_room(self.model, self.spec) {
            Err(e) if e.code() == Some("malformed_key") => Ok(()),
            answer => answer,
        }
    }
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
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    collect_files(folder, &mut files, &mut skipped);
    files.sort();
    let name = |path: &Path| {
        path.strip_prefix(folder)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut unreadable: Unreadable = skipped
        .iter()
        .map(|(path, reason)| (name(path), reason.clone()))
        .collect();
    let mut rows = Vec::new();
    for path in files {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_BYTES {
            unreadable.push((name(&path), format!("{size} bytes: too large for an X-ray")));
            continue;
        }
        match read_image_file(&path, &spec.input) {
            Ok(image) => rows.push(Row {
                name: name(&path),
                image,
            }),
            Err(e) => unreadable.push((name(&path), format!("{e:#}"))),
        }
    }
    Ok((rows, unreadable))
}

/// Files over this size are not X-rays: they are listed, not read.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// Every regular file below `dir`, with links to files followed; a link to a folder is not
/// followed (it could loop), and it, anything that is not a regular file and a folder that
/// cannot be listed go to `unreadable`, as a file that cannot be read does.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>, unreadable: &mut Vec<(PathBuf, String)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return unreadable.push((dir.to_owned(), format!("cannot list it: {e}"))),
    };
    for entry in entries {
        let entry = match entry.and_then(|e| Ok((e.path(), e.file_type()?))) {
            Ok(entry) => entry,
            Err(e) => {
                unreadable.push((dir.to_owned(), format!("cannot list it: {e}")));
                continue;
            }
        };
        match entry {
            (path, kind) if kind.is_dir() => collect_files(&path, files, unreadable),
            (path, kind) if kind.is_symlink() && path.is_dir() => {
                unreadable.push((path, "a link to a folder, not followed".into()))
            }
            // A pipe, socket or device would block the read, or never end it.
            (path, _) if !path.is_file() => unreadable.push((
                path,
                "not a regular file (a pipe, socket, device or broken link)".into(),
            )),
            (path, _) => files.push(path),
        }
    }
}

/// The CSV's columns, the page's (`web/results.js`): the file, what its DICOM header names,
/// the class, one probability per class, the borderline note, the model and its version, what
/// the DICOM header warned of; then, for a file that was not screened, why.
fn header(spec: &BulkSpec) -> Vec<String> {
    let mut header = vec![
        "file".to_owned(),
        "patient_name".into(),
        "study_date".into(),
    ];
    header.push("class".into());
    header.extend(spec.classes.iter().map(|c| format!("p_{c}")));
    header.extend(
        [
            "borderline",
            "model",
            "model_version",
            "warnings",
            "not_screened",
        ]
        .map(String::from),
    );
    header
}

/// The row of a file that was not screened: its name, and why, under `not_screened`.
fn not_screened(columns: usize, name: &str, reason: &str) -> Vec<String> {
    let mut line = vec![String::new(); columns];
    line[0] = name.to_owned();
    line[columns - 1] = reason.to_owned();
    line
}

/// One image's row, as the page writes it: probabilities as fractions to four places. The
/// bulk path is exact (BFV decrypts to the circuit's integers, with no bootstrapping noise),
/// so no result is borderline by encryption and that column stays empty.
fn result(spec: &BulkSpec, row: &Row, output: &[i64]) -> Vec<String> {
    let diagnosis = spec.decode(output);
    let image = &row.image;
    let mut line = vec![
        row.name.clone(),
        image
            .patient_name
            .as_deref()
            .map(person_name)
            .unwrap_or_default(),
        image
            .study_date
            .as_deref()
            .map(study_date)
            .unwrap_or_default(),
        spec.classes[diagnosis.class].clone(),
    ];
    line.extend(diagnosis.probabilities.iter().map(|p| format!("{p:.4}")));
    line.extend([
        String::new(),
        spec.name.clone(),
        spec.model_version.clone(),
        image.warnings.join("; "),
        String::new(),
    ]);
    line
}

/// One CSV line (RFC 4180), ended by CRLF.
fn csv_line(cells: &[String]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
    cells.join(",") + "\r\n"
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
