// Files into the page: from the file pickers and from drops, folders included. A FileList or a
// DataTransfer is emptied once its event ends, so everything is copied out of it synchronously,
// before the first await; only then are dropped folders walked.

/// How many first bytes tell what a file holds: a DICOM file's marker ends at byte 132.
const SNIFFED = 132;

/// What a file holds, from its first bytes: 'png', 'jpeg', 'dicom' (Part 10: "DICM" after a
/// 128-byte preamble) or null. Extensions lie, and PACS exports often have none.
function sniff(bytes) {
  const starts = (offset, magic) => magic.every((b, i) => bytes[offset + i] === b);
  if (starts(0, [0x89, 0x50, 0x4e, 0x47])) return 'png';
  if (starts(0, [0xff, 0xd8, 0xff])) return 'jpeg';
  if (bytes.length >= SNIFFED && starts(128, [0x44, 0x49, 0x43, 0x4d])) return 'dicom';
  return null;
}

/// A file's bytes when it is a PNG, JPEG or DICOM file, else null. Its first bytes are looked
/// at first, so that a large file of another kind (a video, an archive, a disk image) dropped
/// by mistake is refused without being read into the page.
export async function imageBytes(file) {
  if (!sniff(new Uint8Array(await file.slice(0, SNIFFED).arrayBuffer()))) return null;
  return new Uint8Array(await file.arrayBuffer());
}

/// The files an input holds, copied out of its FileList; the input is then cleared, so that
/// choosing the same files again is seen as a change.
export function takeFromInput(input) {
  const files = Array.from(input.files, (file) => ({ file, path: file.webkitRelativePath || file.name }));
  input.value = '';
  return files;
}

/// What a drop carries: resolves with every file, those in dropped folders included. The
/// DataTransfer is read synchronously here; the folders are walked afterwards.
export function takeFromDrop(dataTransfer) {
  const items = Array.from(dataTransfer.items ?? []).filter((item) => item.kind === 'file');
  const dropped = items.length
    ? items.map((item) => ({ entry: item.webkitGetAsEntry?.() ?? null, file: item.getAsFile() }))
    : Array.from(dataTransfer.files, (file) => ({ entry: null, file }));
  return Promise.all(dropped.map(({ entry, file }) => (entry?.isDirectory ? walk(entry) : [{ file, path: file.name }])))
    .then((lists) => lists.flat());
}

/// The files under a dropped folder, in path order. Hidden files (.DS_Store, …) and DICOMDIR
/// indexes are left out: they are not images.
async function walk(directory) {
  const reader = directory.createReader();
  const found = [];
  for (;;) {
    // readEntries gives the entries in batches, and an empty batch at the end.
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    for (const entry of batch) {
      if (entry.name.startsWith('.') || entry.name.toUpperCase() === 'DICOMDIR') continue;
      if (entry.isDirectory) {
        found.push(...await walk(entry));
      } else {
        const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
        found.push({ file, path: entry.fullPath.replace(/^\//, '') });
      }
    }
  }
  return found.sort((a, b) => a.path.localeCompare(b.path));
}
