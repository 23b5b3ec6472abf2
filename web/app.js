// The clinician page: choose a model and images, then keys → upload key → encrypt → evaluate →
// decrypt. Only ciphertexts, the public evaluation key and the access token are ever sent; the
// secret key stays in IndexedDB, DICOM headers are read only here, and neither images nor
// results leave this page unencrypted. The heavy work runs in a Web Worker (engine.js).
import { api, forgetToken, hasToken, healthWithToken, postWithProgress, serverSentEvents, UserError } from './api.js';
import { greyCanvas } from './canvas.js';
import { Engine } from './engine.js';
import { imageBytes, takeFromDrop, takeFromInput } from './intake.js';
import { forgetKeys, loadKeys, saveKeys } from './keystore.js';
import { downloadCsv, patientText, printReport, showResults } from './results.js';

const $ = (id) => document.getElementById(id);
const CHOSEN_MODEL = 'hexray.model';
const POLL_MS = 2000;
const engine = new Engine();
const state = {
  models: [], // the server's model summaries
  summary: null, // the chosen one
  info: null, // its client spec, as the worker read it
  generation: 0, // bumped when the model changes: reads for an older model are dropped
  entries: [], // the images, in the order they came: see addFiles
  reading: Promise.resolve(), // the reads, one after another (bounded memory for big folders)
  busy: false,
  job: null, // the submitted job being followed: { id, batch, started }
  batchImages: 16, // the most images one job may carry: the server's limit
  resumable: false, // the analysis under way (or stopped by an error) has shown results: Retry adds to them
  chosen: [], // the entries that analysis is of: those pending when it started
};

/// What the page measured, for people and for the browser benchmark.
window.hexrayTimings = {};

// ---- steps and errors -------------------------------------------------------------------

function step(name, fraction, detail = '') {
  const item = $(`step-${name}`);
  item.querySelector('progress').value = fraction;
  item.querySelector('.detail').textContent = detail;
  item.classList.toggle('done', fraction >= 1);
}

function resetSteps() {
  for (const name of ['keys', 'upload', 'encrypt', 'evaluate', 'decrypt']) step(name, 0);
  $('notice').textContent = '';
}

function showError(message) {
  $('error-text').textContent = message;
  $('error').hidden = false;
  $('retry').focus();
}

// ---- models -------------------------------------------------------------------------------

/// Opens the page: the token if the server needs one, then the models, then the remembered one.
async function start() {
  state.batchImages = (await healthWithToken()).batch_images;
  const { models } = await (await api('/models')).json();
  if (!models.length) throw new UserError('The server offers no model.');
  state.models = models;
  $('model-select').replaceChildren(...models.map((m) => {
    const option = document.createElement('option');
    option.value = m.id;
    option.textContent = `${m.name} v${m.version}: ${m.classes.join(' / ')}, ${m.bootstraps} bootstraps, ${expected(m)}`;
    return option;
  }));
  const remembered = models.find((m) => m.id === localStorage.getItem(CHOSEN_MODEL));
  await chooseModel((remembered ?? models[0]).id);
  $('model-loading').hidden = true;
  $('model-choice').hidden = false;
}

const expected = (m) => `about ${m.expected_seconds_per_image.toFixed(1)} s per image`;

/// Makes `id` the model images are read and analysed with, and remembers the choice. Everything
/// is fetched and loaded before anything changes, so a failure leaves the page, the picker and
/// the worker on the model they had.
async function chooseModel(id) {
  try {
    await switchModel(id);
  } finally {
    if (state.summary) $('model-select').value = state.summary.id;
  }
}

async function switchModel(id) {
  const summary = state.models.find((m) => m.id === id);
  // The client spec (JSON): what the worker needs to read, encrypt and decode; no weights.
  const spec = new Uint8Array(await (await api(`/models/${encodeURIComponent(id)}`)).arrayBuffer());
  const card = summary.card_summary ? await (await api(`/models/${encodeURIComponent(id)}/card`)).text() : '';
  // The worker keeps every spec it loaded: a batch prepared for the previous one is still
  // decrypted with it. The page then switches in one step, so files added meanwhile are read
  // once, with the new model.
  const info = await engine.call('model', { spec }, { transfer: [spec.buffer] });
  state.info = info;
  state.summary = summary;
  state.generation++;
  localStorage.setItem(CHOSEN_MODEL, id);
  $('model-info').textContent = `${info.name} v${info.version}: ${info.description} Classes: ${info.classes.join(' / ')}; `
    + `${info.width}×${info.height} grayscale input; ${info.bootstraps} bootstraps per image, ${expected(summary)}.`;
  // The model card: its summary beside the picker, the whole card one click away.
  $('model-card-summary').textContent = summary.card_summary
    ? `Model card: ${summary.card_summary}`
    : 'This model has no model card: ask its owner what it was trained on, and on whom, before relying on it.';
  $('model-card').hidden = !summary.card_summary;
  $('model-card-text').textContent = card;
  // Every image is read again: what the model sees depends on the model.
  for (const entry of state.entries) queueRead(entry);
  updateQueued();
}

