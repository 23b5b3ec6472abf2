// The client's keys in IndexedDB: they never leave this browser. Two records:
// - "wrapping-key": a non-extractable AES-GCM CryptoKey, made once. IndexedDB stores the
//   CryptoKey object itself, which scripts can use through WebCrypto but never export.
// - "current": { wrappedClientKey, iv, serverKey, keyId, parameterSet, created }. The secret
//   client key is stored only encrypted with the wrapping key, so the record read out of the
//   database (an export, a debugging dump) holds no usable key: unwrapping it takes code
//   running in this page's origin. The browser itself still keeps the wrapping key in its
//   profile, so this is no defence against someone who copies the whole profile off the disk.
//   The server key is public and stays in clear.
// loadKeys and saveKeys take and give the client key in clear, as { clientKey, ...the rest }.
const DB = 'hexray';
const STORE = 'keys';
const CURRENT = 'current';
const WRAPPING_KEY = 'wrapping-key';

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, action) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = action(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

const get = (name) => run('readonly', (s) => s.get(name));

/// The wrapping key, made on first use. Made outside any transaction: a transaction ends as
/// soon as it waits on anything but IndexedDB, such as WebCrypto.
async function wrappingKey() {
  const existing = await get(WRAPPING_KEY);
  if (existing) return existing;
  const key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  await run('readwrite', (s) => s.put(key, WRAPPING_KEY));
  return key;
}

/// The stored keys, or undefined. A record this page cannot unwrap counts as none, so new keys
/// get generated: one from an older version of the page (its client key in clear), or one
/// whose wrapping key is gone.
export async function loadKeys() {
  const record = await get(CURRENT);
  const key = await get(WRAPPING_KEY);
  if (!record || !record.wrappedClientKey || !key) return undefined;
  try {
    const { wrappedClientKey, iv, ...rest } = record;
    const clientKey = await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, key, wrappedClientKey);
    return { ...rest, clientKey: new Uint8Array(clientKey) };
  } catch {
    return undefined;
  }
}

export async function saveKeys({ clientKey, ...rest }) {
  const key = await wrappingKey();
  // AES-GCM needs a fresh IV for every encryption under the same key.
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const wrappedClientKey = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, clientKey);
  await run('readwrite', (s) => s.put({ ...rest, wrappedClientKey, iv }, CURRENT));
}

export const forgetKeys = () => run('readwrite', (s) => {
  s.delete(WRAPPING_KEY);
  return s.delete(CURRENT);
});
