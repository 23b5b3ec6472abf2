//! 12-bit lossy JPEG: ISO 10918-1 process 4 (sequential DCT, Huffman coding, 12-bit samples),
//! the "JPEG Extended" that DICOM's transfer syntax 1.2.840.10008.1.2.4.51 holds when the
//! stored values have more than 8 bits, as CT, MR and many radiographs do.
//!
//! `jpeg-decoder`, which reads every other JPEG here, refuses 12-bit DCT samples, and the
//! decoders that read them (libjpeg built for 12 bits, libjpeg-turbo, GDCM, DCMTK) are C, which
//! a wasm32-unknown-unknown build cannot link. So this module decodes what process 4 needs and
//! nothing more: one frame (SOF0 or SOF1 with 12-bit precision), Huffman tables, 8- and 16-bit
//! quantisation tables, restart intervals, and sequential scans, interleaved or not (one scan or
//! one per component), of 1 or 3 components with any sampling factors. Progressive,
//! arithmetic-coded, hierarchical and lossless JPEG are refused by name (lossless JPEG goes to
//! `jpeg-decoder`, which reads it at every precision).
//!
//! Corrupt data is an error, never a panic or an endless loop: every size is checked before
//! memory is allocated for it, every read is bounds-checked, every loop is bounded by the
//! frame's block count or by the data's length, and a scan whose data ends before its last
//! block is an error rather than completed with zeros, as libjpeg does.
//!
//! The inverse DCT is the exact separable one in `f64`; libjpeg's integer IDCT rounds
//! differently, so samples may differ from its by one level.

use super::MAX_PIXELS;
use crate::error::DicomError;

/// The only sample precision read, in bits.
const PRECISION: u8 = 12;
/// The level shift of 12-bit samples (ISO 10918-1 A.3.1) and the largest sample.
const CENTRE: f64 = 2048.0;
const MAX_SAMPLE: f64 = 4095.0;

/// Zig-zag position → row-major position in the 8×8 block (ISO 10918-1 figure A.6).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// What the frame header declares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Header {
    pub width: u32,
    pub height: u32,
    pub components: usize,
}

/// A decoded frame: `components` samples per pixel, pixel by pixel, row by row, each in
/// 0..=4095. Three components are RGB: YCbCr is converted, as `jpeg-decoder` does for 8 bits.
#[derive(Debug)]
pub(crate) struct Image {
    pub header: Header,
    pub samples: Vec<u16>,
}

/// Whether `data` is DCT-based JPEG with 12-bit samples, judged by its first frame header
/// (SOFn): what this module reads, or refuses by name if it is not sequential Huffman coding.
/// Anything else, lossless JPEG of any precision included, is for `jpeg-decoder`.
pub(crate) fn is_12_bit_dct(data: &[u8]) -> bool {
    let mut reader = Reader { data, pos: 0 };
    if !data.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    reader.pos = 2;
    // Each segment moves the reader on by at least two bytes: the walk ends.
    while let Ok(marker) = reader.marker() {
        match marker {
            0xC0..=0xCF if ![0xC4, 0xC8, 0xCC].contains(&marker) => {
                let lossless = matches!(marker, 0xC3 | 0xC7 | 0xCB | 0xCF);
                return !lossless
                    && reader.segment().ok().and_then(|s| s.first().copied()) == Some(PRECISION);
            }
            // SOI, EOI, SOS before any frame header.
            0xD8..=0xDA => return false,
            0xD0..=0xD7 | 0x01 => {}
            _ => {
                if reader.segment().is_err() {
                    return false;
                }
            }
        }
    }
    false
}

/// The frame header alone, read before anything is decoded or allocated, so that the caller
/// can check the size against what it expects.
pub(crate) fn header(data: &[u8]) -> Result<Header, DicomError> {
    let mut decoder = Decoder::new(data);
    decoder.run(true)?;
    let frame = decoder
        .frame
        .as_ref()
        .ok_or_else(|| corrupt("no frame header (SOF marker)"))?;
    Ok(frame.header)
}

/// Decodes the frame.
pub(crate) fn decode(data: &[u8]) -> Result<Image, DicomError> {
    let mut decoder = Decoder::new(data);
    decoder.run(false)?;
    decoder.finish()
}

fn corrupt(reason: impl AsRef<str>) -> DicomError {
    DicomError::Pixels(format!("12-bit JPEG: {}", reason.as_ref()))
}

fn unsupported(reason: impl AsRef<str>) -> DicomError {
    DicomError::Unsupported(format!(
        "{}; HEXray reads 12-bit lossy JPEG only as sequential, Huffman-coded JPEG (process 4)",
        reason.as_ref()
    ))
}

fn truncated(where_: &str) -> DicomError {
    corrupt(format!("the data is truncated ({where_})"))
}

/// Why a frame header marker other than SOF0/SOF1 is refused.
fn refused_process(marker: u8) -> Option<&'static str> {
    Some(match marker {
        0xC2 => "progressive JPEG (SOF2)",
        0xC3 => "lossless JPEG (SOF3) in a 12-bit lossy stream",
        0xC5..=0xC7 | 0xDE | 0xDF => "hierarchical JPEG",
        0xC9..=0xCC => "arithmetic-coded JPEG",
        0xCD..=0xCF => "hierarchical, arithmetic-coded JPEG",
        _ => return None,
    })
}

/// Marker segments, read with bounds checks.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The marker at the reader's position, after any fill bytes (0xFF).
    fn marker(&mut self) -> Result<u8, DicomError> {
        match self.data.get(self.pos) {
            Some(0xFF) => {}
            Some(byte) => {
                return Err(corrupt(format!(
                    "a marker was expected at byte {}, not 0x{byte:02X}",
                    self.pos
                )))
            }
            None => return Err(truncated("no EOI marker")),
        }
        while self.data.get(self.pos) == Some(&0xFF) {
            self.pos += 1;
        }
        let &marker = self
            .data
            .get(self.pos)
            .ok_or_else(|| truncated("no EOI marker"))?;
        self.pos += 1;
        if marker == 0 {
            return Err(corrupt(format!(
                "0xFF00 at byte {} outside entropy-coded data",
                self.pos - 2
            )));
        }
        Ok(marker)
    }

    /// A marker segment's body (after its two length bytes); the reader moves past it.
    fn segment(&mut self) -> Result<&'a [u8], DicomError> {
        let length = self
            .data
            .get(self.pos..self.pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| truncated("in a marker segment's length"))?;
        if length < 2 {
            return Err(corrupt(format!(
                "a marker segment at byte {} declares length {length}",
                self.pos
            )));
        }
        let body = self
            .data
            .get(self.pos + 2..self.pos + length)
            .ok_or_else(|| truncated("in a marker segment"))?;
        self.pos += length;
        Ok(body)
    }

    /// Moves to the next marker that is not stuffed data (0xFF00) or fill, skipping what
    /// entropy-coded data is left: libjpeg skips such extraneous bytes too.
    fn skip_to_marker(&mut self) -> Result<(), DicomError> {
        loop {
            let rest = self.data.get(self.pos..).unwrap_or_default();
            let Some(at) = rest.iter().position(|&b| b == 0xFF) else {
                return Err(truncated("no marker after the entropy-coded data"));
            };
            self.pos += at;
            match self.data.get(self.pos + 1) {
                Some(0x00) => self.pos += 2,
                Some(_) => return Ok(()),
                None => return Err(truncated("no marker after the entropy-coded data")),
            }
        }
    }
}

