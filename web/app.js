// The clinician page: choose images, then keys → upload key → encrypt → evaluate → decrypt.
// Only ciphertexts, the public evaluation key and the access token are ever sent; the secret
// key stays in IndexedDB, and neither images nor results leave this page unencrypted.
import init, { Client, Model, pack_batch, unpack_batch } from './pkg/hexray_wasm.js';
import { forgetKeys, loadKeys, saveKeys } from './keystore.js';

const $ = (id) => document.getElementById(id);
// The evaluator's origin comes from index.html's <meta name="hexray-api">: empty when it also
// serves this page, else the origin of the API when the page is hosted elsewhere.
const API = `${(document.querySelector('meta[name="hexray-api"]')?.content ?? '').trim().replace(/\/+$/, '')}/api/v1`;
const TOKEN = 'hexray.token';
const POLL_MS = 2000;
const state = { model: null, modelId: null, info: null, files: [], busy: false };

/// What the page measured, for people and for the browser benchmark.
window.hexrayTimings = {};

/// An error to show as it is; `code` is the API's error code when the server gave one.
class UserError extends Error {
  constructor(message, { status, code } = {}) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

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

function clearError() {
  $('error').hidden = true;
}

// ---- API ----------------------------------------------------------------------------------

/// Makes one API request: `send(headers)` sends it with these extra headers (the stored token)
/// and resolves with a Response. Every request to the API goes through here, so every one
/// carries the token; network failures and the API's JSON errors become sentences, and a 401
/// asks for a token and sends again.
async function request(send) {
  for (;;) {
    let response;
    try {
      response = await send(authorization());
    } catch {
      throw new UserError('The HEXray server cannot be reached. Check that it is running, then retry.');
    }
    if (response.status === 401) {
      // The token is missing, or no longer valid: forget it and ask for another.
      const refused = localStorage.getItem(TOKEN) !== null;
      localStorage.removeItem(TOKEN);
      await askForToken(refused);
    } else if (!response.ok) {
      throw await apiError(response);
    } else {
      return response;
    }
  }
}

/// Fetches from the API.
function api(path, options = {}) {
  return request((headers) => fetch(API + path, { ...options, headers: { ...options.headers, ...headers } }));
}

function authorization() {
  const token = localStorage.getItem(TOKEN);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/// The API's JSON error as a sentence, keeping its status and code for the recoveries.
async function apiError(response) {
  let message = `The server answered ${response.status}.`;
  let code;
  try {
    const body = await response.json();
    code = body.code;
    message = body.message || message;
    if (code === 'queue_full') {
      const wait = response.headers.get('Retry-After') || 'a few';
      message = `The server is busy; please retry in ${wait} seconds.`;
    }
  } catch { /* not JSON: keep the status */ }
  return new UserError(message, { status: response.status, code });
}

let tokenAnswer = null; // the open question, shared by requests refused at the same time

/// Shows the token form and resolves once a token has been entered and stored. `refused`: the
/// server turned down the stored one.
function askForToken(refused = false) {
  tokenAnswer ??= new Promise((resolve) => {
    $('token-refused').hidden = !refused;
    $('token').hidden = false;
    $('token-input').value = '';
    $('token-input').focus();
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault(); // handled here; the page never navigates (CSP: form-action 'none')
      localStorage.setItem(TOKEN, $('token-input').value.trim());
      $('token').hidden = true;
      tokenAnswer = null;
      resolve();
    }, { once: true });
  });
  return tokenAnswer;
}

/// Opens the page: asks for a token first when the server needs one and none is stored, so the
/// clinician is not greeted by a refusal, then loads the model.
async function start() {
  const health = await (await api('/health')).json();
  if (health.auth === 'token' && !localStorage.getItem(TOKEN)) await askForToken();
  await loadModel();
}

// ---- model --------------------------------------------------------------------------------

async function loadModel() {
  await init();
  const { models } = await (await api('/models')).json();
  if (!models.length) throw new UserError('The server offers no model.');
  const summary = models[0];
  // The model's client spec (JSON): what this page needs to preprocess, encrypt and decode.
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
  // Copied before the first await: a FileList or DataTransfer is emptied once its event ends.
  const files = Array.from(list);
  for (const file of files) {
    const entry = { file, bytes: null, problem: null };
    if (!ACCEPTED.includes(file.type) && !/\.(png|jpe?g)$/i.test(file.name)) {
      entry.problem = `${file.name} is not a PNG or JPEG image.`;
    } else {
      entry.bytes = new Uint8Array(await file.arrayBuffer());
      preprocessEntry(entry);
    }
    state.files.push(entry);
  }
  renderPreviews();
}

