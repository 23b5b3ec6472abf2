// Key generation takes seconds of heavy computation: it runs here, off the page's thread, and
// reports each step so the page can show progress.
import init, { generate_keys, memory_bytes } from './pkg/hexray_wasm.js';

self.onmessage = async (event) => {
  try {
    await init();
    const start = performance.now();
    const pair = generate_keys(event.data.parameterSet, (step, total, label) =>
      self.postMessage({ type: 'progress', step, total, label }));
    const clientKey = pair.client_key;
    const serverKey = pair.server_key;
    self.postMessage(
      { type: 'done', clientKey, serverKey, ms: performance.now() - start, memory: memory_bytes() },
      [clientKey.buffer, serverKey.buffer],
    );
  } catch (error) {
    self.postMessage({ type: 'error', message: String(error && error.message || error) });
  }
};