/// A Huffman table (ISO 10918-1 C and F.2.2.3), with a lookup of the codes of up to
/// `FAST_BITS` bits.
struct Huffman {
    /// Indexed by the next `FAST_BITS` bits: code length << 8 | symbol, or 0 for a longer code.
    fast: Vec<u16>,
    /// Per code length 1..=16 (index 0 unused): the largest code, or -1 if none; the first
    /// code; the index of its symbol in `values`.
    max_code: [i32; 17],
    min_code: [i32; 17],
    first_index: [i32; 17],
    values: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    /// From a DHT segment's 16 code counts and its symbols, which must form a valid prefix
    /// code: no length overflows, and no code is all ones (as libjpeg requires).
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self, DicomError> {
        if counts.iter().map(|&c| usize::from(c)).sum::<usize>() != values.len() {
            return Err(corrupt(
                "a Huffman table's symbols do not match its code counts",
            ));
        }
        let mut table = Huffman {
            fast: vec![0; 1 << FAST_BITS],
            max_code: [-1; 17],
            min_code: [0; 17],
            first_index: [0; 17],
            values: values.to_vec(),
        };
        let mut code = 0i32;
        let mut index = 0i32;
        for length in 1..=16 {
            let count = i32::from(counts[length - 1]);
            table.min_code[length] = code;
            table.first_index[length] = index;
            if count > 0 {
                table.max_code[length] = code + count - 1;
            }
            for k in 0..count {
                let this = code + k;
                if length as u32 <= FAST_BITS {
                    let shift = FAST_BITS - length as u32;
                    let entry = (length as u16) << 8 | u16::from(values[(index + k) as usize]);
                    let start = (this as usize) << shift;
                    let end = ((this + 1) as usize) << shift;
                    if let Some(slots) = table.fast.get_mut(start..end) {
                        slots.fill(entry);
                    }
                }
            }
            code += count;
            index += count;
            if code >= 1 << length {
                return Err(corrupt(format!(
                    "a Huffman table has too many codes of {length} bits"
                )));
            }
            code <<= 1;
        }
        Ok(table)
    }

    /// The next symbol.
    fn decode(&self, bits: &mut Bits) -> Result<u8, DicomError> {
        bits.fill();
        let peek = bits.peek16();
        let entry = self.fast[(peek >> (16 - FAST_BITS)) as usize];
        if entry != 0 {
            bits.consume(u32::from(entry >> 8))?;
            return Ok(entry as u8);
        }
        for length in FAST_BITS as usize + 1..=16 {
            let code = (peek >> (16 - length)) as i32;
            if code <= self.max_code[length] {
                let index = self.first_index[length] + code - self.min_code[length];
                let symbol = usize::try_from(index)
                    .ok()
                    .and_then(|i| self.values.get(i).copied())
                    .ok_or_else(|| corrupt("an invalid Huffman code"))?;
                bits.consume(length as u32)?;
                return Ok(symbol);
            }
        }
        Err(corrupt("an invalid Huffman code"))
    }
}

