// Everything heavy the page does runs here, off its thread, so the page never freezes: decoding
// images (DICOM included) into the model's input, key generation, encryption and decryption.
// The page sends { id, type, payload } and gets back { id, progress } messages, then one
// { id, result } or { id, error }. Requests are handled one at a time, in order.
import init, { Client, Model, generate_keys, memory_bytes, pack_batch, unpack_batch } from './pkg/hexray_wasm.js';

const ready = init();
// The client specs the page has loaded, by fingerprint. Every request names the one it is for,
// so that images read, encrypted and decrypted for one model can never be taken for another's,
// whatever the page chose meanwhile; a spec that is refused leaves the others as they were.
const models = new Map();

/// The loaded model whose client spec has `fingerprint`.
function modelFor(fingerprint) {
  const model = models.get(fingerprint);
  if (!model) throw new Error(`no model with fingerprint ${fingerprint} is loaded`);
  return model;
}

const handlers = {
  /// A model's client spec (JSON bytes), kept for the requests that name its fingerprint; its
  /// info, fingerprint included.
  model({ spec }) {
    const model = new Model(spec);
    const info = model.info();
    if (models.has(info.fingerprint)) model.free();
    else models.set(info.fingerprint, model);
    return info;
  },

  /// An image file's bytes → { input, original, dicom }: the integers to encrypt for the model
  /// with `fingerprint`, the decoded image to show, and the DICOM header fields shown locally
  /// (null for PNG or JPEG).
  read({ bytes, fingerprint }) {
    return modelFor(fingerprint).read(bytes);
  },

  /// A fresh key pair for `parameterSet`.
  keys({ parameterSet }, progress) {
    const start = performance.now();
    const pair = generate_keys(parameterSet, progress);
    const result = { clientKey: pair.client_key, serverKey: pair.server_key, ms: performance.now() - start, memory: memory_bytes() };
    pair.free();
    return result;
  },

  /// Encrypts each input (as `read` gave it) for the model with `fingerprint` and packs them
  /// into one job body.
  encrypt({ clientKey, inputs, fingerprint }, progress) {
    const model = modelFor(fingerprint);
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

  /// Decrypts a job's outputs body, from the model with `fingerprint`, into one result per
  /// image.
  decrypt({ clientKey, body, count, fingerprint }) {
    const model = modelFor(fingerprint);
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
