// Drives the real page in headless Chromium against a real server: the clinician's path from
// dropping an X-ray to reading the result, what travels over the network, keys kept across
// visits, errors in words, and the browser benchmark figures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
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

function startServer(dataDir) {
  const server = spawn(hexray, [
    'serve', '--bind', `127.0.0.1:${port}`, '--data-dir', dataDir, '--web-dir', path.join(repo, 'web'),
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

async function lastResult(page, count) {
  await page.waitForFunction((n) => document.querySelectorAll('.result').length >= n, count, { timeout: minutes(10) });
  return page.evaluate(() => {
    const item = document.querySelector('.result');
    return { class: item.dataset.class, probabilities: JSON.parse(item.dataset.probabilities), text: item.textContent };
  });
}

test('a clinician analyses an X-ray; only ciphertexts and the evaluation key leave the page', { timeout: minutes(20) }, async () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'hexray-e2e-'));
  let server = startServer(dataDir);
  await waitUntilUp();
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 1500 } });
    const bodies = [];
    page.on('request', (request) => {
      const body = request.postDataBuffer();
      if (body) bodies.push({ url: request.url(), body });
    });
    page.on('pageerror', (error) => console.error('page error:', error));
    await page.goto(base);
    await page.waitForFunction(() => document.getElementById('model-info').textContent.includes('bootstraps'));

    // Wrong inputs are explained per file, in words.
    await page.setInputFiles('#files', [
      { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not an image') },
      { name: 'tiny.png', mimeType: 'image/png', buffer: tinyPng(8) },
    ]);
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

    // No request carried the client key or the image.
    const keys = await page.evaluate(() => new Promise((resolve, reject) => {
      const open = indexedDB.open('hexray');
      open.onsuccess = () => {
        const get = open.result.transaction('keys').objectStore('keys').get('current');
        get.onsuccess = () => resolve({ clientKey: Array.from(get.result.clientKey), keyId: get.result.keyId });
        get.onerror = () => reject(get.error);
      };
      open.onerror = () => reject(open.error);
    }));
    const clientKey = Buffer.from(keys.clientKey);
    const windows = (buf, size) => [0.25, 0.5, 0.75].map((f) => buf.subarray(Math.floor(buf.length * f), Math.floor(buf.length * f) + size));
    assert.ok(bodies.some((b) => b.url.endsWith('/api/v1/keys')), 'the evaluation key was uploaded');
    assert.ok(bodies.some((b) => b.url.includes('/api/v1/jobs')), 'a job was submitted');
    for (const { url, body } of bodies) {
      // 4 KiB of key: 512 secret coefficients, which no honest body repeats by chance.
      for (const secret of windows(clientKey, 4096)) assert.equal(body.indexOf(secret), -1, `${url} carries client key bytes`);
      for (const pixels of windows(xray, 64)) assert.equal(body.indexOf(pixels), -1, `${url} carries image bytes`);
    }

    mkdirSync(path.join(import.meta.dirname, 'screenshots'), { recursive: true });
    await page.screenshot({ path: path.join(import.meta.dirname, 'screenshots/page.png'), fullPage: true });

    // Second visit: the keys are kept, nothing is generated or uploaded again.
    await page.reload();
    await page.waitForFunction(() => document.getElementById('model-info').textContent.includes('bootstraps'));
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
    server = startServer(dataDir);
    await waitUntilUp();
    await page.locator('#retry').click();
    await page.waitForFunction(() => document.querySelectorAll('.result').length >= 2, null, { timeout: minutes(5) });
    assert.match(await page.locator('#step-upload .detail').textContent(), /already registered/, 'the restarted server kept the key');

    // Forgetting the keys removes them from the browser.
    await page.locator('#forget').click();
    await page.waitForFunction(() => document.getElementById('key-status').textContent.startsWith('No keys'));

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
