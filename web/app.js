// The clinician page: choose images, then keys → upload key → encrypt → evaluate → decrypt.
// Only ciphertexts and the public evaluation key are ever sent; the secret key stays in
// IndexedDB and images never leave this page unencrypted.
import init, { Client, Model, pack_batch, unpack_batch } from './pkg/hexray_wasm.js';
import { forgetKeys, loadKeys, saveKeys } from './keystore.js';

const $ = (id) => document.getElementById(id);
const API = '/api/v1';
const state = { model: null, modelId: null, info: null, files: [], busy: false };

/// What the page measured, for people and for the browser benchmark.
window.hexrayTimings = {};

class UserError extends Error {}

// ---- steps and errors -------------------------------------------------------------------

function step(name, fraction, detail = '') {
  const item = $(`step-${name}`);
  item.querySelector('progress').value = fraction;
  item.querySelector('.detail').textContent = detail;
  item.classList.toggle('done', fraction >= 1);
}

function resetSteps() {
  for (const name of ['keys', 'upload', 'encrypt', 'evaluate', 'decrypt']) step(name, 0);
}

function showError(message) {
  $('error-text').textContent = message;
  $('error').hidden = false;
  $('retry').focus();
}

function clearError() {
  $('error').hidden = true;
}

/// Fetches from the API, turning network failures and the API's JSON errors into sentences.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(API + path, options);
  } catch {
    throw new UserError('The HEXray server cannot be reached. Check that it is running, then retry.');
  }
  if (!response.ok) {
    let message = `The server answered ${response.status}.`;
    try {
      const body = await response.json();
      message = body.message;
      if (body.code === 'queue_full') {
        const wait = response.headers.get('Retry-After') || 'a few';
        message = `The server is busy; please retry in ${wait} seconds.`;
      }
    } catch { /* not JSON: keep the status */ }
    const error = new UserError(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

// ---- model --------------------------------------------------------------------------------

async function loadModel() {
  await init();
  const { models } = await (await api('/models')).json();
  if (!models.length) throw new UserError('The server offers no model.');
  const summary = models[0];
  const bytes = new Uint8Array(await (await api(`/models/${encodeURIComponent(summary.id)}`)).arrayBuffer());
  state.model = new Model(bytes);
  state.modelId = summary.id;
  state.info = state.model.info();
  const info = state.info;
  $('model-info').textContent = `${info.name} version ${info.version}: ${info.classes.join(' / ')}; `
    + `${info.width}×${info.height} grayscale input; ${info.bootstraps} bootstraps per image.`;
}

// ---- images -------------------------------------------------------------------------------

const ACCEPTED = ['image/png', 'image/jpeg'];

async function addFiles(list) {
  for (const file of list) {
    const entry = { file, bytes: null, problem: null };
    if (!ACCEPTED.includes(file.type) && !/\.(png|jpe?g)$/i.test(file.name)) {
      entry.problem = `${file.name} is not a PNG or JPEG image.`;
    } else {
      entry.bytes = new Uint8Array(await file.arrayBuffer());
      try {
        entry.preview = state.model.preprocess(entry.bytes);
      } catch (error) {
        entry.problem = `${file.name}: ${error.message}`;
      }
    }
    state.files.push(entry);
  }
  renderPreviews();
}

function renderPreviews() {
  const list = $('previews');
  list.replaceChildren();
  for (const entry of state.files) {
    const item = document.createElement('li');
    if (entry.problem) {
      item.innerHTML = '<p class="problem"></p>';
      item.querySelector('p').textContent = entry.problem;
    } else {
      const original = document.createElement('img');
      original.alt = `${entry.file.name}, as dropped`;
      original.src = URL.createObjectURL(entry.file);
      item.append(original, modelView(entry.preview), document.createTextNode(entry.file.name));
    }
    list.append(item);
  }
  const usable = state.files.some((e) => !e.problem);
  $('analyse').disabled = state.busy || !usable;
  $('clear').disabled = state.busy || !state.files.length;
}

/// The image as the model sees it: what gets encrypted.
function modelView(values) {
  const { width, height } = state.info;
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', 'the image as the model sees it');
  const context = canvas.getContext('2d');
  const pixels = context.createImageData(width, height);
  const max = state.model.max_input();
  values.forEach((v, i) => {
    const grey = Math.round((v * 255) / max);
    pixels.data.set([grey, grey, grey, 255], i * 4);
  });
  context.putImageData(pixels, 0, 0);
  return canvas;
}

// ---- keys ---------------------------------------------------------------------------------

function generateKeys(parameterSet) {
  return new Promise((resolve, reject) => {
    const worker = new Worker('worker.js', { type: 'module' });
    worker.onmessage = ({ data }) => {
      if (data.type === 'progress') {
        step('keys', data.step / data.total, data.label);
      } else if (data.type === 'done') {
        worker.terminate();
        window.hexrayTimings.keygenMs = data.ms;
        window.hexrayTimings.keygenMemoryBytes = data.memory;
        resolve(data);
      } else {
        worker.terminate();
        reject(new UserError(`Key generation failed: ${data.message}`));
      }
    };
    worker.onerror = (event) => {
      worker.terminate();
      reject(new UserError(`Key generation failed: ${event.message}`));
    };
    worker.postMessage({ parameterSet });
  });
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

/// Uploads the evaluation key with XMLHttpRequest, the one browser API that reports upload
/// progress.
function uploadKey(serverKey) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open('POST', `${API}/keys`);
    request.setRequestHeader('Content-Type', 'application/octet-stream');
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) step('upload', e.loaded / e.total, `${(e.loaded / 1e6).toFixed(1)} of ${(e.total / 1e6).toFixed(1)} MB`);
    };
    request.onload = () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch { /* handled below */ }
      if (request.status === 200 || request.status === 201) {
        step('upload', 1, 'registered');
        resolve(body.key_id);
      } else {
        reject(new UserError(body.message || `The server refused the key (${request.status}).`));
      }
    };
    request.onerror = () => reject(new UserError('The HEXray server cannot be reached. Check that it is running, then retry.'));
    request.send(serverKey);
  });
}

