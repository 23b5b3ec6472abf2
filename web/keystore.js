// The client's keys in IndexedDB: they never leave this browser. One record, "current":
// { clientKey, serverKey, keyId, parameterSet, created }.
const DB = 'hexray';
const STORE = 'keys';

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

export const loadKeys = () => run('readonly', (s) => s.get('current'));
export const saveKeys = (record) => run('readwrite', (s) => s.put(record, 'current'));
export const forgetKeys = () => run('readwrite', (s) => s.delete('current'));