// ---- images -------------------------------------------------------------------------------

/// Adds files ({ file, path }, as intake.js copies them) in order. Each becomes an entry
/// { path, file, status: 'waiting' | 'reading' | 'ready' | 'problem', read, problem, item,
/// analysedWith }; files added before a model is loaded wait for it.
function addFiles(files) {
  for (const { file, path } of files) {
    const entry = { path, file, status: 'waiting', item: document.createElement('li') };
    state.entries.push(entry);
    $('previews').append(entry.item);
    renderEntry(entry);
    if (state.info) queueRead(entry);
  }
  updateQueued();
  updateButtons();
}

function queueRead(entry) {
  entry.status = 'waiting';
  entry.analysedWith = null;
  renderEntry(entry);
  const generation = state.generation;
  state.reading = state.reading.then(() => readEntry(entry, generation)).catch((error) => console.error(error));
}

/// Decodes one file in the worker into the model's input, or says why it cannot be.
async function readEntry(entry, generation) {
  if (generation !== state.generation || !state.entries.includes(entry)) return;
  const { fingerprint } = state.info;
  entry.status = 'reading';
  renderEntry(entry);
  let read;
  let problem;
  try {
    const bytes = await imageBytes(entry.file);
    if (!bytes) {
      problem = `${entry.path} is not a PNG, JPEG or DICOM image.`;
    } else {
      read = await engine.call('read', { bytes, fingerprint }, { transfer: [bytes.buffer] });
    }
  } catch (error) {
    problem = `${entry.path}: ${error.message}`;
  }
  if (generation !== state.generation) return; // the model changed meanwhile: read again
  Object.assign(entry, { read, problem, status: problem ? 'problem' : 'ready' });
  renderEntry(entry);
  updateQueued();
  updateButtons();
}

function renderEntry(entry) {
  const { item } = entry;
  item.dataset.status = entry.status;
  if (entry.status === 'problem') {
    item.replaceChildren(paragraph('problem', entry.problem));
    return;
  }
  if (entry.status !== 'ready') {
    item.replaceChildren(paragraph('pending', `${entry.path}: ${entry.status === 'reading' ? 'reading…' : 'waiting for the model'}`));
    return;
  }
  const { read, path } = entry;
  item.replaceChildren(
    greyCanvas({ ...original(read), label: `${path}, as dropped` }),
    greyCanvas({ ...seen(read), label: `${path}, as the model sees it` }),
    paragraph('name', path),
  );
  if (read.dicom) {
    item.append(paragraph('patient', patientText(read.dicom)));
    for (const warning of read.dicom.warnings) item.append(paragraph('warning', warning));
  }
}

const original = (read) => ({ width: read.original.width, height: read.original.height, values: read.original.pixels });
/// The image as the model with `info` (the chosen one, by default) sees it.
const seen = (read, info = state.info) => ({ width: info.width, height: info.height, values: read.input, max: info.max_input });

function paragraph(className, text) {
  const p = document.createElement('p');
  p.className = className;
  p.textContent = text;
  return p;
}

/// Images read for the current model and not yet analysed with it, of `entries` (all, unless
/// given) that are still on the page.
const pending = (entries = state.entries) => entries.filter((e) => e.status === 'ready'
  && e.analysedWith !== state.info.fingerprint && (entries === state.entries || state.entries.includes(e)));

/// The files' state in words, in a status region that screen readers announce: those waiting
/// for the model, or, once every file is read, those that cannot be.
function updateQueued() {
  const count = (status) => state.entries.filter((e) => e.status === status).length;
  const [waiting, reading, problems] = ['waiting', 'reading', 'problem'].map(count);
  $('queued').textContent = !state.info && waiting ? `${waiting} file(s) wait for the model to load.`
    : problems && !waiting && !reading ? `${problems} of ${state.entries.length} file(s) cannot be read: see the list below.`
      : '';
}

