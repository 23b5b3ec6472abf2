// The CSV export, in Node alone: what it writes for cells a spreadsheet would run as formulas.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { csvCell, resultsCsv } from '../../web/results.js';

test('cells that a spreadsheet would read as formulas are written as text', () => {
  for (const hostile of ['=HYPERLINK("http://x","y")', '+1+1', '-2+3', '@SUM(A1)', '\tx', '\rx']) {
    const cell = csvCell(hostile);
    assert.ok(cell.startsWith("'") || cell.startsWith(`"'`), `${JSON.stringify(hostile)} -> ${cell}`);
  }
  assert.equal(csvCell('DOE, JANE'), '"DOE, JANE"');
  assert.equal(csvCell('chest 1.png'), 'chest 1.png');
  assert.equal(csvCell('=a"b'), `"'=a""b"`);
});

test('a file and a patient named as formulas reach the CSV neutralised', () => {
  const csv = resultsCsv({
    classes: ['normal', 'pneumonia'],
    rows: [{
      path: '=cmd|"/c calc"!A1.dcm',
      dicom: { patient_name: '@EVIL^X', study_date: '20240105', warnings: ['the header names modality MR, not an X-ray', 'it holds 3 frames; the first is read'] },
      result: { class: 'normal', probabilities: [0.75, 0.25] },
      model: { name: 'm', version: '1' },
    }],
  });
  const row = csv.split('\r\n')[1];
  assert.equal(row, `"'=cmd|""/c calc""!A1.dcm","'@EVIL, X",2024-01-05,normal,0.7500,0.2500,,m,1,`
    + '"the header names modality MR, not an X-ray; it holds 3 frames; the first is read"');
});

test('a borderline result carries its note in the CSV, and a clear one an empty cell', () => {
  const note = 'borderline: another encryption of this image could give the other class; review the image';
  const row = (borderline) => ({
    path: 'a.png', result: { class: 'normal', probabilities: [0.6, 0.4], borderline }, model: { name: 'm', version: '1' },
  });
  const csv = resultsCsv({ classes: ['normal', 'pneumonia'], rows: [row(note), row(undefined)] });
  const [header, marked, clear] = csv.split('\r\n');
  assert.equal(header, 'file,patient_name,study_date,class,p_normal,p_pneumonia,borderline,model,model_version,warnings');
  assert.equal(marked, `a.png,,,normal,0.6000,0.4000,${note},m,1,`);
  assert.equal(clear, 'a.png,,,normal,0.6000,0.4000,,m,1,');
});

test('rows of several jobs each name the model that made them', () => {
  // One analysis split into two jobs, the server's model updated between them (409
  // stale_model, fetched again): the first job's row keeps the version it was made with.
  const row = (path, version) => ({
    path, result: { class: 'normal', probabilities: [0.9, 0.1] }, model: { name: 'screen-mlp-32', version },
  });
  const csv = resultsCsv({ classes: ['normal', 'pneumonia'], rows: [row('a.png', '1'), row('b.png', '2')] });
  const [, first, second] = csv.split('\r\n');
  assert.equal(first, 'a.png,,,normal,0.9000,0.1000,,screen-mlp-32,1,');
  assert.equal(second, 'b.png,,,normal,0.9000,0.1000,,screen-mlp-32,2,');
});
