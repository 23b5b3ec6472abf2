// Drives the real page in headless Chromium against a real server that needs an access token:
// the clinician's path from entering the token and dropping an X-ray to reading the result,
// what travels over the network (both ways), keys kept across visits, a key the server lost
// uploaded again by the page itself, errors in words, and the browser benchmark figures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  launch, minutes, possibleClasses, recordedPage, repo, results, Server, tinyPng, windows,
} from './harness.mjs';

const xrayPath = path.join(repo, 'samples/covid-cxr-actualmed/covid-1.png');
// Keys of the model's internals: the client spec and every other answer must carry none.
const MODEL_INTERNALS = new Set(['weights', 'bias', 'functions', 'input_scales', 'encoding', 'acc_min',
  'acc_max', 'sigma', 'layers', 'network', 'margin', 'delta', 'tables']);

/// The keys of `value`, at any depth, that name a model internal.
function internalsIn(value) {
  if (Array.isArray(value)) return value.flatMap(internalsIn);
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([key, inner]) => (MODEL_INTERNALS.has(key) ? [key] : []).concat(internalsIn(inner)));
}

const lastResult = async (page, count) => (await results(page, count))[0];

test('a clinician analyses an X-ray; only ciphertexts and the evaluation key leave the page', { timeout: minutes(20) }, async () => {
  const server = new Server(0);
  await server.start();
  const { base, token } = server;
  const browser = await launch();
  try {
    const { page, bodies, responses, violations } = await recordedPage(browser);
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
    assert.match(problems[0], /notes\.txt is not a PNG, JPEG or DICOM image/);
    assert.match(problems[1], /8×8 pixels; the model needs at least 28×28/);
    // A large file of another kind is refused from its first bytes, not read whole: 64 GiB
    // (sparse on disk) is more than any page could hold.
    const huge = path.join(mkdtempSync(path.join(tmpdir(), 'hexray-huge-')), 'scan.dcm');
    writeFileSync(huge, '');
    truncateSync(huge, 64 * 2 ** 30);
    await page.setInputFiles('#files', huge);
    await page.waitForFunction(() => document.querySelectorAll('.previews .problem').length >= 3);
    assert.equal(await page.locator('.previews .problem').nth(2).textContent(), 'scan.dcm is not a PNG, JPEG or DICOM image.');
    rmSync(path.dirname(huge), { recursive: true });
    assert.equal(await page.locator('#analyse').isDisabled(), true, 'nothing usable to analyse');
    await page.locator('#clear').click();

    // First visit: keys are generated, uploaded, and the X-ray is analysed.
    const xray = readFileSync(xrayPath);
    await page.setInputFiles('#files', xrayPath);
    await page.waitForSelector('.previews li[data-status=ready]');
    await page.locator('#analyse').click();
    const first = await lastResult(page, 1);
    const timings = await page.evaluate(() => window.hexrayTimings);

    // The shown result is the native simulator's, within TFHE's noise.
    const { native, possible } = possibleClasses(xrayPath);
    // The image as the page holds it, encoded every way a careless page might send it; a window
    // of 64 values from the middle, where the X-ray is not a flat border.
    const input = native.input.slice(native.input.length / 2, native.input.length / 2 + 64);
    assert.ok(new Set(input).size > 8, 'a window with detail');
    const inputEncodings = [Buffer.from(input), Buffer.from(new Int32Array(input).buffer), Buffer.from(input.join(','))];
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
        // Nor the pixels the page holds: the preprocessed input, as bytes, 32-bit integers or text.
        for (const encoded of inputEncodings) assert.equal(body.indexOf(encoded), -1, `${url} carries the preprocessed image`);
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
    // Two encryptions of one image agree but for TFHE's noise near the boundary: the class is
    // one the simulator's noisy runs gave.
    assert.ok(possible.includes(second.class), `${second.class} not among the simulator's ${possible}`);
    assert.match(await page.locator('#step-keys .detail').textContent(), /kept from an earlier visit/);
    assert.match(await page.locator('#step-upload .detail').textContent(), /already registered/);
    assert.ok(!bodies.some((b) => b.url.endsWith('/api/v1/keys')), 'the key was not uploaded again');

    // The server goes down: the page says so in words, and Retry works once it is back.
    await server.stop();
    await page.setInputFiles('#files', xrayPath);
    await page.locator('#analyse').click();
    await page.waitForSelector('#error:not([hidden])');
    assert.match(await page.locator('#error-text').textContent(), /cannot be reached/);
    await server.start();
    await page.locator('#retry').click();
    await page.waitForFunction(() => document.querySelectorAll('.result').length >= 2, null, { timeout: minutes(5) });
    assert.match(await page.locator('#step-upload .detail').textContent(), /already registered/, 'the restarted server kept the key');

    // The stored key is damaged while the server is down: the page uploads it again by itself.
    await server.stop();
    const keyFiles = readdirSync(path.join(server.dataDir, 'keys'), { recursive: true }).filter((f) => f.endsWith('.key'));
    assert.equal(keyFiles.length, 1, `one stored key, not ${keyFiles}`);
    const keyFile = path.join(server.dataDir, 'keys', keyFiles[0]);
    const keyBytes = readFileSync(keyFile);
    keyBytes[keyBytes.length >> 1] ^= 0xff;
    writeFileSync(keyFile, keyBytes);
    await server.start();
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

    // Forgetting the keys removes them from the browser and the server's copy of the
    // evaluation key (freeing its place under the token's key quota), but asks first; keeping
    // them changes nothing.
    const storedKeys = () => readdirSync(path.join(server.dataDir, 'keys'), { recursive: true }).filter((f) => f.endsWith('.key'));
    await page.locator('#forget').click();
    await page.locator('#forget-cancel').click();
    assert.match(await page.locator('#key-status').textContent(), /are stored in this browser/);
    assert.equal(storedKeys().length, 1, 'kept on the server');
    await page.locator('#forget').click();
    await page.locator('#forget-confirm').click();
    await page.waitForFunction(() => document.getElementById('key-status').textContent.startsWith('No keys'));
    assert.deepEqual(storedKeys(), [], 'the server deleted its copy');

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

    // On a shared computer the token can be forgotten: the page starts again and asks the
    // next person for theirs.
    await page.locator('#forget-token').click();
    await page.getByLabel('Access token', { exact: true }).waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem('hexray.token')), null, 'the token is gone');
    assert.equal(await page.locator('#forget-token').isVisible(), false, 'nothing to forget any more');

    console.log('benchmark: browser key generation %s s, wasm memory %s MiB',
      (timings.keygenMs / 1000).toFixed(1), (timings.keygenMemoryBytes / 2 ** 20).toFixed(0));
    console.log('benchmark: upload %s bytes per image (batch body of one image)', timings.uploadBytesPerImage);
    console.log('benchmark: first visit, drop to result %s s (server %s s)',
      timings.endToEndSeconds.toFixed(1), timings.serverSeconds.toFixed(2));
    console.log('benchmark: returning visit, drop to result %s s', warmSeconds.toFixed(1));
  } finally {
    await browser.close();
    await server.stop();
  }
});