/// The image as the current model sees it, or why the model cannot take it.
function preprocessEntry(entry) {
  try {
    entry.preview = state.model.preprocess(entry.bytes);
    entry.problem = null;
  } catch (error) {
    entry.problem = `${entry.file.name}: ${error.message}`;
  }
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

/// Uploads the evaluation key and returns the id the server knows it by.
async function uploadKey(serverKey) {
  const response = await request((headers) => postWithProgress(`${API}/keys`, serverKey, headers, (loaded, total) =>
    step('upload', loaded / total, `${(loaded / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`)));
  step('upload', 1, 'registered');
  return (await response.json()).key_id;
}

/// POSTs with XMLHttpRequest, the one browser API that reports upload progress, and resolves
/// with a Response as fetch would, so the answer is read like any other.
function postWithProgress(url, body, headers, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress(e.loaded, e.total); };
    xhr.onload = () => resolve(new Response(xhr.responseText, { status: xhr.status }));
    xhr.onerror = () => reject(new TypeError('network error'));
    xhr.send(body);
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
  const started = performance.now();
  resetSteps();
  clearError();
  let batch = await prepareBatch();
  const recovered = new Set();
  let final;
  while (!final) {
    try {
      final = await evaluate(batch);
    } catch (error) {
      // Each loss on the server's side is recovered from once, then the batch goes again.
      if (!(error.code in RECOVERIES) || recovered.has(error.code)) throw error;
      recovered.add(error.code);
      batch = await RECOVERIES[error.code](batch);
    }
  }
  window.hexrayTimings.serverSeconds = final.seconds;

  // The decrypted results stay in this page: nothing computed from them is ever sent.
  step('decrypt', 0);
  const { images, client } = batch;
  const outputs = unpack_batch(new Uint8Array(await (await api(`/jobs/${final.job_id}/outputs`)).arrayBuffer()), images.length);
  const results = outputs.map((output) => client.decrypt(state.model, output));
  step('decrypt', 1, 'done');
  const seconds = (performance.now() - started) / 1000;
  window.hexrayTimings.endToEndSeconds = seconds;
  results.forEach((result, i) => showResult(images[i].file.name, result, seconds, final.seconds));
}

/// Keys, and the usable images encrypted with them for the current model.
async function prepareBatch() {
  const keys = await ensureKeys();
  const client = new Client(keys.clientKey);
  const images = state.files.filter((e) => !e.problem);
  const encrypted = [];
  for (const [i, entry] of images.entries()) {
    step('encrypt', i / images.length, `${entry.file.name}`);
    await new Promise((r) => setTimeout(r)); // let the progress bar paint
    encrypted.push(client.encrypt(state.model, entry.bytes));
  }
  const body = pack_batch(encrypted);
  step('encrypt', 1, `${images.length} image(s), ${(body.length / 1024).toFixed(0)} KiB to send`);
  window.hexrayTimings.uploadBytesPerImage = body.length / images.length;
  return { keys, client, images, body };
}

/// Submits the batch and follows the job to its end. A failed job is thrown with the server's
/// error_code, so a key found damaged while the job ran is recovered from like a key refused
/// at submission.
async function evaluate({ keys, body }) {
  const query = new URLSearchParams({ model: state.modelId, key: keys.keyId, fingerprint: state.info.fingerprint });
  const job = await (await api(`/jobs?${query}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' },
    body,
  })).json();
  const final = await followJob(job.job_id);
  if (final.state === 'failed') {
    throw new UserError(`The server could not evaluate the images: ${final.error}`, { code: final.error_code });
  }
  return final;
}

/// What to redo before submitting a batch again, by the error code that refused or failed it.
const RECOVERIES = { stale_model: refetchModel, unknown_key: reuploadKey };

/// The server's model changed since this page fetched it: fetch it again, and redo what
/// depends on it: previews, keys (should its parameter set have changed) and ciphertexts.
async function refetchModel() {
  await loadModel();
  state.files.filter((e) => e.bytes).forEach(preprocessEntry);
  renderPreviews();
  return prepareBatch();
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
/// another stream or the stream breaks. The job itself is never submitted again here.
async function followJob(id) {
  try {
    const final = await streamJob(id);
    if (final) return final;
  } catch (error) {
    if (error.code !== 'too_many_streams') throw error;
  }
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

/// The events of a server-sent event stream, as { event, data }: `field: value` lines, a blank
/// line ending each event; lines starting with ':' are comments (the server's heartbeats).
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const lines = (buffer + value).split('\n');
      buffer = lines.pop(); // an incomplete line waits for the next chunk
      for (const line of lines.map((l) => l.replace(/\r$/, ''))) {
        if (line === '') {
          if (data.length) yield { event, data: data.join('\n') };
          event = 'message';
          data = [];
        } else if (!line.startsWith(':')) {
          const [, field, text] = line.match(/^([^:]*):? ?(.*)$/);
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => { /* the stream had already failed */ });
  }
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
    run(state.model ? analyse : start);
  });
  $('forget').addEventListener('click', async () => {
    await forgetKeys();
    resetSteps();
    showKeyStatus();
  });
  showKeyStatus();
  run(start);
}

setup();