function updateButtons() {
  const settled = state.entries.every((e) => e.status === 'ready' || e.status === 'problem');
  const count = state.info ? pending().length : 0;
  $('analyse').disabled = state.busy || !settled || !count;
  $('analyse').textContent = count > 1 ? `Encrypt and analyse ${count} images` : 'Encrypt and analyse';
  $('clear').disabled = state.busy || !state.entries.length;
  $('model-select').disabled = state.busy;
  $('forget').disabled = state.busy;
  $('forget-token').disabled = state.busy;
  $('token-status').hidden = $('forget-token').hidden = !hasToken();
}

function clearImages() {
  state.entries = [];
  $('previews').replaceChildren();
  updateQueued();
  updateButtons();
}

// ---- keys ---------------------------------------------------------------------------------

/// Generates keys in a worker of their own, so that images keep being read meanwhile.
async function generateKeys(parameterSet) {
  const keygen = new Engine();
  try {
    const pair = await keygen.call('keys', { parameterSet }, { progress: (s, total, label) => step('keys', s / total, label) });
    window.hexrayTimings.keygenMs = pair.ms;
    window.hexrayTimings.keygenMemoryBytes = pair.memory;
    return pair;
  } catch (error) {
    throw new UserError(`Key generation failed: ${error.message}`);
  } finally {
    keygen.terminate();
  }
}

async function ensureKeys() {
  let keys = await loadKeys();
  if (keys && keys.parameterSet !== state.info.parameter_set) keys = null;
  if (keys) {
    step('keys', 1, 'kept from an earlier visit');
  } else {
    step('keys', 0, 'generating in the background…');
    const pair = await generateKeys(state.info.parameter_set);
    keys = {
      clientKey: pair.clientKey,
      serverKey: pair.serverKey,
      keyId: null,
      parameterSet: state.info.parameter_set,
      created: new Date().toISOString(),
    };
    await saveKeys(keys);
    step('keys', 1, `generated in ${(pair.ms / 1000).toFixed(1)} s`);
  }
  if (keys.keyId) {
    try {
      await api(`/keys/${keys.keyId}`);
      step('upload', 1, 'already registered');
      showKeyStatus(keys);
      return keys;
    } catch (error) {
      if (error.status !== 404) throw error;
    }
  }
  keys.keyId = await uploadKey(keys.serverKey);
  await saveKeys(keys);
  showKeyStatus(keys);
  return keys;
}

/// Uploads the evaluation key and returns the id the server knows it by.
async function uploadKey(serverKey) {
  const response = await postWithProgress('/keys', serverKey, (loaded, total) =>
    step('upload', loaded / total, `${(loaded / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`));
  step('upload', 1, 'registered');
  return (await response.json()).key_id;
}

/// Forgets the keys: the server's copy of the evaluation key first, so that its place under the
/// token's key quota is free at once (else it would hold it until it expires unused), then this
/// browser's. A server that cannot be reached keeps its copy until then; the browser forgets
/// regardless.
async function forgetMyKeys() {
  const keys = await loadKeys();
  let notice = '';
  if (keys?.keyId) {
    try {
      await api(`/keys/${keys.keyId}`, { method: 'DELETE' });
    } catch (error) {
      if (error.status !== 404) {
        notice = `The server was not told to delete its copy of the evaluation key (${error.message}); `
          + 'it deletes it by itself once it has gone unused for a while.';
      }
    }
  }
  await forgetKeys();
  resetSteps();
  $('notice').textContent = notice;
  showKeyStatus();
}

async function showKeyStatus(keys) {
  keys = keys || await loadKeys();
  $('key-status').textContent = keys
    ? `Keys created ${new Date(keys.created).toLocaleString()} are stored in this browser`
      + (keys.keyId ? `; the server knows the evaluation key as ${keys.keyId}.` : '.')
    : 'No keys yet: they are generated on your first analysis.';
}

// ---- analysis -----------------------------------------------------------------------------