/// Entropy-coded data, most significant bit first, with stuffed bytes (0xFF00) taken out.
/// At a marker or the end of the data, zero bits are shifted in so that a code can be looked
/// ahead, but consuming one of them is an error: the data ran out.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    /// The next bits, left-aligned.
    acc: u64,
    /// Bits in `acc`, of which the last `padding` are made-up zeros.
    count: u32,
    padding: u32,
    stopped: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            acc: 0,
            count: 0,
            padding: 0,
            stopped: false,
        }
    }

    fn fill(&mut self) {
        while self.count <= 56 {
            let mut byte = 0;
            if !self.stopped {
                match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
                    (Some(0xFF), Some(0x00)) => {
                        byte = 0xFF;
                        self.pos += 2;
                    }
                    (Some(0xFF), _) | (None, _) => self.stopped = true,
                    (Some(&b), _) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            if self.stopped {
                self.padding += 8;
            }
            self.acc |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    /// The next 16 bits; `fill` must have run.
    fn peek16(&self) -> u32 {
        (self.acc >> 48) as u32
    }

    fn consume(&mut self, n: u32) -> Result<(), DicomError> {
        if n > self.count - self.padding {
            return Err(truncated("a scan ends before its last block"));
        }
        self.acc <<= n;
        self.count -= n;
        Ok(())
    }

    /// `n` (1 to 16) bits as a number.
    fn receive(&mut self, n: u32) -> Result<u32, DicomError> {
        self.fill();
        let value = (self.acc >> (64 - n)) as u32;
        self.consume(n)?;
        Ok(value)
    }

    /// The `size`-bit (1 to 15) value of a DC difference or an AC coefficient (F.2.2.1).
    fn extend(&mut self, size: u8) -> Result<i32, DicomError> {
        let value = self.receive(u32::from(size))? as i32;
        Ok(match value < 1 << (size - 1) {
            true => value - (1 << size) + 1,
            false => value,
        })
    }

    /// Ends a restart interval: what is left of its byte is padding, and an RSTn marker must
    /// follow (any n, as libjpeg accepts).
    fn restart(&mut self) -> Result<(), DicomError> {
        let mut reader = Reader {
            data: self.data,
            pos: self.pos,
        };
        reader.skip_to_marker()?;
        let at = reader.pos;
        match reader.marker()? {
            0xD0..=0xD7 => {}
            marker => {
                return Err(corrupt(format!(
                    "a restart marker was expected at byte {at}, not 0xFF{marker:02X}"
                )))
            }
        }
        *self = Bits::new(self.data, reader.pos);
        Ok(())
    }
}

/// One frame component and the plane its blocks decode to.
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_id: usize,
    /// The plane's width in blocks (a whole number of MCUs) and its samples.
    blocks_across: usize,
    plane: Vec<u16>,
    /// The blocks that hold its samples, which a non-interleaved scan codes.
    blocks_wide: usize,
    blocks_high: usize,
    decoded: bool,
}

struct Frame {
    header: Header,
    components: Vec<Component>,
    h_max: usize,
    v_max: usize,
    mcus_across: usize,
    mcus_down: usize,
}

struct Decoder<'a> {
    reader: Reader<'a>,
    frame: Option<Frame>,
    /// DC tables (class 0), then AC tables (class 1), by id.
    huffman: [[Option<Huffman>; 4]; 2],
    /// Row-major, dequantisation multipliers.
    quant: [Option<[u16; 64]>; 4],
    restart_interval: usize,
    /// The transform flag of an Adobe APP14 segment: 0 for RGB, 1 for YCbCr.
    adobe_transform: Option<u8>,
    /// The inverse DCT's basis: `basis[x][u]` = C(u)/2 · cos((2x+1)uπ/16).
    basis: [[f64; 8]; 8],
}

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut basis = [[0.0; 8]; 8];
        for (x, row) in basis.iter_mut().enumerate() {
            for (u, value) in row.iter_mut().enumerate() {
                let c = if u == 0 {
                    std::f64::consts::FRAC_1_SQRT_2
                } else {
                    1.0
                };
                *value =
                    c / 2.0 * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
            }
        }
        Decoder {
            reader: Reader { data, pos: 0 },
            frame: None,
            huffman: Default::default(),
            quant: [None; 4],
            restart_interval: 0,
            adobe_transform: None,
            basis,
        }
    }

    /// Reads marker segments up to the frame header (`header_only`) or to EOI.
    fn run(&mut self, header_only: bool) -> Result<(), DicomError> {
        if !self.reader.data.starts_with(&[0xFF, 0xD8]) {
            return Err(corrupt("the data does not start with an SOI marker"));
        }
        self.reader.pos = 2;
        loop {
            let marker = self.reader.marker()?;
            if let Some(process) = refused_process(marker) {
                return Err(unsupported(process));
            }
            match marker {
                0xD8 => return Err(corrupt("a second SOI marker")),
                0xD9 => return Ok(()),
                // Restart markers outside a scan, and TEM, have no segment.
                0xD0..=0xD7 | 0x01 => {}
                0xC0 | 0xC1 => {
                    let body = self.reader.segment()?;
                    self.read_frame(body, header_only)?;
                    if header_only {
                        return Ok(());
                    }
                }
                0xC4 => {
                    let body = self.reader.segment()?;
                    self.read_huffman(body)?;
                }
                0xDB => {
                    let body = self.reader.segment()?;
                    self.read_quant(body)?;
                }
                0xDD => {
                    let body = self.reader.segment()?;
                    let &[high, low] = body else {
                        return Err(corrupt("a DRI segment is not 2 bytes long"));
                    };
                    self.restart_interval = usize::from(u16::from_be_bytes([high, low]));
                }
                0xDA => {
                    let body = self.reader.segment()?;
                    self.read_scan(body)?;
                    self.reader.skip_to_marker()?;
                }
                0xEE => {
                    let body = self.reader.segment()?;
                    if body.len() >= 12 && body.starts_with(b"Adobe") {
                        self.adobe_transform = Some(body[11]);
                    }
                }
                // APPn, COM, DNL (the height is never left to it: see `read_frame`) and the
                // reserved markers: skipped.
                _ => {
                    self.reader.segment()?;
                }
            }
        }
    }

    fn read_frame(&mut self, body: &[u8], header_only: bool) -> Result<(), DicomError> {
        if self.frame.is_some() {
            return Err(corrupt("a second frame header"));
        }
        let (&[precision, h0, h1, w0, w1, count], specs) = body
            .split_first_chunk::<6>()
            .ok_or_else(|| corrupt("the frame header is too short"))?;
        if precision != PRECISION {
            return Err(unsupported(format!(
                "{precision}-bit samples in a DCT frame"
            )));
        }
        let (height, width) = (u16::from_be_bytes([h0, h1]), u16::from_be_bytes([w0, w1]));
        if height == 0 {
            return Err(unsupported("an image height left to a DNL marker"));
        }
        if width == 0 {
            return Err(corrupt("the frame is 0 pixels wide"));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > MAX_PIXELS {
            return Err(DicomError::Size {
                width: u32::from(width),
                height: u32::from(height),
                limit: MAX_PIXELS,
            });
        }
        if ![1, 3].contains(&count) {
            return Err(unsupported(format!(
                "{count} components (1, grayscale, or 3, colour, are read)"
            )));
        }
        if specs.len() != 3 * usize::from(count) {
            return Err(corrupt(
                "the frame header's length does not fit its components",
            ));
        }
        let mut components: Vec<Component> = Vec::with_capacity(3);
        for spec in specs.chunks_exact(3) {
            let (id, h, v, quant_id) = (
                spec[0],
                usize::from(spec[1] >> 4),
                usize::from(spec[1] & 15),
                usize::from(spec[2]),
            );
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                return Err(corrupt(format!(
                    "component {id} has sampling factors {h}×{v} (1 to 4 allowed)"
                )));
            }
            if quant_id > 3 {
                return Err(corrupt(format!(
                    "component {id} uses quantisation table {quant_id} (0 to 3 exist)"
                )));
            }
            if components.iter().any(|c| c.id == id) {
                return Err(corrupt(format!("component {id} is declared twice")));
            }
            components.push(Component {
                id,
                h,
                v,
                quant_id,
                blocks_across: 0,
                plane: Vec::new(),
                blocks_wide: 0,
                blocks_high: 0,
                decoded: false,
            });
        }
        let h_max = components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = components.iter().map(|c| c.v).max().unwrap_or(1);
        let (width, height) = (usize::from(width), usize::from(height));
        let mcus_across = width.div_ceil(8 * h_max);
        let mcus_down = height.div_ceil(8 * v_max);
        for c in &mut components {
            c.blocks_across = mcus_across * c.h;
            c.blocks_wide = (width * c.h).div_ceil(h_max).div_ceil(8);
            c.blocks_high = (height * c.v).div_ceil(v_max).div_ceil(8);
            if !header_only {
                // At most (width + 31) × (height + 31) samples: within the pixel limit's reach.
                c.plane = vec![0; c.blocks_across * 8 * mcus_down * c.v * 8];
            }
        }
        self.frame = Some(Frame {
            header: Header {
                width: width as u32,
                height: height as u32,
                components: components.len(),
            },
            components,
            h_max,
            v_max,
            mcus_across,
            mcus_down,
        });
        Ok(())
    }

    fn read_huffman(&mut self, mut body: &[u8]) -> Result<(), DicomError> {
        while let Some((&class_id, rest)) = body.split_first() {
            let (class, id) = (usize::from(class_id >> 4), usize::from(class_id & 15));
            if class > 1 || id > 3 {
                return Err(corrupt(format!(
                    "Huffman table class {class}, id {id} (classes 0 and 1, ids 0 to 3 exist)"
                )));
            }
            let (counts, _) = rest
                .split_first_chunk::<16>()
                .ok_or_else(|| corrupt("a DHT segment is truncated"))?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 {
                return Err(corrupt(format!(
                    "a Huffman table has {total} codes (256 at most)"
                )));
            }
            let values = rest
                .get(16..16 + total)
                .ok_or_else(|| corrupt("a DHT segment is truncated"))?;
            self.huffman[class][id] = Some(Huffman::new(counts, values)?);
            body = &rest[16 + total..];
        }
        Ok(())
    }

    fn read_quant(&mut self, mut body: &[u8]) -> Result<(), DicomError> {
        while let Some((&precision_id, rest)) = body.split_first() {
            let (wide, id) = (precision_id >> 4, usize::from(precision_id & 15));
            if wide > 1 || id > 3 {
                return Err(corrupt(format!(
                    "quantisation table precision {wide}, id {id} (precisions 0 and 1, ids 0 \
                     to 3 exist)"
                )));
            }
            let size = if wide == 1 { 128 } else { 64 };
            let bytes = rest
                .get(..size)
                .ok_or_else(|| corrupt("a DQT segment is truncated"))?;
            let mut table = [0u16; 64];
            for (k, &position) in ZIGZAG.iter().enumerate() {
                table[position] = match wide {
                    1 => u16::from_be_bytes([bytes[2 * k], bytes[2 * k + 1]]),
                    _ => u16::from(bytes[k]),
                };
            }
            self.quant[id] = Some(table);
            body = &rest[size..];
        }
        Ok(())
    }

    /// A scan header, then its entropy-coded data.
    fn read_scan(&mut self, body: &[u8]) -> Result<(), DicomError> {
        let frame = self
            .frame
            .as_mut()
            .ok_or_else(|| corrupt("a scan before the frame header"))?;
        let (&count, rest) = body
            .split_first()
            .ok_or_else(|| corrupt("an empty scan header"))?;
        let count = usize::from(count);
        if !(1..=4).contains(&count) || rest.len() != 2 * count + 3 {
            return Err(corrupt(
                "the scan header's length does not fit its components",
            ));
        }
        let (specs, selection) = rest.split_at(2 * count);
        if selection != [0, 63, 0] {
            return Err(unsupported(format!(
                "a scan with spectral selection {}..={} and approximation {:#04x} \
                 (progressive coding)",
                selection[0], selection[1], selection[2]
            )));
        }
        // For each of the scan's components: its index in the frame, its Huffman tables and
        // its quantisation table.
        let mut scan: Vec<(usize, &Huffman, &Huffman, [u16; 64])> = Vec::with_capacity(count);
        for spec in specs.chunks_exact(2) {
            let (id, dc, ac) = (
                spec[0],
                usize::from(spec[1] >> 4),
                usize::from(spec[1] & 15),
            );
            let index = frame
                .components
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| {
                    corrupt(format!("the scan codes component {id}, not in the frame"))
                })?;
            let component = &frame.components[index];
            if component.decoded || scan.iter().any(|s| s.0 == index) {
                return Err(corrupt(format!("component {id} is coded twice")));
            }
            let table = |class: usize, table_id: usize| {
                self.huffman[class]
                    .get(table_id)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| {
                        corrupt(format!(
                            "component {id} uses {} Huffman table {table_id}, which is not defined",
                            ["DC", "AC"][class]
                        ))
                    })
            };
            let quant = self.quant[component.quant_id].ok_or_else(|| {
                corrupt(format!(
                    "component {id} uses quantisation table {}, which is not defined",
                    component.quant_id
                ))
            })?;
            scan.push((index, table(0, dc)?, table(1, ac)?, quant));
        }
        let blocks_per_mcu: usize = scan
            .iter()
            .map(|s| frame.components[s.0].h * frame.components[s.0].v)
            .sum();
        if count > 1 && blocks_per_mcu > 10 {
            return Err(corrupt(format!(
                "an interleaved scan with {blocks_per_mcu} blocks per MCU (10 at most)"
            )));
        }

        let mut bits = Bits::new(self.reader.data, self.reader.pos);
        let mut predictions = [0i32; 4];
        let mcus = match count {
            1 => {
                let c = &frame.components[scan[0].0];
                c.blocks_wide * c.blocks_high
            }
            _ => frame.mcus_across * frame.mcus_down,
        };
        let mut coefficients = [0i32; 64];
        for mcu in 0..mcus {
            if self.restart_interval > 0 && mcu > 0 && mcu % self.restart_interval == 0 {
                bits.restart()?;
                predictions = [0; 4];
            }
            for (k, &(index, dc, ac, ref quant)) in scan.iter().enumerate() {
                let component = &mut frame.components[index];
                // A non-interleaved scan's MCU is one block, in the component's own raster.
                let (blocks, origin) = match count {
                    1 => (
                        (1, 1),
                        (mcu % component.blocks_wide, mcu / component.blocks_wide),
                    ),
                    _ => (
                        (component.h, component.v),
                        (
                            mcu % frame.mcus_across * component.h,
                            mcu / frame.mcus_across * component.v,
                        ),
                    ),
                };
                for y in 0..blocks.1 {
                    for x in 0..blocks.0 {
                        decode_block(&mut bits, dc, ac, &mut predictions[k], &mut coefficients)?;
                        let (bx, by) = (origin.0 + x, origin.1 + y);
                        let stride = component.blocks_across * 8;
                        let start = by * 8 * stride + bx * 8;
                        idct(
                            &coefficients,
                            quant,
                            &self.basis,
                            &mut component.plane,
                            start,
                            stride,
                        )?;
                    }
                }
            }
        }
        for s in &scan {
            frame.components[s.0].decoded = true;
        }
        self.reader.pos = bits.pos;
        Ok(())
    }

    /// The image, once every component has been decoded.
    fn finish(self) -> Result<Image, DicomError> {
        let frame = self
            .frame
            .ok_or_else(|| corrupt("no frame header (SOF marker)"))?;
        if let Some(c) = frame.components.iter().find(|c| !c.decoded) {
            return Err(corrupt(format!("component {} is in no scan", c.id)));
        }
        let Header {
            width,
            height,
            components: count,
        } = frame.header;
        let (width, height) = (width as usize, height as usize);
        let mut samples = Vec::with_capacity(width * height * count);
        // Nearest-neighbour upsampling of subsampled components.
        for y in 0..height {
            for x in 0..width {
                for c in &frame.components {
                    let (cx, cy) = (x * c.h / frame.h_max, y * c.v / frame.v_max);
                    samples.push(c.plane[cy * c.blocks_across * 8 + cx]);
                }
            }
        }
        if count == 3 {
            let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
            // As libjpeg decides: the Adobe marker's flag, else components named R, G, B
            // are RGB, else YCbCr.
            let ycbcr = match self.adobe_transform {
                Some(transform) => transform != 0,
                None => ids != b"RGB",
            };
            if ycbcr {
                for pixel in samples.chunks_exact_mut(3) {
                    let (y, cb, cr) = (
                        f64::from(pixel[0]),
                        f64::from(pixel[1]) - CENTRE,
                        f64::from(pixel[2]) - CENTRE,
                    );
                    let rgb = [
                        y + 1.402 * cr,
                        y - 0.344_136_286 * cb - 0.714_136_286 * cr,
                        y + 1.772 * cb,
                    ];
                    for (out, value) in pixel.iter_mut().zip(rgb) {
                        *out = value.round().clamp(0.0, MAX_SAMPLE) as u16;
                    }
                }
            }
        }
        Ok(Image {
            header: frame.header,
            samples,
        })
    }
}

