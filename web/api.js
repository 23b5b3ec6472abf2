// The evaluator's API, as the page uses it. Every request goes through `request`, so every one
// carries the access token, network failures and the API's JSON errors become sentences, and a
// 401 asks for a token and sends again.

const $ = (id) => document.getElementById(id);
// The evaluator's origin comes from index.html's <meta name="hexray-api">: empty when it also
// serves this page, else the origin of the API when the page is hosted elsewhere.
export const API = `${(document.querySelector('meta[name="hexray-api"]')?.content ?? '').trim().replace(/\/+$/, '')}/api/v1`;
const TOKEN = 'hexray.token';

/// An error to show as it is; `code` is the API's error code when the server gave one.
export class UserError extends Error {
  constructor(message, { status, code } = {}) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/// Makes one API request: `send(headers)` sends it with these extra headers (the stored token)
/// and resolves with a Response.
export async function request(send) {
  for (;;) {
    let response;
    try {
      response = await send(authorization());
    } catch {
      throw new UserError('The HEXray server cannot be reached. Check that it is running, then retry.', { code: 'unreachable' });
    }
    if (response.status === 401) {
      // The token is missing, or no longer valid: forget it and ask for another.
      const refused = localStorage.getItem(TOKEN) !== null;
      localStorage.removeItem(TOKEN);
      await askForToken(refused);
    } else if (!response.ok) {
      throw await apiError(response);
    } else {
      return response;
    }
  }
}

/// Fetches from the API.
export function api(path, options = {}) {
  return request((headers) => fetch(API + path, { ...options, headers: { ...options.headers, ...headers } }));
}

/// The server's health (its limits included), after asking for a token first when the server
/// needs one and none is stored, so the clinician is not greeted by a refusal.
export async function healthWithToken() {
  const health = await (await api('/health')).json();
  if (health.auth === 'token' && !localStorage.getItem(TOKEN)) await askForToken();
  return health;
}

/// Whether this browser keeps an access token.
export const hasToken = () => localStorage.getItem(TOKEN) !== null;

/// Forgets the stored access token: the next request that needs one asks for it.
export function forgetToken() {
  localStorage.removeItem(TOKEN);
}

function authorization() {
  const token = localStorage.getItem(TOKEN);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/// The API's JSON error as a sentence, keeping its status and code for the recoveries.
async function apiError(response) {
  let message = `The server answered ${response.status}.`;
  let code;
  try {
    const body = await response.json();
    code = body.code;
    message = body.message || message;
    if (code === 'queue_full') {
      const wait = response.headers.get('Retry-After') || 'a few';
      message = `The server is busy; please retry in ${wait} seconds.`;
    }
  } catch { /* not JSON: keep the status */ }
  return new UserError(message, { status: response.status, code });
}

let tokenAnswer = null; // the open question, shared by requests refused at the same time

/// Shows the token form and resolves once a token has been entered and stored. `refused`: the
/// server turned down the stored one.
function askForToken(refused = false) {
  tokenAnswer ??= new Promise((resolve) => {
    $('token-refused').hidden = !refused;
    $('token').hidden = false;
    $('token-input').value = '';
    $('token-input').focus();
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault(); // handled here; the page never navigates (CSP: form-action 'none')
      localStorage.setItem(TOKEN, $('token-input').value.trim());
      $('token').hidden = true;
      tokenAnswer = null;
      resolve();
    }, { once: true });
  });
  return tokenAnswer;
}

/// POSTs with XMLHttpRequest, the one browser API that reports upload progress, and resolves
/// with a Response as fetch would, so the answer is read like any other.
export function postWithProgress(path, body, progress) {
  return request((headers) => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', API + path);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress(e.loaded, e.total); };
    xhr.onload = () => resolve(new Response(xhr.responseText, { status: xhr.status }));
    xhr.onerror = () => reject(new TypeError('network error'));
    xhr.send(body);
  }));
}

/// The events of a server-sent event stream, as { event, data }: `field: value` lines, a blank
/// line ending each event; lines starting with ':' are comments (the server's heartbeats).
export async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const lines = (buffer + value).split('\n');
      buffer = lines.pop(); // an incomplete line waits for the next chunk
      for (const line of lines.map((l) => l.replace(/\r$/, ''))) {
        if (line === '') {
          if (data.length) yield { event, data: data.join('\n') };
          event = 'message';
          data = [];
        } else if (!line.startsWith(':')) {
          const [, field, text] = line.match(/^([^:]*):? ?(.*)$/);
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => { /* the stream had already failed */ });
  }
}
