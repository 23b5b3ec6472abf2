// Everything heavy the page does runs here, off its thread, so the page never freezes: decoding
// images (DICOM included) into the model's input, key generation, encryption and decryption.
// The page sends { id, type, payload } and gets back { id, progress } messages, then one
// { id, result } or { id, error }. Requests are handled one at a time, in order.
import init, { Client, Model, generate_keys, memory_bytes, pack_batch, unpack_batch } from './pkg/hexray_wasm.js';

const ready = init();
let model = null; // the client spec of the model the page chose

const handlers = {
  /// The chosen model's client spec (JSON bytes): what the other requests use.
  model({ spec }) {
    model?.free();
    model = new Model(spec);
    return model.info();
  },

  /// An image file's bytes → { input, original, dicom }: the integers to encrypt, the decoded
  /// image to show, and the DICOM header fields shown locally (null for PNG or JPEG).
  read({ bytes }) {
    return model.read(bytes);
  },

  /// A fresh key pair for `parameterSet`.
  keys({ parameterSet }, progress) {
    const start = performance.now();
    const pair = generate_keys(parameterSet, progress);
    const result = { clientKey: pair.client_key, serverKey: pair.server_key, ms: performance.now() - start, memory: memory_bytes() };
    pair.free();
    return result;
  },

  /// Encrypts each input (as `read` gave it) and packs them into one job body.
  encrypt({ clientKey, inputs }, progress) {
    const client = new Client(clientKey);
    try {
      const blobs = inputs.map((input, i) => {
        progress(i, inputs.length, `image ${i + 1} of ${inputs.length}`);
        return client.encrypt(model, Int32Array.from(input));
      });
      return pack_batch(blobs);
    } finally {
      client.free();
    }
  },

  /// Decrypts a job's outputs body into one result per image.
  decrypt({ clientKey, body, count }) {
    const client = new Client(clientKey);
    try {
      return unpack_batch(body, count).map((output) => client.decrypt(model, output));
    } finally {
      client.free();
    }
  },
};

self.onmessage = async ({ data: { id, type, payload } }) => {
  try {
    await ready;
    const progress = (step, total, label) => self.postMessage({ id, progress: { step, total, label } });
    const result = handlers[type](payload, progress);
    // Large byte arrays move to the page instead of being copied.
    const transfer = [result?.buffer, result?.clientKey?.buffer, result?.serverKey?.buffer].filter(Boolean);
    self.postMessage({ id, result }, transfer);
  } catch (error) {
    self.postMessage({ id, error: String((error && error.message) || error) });
  }
};
