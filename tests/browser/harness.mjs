// What the browser tests share: a real `hexray serve` with an access token, headless Chromium
// (Debian's), a page that records every request body and API answer, and test files.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

export const repo = path.resolve(import.meta.dirname, '../..');
// Cargo's output folder: CARGO_TARGET_DIR when set (relative to the repository), else target/.
const targetDir = path.resolve(repo, process.env.CARGO_TARGET_DIR ?? 'target');
export const hexray = path.join(targetDir, 'release/hexray');
export const minutes = (n) => n * 60_000;

/// A server on a port of its own (`slot` tells test files apart), with a fresh data
/// directory and tokens file; `token` is a clinician token for it.
export class Server {
  constructor(slot) {
    this.port = 18000 + slot * 1000 + (process.pid % 1000);
    this.base = `http://127.0.0.1:${this.port}`;
    const work = mkdtempSync(path.join(tmpdir(), 'hexray-e2e-'));
    this.dataDir = path.join(work, 'data');
    mkdirSync(this.dataDir);
    this.tokensFile = path.join(work, 'tokens');
    // `hexray token new` prints the token on its last line.
    const out = execFileSync(hexray, ['token', 'new', '--label', 'browser-test', '--tokens-file', this.tokensFile], { encoding: 'utf8' });
    this.token = out.split('\n').map((line) => line.trim()).filter(Boolean).at(-1);
  }

  async start() {
    this.process = spawn(hexray, [
      'serve', '--bind', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, '--web-dir', path.join(repo, 'web'),
      '--tokens-file', this.tokensFile,
    ], { stdio: ['ignore', 'ignore', 'inherit'] });
    for (let i = 0; i < 300; i++) {
      try {
        if ((await fetch(`${this.base}/api/v1/health`)).ok) return;
      } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('the server did not start');
  }

  stop() {
    return new Promise((resolve) => {
      if (!this.process || this.process.exitCode !== null) return resolve();
      this.process.once('exit', resolve);
      this.process.kill('SIGTERM');
    });
  }
}

export const launch = () => chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });

/// A page of `browser` that records what it sends (`bodies`: every request body, with its URL
/// and method) and every API answer (`responses`), and collects Content-Security-Policy
/// violations. Answers pass through the test so their bodies are kept: Chromium may discard a
/// body before the test could read it back. Progress streams pass straight through: they stay
/// open until their job ends, and the page must see each event as it comes.
export async function recordedPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 1500 }, acceptDownloads: true, ...options });
  const page = await context.newPage();
  const record = { page, bodies: [], responses: [], violations: [] };
  page.on('request', (request) => {
    const body = request.postDataBuffer();
    if (body) record.bodies.push({ url: request.url(), method: request.method(), body });
  });
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
    record.responses.push({ url: request.url(), method: request.method(), type: response.headers()['content-type'] ?? '', body });
    return route.fulfill({ response, body });
  });
  page.on('console', (message) => {
    if (/Content Security Policy/.test(message.text())) record.violations.push(message.text());
  });
  page.on('pageerror', (error) => console.error('page error:', error));
  return record;
}

/// Opens the page and enters `token` when it asks for one.
export async function openWithToken(page, base, token) {
  await page.goto(base);
  await page.getByLabel('Access token', { exact: true }).waitFor();
  await page.keyboard.type(token);
  await page.keyboard.press('Enter');
  await modelLoaded(page);
}

export const modelLoaded = (page) =>
  page.waitForFunction(() => document.getElementById('model-info').textContent.includes('bootstraps'));

/// The result cards, newest first, once there are at least `count`.
export async function results(page, count) {
  await page.waitForFunction((n) => document.querySelectorAll('.result').length >= n || !document.getElementById('error').hidden,
    count, { timeout: minutes(10) });
  const error = await page.locator('#error').isHidden() ? null : await page.locator('#error-text').textContent();
  if (error) throw new Error(`the page shows an error: ${error}`);
  return page.evaluate(() => Array.from(document.querySelectorAll('.result'), (item) => ({
    file: item.dataset.file, class: item.dataset.class, probabilities: JSON.parse(item.dataset.probabilities),
    borderline: item.dataset.borderline === 'true', text: item.textContent,
  })));
}

/// The classes the native simulator gives `image` in 300 noisy runs: what an encrypted run may
/// show, near the decision boundary more than one.
export function possibleClasses(image, model) {
  const args = ['simulate', '--image', image, '--noisy-runs', '300'];
  if (model) args.push('--model', model);
  const native = JSON.parse(execFileSync(hexray, args));
  return { native, possible: native.classes.filter((_, k) => native.noisy.class_votes[k] > 0) };
}

/// A valid grayscale PNG of `size`×`size` pixels, too small for the model.
export function tinyPng(size) {
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

/// Three windows of `size` bytes from `buf`, at a quarter, half and three quarters.
export const windows = (buf, size) =>
  [0.25, 0.5, 0.75].map((f) => buf.subarray(Math.floor(buf.length * f), Math.floor(buf.length * f) + size));