/// Analyses the pending images: one job, or as many as the server's limit on images per job
/// asks for, one after another. Files added meanwhile wait for the next analysis, so that a
/// table, its CSV and its report hold what the clinician asked for and nothing dropped later.
/// After a failure, Retry (`resume`) first follows the job already submitted, if there is
/// one, rather than submitting it again, and the analysis goes on with the images it had
/// left: their results join those it showed before the failure. When it has none left, Retry
/// starts a new analysis.
async function analyse({ resume = false } = {}) {
  resetSteps();
  $('error').hidden = true;
  // A new analysis starts a new table; each job's results join those the analysis showed.
  if (!resume || !(state.job || pending(state.chosen).length)) {
    state.resumable = false;
    state.chosen = pending();
  }
  if (state.job) {
    await analyseBatch(state.job.batch, state.resumable);
    state.resumable = true;
  }
  let rest = pending(state.chosen);
  const jobs = Math.ceil(rest.length / state.batchImages);
  if (jobs > 1) $('notice').textContent = `${rest.length} images go as ${jobs} jobs: this server takes ${state.batchImages} per job.`;
  for (; rest.length; rest = pending(state.chosen)) {
    await analyseBatch(await prepareBatch(rest.slice(0, state.batchImages)), state.resumable);
    state.resumable = true;
  }
  state.resumable = false;
}

/// Submits a prepared batch as one job (or follows it, when it is the job already submitted),
/// then decrypts and shows its results, after the previous job's when `more`.
async function analyseBatch(prepared, more) {
  const started = state.job?.started ?? performance.now();
  let batch = prepared;
  const recovered = new Set();
  let final;
  while (!final) {
    try {
      state.job ??= { id: await submit(batch), batch, started };
      final = await followJob(state.job.id);
      if (final.state === 'failed') {
        throw new UserError(`The server could not evaluate the images: ${final.error}`, { code: final.error_code });
      }
    } catch (error) {
      // A job refused, failed or forgotten by the server is over: it may be submitted again.
      if (error.code !== 'unreachable') state.job = null;
      // Each loss on the server's side is recovered from once, then the batch goes again.
      if (!(error.code in RECOVERIES) || recovered.has(error.code)) throw error;
      recovered.add(error.code);
      batch = await RECOVERIES[error.code](batch);
    }
  }
  window.hexrayTimings.serverSeconds = final.seconds;

  // The decrypted results stay in this page: nothing computed from them is ever sent.
  step('decrypt', 0);
  const body = new Uint8Array(await (await api(`/jobs/${final.job_id}/outputs`)).arrayBuffer());
  window.hexrayTimings.downloadBytesPerImage = body.length / batch.entries.length;
  const results = await engine.call('decrypt',
    { clientKey: batch.keys.clientKey, body, count: batch.entries.length, fingerprint: batch.model.fingerprint },
    { transfer: [body.buffer] });
  state.job = null;
  step('decrypt', 1, 'done');
  const seconds = (performance.now() - started) / 1000;
  window.hexrayTimings.endToEndSeconds = seconds;
  for (const entry of batch.entries) entry.analysedWith = batch.model.fingerprint;
  // Shown with the model the batch was encrypted for, and the images as they were read for it,
  // whatever the picker says now.
  showResults({
    model: batch.model,
    rows: batch.entries.map((entry, i) => {
      const read = batch.reads[i];
      return { path: entry.path, result: results[i], dicom: read.dicom, original: original(read), seen: seen(read, batch.model) };
    }),
    seconds,
    serverSeconds: final.seconds,
  }, more);
}

/// Keys, and `entries` encrypted with them in the worker for the current model. The batch keeps
/// that model (its client spec's info, id and card summary) and the reads it encrypted: its
/// job is submitted, decrypted and shown with them even if the model is changed meanwhile.
async function prepareBatch(entries) {
  const model = { ...state.info, id: state.summary.id, cardSummary: state.summary.card_summary };
  const reads = entries.map((e) => e.read);
  const keys = await ensureKeys();
  const body = await engine.call('encrypt',
    { clientKey: keys.clientKey, inputs: reads.map((r) => r.input), fingerprint: model.fingerprint },
    { progress: (i, n, label) => step('encrypt', i / n, label) });
  step('encrypt', 1, `${entries.length} image(s), ${(body.length / 1024).toFixed(0)} KiB to send`);
  window.hexrayTimings.uploadBytesPerImage = body.length / entries.length;
  return { keys, entries, reads, body, model };
}

