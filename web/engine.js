// The page's side of worker.js: each call posts one request and resolves with its result, so
// the page's thread only draws while images are decoded, keys made and images encrypted.

/// A Web Worker running worker.js.
export class Engine {
  constructor() {
    this.worker = new Worker('worker.js', { type: 'module' });
    this.calls = new Map();
    this.next = 0;
    this.worker.onmessage = ({ data: { id, progress, result, error } }) => {
      const call = this.calls.get(id);
      if (progress) return call.progress?.(progress.step, progress.total, progress.label);
      this.calls.delete(id);
      if (error === undefined) call.resolve(result);
      else call.reject(new Error(error));
    };
    // The worker itself failed (its script did not load): every waiting call fails with it.
    this.worker.onerror = (event) => {
      for (const call of this.calls.values()) call.reject(new Error(event.message || 'the worker failed'));
      this.calls.clear();
    };
  }

  /// Runs `type` (a handler of worker.js) on `payload`; `progress(step, total, label)` hears
  /// its progress. `transfer`: buffers moved to the worker rather than copied.
  call(type, payload, { progress, transfer = [] } = {}) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject, progress });
      this.worker.postMessage({ id, type, payload }, transfer);
    });
  }

  terminate() {
    this.worker.terminate();
  }
}
