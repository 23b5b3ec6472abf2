// Drives the real page in headless Chromium against a real server that needs an access token:
// the clinician's path from entering the token and dropping an X-ray to reading the result,
// what travels over the network (both ways), keys kept across visits, a key the server lost
// uploaded again by the page itself, errors in words, and the browser benchmark figures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const repo = path.resolve(import.meta.dirname, '../..');
// Cargo's output folder: CARGO_TARGET_DIR when set (relative to the repository), else target/.
const targetDir = path.resolve(repo, process.env.CARGO_TARGET_DIR ?? 'target');
const hexray = path.join(targetDir, 'release/hexray');
const xrayPath = path.join(repo, 'samples/covid-cxr-actualmed/covid-1.png');
const port = 18000 + (process.pid % 1000);
const base = `http://127.0.0.1:${port}`;
const minutes = (n) => n * 60_000;
// Keys of the model's internals: the client spec and every other answer must carry none.
const MODEL_INTERNALS = new Set(['weights', 'bias', 'functions', 'input_scales', 'encoding', 'acc_min',
  'acc_max', 'sigma', 'layers', 'network', 'margin', 'delta', 'tables']);

/// A new access token in `tokensFile`: `hexray token new` prints it on its last line.
function newToken(tokensFile) {
  const out = execFileSync(hexray, ['token', 'new', '--label', 'browser-test', '--tokens-file', tokensFile], { encoding: 'utf8' });
  return out.split('\n').map((line) => line.trim()).filter(Boolean).at(-1);
}

