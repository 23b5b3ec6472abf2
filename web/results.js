// Results, which exist only in this page: cards, a sortable table, a CSV download and a
// printable report, all built here. Nothing computed from a decryption is ever sent.
//
// A batch is { model: { id, name, version, fingerprint, cardSummary, classes, … }, rows,
// seconds, serverSeconds },
// each row { path, result: { class, probabilities, borderline }, dicom, original, seen }:
// `borderline` is what to say beside a borderline result (absent otherwise), and `original`
// and `seen` draw the image as dropped and as the model saw it (see canvas.js). Shown, each
// row keeps its batch's model, so that rows of several jobs each name the model that made them.
import { greyCanvas } from './canvas.js';

const $ = (id) => document.getElementById(id);
const percent = (p) => `${(p * 100).toFixed(1)}%`;
export const DECISION_SUPPORT = 'Decision support, not a diagnosis: a statistical estimate from a small model, '
  + 'to be reviewed by a qualified clinician.';

/// "DOE^JANE" (DICOM's person name) as "DOE, JANE"; "20240105" as "2024-01-05".
const personName = (name) => name.split('=')[0].replace('^', ', ').replaceAll('^', ' ').trim();
const studyDate = (date) => (/^\d{8}$/.test(date) ? `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6)}` : date);
/// Whose study a DICOM file is, as the previews, cards and table show it (here only).
export const patientText = ({ patient_name: name, study_date: date }) =>
  `${name ? personName(name) : 'no patient name'} · ${date ? studyDate(date) : 'no study date'}`;

let shown = null; // what the table, the CSV and the report are of: { classes, rows }
let order = { column: null, descending: true };

/// Shows a batch's results: a card each (newest first, above earlier batches) and the table,
/// the CSV and the report, which then hold this batch only, or follow on from the previous
/// batch's rows when `more` (one analysis split into several jobs) and its model has the same
/// classes (the table has a column per class).
export function showResults(batch, more = false) {
  const { classes } = batch.model;
  const rows = batch.rows.map((row) => ({ ...row, model: batch.model }));
  const sameClasses = shown && shown.classes.join('\n') === classes.join('\n');
  shown = more && sameClasses ? { classes, rows: [...shown.rows, ...rows] } : { classes, rows };
  order = { column: null, descending: true };
  for (const row of batch.rows) $('results').prepend(card(batch, row));
  $('results-empty').hidden = true;
  $('results-actions').hidden = false;
  // Said to screen readers too (a status region): results arrive long after the click.
  $('results-status').textContent = `${batch.rows.length} new result(s), decrypted in this browser; `
    + `${shown.rows.length} in the table.`;
  renderTable();
}

function card(batch, row) {
  const { result } = row;
  const item = document.createElement('li');
  item.className = 'result';
  item.dataset.file = row.path;
  item.dataset.class = result.class;
  item.dataset.probabilities = JSON.stringify(result.probabilities);
  item.dataset.borderline = String(!!result.borderline);
  const title = document.createElement('h3');
  title.textContent = row.path;
  const verdict = document.createElement('p');
  verdict.className = 'class';
  verdict.textContent = classText(result);
  // The image itself, beside its name: a result is checked against the X-ray it is about.
  const thumbnail = greyCanvas({ ...row.original, label: `${row.path}, as dropped` });
  thumbnail.className = 'thumbnail';
  item.append(thumbnail, title);
  // Files of one export often share names (IM0001): the patient tells their results apart.
  if (row.dicom) item.append(paragraph('patient', patientText(row.dicom)));
  item.append(verdict, ...bars(batch.model.classes, result.probabilities));
  if (result.borderline) item.append(paragraph('borderline', result.borderline));
  for (const warning of row.dicom?.warnings ?? []) item.append(paragraph('warning', warning));
  item.append(paragraph('meta', `${modelText(batch.model)} · ${batch.seconds.toFixed(1)} s from start to result `
    + `(${batch.serverSeconds.toFixed(1)} s on the server) · ${DECISION_SUPPORT}`));
  return item;
}

/// The class as every view names it: marked when the result is borderline.
const classText = (result) => (result.borderline ? `${result.class} (borderline)` : result.class);

function bars(classes, probabilities) {
  return classes.map((label, i) => {
    const p = probabilities[i];
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    bar.querySelector('.name').textContent = label;
    bar.querySelector('.fill').style.width = percent(p);
    bar.querySelector('.value').textContent = percent(p);
    bar.setAttribute('role', 'meter');
    bar.setAttribute('aria-label', `${label} probability`);
    bar.setAttribute('aria-valuenow', (p * 100).toFixed(1));
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', '100');
    return bar;
  });
}

function paragraph(className, text) {
  const p = document.createElement('p');
  p.className = className;
  p.textContent = text;
  return p;
}

// ---- the table ----------------------------------------------------------------------------

/// A row's model as every view names it.
const modelText = (model) => `${model.name} v${model.version}`;

/// The table's columns: how each is titled, and the value a row sorts by.
function columns(results) {
  return [
    { title: 'File', key: (row) => row.path },
    { title: 'Patient', key: (row) => (row.dicom ? patientText(row.dicom) : '') },
    { title: 'Class', key: (row) => classText(row.result) },
    ...results.classes.map((label, k) => ({ title: `P(${label})`, key: (row) => row.result.probabilities[k], numeric: true })),
    { title: 'Model', key: (row) => modelText(row.model) },
  ];
}