/// Submits the batch as one job, for the model it was encrypted for; resolves with its id.
async function submit({ keys, body, model }) {
  const query = new URLSearchParams({ model: model.id, key: keys.keyId, fingerprint: model.fingerprint });
  const job = await (await api(`/jobs?${query}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' },
    body,
  })).json();
  return job.job_id;
}

/// What to redo before submitting a batch again, by the error code that refused, failed or
/// lost it.
const RECOVERIES = { stale_model: refetchModel, unknown_key: reuploadKey, unknown_job: (batch) => batch };

/// The server's model changed since this page fetched it: fetch it again, and redo what
/// depends on it: the images' inputs, keys (should its parameter set have changed) and
/// ciphertexts.
async function refetchModel(batch) {
  await chooseModel(batch.model.id);
  await state.reading;
  return prepareBatch(batch.entries.filter((e) => e.status === 'ready'));
}

/// The server no longer has this browser's key (deleted, expired, or found damaged): upload
/// the stored one again. The batch stays as it is: it was encrypted for the same key.
async function reuploadKey(batch) {
  const { keys } = batch;
  keys.keyId = await uploadKey(keys.serverKey);
  await saveKeys(keys);
  showKeyStatus(keys);
  $('notice').textContent = "The server had lost this browser's key; it was uploaded again.";
  return batch;
}

/// Follows a job until it ends: by its event stream, or by polling when the server refuses
/// another stream or the stream cannot be opened or breaks. The job is never submitted again
/// here.
async function followJob(id) {
  try {
    const final = await streamJob(id);
    if (final) return final;
  } catch (error) {
    if (error.code !== 'too_many_streams' && error.code !== 'unreachable') throw error;
  }
  $('notice').textContent = 'The progress stream was interrupted; following the job by polling instead.';
  return pollJob(id);
}

/// Reads the job's progress events until a final state: null when the stream ends or breaks
/// first. EventSource cannot send the token, so the stream is read with fetch.
async function streamJob(id) {
  const response = await api(`/jobs/${id}/events`, { headers: { Accept: 'text/event-stream' } });
  try {
    for await (const { event, data } of serverSentEvents(response.body)) {
      if (event !== 'status') continue;
      const status = JSON.parse(data);
      showJobProgress(status);
      if (isFinal(status)) return status;
    }
  } catch { /* the stream broke: the caller polls */ }
  return null;
}

/// Asks for the job's state every POLL_MS until a final state.
async function pollJob(id) {
  for (;;) {
    const status = await (await api(`/jobs/${id}`)).json();
    showJobProgress(status);
    if (isFinal(status)) return status;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

const isFinal = (status) => status.state === 'done' || status.state === 'failed';

function showJobProgress(status) {
  step('evaluate', status.bootstraps_done / status.bootstraps_total,
    `${status.state}: ${status.bootstraps_done} of ${status.bootstraps_total} bootstraps`);
}

// ---- wiring -------------------------------------------------------------------------------

async function run(action) {
  if (state.busy) return;
  state.busy = true;
  updateButtons();
  try {
    await action();
  } catch (error) {
    console.error(error);
    showError(error instanceof UserError ? error.message : `Something went wrong: ${error.message || error}`);
  } finally {
    state.busy = false;
    updateButtons();
  }
}

function setup() {
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    takeFromDrop(e.dataTransfer).then(addFiles, (error) => showError(`The dropped files could not be read: ${error.message}`));
  });
  $('choose-files').addEventListener('click', () => $('files').click());
  $('choose-folder').addEventListener('click', () => $('folder').click());
  for (const input of [$('files'), $('folder')]) input.addEventListener('change', () => addFiles(takeFromInput(input)));
  $('model-select').addEventListener('change', (e) => run(() => chooseModel(e.target.value)));
  $('analyse').addEventListener('click', () => run(analyse));
  $('clear').addEventListener('click', clearImages);
  $('retry').addEventListener('click', () => {
    $('error').hidden = true;
    run(state.info ? () => analyse({ resume: true }) : start);
  });
  $('download').addEventListener('click', downloadCsv);
  $('report').addEventListener('click', printReport);
  $('forget').addEventListener('click', () => $('forget-dialog').showModal());
  $('forget-cancel').addEventListener('click', () => $('forget-dialog').close());
  // A shared ward computer: the token goes, and the page starts again, asking the next person
  // for theirs. The keys stay: they are this browser's, and another token cannot reach the
  // jobs sent with this one.
  $('forget-token').addEventListener('click', () => {
    if (state.busy) return;
    forgetToken();
    window.location.reload();
  });
  $('forget-confirm').addEventListener('click', () => {
    $('forget-dialog').close();
    run(forgetMyKeys); // run() does nothing while an analysis runs: its keys stay
  });
  showKeyStatus();
  run(start);
}

setup();