/// One block's quantised coefficients, row-major (F.2.2).
fn decode_block(
    bits: &mut Bits,
    dc: &Huffman,
    ac: &Huffman,
    prediction: &mut i32,
    coefficients: &mut [i32; 64],
) -> Result<(), DicomError> {
    *coefficients = [0; 64];
    let size = dc.decode(bits)?;
    if size > 15 {
        return Err(corrupt(format!(
            "a DC difference of category {size} (15 at most for 12-bit samples)"
        )));
    }
    let difference = if size == 0 { 0 } else { bits.extend(size)? };
    // Corrupt data may drift the prediction anywhere: it wraps, and the sample is clamped.
    *prediction = prediction.wrapping_add(difference);
    coefficients[0] = *prediction;
    let mut k = 1;
    while k < 64 {
        let symbol = ac.decode(bits)?;
        let (run, size) = (usize::from(symbol >> 4), symbol & 15);
        if size == 0 {
            match run {
                15 => k += 16, // sixteen zeros
                _ => break,    // end of block
            }
            continue;
        }
        k += run;
        if k > 63 {
            return Err(corrupt("a block has more than 64 coefficients"));
        }
        coefficients[ZIGZAG[k]] = bits.extend(size)?;
        k += 1;
    }
    Ok(())
}

/// Dequantises a block, takes its inverse DCT (A.3.3, as two passes of 1-D transforms) and
/// writes it, level-shifted and clamped, into `plane` at `start`.
fn idct(
    coefficients: &[i32; 64],
    quant: &[u16; 64],
    basis: &[[f64; 8]; 8],
    plane: &mut [u16],
    start: usize,
    stride: usize,
) -> Result<(), DicomError> {
    let mut rows = [[0f64; 8]; 8];
    for (v, row) in rows.iter_mut().enumerate() {
        let f = &coefficients[8 * v..8 * v + 8];
        let q = &quant[8 * v..8 * v + 8];
        if f.iter().all(|&c| c == 0) {
            continue;
        }
        let dequantised: [f64; 8] = std::array::from_fn(|u| f64::from(f[u]) * f64::from(q[u]));
        for (x, out) in row.iter_mut().enumerate() {
            *out = (0..8).map(|u| basis[x][u] * dequantised[u]).sum();
        }
    }
    for (y, weights) in basis.iter().enumerate() {
        let line = plane
            .get_mut(start + y * stride..start + y * stride + 8)
            .ok_or_else(|| corrupt("a block lies outside the frame"))?;
        for (x, out) in line.iter_mut().enumerate() {
            let value: f64 = (0..8).map(|v| weights[v] * rows[v][x]).sum();
            *out = (value + CENTRE).round().clamp(0.0, MAX_SAMPLE) as u16;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 12-bit sequential JPEG encoder, to make streams with known contents: every
    /// DC category and every AC symbol in fixed-length Huffman codes, a forward DCT in f64.
    struct Encoder {
        width: usize,
        height: usize,
        /// Per component: id, sampling factors, quantisation table id, and its samples at its
        /// own resolution, row by row.
        components: Vec<(u8, usize, usize, usize, Vec<u16>)>,
        /// Row-major multipliers, and whether to write them as 16-bit values.
        quant: Vec<([u16; 64], bool)>,
        restart_interval: usize,
        /// Component indices per scan.
        scans: Vec<Vec<usize>>,
        sof: u8,
    }

    /// All 16 DC categories in 5-bit codes; all 242 AC symbols in 8-bit codes.
    fn dc_symbols() -> Vec<u8> {
        (0..16).collect()
    }

    fn ac_symbols() -> Vec<u8> {
        let mut symbols = vec![0x00, 0xF0];
        for run in 0..16u8 {
            for size in 1..16u8 {
                symbols.push(run << 4 | size);
            }
        }
        symbols
    }

    struct BitWriter {
        out: Vec<u8>,
        acc: u32,
        count: u32,
    }

    impl BitWriter {
        fn put(&mut self, value: u32, length: u32) {
            for i in (0..length).rev() {
                self.acc = self.acc << 1 | (value >> i & 1);
                self.count += 1;
                if self.count == 8 {
                    self.out.push(self.acc as u8);
                    if self.acc == 0xFF {
                        self.out.push(0);
                    }
                    self.acc = 0;
                    self.count = 0;
                }
            }
        }

        fn flush(&mut self) {
            while self.count != 0 {
                self.put(1, 1);
            }
        }
    }

    fn category(value: i32) -> u32 {
        32 - value.unsigned_abs().leading_zeros()
    }

    fn encoded_bits(value: i32, size: u32) -> u32 {
        match value < 0 {
            true => (value - 1) as u32 & ((1 << size) - 1),
            false => value as u32,
        }
    }

    fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(body);
    }

    fn basis() -> [[f64; 8]; 8] {
        Decoder::new(&[]).basis
    }

    impl Encoder {
        fn h_max(&self) -> usize {
            self.components.iter().map(|c| c.1).max().unwrap()
        }

        fn v_max(&self) -> usize {
            self.components.iter().map(|c| c.2).max().unwrap()
        }

        fn component_size(&self, c: usize) -> (usize, usize) {
            let (_, h, v, _, _) = &self.components[c];
            (
                (self.width * h).div_ceil(self.h_max()),
                (self.height * v).div_ceil(self.v_max()),
            )
        }

        /// The quantised coefficients of a block, row-major; samples past the component's
        /// edge repeat the edge.
        fn block(&self, c: usize, bx: usize, by: usize) -> [i32; 64] {
            let (w, h) = self.component_size(c);
            let samples = &self.components[c].4;
            let quant = &self.quant[self.components[c].3].0;
            let basis = basis();
            std::array::from_fn(|i| {
                let (v, u) = (i / 8, i % 8);
                let mut sum = 0.0;
                for y in 0..8 {
                    for x in 0..8 {
                        let (sx, sy) = ((bx * 8 + x).min(w - 1), (by * 8 + y).min(h - 1));
                        let sample = f64::from(samples[sy * w + sx]) - CENTRE;
                        sum += basis[y][v] * basis[x][u] * sample;
                    }
                }
                (sum / f64::from(quant[i])).round() as i32
            })
        }

        /// What a decoder must give for component `c` at (x, y) of its plane: the quantised
        /// block through a direct (not separable) inverse DCT.
        fn reconstruction(&self, c: usize) -> Vec<u16> {
            let (w, h) = self.component_size(c);
            let quant = &self.quant[self.components[c].3].0;
            let basis = basis();
            let mut out = vec![0; w * h];
            for by in 0..h.div_ceil(8) {
                for bx in 0..w.div_ceil(8) {
                    let block = self.block(c, bx, by);
                    for y in 0..8 {
                        for x in 0..8 {
                            let (px, py) = (bx * 8 + x, by * 8 + y);
                            if px >= w || py >= h {
                                continue;
                            }
                            let mut sum = 0.0;
                            for i in 0..64 {
                                let value = f64::from(block[i]) * f64::from(quant[i]);
                                sum += basis[y][i / 8] * basis[x][i % 8] * value;
                            }
                            out[py * w + px] = (sum + CENTRE).round().clamp(0.0, 4095.0) as u16;
                        }
                    }
                }
            }
            out
        }

        fn encode(&self) -> Vec<u8> {
            let mut out = vec![0xFF, 0xD8];
            segment(&mut out, 0xE0, b"JFIF\0\x01\x02\0\0\x01\0\x01\0\0");
            for (id, (table, wide)) in self.quant.iter().enumerate() {
                let mut body = vec![(u8::from(*wide) << 4) | id as u8];
                for &position in &ZIGZAG {
                    match wide {
                        true => body.extend_from_slice(&table[position].to_be_bytes()),
                        false => body.push(table[position] as u8),
                    }
                }
                segment(&mut out, 0xDB, &body);
            }
            let mut body = vec![PRECISION];
            body.extend_from_slice(&(self.height as u16).to_be_bytes());
            body.extend_from_slice(&(self.width as u16).to_be_bytes());
            body.push(self.components.len() as u8);
            for (id, h, v, q, _) in &self.components {
                body.extend_from_slice(&[*id, (*h as u8) << 4 | *v as u8, *q as u8]);
            }
            segment(&mut out, self.sof, &body);
            // Tables 0 and 1 of each class, alike: component 0 uses 0, the others 1.
            for (class, symbols, length) in [(0u8, dc_symbols(), 5), (1, ac_symbols(), 8)] {
                for id in 0..2u8 {
                    let mut body = vec![class << 4 | id];
                    let mut counts = [0u8; 16];
                    counts[length - 1] = symbols.len() as u8;
                    body.extend_from_slice(&counts);
                    body.extend_from_slice(&symbols);
                    segment(&mut out, 0xC4, &body);
                }
            }
            if self.restart_interval > 0 {
                segment(
                    &mut out,
                    0xDD,
                    &(self.restart_interval as u16).to_be_bytes(),
                );
            }
            let ac_code = |symbol: u8| ac_symbols().iter().position(|&s| s == symbol).unwrap();
            for scan in &self.scans {
                let mut body = vec![scan.len() as u8];
                for &c in scan {
                    let table = u8::from(c > 0);
                    body.extend_from_slice(&[self.components[c].0, table << 4 | table]);
                }
                body.extend_from_slice(&[0, 63, 0]);
                segment(&mut out, 0xDA, &body);
                let mut bits = BitWriter {
                    out: Vec::new(),
                    acc: 0,
                    count: 0,
                };
                // (component, block x, block y) per MCU.
                let mut mcus: Vec<Vec<(usize, usize, usize)>> = Vec::new();
                if scan.len() == 1 {
                    let (w, h) = self.component_size(scan[0]);
                    for by in 0..h.div_ceil(8) {
                        for bx in 0..w.div_ceil(8) {
                            mcus.push(vec![(scan[0], bx, by)]);
                        }
                    }
                } else {
                    let across = self.width.div_ceil(8 * self.h_max());
                    let down = self.height.div_ceil(8 * self.v_max());
                    for my in 0..down {
                        for mx in 0..across {
                            let mut blocks = Vec::new();
                            for &c in scan {
                                let (_, h, v, _, _) = self.components[c];
                                for y in 0..v {
                                    for x in 0..h {
                                        blocks.push((c, mx * h + x, my * v + y));
                                    }
                                }
                            }
                            mcus.push(blocks);
                        }
                    }
                }
                let mut predictions = [0i32; 3];
                for (n, mcu) in mcus.iter().enumerate() {
                    if self.restart_interval > 0 && n > 0 && n % self.restart_interval == 0 {
                        bits.flush();
                        let marker = 0xD0 + ((n / self.restart_interval - 1) % 8) as u8;
                        bits.out.extend_from_slice(&[0xFF, marker]);
                        predictions = [0; 3];
                    }
                    for &(c, bx, by) in mcu {
                        let block = self.block(c, bx, by);
                        let difference = block[0] - predictions[c];
                        predictions[c] = block[0];
                        let size = category(difference);
                        bits.put(size, 5);
                        bits.put(encoded_bits(difference, size), size);
                        let mut run = 0;
                        for &position in &ZIGZAG[1..] {
                            let value = block[position];
                            if value == 0 {
                                run += 1;
                                continue;
                            }
                            while run > 15 {
                                bits.put(ac_code(0xF0) as u32, 8);
                                run -= 16;
                            }
                            let size = category(value);
                            bits.put(ac_code((run << 4 | size) as u8) as u32, 8);
                            bits.put(encoded_bits(value, size), size);
                            run = 0;
                        }
                        if run > 0 {
                            bits.put(ac_code(0) as u32, 8);
                        }
                    }
                }
                bits.flush();
                out.extend_from_slice(&bits.out);
            }
            out.extend_from_slice(&[0xFF, 0xD9]);
            out
        }
    }

    /// A smooth 12-bit pattern with some texture, `w` × `h`.
    fn pattern(w: usize, h: usize, seed: usize) -> Vec<u16> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                let value = 2048.0
                    + 1500.0 * (x / 7.0 + seed as f64).sin() * (y / 11.0).cos()
                    + 300.0 * ((x * y + seed as f64) / 5.0).sin();
                value.round().clamp(0.0, 4095.0) as u16
            })
            .collect()
    }

    fn flat(value: u16) -> [u16; 64] {
        [value; 64]
    }

    /// A quantisation table of values 2 to 97, larger at higher frequencies.
    fn ramp() -> [u16; 64] {
        std::array::from_fn(|i| (2 + (i / 8 + i % 8) * 7) as u16)
    }

    fn gray(width: usize, height: usize, restart_interval: usize) -> Encoder {
        Encoder {
            width,
            height,
            components: vec![(1, 1, 1, 0, pattern(width, height, 0))],
            quant: vec![(ramp(), false)],
            restart_interval,
            scans: vec![vec![0]],
            sof: 0xC1,
        }
    }

    fn max_gap(a: &[u16], b: &[u16]) -> u16 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    }

    #[test]
    fn grayscale_decodes_to_the_inverse_dct_of_its_coefficients() {
        for (width, height, restart) in [(45, 21, 0), (8, 8, 0), (45, 21, 3), (17, 30, 1)] {
            let encoder = gray(width, height, restart);
            let data = encoder.encode();
            assert!(is_12_bit_dct(&data));
            assert_eq!(
                header(&data).unwrap(),
                Header {
                    width: width as u32,
                    height: height as u32,
                    components: 1
                }
            );
            let image = decode(&data).unwrap();
            let gap = max_gap(&image.samples, &encoder.reconstruction(0));
            assert!(gap <= 1, "{width}×{height}, restart {restart}: {gap}");
        }
    }

    #[test]
    fn fine_quantisation_gives_the_samples_back() {
        // 16-bit quantisation table entries of 1, and SOF0 rather than SOF1.
        let mut encoder = gray(40, 24, 2);
        encoder.quant = vec![(flat(1), true)];
        encoder.sof = 0xC0;
        let image = decode(&encoder.encode()).unwrap();
        let gap = max_gap(&image.samples, &encoder.components[0].4);
        assert!(gap <= 2, "{gap}");
        // Extreme samples need the largest categories (DC 15, AC 14): blocks of 0, of 4095
        // and of a one-pixel checkerboard of both.
        encoder.components[0].4 = (0..40 * 24)
            .map(|i| {
                let (x, y) = (i % 40, i / 40);
                match (x / 8 + y / 8 * 5) % 3 {
                    0 => 4095,
                    1 => 0,
                    _ => (x + y) as u16 % 2 * 4095,
                }
            })
            .collect();
        let image = decode(&encoder.encode()).unwrap();
        assert!(max_gap(&image.samples, &encoder.reconstruction(0)) <= 1);
    }

    /// Three components, Y at twice the chroma's resolution both ways, in one interleaved scan
    /// and in one scan per component.
    #[test]
    fn colour_with_sampling_factors_interleaved_or_not() {
        let (width, height) = (37usize, 19usize);
        for (ids, scans, restart) in [
            (*b"RGB", vec![vec![0, 1, 2]], 0),
            (*b"RGB", vec![vec![0], vec![2], vec![1]], 2),
            (*b"RGB", vec![vec![0], vec![1, 2]], 1),
        ] {
            let chroma = (width.div_ceil(2), height.div_ceil(2));
            let encoder = Encoder {
                width,
                height,
                components: vec![
                    (ids[0], 2, 2, 0, pattern(width, height, 0)),
                    (ids[1], 1, 1, 1, pattern(chroma.0, chroma.1, 1)),
                    (ids[2], 1, 1, 1, pattern(chroma.0, chroma.1, 2)),
                ],
                quant: vec![(ramp(), false), (flat(3), false)],
                restart_interval: restart,
                scans: scans.clone(),
                sof: 0xC1,
            };
            let image = decode(&encoder.encode()).unwrap();
            assert_eq!(image.header.components, 3);
            let planes: Vec<Vec<u16>> = (0..3).map(|c| encoder.reconstruction(c)).collect();
            for y in 0..height {
                for x in 0..width {
                    for (c, plane) in planes.iter().enumerate() {
                        let (w, scale) = match c {
                            0 => (width, 1),
                            _ => (chroma.0, 2),
                        };
                        let expected = plane[y / scale * w + x / scale];
                        let got = image.samples[(y * width + x) * 3 + c];
                        assert!(got.abs_diff(expected) <= 1, "{scans:?} ({x}, {y}) {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn ycbcr_becomes_rgb() {
        // A flat orange: Y, Cb, Cr of 12-bit (3000, 1500, 2800).
        let (width, height) = (16, 8);
        let plane = |value: u16| vec![value; width * height];
        let encoder = Encoder {
            width,
            height,
            components: vec![
                (1, 1, 1, 0, plane(3000)),
                (2, 1, 1, 0, plane(1500)),
                (3, 1, 1, 0, plane(2800)),
            ],
            quant: vec![(flat(1), false)],
            restart_interval: 0,
            scans: vec![vec![0, 1, 2]],
            sof: 0xC1,
        };
        let image = decode(&encoder.encode()).unwrap();
        let expected = [
            3000.0 + 1.402 * 752.0,
            3000.0 - 0.344136 * -548.0 - 0.714136 * 752.0,
            3000.0 + 1.772 * -548.0,
        ];
        for pixel in image.samples.chunks_exact(3) {
            for (got, want) in pixel.iter().zip(expected) {
                assert!(
                    (f64::from(*got) - want).abs() <= 1.0,
                    "{pixel:?} {expected:?}"
                );
            }
        }
    }

    #[test]
    fn other_processes_and_precisions_are_refused_in_words() {
        let data = gray(16, 16, 0).encode();
        let sof = data.windows(2).position(|w| w == [0xFF, 0xC1]).unwrap();
        let with = |marker: u8| {
            let mut changed = data.clone();
            changed[sof + 1] = marker;
            changed
        };
        for (marker, words) in [
            (0xC2, "progressive"),
            (0xC3, "lossless"),
            (0xC5, "hierarchical"),
            (0xC9, "arithmetic"),
            (0xCA, "arithmetic"),
            (0xCD, "hierarchical"),
        ] {
            let error = decode(&with(marker)).unwrap_err();
            assert!(
                matches!(&error, DicomError::Unsupported(m) if m.contains(words)),
                "{marker:#x}: {error}"
            );
        }
        // Routing: DCT-based 12-bit comes here (to be refused in words if need be); lossless
        // JPEG and 8-bit JPEG go to jpeg-decoder.
        assert!(is_12_bit_dct(&with(0xC0)) && is_12_bit_dct(&with(0xC2)));
        assert!(!is_12_bit_dct(&with(0xC3)) && !is_12_bit_dct(&with(0xC7)));
        let mut eight_bit = data.clone();
        eight_bit[sof + 4] = 8;
        assert!(!is_12_bit_dct(&eight_bit));
        assert!(matches!(
            decode(&eight_bit),
            Err(DicomError::Unsupported(_))
        ));
        assert!(!is_12_bit_dct(b"\xFF\xD8\xFF"));
        assert!(!is_12_bit_dct(b""));
        // Two or four components, and a height left to a DNL marker.
        let mut two = data.clone();
        two[sof + 9] = 2;
        assert!(
            matches!(decode(&two), Err(DicomError::Unsupported(m)) if m.contains("2 components"))
        );
        let mut dnl = data.clone();
        dnl[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
        assert!(matches!(decode(&dnl), Err(DicomError::Unsupported(m)) if m.contains("DNL")));
        // A progressive scan in a sequential frame.
        let sos = data.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut progressive = data.clone();
        progressive[sos + 8] = 5;
        assert!(matches!(
            decode(&progressive),
            Err(DicomError::Unsupported(_))
        ));
    }

    #[test]
    fn invalid_tables_and_headers_are_errors() {
        // Overfull: three 1-bit codes; and a table whose last code is all ones.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        assert!(Huffman::new(&counts, &[1, 2, 3]).is_err());
        counts[0] = 2;
        assert!(Huffman::new(&counts, &[1, 2]).is_err());
        counts[0] = 1;
        counts[1] = 1;
        assert!(Huffman::new(&counts, &[1, 2]).is_ok());

        let data = gray(16, 16, 0).encode();
        let find = |marker: u8| data.windows(2).position(|w| w == [0xFF, marker]).unwrap();
        let pixels = |result: Result<Image, DicomError>| {
            matches!(result, Err(DicomError::Pixels(_) | DicomError::Size { .. }))
        };
        let changed = |at: usize, bytes: &[u8]| {
            let mut changed = data.clone();
            changed[at..at + bytes.len()].copy_from_slice(bytes);
            decode(&changed)
        };
        let (dht, dqt, sof, sos) = (find(0xC4), find(0xDB), find(0xC1), find(0xDA));
        assert!(pixels(changed(dht + 4, &[0x04])), "Huffman table id 4");
        assert!(pixels(changed(dht + 4, &[0x20])), "Huffman table class 2");
        assert!(pixels(changed(dqt + 4, &[0x05])), "quantisation table id 5");
        assert!(
            pixels(changed(dqt + 4, &[0x20])),
            "quantisation precision 2"
        );
        assert!(
            pixels(changed(sof + 12, &[0x04])),
            "quantisation table id 4 in SOF"
        );
        assert!(
            pixels(changed(sof + 12, &[0x03])),
            "undefined quantisation table"
        );
        assert!(pixels(changed(sof + 11, &[0x00])), "sampling factor 0");
        assert!(pixels(changed(sof + 10, &[0x51])), "sampling factor 5");
        assert!(
            pixels(changed(sos + 6, &[0x22])),
            "undefined Huffman tables"
        );
        assert!(
            pixels(changed(sos + 5, &[9])),
            "a component not in the frame"
        );
        assert!(pixels(changed(0, &[0, 0])), "no SOI");
        assert!(
            pixels(changed(sof + 5, &[0xFF, 0xFF, 0xFF, 0xFF])),
            "65535² pixels"
        );
        assert!(pixels(changed(sos + 2, &[0, 2])), "a segment length of 2");
        assert!(
            pixels(changed(sos + 2, &[0xFF, 0xFF])),
            "a segment past the end"
        );
        // No frame, or no scan.
        assert!(pixels(decode(b"\xFF\xD8\xFF\xD9")));
        assert!(pixels(decode(&[&data[..sos], &[0xFF, 0xD9]].concat())));
        assert!(header(b"\xFF\xD8\xFF\xD9").is_err());
    }

    /// Cut anywhere, or with garbage after the frame header, a stream is an error, never a
    /// panic (run in debug builds too, where arithmetic overflow panics).
    #[test]
    fn truncated_and_garbled_streams_are_errors_not_panics() {
        for encoder in [gray(24, 17, 0), gray(24, 17, 2)] {
            let data = encoder.encode();
            for cut in 0..data.len() - 1 {
                let Err(error) = decode(&data[..cut]) else {
                    panic!("cut at {cut} of {} decodes", data.len());
                };
                assert!(
                    matches!(error, DicomError::Pixels(_)),
                    "cut at {cut}: {error}"
                );
            }
            let sof = data.windows(2).position(|w| w == [0xFF, 0xC1]).unwrap();
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let mut random = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for round in 0..300 {
                let mut garbled = data.clone();
                if round % 3 == 0 {
                    // Everything after the frame header replaced.
                    for byte in &mut garbled[sof + 13..] {
                        *byte = random() as u8;
                    }
                } else {
                    for _ in 0..1 + round % 8 {
                        let at = (random() as usize) % garbled.len();
                        garbled[at] = random() as u8;
                    }
                }
                let _ = decode(&garbled);
                let _ = is_12_bit_dct(&garbled);
            }
        }
        // Entropy-coded data that ends without a restart marker where one is due.
        let data = gray(24, 17, 1).encode();
        let rst = data.windows(2).position(|w| w == [0xFF, 0xD0]).unwrap();
        let mut no_marker = data.clone();
        no_marker[rst + 1] = 0xC4;
        assert!(matches!(decode(&no_marker), Err(DicomError::Pixels(_))));
    }
}