async function showKeyStatus(keys) {
  keys = keys || await loadKeys();
  $('key-status').textContent = keys
    ? `Keys created ${new Date(keys.created).toLocaleString()} are stored in this browser`
      + (keys.keyId ? `; the server knows the evaluation key as ${keys.keyId}.` : '.')
    : 'No keys yet: they are generated on your first analysis.';
}

// ---- analysis -----------------------------------------------------------------------------

async function analyse() {
  const images = state.files.filter((e) => !e.problem);
  const started = performance.now();
  resetSteps();
  clearError();
  const keys = await ensureKeys();
  const client = new Client(keys.clientKey);

  const encrypted = [];
  for (const [i, entry] of images.entries()) {
    step('encrypt', i / images.length, `${entry.file.name}`);
    await new Promise((r) => setTimeout(r)); // let the progress bar paint
    encrypted.push(client.encrypt(state.model, entry.bytes));
  }
  const body = pack_batch(encrypted);
  step('encrypt', 1, `${images.length} image(s), ${(body.length / 1024).toFixed(0)} KiB to send`);
  window.hexrayTimings.uploadBytesPerImage = body.length / images.length;

  const query = `model=${encodeURIComponent(state.modelId)}&key=${encodeURIComponent(keys.keyId)}`;
  const job = await (await api(`/jobs?${query}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' },
    body,
  })).json();
  const final = await followJob(job.job_id);
  window.hexrayTimings.serverSeconds = final.seconds;

  step('decrypt', 0);
  const outputs = unpack_batch(new Uint8Array(await (await api(`/jobs/${job.job_id}/outputs`)).arrayBuffer()), images.length);
  const results = outputs.map((output) => client.decrypt(state.model, output));
  step('decrypt', 1, 'done');
  const seconds = (performance.now() - started) / 1000;
  window.hexrayTimings.endToEndSeconds = seconds;
  results.forEach((result, i) => showResult(images[i].file.name, result, seconds, final.seconds));
}

/// Follows a job's server-sent events until it ends.
function followJob(id) {
  return new Promise((resolve, reject) => {
    const events = new EventSource(`${API}/jobs/${id}/events`);
    events.addEventListener('status', (event) => {
      const status = JSON.parse(event.data);
      step('evaluate', status.bootstraps_done / status.bootstraps_total,
        `${status.state}: ${status.bootstraps_done} of ${status.bootstraps_total} bootstraps`);
      if (status.state === 'done') {
        events.close();
        resolve(status);
      } else if (status.state === 'failed') {
        events.close();
        reject(new UserError(`The server could not evaluate the images: ${status.error}`));
      }
    });
    events.onerror = () => {
      events.close();
      reject(new UserError('Lost the connection to the server while it was evaluating. Retry to start again.'));
    };
  });
}

function showResult(name, result, seconds, serverSeconds) {
  const item = document.createElement('li');
  item.className = 'result';
  item.dataset.file = name;
  item.dataset.class = result.class;
  item.dataset.probabilities = JSON.stringify(result.probabilities);
  const title = document.createElement('h3');
  title.textContent = name;
  const verdict = document.createElement('p');
  verdict.className = 'class';
  verdict.textContent = result.class;
  item.append(title, verdict);
  result.classes.forEach((label, i) => {
    const p = result.probabilities[i];
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    bar.querySelector('.name').textContent = label;
    bar.querySelector('.fill').style.width = `${(p * 100).toFixed(1)}%`;
    bar.querySelector('.value').textContent = `${(p * 100).toFixed(1)}%`;
    bar.setAttribute('role', 'meter');
    bar.setAttribute('aria-label', `${label} probability`);
    bar.setAttribute('aria-valuenow', (p * 100).toFixed(1));
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', '100');
    item.append(bar);
  });
  const meta = document.createElement('p');
  meta.className = 'meta';
  meta.textContent = `${state.info.name} v${state.info.version} · ${seconds.toFixed(1)} s from start to result `
    + `(${serverSeconds.toFixed(1)} s on the server)`;
  item.append(meta);
  $('results').prepend(item);
}

// ---- wiring -------------------------------------------------------------------------------

async function run(action) {
  if (state.busy) return;
  state.busy = true;
  renderPreviews();
  try {
    await action();
  } catch (error) {
    console.error(error);
    showError(error instanceof UserError ? error.message : `Something went wrong: ${error.message || error}`);
  } finally {
    state.busy = false;
    renderPreviews();
  }
}

function setup() {
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (state.model) addFiles(e.dataTransfer.files);
  });
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('files').click(); }
  });
  $('files').addEventListener('change', (e) => {
    if (state.model) addFiles(e.target.files);
    e.target.value = '';
  });
  $('analyse').addEventListener('click', () => run(analyse));
  $('clear').addEventListener('click', () => { state.files = []; renderPreviews(); });
  $('retry').addEventListener('click', () => {
    clearError();
    run(state.model ? analyse : loadModel);
  });
  $('forget').addEventListener('click', async () => {
    await forgetKeys();
    resetSteps();
    showKeyStatus();
  });
  showKeyStatus();
  run(loadModel);
}

setup();