function startServer(dataDir, tokensFile) {
  const server = spawn(hexray, [
    'serve', '--bind', `127.0.0.1:${port}`, '--data-dir', dataDir, '--web-dir', path.join(repo, 'web'),
    '--tokens-file', tokensFile,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  return server;
}

async function waitUntilUp() {
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${base}/api/v1/health`)).ok) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the server did not start');
}

function stop(server) {
  return new Promise((resolve) => {
    server.once('exit', resolve);
    server.kill('SIGTERM');
  });
}

/// A valid grayscale PNG of `size`×`size` pixels, too small for the model.
function tinyPng(size) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type), data]);
    const out = Buffer.alloc(body.length + 8);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), body.length + 4);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8; // bit depth
  header[9] = 0; // grayscale
  const rows = Buffer.alloc(size * (size + 1), 128);
  for (let y = 0; y < size; y++) rows[y * (size + 1)] = 0; // filter: none
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header), chunk('IDAT', zlib.deflateSync(rows)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

/// The keys of `value`, at any depth, that name a model internal.
function internalsIn(value) {
  if (Array.isArray(value)) return value.flatMap(internalsIn);
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([key, inner]) => (MODEL_INTERNALS.has(key) ? [key] : []).concat(internalsIn(inner)));
}

async function lastResult(page, count) {
  await page.waitForFunction((n) => document.querySelectorAll('.result').length >= n, count, { timeout: minutes(10) });
  return page.evaluate(() => {
    const item = document.querySelector('.result');
    return { class: item.dataset.class, probabilities: JSON.parse(item.dataset.probabilities), text: item.textContent };
  });
}

test('a clinician analyses an X-ray; only ciphertexts and the evaluation key leave the page', { timeout: minutes(20) }, async () => {
  const work = mkdtempSync(path.join(tmpdir(), 'hexray-e2e-'));
  const dataDir = path.join(work, 'data');
  mkdirSync(dataDir);
  const tokensFile = path.join(work, 'tokens');
  const token = newToken(tokensFile);
  let server = startServer(dataDir, tokensFile);
  await waitUntilUp();
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 1500 } });
    const bodies = [];
    page.on('request', (request) => {
      const body = request.postDataBuffer();
      if (body) bodies.push({ url: request.url(), body });
    });
    // Every answer from the API, passed through here so its body is kept: Chromium may discard
    // a body before the test could read it back. Progress streams pass straight through: they
    // stay open until their job ends, and the page must see each event as it comes.
    const responses = [];
    await page.route((url) => url.pathname.startsWith('/api/'), async (route) => {
      const request = route.request();
      if (new URL(request.url()).pathname.endsWith('/events')) return route.continue();
      let response;
      try {
        response = await route.fetch();
      } catch {
        return route.abort('connectionrefused'); // the test stopped the server
      }
      const body = await response.body();
      responses.push({ url: request.url(), method: request.method(), type: response.headers()['content-type'] ?? '', body });
      return route.fulfill({ response, body });
    });
    const violations = [];
    page.on('console', (message) => {
      if (/Content Security Policy/.test(message.text())) violations.push(message.text());
    });
    page.on('pageerror', (error) => console.error('page error:', error));
    await page.goto(base);

    // A fresh browser has no token: the page asks for one, labelled, and Enter submits it.
    const tokenInput = page.getByLabel('Access token', { exact: true });
    await tokenInput.waitFor();
    assert.match(await page.locator('#token').textContent(), /needs an access token\. Ask your HEXray administrator/);
    assert.equal(await tokenInput.getAttribute('type'), 'password');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'token-input', 'the token field has the focus');
    await page.keyboard.type(token);
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.getElementById('model-info').textContent.includes('bootstraps'));
    assert.equal(await page.locator('#token').isHidden(), true);

    // Wrong inputs are explained per file, in words.
    await page.setInputFiles('#files', [
      { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not an image') },
      { name: 'tiny.png', mimeType: 'image/png', buffer: tinyPng(8) },
    ]);
    await page.waitForFunction(() => document.querySelectorAll('.previews .problem').length >= 2);
    const problems = await page.locator('.previews .problem').allTextContents();
    assert.match(problems[0], /not a PNG or JPEG/);
    assert.match(problems[1], /8×8 pixels; the model needs at least 28×28/);
    assert.equal(await page.locator('#analyse').isDisabled(), true, 'nothing usable to analyse');
    await page.locator('#clear').click();

    // First visit: keys are generated, uploaded, and the X-ray is analysed.
    const xray = readFileSync(xrayPath);
    await page.setInputFiles('#files', xrayPath);
    await page.waitForSelector('.previews canvas');
    await page.locator('#analyse').click();
    const first = await lastResult(page, 1);
    const timings = await page.evaluate(() => window.hexrayTimings);

    // The shown result is the native simulator's, within TFHE's noise.
    const native = JSON.parse(execFileSync(hexray, ['simulate', '--image', xrayPath, '--noisy-runs', '300']));
    const votes = native.noisy.class_votes;
    const possible = native.classes.filter((_, k) => votes[k] > 0);
    assert.ok(possible.includes(first.class), `${first.class} not among the simulator's ${possible}`);
    // Within 6 standard deviations of the simulator's noisy runs (plus 1 point for rounding).
    first.probabilities.forEach((p, k) => {
      const mean = native.noisy.mean_probabilities[k];
      const sd = native.noisy.sd_probabilities[k];
      assert.ok(Math.abs(p - mean) <= 6 * sd + 0.01, `${native.classes[k]}: ${p}, the simulator gives ${mean} ± ${sd}`);
    });
    assert.match(first.text, new RegExp(`${native.model.name} v${native.model.version}`));

    // The client key is stored only wrapped, under a wrapping key no script can export; the
    // test unwraps it through WebCrypto, as the page does.
    const stored = await page.evaluate(async () => {
      const db = await new Promise((resolve, reject) => {
        const open = indexedDB.open('hexray');
        open.onsuccess = () => resolve(open.result);
        open.onerror = () => reject(open.error);
      });
      const get = (name) => new Promise((resolve, reject) => {
        const request = db.transaction('keys').objectStore('keys').get(name);
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
      const record = await get('current');
      const wrappingKey = await get('wrapping-key');
      const clientKey = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: record.iv }, wrappingKey, record.wrappedClientKey);
      return { clientKey: Array.from(new Uint8Array(clientKey)), inClear: 'clientKey' in record, extractable: wrappingKey.extractable };
    });
    assert.equal(stored.inClear, false, 'the client key is not stored in clear');
    assert.equal(stored.extractable, false, 'the wrapping key cannot be exported');

    // No request carried the client key or the image.
    const clientKey = Buffer.from(stored.clientKey);
    const windows = (buf, size) => [0.25, 0.5, 0.75].map((f) => buf.subarray(Math.floor(buf.length * f), Math.floor(buf.length * f) + size));
    // Nor the decrypted answer: its probabilities, as the page holds and shows them (long
    // enough that 30 MB of key bytes cannot hold one by chance).
    const answers = first.probabilities.flatMap((p) => [String(p), `${(100 * p).toFixed(1)}%`]);
    const assertNothingSecretSent = () => {
      for (const { url, body } of bodies) {
        for (const answer of answers) {
          assert.equal(url.includes(answer), false, `${url} carries the diagnosis`);
          assert.equal(body.indexOf(answer), -1, `${url} carries the diagnosis`);
        }
        // 4 KiB of key: 512 secret coefficients, which no honest body repeats by chance.
        for (const secret of windows(clientKey, 4096)) assert.equal(body.indexOf(secret), -1, `${url} carries client key bytes`);
        for (const pixels of windows(xray, 64)) assert.equal(body.indexOf(pixels), -1, `${url} carries image bytes`);
      }
    };
    assert.ok(bodies.some((b) => b.url.endsWith('/api/v1/keys')), 'the evaluation key was uploaded');
    assert.ok(bodies.some((b) => b.url.includes('/api/v1/jobs')), 'a job was submitted');
    assertNothingSecretSent();

    mkdirSync(path.join(import.meta.dirname, 'screenshots'), { recursive: true });
    await page.screenshot({ path: path.join(import.meta.dirname, 'screenshots/page.png'), fullPage: true });

    // Second visit: the token and the keys are kept, nothing is asked, generated or uploaded again.
    await page.reload();
    await page.waitForFunction(() => document.getElementById('model-info').textContent.includes('bootstraps'));
    assert.equal(await page.locator('#token').isHidden(), true, 'the token is not asked again');
    bodies.length = 0;
    const dropped = Date.now();
    await page.setInputFiles('#files', xrayPath);
    await page.locator('#analyse').click();
    const second = await lastResult(page, 1);
    const warmSeconds = (Date.now() - dropped) / 1000;
    assert.equal(second.class, first.class);
    assert.match(await page.locator('#step-keys .detail').textContent(), /kept from an earlier visit/);
    assert.match(await page.locator('#step-upload .detail').textContent(), /already registered/);
    assert.ok(!bodies.some((b) => b.url.endsWith('/api/v1/keys')), 'the key was not uploaded again');

    // The server goes down: the page says so in words, and Retry works once it is back.
    await stop(server);
    await page.setInputFiles('#files', xrayPath);
    await page.locator('#analyse').click();
    await page.waitForSelector('#error:not([hidden])');
    assert.match(await page.locator('#error-text').textContent(), /cannot be reached/);
    server = startServer(dataDir, tokensFile);
    await waitUntilUp();
    await page.locator('#retry').click();
    await page.waitForFunction(() => document.querySelectorAll('.result').length >= 2, null, { timeout: minutes(5) });
    assert.match(await page.locator('#step-upload .detail').textContent(), /already registered/, 'the restarted server kept the key');

    // The stored key is damaged while the server is down: the page uploads it again by itself.
    await stop(server);
    const keyFiles = readdirSync(path.join(dataDir, 'keys'), { recursive: true }).filter((f) => f.endsWith('.key'));
    assert.equal(keyFiles.length, 1, `one stored key, not ${keyFiles}`);
    const keyFile = path.join(dataDir, 'keys', keyFiles[0]);
    const keyBytes = readFileSync(keyFile);
    keyBytes[keyBytes.length >> 1] ^= 0xff;
    writeFileSync(keyFile, keyBytes);
    server = startServer(dataDir, tokensFile);
    await waitUntilUp();
    bodies.length = 0;
    const shown = await page.locator('.result').count();
    await page.locator('#clear').click();
    await page.setInputFiles('#files', xrayPath);
    await page.locator('#analyse').click();
    await page.waitForFunction((n) => document.querySelectorAll('.result').length > n || !document.getElementById('error').hidden,
      shown, { timeout: minutes(5) });
    assert.equal(await page.locator('#error').isHidden(), true, await page.locator('#error-text').textContent());
    assert.ok(bodies.some((b) => b.url.endsWith('/api/v1/keys')), 'the key was uploaded again');
    assertNothingSecretSent();

    // Forgetting the keys removes them from the browser.
    await page.locator('#forget').click();
    await page.waitForFunction(() => document.getElementById('key-status').textContent.startsWith('No keys'));

    // What came back: no model internals, no model file, and a small client spec.
    const received = responses;
    for (const { url, type, body } of received) {
      assert.equal(body.indexOf('HEXRAY-MODEL'), -1, `${url} carries the model file`);
      if (type.startsWith('application/json')) assert.deepEqual(internalsIn(JSON.parse(body)), [], `${url} names model internals`);
    }
    const specs = received.filter(({ url, method }) => method === 'GET' && /^\/api\/v1\/models\/[^/]+$/.test(new URL(url).pathname));
    assert.ok(specs.length > 0, 'the page fetched a client spec');
    for (const { url, type, body } of specs) {
      assert.match(type, /^application\/json/, `${url} is JSON`);
      assert.ok(body.length < 4096, `${url}: ${body.length} bytes`);
    }
    assert.deepEqual(violations, [], 'the page keeps to its Content-Security-Policy');

    console.log('benchmark: browser key generation %s s, wasm memory %s MiB',
      (timings.keygenMs / 1000).toFixed(1), (timings.keygenMemoryBytes / 2 ** 20).toFixed(0));
    console.log('benchmark: upload %s bytes per image (batch body of one image)', timings.uploadBytesPerImage);
    console.log('benchmark: first visit, drop to result %s s (server %s s)',
      timings.endToEndSeconds.toFixed(1), timings.serverSeconds.toFixed(2));
    console.log('benchmark: returning visit, drop to result %s s', warmSeconds.toFixed(1));
  } finally {
    await browser.close();
    await stop(server);
  }
});