function renderTable() {
  const table = $('results-table');
  table.hidden = false;
  const cols = columns(shown);
  const head = table.querySelector('thead tr');
  head.replaceChildren(...cols.map((col, i) => {
    const th = document.createElement('th');
    th.scope = 'col';
    th.setAttribute('aria-sort', order.column === i ? (order.descending ? 'descending' : 'ascending') : 'none');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'sort';
    button.textContent = col.title;
    button.addEventListener('click', () => {
      // A probability sorts highest first on its first click; text sorts A to Z.
      order = order.column === i ? { column: i, descending: !order.descending } : { column: i, descending: !!col.numeric };
      renderTable();
      table.querySelectorAll('th button')[i].focus();
    });
    th.append(button);
    return th;
  }));
  const rows = [...shown.rows];
  if (order.column !== null) {
    const { key } = cols[order.column];
    rows.sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      const c = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
      return order.descending ? -c : c;
    });
  }
  table.querySelector('tbody').replaceChildren(...rows.map((row) => {
    const tr = document.createElement('tr');
    for (const [i, col] of cols.entries()) {
      const cell = document.createElement(i === 0 ? 'th' : 'td');
      if (i === 0) cell.scope = 'row';
      const value = col.key(row);
      cell.textContent = col.numeric ? percent(value) : value;
      tr.append(cell);
    }
    return tr;
  }));
}

// ---- CSV ----------------------------------------------------------------------------------

/// A CSV cell that a spreadsheet shows as text: one starting with = + - @, a tab or a carriage
/// return would be read as a formula, and file and patient names come from outside (a DICOM
/// header, a file name), so such a cell gets a leading apostrophe (OWASP's advice); then
/// RFC 4180 quoting.
export function csvCell(value) {
  const text = /^[=+\-@\t\r]/.test(String(value)) ? `'${value}` : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/// The results as CSV (RFC 4180): one row per image, probabilities as fractions, the
/// borderline note where a result is borderline, and what a DICOM header warned of (another
/// modality or body part, several frames), as on the card: a result read without them could
/// be taken at face value.
export function resultsCsv(results) {
  const quote = csvCell;
  const header = ['file', 'patient_name', 'study_date', 'class', ...results.classes.map((c) => `p_${c}`), 'borderline', 'model', 'model_version', 'warnings'];
  const lines = results.rows.map((row) => [
    row.path, row.dicom?.patient_name ? personName(row.dicom.patient_name) : '', row.dicom?.study_date ? studyDate(row.dicom.study_date) : '',
    row.result.class, ...row.result.probabilities.map((p) => p.toFixed(4)), row.result.borderline ?? '', row.model.name, row.model.version,
    (row.dicom?.warnings ?? []).join('; '),
  ]);
  return [header, ...lines].map((line) => line.map(quote).join(',')).join('\r\n') + '\r\n';
}

/// Saves the shown results as a CSV file, made here: the server never sees a result.
export function downloadCsv() {
  const url = URL.createObjectURL(new Blob([resultsCsv(shown)], { type: 'text/csv' }));
  const link = document.createElement('a');
  link.href = url;
  link.download = `hexray-results-${new Date().toISOString().slice(0, 16).replace(/[-:T]/g, '')}.csv`;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has its own copy once started; the URL is released at the next task.
  setTimeout(() => URL.revokeObjectURL(url));
}

// ---- the printed report -------------------------------------------------------------------

/// Fills the print-only report, one page per image, and opens the browser's print dialog,
/// whose "Save as PDF" makes the file.
export function printReport() {
  const printed = new Date().toLocaleString();
  $('print-report').replaceChildren(...shown.rows.map((row) => {
    const page = document.createElement('article');
    page.className = 'report-page';
    const title = document.createElement('h2');
    title.textContent = `HEXray report: ${row.path}`;
    page.append(title);
    if (row.dicom) {
      page.append(paragraph('patient', `Patient: ${personName(row.dicom.patient_name ?? 'not given')} · study date `
        + `${studyDate(row.dicom.study_date ?? 'not given')} · ${row.dicom.modality ?? 'modality not given'}`));
    }
    const figures = document.createElement('div');
    figures.className = 'figures';
    figures.append(figure(greyCanvas({ ...row.original, label: `${row.path}, as dropped` }), 'The image as dropped'),
      figure(greyCanvas({ ...row.seen, label: `${row.path}, as the model saw it` }), 'As the model saw it (what was encrypted)'));
    page.append(figures, paragraph('class', `Class: ${classText(row.result)}`), ...bars(shown.classes, row.result.probabilities));
    if (row.result.borderline) page.append(paragraph('borderline', row.result.borderline));
    for (const warning of row.dicom?.warnings ?? []) page.append(paragraph('warning', warning));
    const { model } = row;
    page.append(
      paragraph('meta', `Model: ${modelText(model)} (fingerprint ${model.fingerprint.slice(0, 16)}…). `
        + `Encrypted in the browser; the server computed on ciphertexts only. Printed ${printed}.`),
      paragraph('model-card', model.cardSummary
        ? `Model card: ${model.cardSummary} The whole card is on the page under "Model card", and the server `
          + `gives it at /api/v1/models/${model.id}/card.`
        : 'This model has no model card.'),
      paragraph('statement', DECISION_SUPPORT),
    );
    return page;
  }));
  window.print();
}

function figure(canvas, caption) {
  const f = document.createElement('figure');
  const c = document.createElement('figcaption');
  c.textContent = caption;
  f.append(canvas, c);
  return f;
}
