//! Streaming layers off disk: a background thread reads the chosen layers in file order,
//! decodes them to float32 (or hands over raw bytes), and queues them for the SVD worker
//! inside a bounded window of bytes (docs/method.md §5.1).
//!
//! The bytes of each part are read with positioned reads into owned buffers, in pieces of
//! `CHUNK` bytes decoded as they arrive (`files::ShardReader`), never through a memory
//! map: a shard truncated during a scan is then an error naming the file (every read
//! checks the file's size and modification time), not a SIGBUS. Buffers whose size comes
//! from a header are allocated fallibly: a failure is `SpectrumError::Memory`, not an
//! abort. Every product of header numbers is checked. The reader never touches Python;
//! a panic in it reaches the consumer as `SpectrumError::Internal`, and a reader that
//! ended without saying so is one too, so the consumer never waits for ever.

use std::alloc::Layout;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use safetensors::tensor::Dtype;

use crate::decode::{apply_scale, decode_into, decoded_len, dtype_name, element_size};
use crate::error::{Result, SpectrumError};
use crate::files::ShardReader;
use crate::layout::{quant, Catalog, Part, TensorEntry};

/// Bytes read at a time when decoding: small enough to stay in the CPU caches between
/// the read and the decode (`benches/results/stream-2026-12-01.md`: 256 KiB and 1 MiB
/// took the same time, 64 KiB and 4 MiB longer).
const CHUNK: usize = 1 << 20;

/// What the worker receives for one layer.
pub enum Payload {
    /// Row-major `rows x cols` float32 values.
    F32(Vec<f32>),
    /// The stored little-endian bytes, for a worker that converts on its device.
    Raw { bytes: Vec<u8>, dtype: Dtype },
}

pub struct Item {
    pub layer: usize,
    pub rows: usize,
    pub cols: usize,
    pub payload: Payload,
    /// Host bytes this item holds (charged against the window).
    pub charge: usize,
}

/// A byte budget shared by the reader (which takes) and the consumer (which gives back).
struct Window {
    used: Mutex<usize>,
    freed: Condvar,
    capacity: usize,
    cancelled: AtomicBool,
}

impl Window {
    /// Waits until `n` bytes fit (an item larger than the whole window still passes
    /// when nothing else is held). Returns false when the stream was cancelled.
    fn take(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && used.saturating_add(n) > self.capacity && !self.cancelled.load(Ordering::Relaxed) {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        if self.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        *used = used.saturating_add(n);
        true
    }

    fn give(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        let _guard = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.freed.notify_all();
    }
}

pub struct Streamer {
    rx: Receiver<Result<Item>>,
    window: Arc<Window>,
    held: usize,
    expected: usize,
    delivered: usize,
    failed: bool,
    handle: Option<JoinHandle<()>>,
}

impl Streamer {
    /// Starts reading `layers` (indices into `cat.layers`). `window_bytes` bounds the
    /// decoded bytes queued ahead of the consumer plus the item it holds.
    pub fn start(cat: Arc<Catalog>, layers: Vec<usize>, window_bytes: usize, raw: bool) -> Result<Streamer> {
        Self::start_ordered(cat, layers, window_bytes, raw, true)
    }

    /// As [`Streamer::start`]; with `file_order` false the layers are read in the order
    /// given (a scheduler's order, such as largest first), not sorted by their place in
    /// the files.
    pub fn start_ordered(
        cat: Arc<Catalog>,
        layers: Vec<usize>,
        window_bytes: usize,
        raw: bool,
        file_order: bool,
    ) -> Result<Streamer> {
        for &l in &layers {
            if l >= cat.layers.len() {
                return Err(SpectrumError::input(format!("layer index {l} is out of range")));
            }
        }
        let window = Arc::new(Window {
            used: Mutex::new(0),
            freed: Condvar::new(),
            capacity: window_bytes.max(1),
            cancelled: AtomicBool::new(false),
        });
        let (tx, rx) = channel();
        let expected = layers.len();
        let w = Arc::clone(&window);
        let handle = std::thread::Builder::new()
            .name("spectrum-reader".into())
            .spawn(move || {
                // Whatever happens inside, the consumer hears of it: an item per layer, an
                // error, or (a panic) an internal error; then `tx` is dropped, so a
                // consumer still waiting sees the channel close.
                let read = catch_unwind(AssertUnwindSafe(|| read_all(&cat, layers, raw, file_order, &w, &tx)));
                if let Err(panic) = read {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    let _ = tx.send(Err(SpectrumError::internal(format!(
                        "internal error: the reader thread panicked: {what}"
                    ))));
                }
            })
            .map_err(|e| SpectrumError::internal(format!("cannot start the reader thread: {e}")))?;
        Ok(Streamer { rx, window, held: 0, expected, delivered: 0, failed: false, handle: Some(handle) })
    }

    /// The next layer, in file order. Giving back the previous item's bytes here is what
    /// lets the reader run ahead; `None` once every layer was delivered.
    pub fn next_item(&mut self) -> Option<Result<Item>> {
        self.window.give(std::mem::take(&mut self.held));
        if self.failed || self.delivered == self.expected {
            return None;
        }
        // `recv` returns as soon as the reader sends or ends (its `Sender` is dropped
        // then, even when it panics): it never waits on a reader that is gone.
        match self.rx.recv() {
            Ok(Ok(item)) => {
                self.held = item.charge;
                self.delivered += 1;
                Some(Ok(item))
            }
            Ok(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            Err(_) => {
                self.failed = true;
                // The reader ended before sending every layer or an error.
                Some(Err(SpectrumError::internal(format!(
                    "internal error: the reader thread stopped after {} of {} layers",
                    self.delivered, self.expected
                ))))
            }
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.window.cancel();
        // Drain so the reader is never blocked on a full queue (the channel is unbounded,
        // but this also frees queued buffers before joining).
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A zero-filled buffer of `n` values, or `None` when the allocator refuses it. The
/// zeroed memory comes from the allocator (`calloc`: fresh pages are not written), as
/// with `vec![0; n]`, which aborts the process instead of failing.
fn try_zeroed<T: Zeroable>(n: usize) -> Option<Vec<T>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Some(Vec::new());
    }
    let layout = Layout::array::<T>(n).ok()?;
    // SAFETY: `layout` has a non-zero size; all-zero bytes are a valid `T` (`Zeroable`);
    // the memory comes from the global allocator with the layout a `Vec<T>` of capacity
    // `n` frees it with, and all `n` values are initialised (to zero).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(p, n, n))
    }
}

/// Types for which all-zero bytes are a valid value (0 and 0.0).
trait Zeroable: Copy {}
impl Zeroable for u8 {}
impl Zeroable for f32 {}

/// The `Memory` error for a buffer of `bytes` for `what` of tensor `t`.
fn no_memory(cat: &Catalog, t: &TensorEntry, what: &str, bytes: Option<usize>) -> SpectrumError {
    let size = bytes.map_or_else(|| "more than the address space".to_string(), |b| format!("{b} bytes"));
    SpectrumError::memory(
        &cat.shards[t.shard].path,
        format!("cannot allocate {size} for {what} of tensor {:?} of shape {:?}", t.name, t.shape),
    )
}

/// The error for a product of a tensor's numbers that overflows.
fn overflow(cat: &Catalog, t: &TensorEntry, what: &str) -> SpectrumError {
    SpectrumError::file(
        &cat.shards[t.shard].path,
        format!("tensor {:?} of shape {:?}: {what} overflows", t.name, t.shape),
    )
}

/// What the reader holds while it works through the layers: the current shard, open,
/// and the buffer pieces of it are read into.
struct Reader<'a> {
    cat: &'a Catalog,
    shard: Option<(usize, ShardReader<'a>)>,
    chunk: Vec<u8>,
}

/// The open reader of `shard` in `slot`, opening it (and closing the previous one) if
/// needed.
fn open_shard<'s, 'a>(
    slot: &'s mut Option<(usize, ShardReader<'a>)>,
    cat: &'a Catalog,
    shard: usize,
) -> Result<&'s ShardReader<'a>> {
    if slot.as_ref().map(|(s, _)| *s) != Some(shard) {
        *slot = None;
        *slot = Some((shard, ShardReader::open(&cat.shards[shard])?));
    }
    Ok(&slot.as_ref().expect("opened above").1)
}

impl<'a> Reader<'a> {
    /// The open reader of `shard`.
    fn shard(&mut self, shard: usize) -> Result<&ShardReader<'a>> {
        open_shard(&mut self.shard, self.cat, shard)
    }

    /// Decodes one part, read from its shard (or from `other`, the caller's reader of
    /// the part's shard when that is not the current one).
    fn decode(&mut self, part: Part, other: Option<&ShardReader<'a>>) -> Result<Vec<f32>> {
        let Reader { cat, shard: slot, chunk } = self;
        let cat: &'a Catalog = cat;
        let t = &cat.tensors[part.tensor];
        let path = &cat.shards[t.shard].path;
        let (begin, end) = cat.part_range(part);
        let len = end.checked_sub(begin).ok_or_else(|| overflow(cat, t, "its byte range"))?;
        let align = element_size(t.dtype).unwrap_or(1);
        let count = decoded_len(t.dtype, len).ok_or_else(|| {
            SpectrumError::layout(path, format!("tensor {:?}: dtype {} cannot be decoded", t.name, dtype_name(t.dtype)))
        })?;
        if len % align != 0 {
            return Err(SpectrumError::file(
                path,
                format!("tensor {:?}: {len} bytes are not a whole number of {} values", t.name, dtype_name(t.dtype)),
            ));
        }
        let mut out: Vec<f32> =
            try_zeroed(count).ok_or_else(|| no_memory(cat, t, "its float32 values", count.checked_mul(4)))?;
        let reader = match other {
            Some(r) => r,
            None => open_shard(slot, cat, t.shard)?,
        };
        let mut at = 0;
        reader.read_chunks(begin as u64, end as u64, chunk, align, |piece| {
            // Pieces hold whole elements, so their values add up to `count`.
            let n = decoded_len(t.dtype, piece.len()).unwrap_or(0);
            decode_into(t.dtype, piece, &mut out[at..at + n]);
            at += n;
        })?;
        Ok(out)
    }
}

fn read_all(
    cat: &Catalog,
    mut layers: Vec<usize>,
    raw: bool,
    file_order: bool,
    window: &Window,
    tx: &Sender<Result<Item>>,
) {
    if file_order {
        layers.sort_by_key(|&l| {
            let p = cat.layers[l].weight;
            (cat.tensors[p.tensor].shard, cat.part_range(p).0)
        });
    }
    let mut reader = Reader { cat, shard: None, chunk: vec![0u8; CHUNK] };
    for l in layers {
        if window.cancelled.load(Ordering::Relaxed) {
            return;
        }
        match read_one(&mut reader, l, raw, window) {
            Ok(None) => return, // cancelled while waiting for room
            Ok(Some(item)) => {
                if tx.send(Ok(item)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

fn read_one(reader: &mut Reader<'_>, l: usize, raw: bool, window: &Window) -> Result<Option<Item>> {
    let cat = reader.cat;
    let layer = &cat.layers[l];
    let t = &cat.tensors[layer.weight.tensor];
    let shard = t.shard;
    let n = layer.rows.checked_mul(layer.cols).ok_or_else(|| overflow(cat, t, "rows x columns"))?;
    // The matrix read (a split layer keeps part of it: `layer.finish`); scales cover it.
    let (read_rows, read_cols) = layer.read_dims();
    let read_n = read_rows.checked_mul(read_cols).ok_or_else(|| overflow(cat, t, "rows x columns"))?;
    let decoded = read_n.checked_mul(4).filter(|&b| b <= isize::MAX as usize);
    let (begin, end) = cat.part_range(layer.weight);
    let stored = end.checked_sub(begin).ok_or_else(|| overflow(cat, t, "its byte range"))?;
    // F64 always travels as its stored bytes: float32 would turn values beyond its range
    // into inf or 0 (and tiny ones into subnormals) before any worker saw them.
    let raw_ok = layer.scale.is_none()
        && layer.split.is_none()
        && (t.dtype == Dtype::F64 || (raw && matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32)));
    let charge = if raw_ok { stored } else { decoded.ok_or_else(|| overflow(cat, t, "its float32 size"))? };
    // The stored values must fill the matrix exactly (a header that wraps a product
    // would otherwise hand the worker a matrix of the wrong size).
    if decoded_len(t.dtype, stored).is_some_and(|values| values != read_n) {
        return Err(SpectrumError::file(
            &cat.shards[shard].path,
            format!(
                "tensor {:?} of shape {:?}: its {stored} bytes do not hold a {} x {} matrix",
                t.name, t.shape, read_rows, read_cols
            ),
        ));
    }
    if !window.take(charge) {
        return Ok(None);
    }
    let payload = if raw_ok {
        let mut bytes: Vec<u8> =
            try_zeroed(stored).ok_or_else(|| no_memory(cat, t, "the stored bytes", Some(stored)))?;
        reader.shard(shard)?.read_exact_at(&mut bytes, begin as u64)?;
        Payload::Raw { bytes, dtype: t.dtype }
    } else {
        let mut w = reader.decode(layer.weight, None)?;
        if let Some(s) = layer.scale {
            let grid = quant::scale_grid(cat, layer, s)?;
            let scale_shard = cat.tensors[s].shard;
            let scale = if scale_shard == shard {
                reader.decode(grid.part, None)?
            } else {
                let other = ShardReader::open(&cat.shards[scale_shard])?;
                reader.decode(grid.part, Some(&other))?
            };
            let block = quant::scale_block(cat, layer, s, &grid, scale.len())?;
            apply_scale(&mut w, read_rows, read_cols, &scale, grid.rows, grid.cols, block);
        }
        Payload::F32(layer.finish(w))
    };
    debug_assert!(
        n == 0 || matches!(payload, Payload::Raw { .. }) || matches!(&payload, Payload::F32(v) if v.len() == n)
    );
    Ok(Some(Item { layer: l, rows: layer.rows, cols: layer.cols, payload, charge }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::files::testing::{f32_bytes, f32_seq, safetensors, Spec, TempDir};
    use crate::layout::Layer;

    fn open(tensors: &[Spec<'_>]) -> (TempDir, PathBuf, Arc<Catalog>) {
        let dir = TempDir::new();
        let file = dir.write("model.safetensors", &safetensors(tensors));
        let cat = Catalog::open(&[dir.path().to_path_buf()]).unwrap();
        (dir, file, Arc::new(cat))
    }

    fn index(cat: &Catalog, name: &str) -> usize {
        cat.layers.iter().position(|l| l.name == name).unwrap()
    }

    fn drain(mut s: Streamer) -> Vec<Result<Item>> {
        std::iter::from_fn(|| s.next_item()).collect()
    }

    fn floats(item: &Item) -> &[f32] {
        match &item.payload {
            Payload::F32(v) => v,
            Payload::Raw { .. } => panic!("raw payload for layer {}", item.layer),
        }
    }

    fn bf16_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()
    }

    fn model() -> (TempDir, PathBuf, Arc<Catalog>) {
        // Stored in the order b, a, c; layers in the order a, b, c.
        open(&[
            ("b.weight", "F32", &[2, 3], f32_bytes(&f32_seq(0.0, 6))),
            ("a.weight", "BF16", &[2, 2], bf16_bytes(&[1.0, -2.0, 0.5, 4.0])),
            ("c.weight", "F64", &[1, 2], [0.25f64, -3.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ])
    }

    #[test]
    fn two_layers_decoded_in_file_order_through_a_small_window() {
        let (_dir, _file, cat) = model();
        let (a, b) = (index(&cat, "a"), index(&cat, "b"));
        let items = drain(Streamer::start(Arc::clone(&cat), vec![a, b], 1, false).unwrap());
        let items: Vec<Item> = items.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(items.iter().map(|i| i.layer).collect::<Vec<_>>(), [b, a]);
        assert_eq!((items[0].rows, items[0].cols, items[0].charge), (2, 3, 24));
        assert_eq!(floats(&items[0]), f32_seq(0.0, 6));
        assert_eq!((items[1].rows, items[1].cols), (2, 2));
        assert_eq!(floats(&items[1]), [1.0, -2.0, 0.5, 4.0]);
    }

    #[test]
    fn raw_mode_hands_over_the_stored_bytes() {
        let (_dir, file, cat) = model();
        let stored = std::fs::read(file).unwrap();
        let layers: Vec<usize> = (0..3).collect();
        let items: Vec<Item> = drain(Streamer::start(Arc::clone(&cat), layers, 1 << 20, true).unwrap())
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(items.len(), 3);
        for item in &items {
            let l = &cat.layers[item.layer];
            let t = &cat.tensors[l.weight.tensor];
            match (&item.payload, t.dtype) {
                // F64 travels as its stored bytes too (float32 could not hold its values).
                (Payload::Raw { bytes, dtype }, Dtype::BF16 | Dtype::F32 | Dtype::F64) => {
                    assert_eq!(*dtype, t.dtype);
                    assert_eq!(bytes[..], stored[t.begin..t.end]);
                    assert_eq!(item.charge, bytes.len());
                }
                _ => panic!("unexpected payload for {}", l.name),
            }
        }
    }

    #[test]
    fn out_of_range_layers_are_refused() {
        let (_dir, _file, cat) = model();
        let e = Streamer::start(cat, vec![0, 3], 1 << 20, false).err().unwrap();
        assert!(matches!(&e, SpectrumError::Input(m) if m == "layer index 3 is out of range"));
    }

    #[test]
    fn fp8_weights_are_scaled_and_experts_sliced() {
        let (_dir, _file, cat) = open(&[
            // 1.0, -1.0, 2.0, 1.0 in F8_E4M3
            ("p.weight", "F8_E4M3", &[2, 2], vec![0x38, 0xb8, 0x40, 0x38]),
            ("p.weight_scale_inv", "F32", &[1, 1], f32_bytes(&[0.5])),
            ("r.weight", "F8_E4M3", &[2, 2], vec![0x38, 0xb8, 0x40, 0x38]),
            ("r.weight_scale_inv", "F32", &[2], f32_bytes(&[2.0, 3.0])),
            ("m.experts.w", "F32", &[3, 2, 2], f32_bytes(&f32_seq(0.0, 12))),
        ]);
        let wanted = ["p", "r", "m.experts.w.1", "m.experts.w.2"].map(|n| index(&cat, n));
        let items: Vec<Item> = drain(Streamer::start(Arc::clone(&cat), wanted.to_vec(), 1 << 20, true).unwrap())
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let item = |n: &str| items.iter().find(|i| i.layer == index(&cat, n)).unwrap();
        // Scaled layers are decoded even in raw mode; an expert's raw bytes are its slice.
        assert_eq!(floats(item("p")), [0.5, -0.5, 1.0, 0.5]);
        assert_eq!(floats(item("r")), [2.0, -2.0, 6.0, 3.0]);
        assert!(matches!(&item("m.experts.w.1").payload, Payload::Raw { bytes, dtype: Dtype::F32 }
            if *bytes == f32_bytes(&[4.0, 5.0, 6.0, 7.0])));
        let decoded: Vec<Item> = drain(Streamer::start(Arc::clone(&cat), wanted[2..].to_vec(), 1, false).unwrap())
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(floats(&decoded[0]), [4.0, 5.0, 6.0, 7.0]);
        assert_eq!(floats(&decoded[1]), [8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn errors_end_the_stream() {
        let (_dir, file, cat) = open(&[
            ("a.weight", "F8_E4M3", &[2, 2], vec![0x38; 4]),
            ("a.weight_scale_inv", "F32", &[3], f32_bytes(&[1.0; 3])),
            ("b.weight", "F32", &[1, 1], f32_bytes(&[1.0])),
        ]);
        let mut items = drain(Streamer::start(Arc::clone(&cat), vec![0, 1], 1 << 20, false).unwrap());
        assert_eq!(items.len(), 1);
        let e = items.remove(0).err().unwrap();
        assert!(matches!(e, SpectrumError::Layout { .. }));
        assert_eq!(
            e.to_string(),
            format!(
                "{}: scale tensor \"a.weight_scale_inv\" of shape [3] does not tile weight \"a.weight\" of shape [2, 2]",
                file.display()
            )
        );
        // The file changes under the open catalog.
        let b = index(&cat, "b");
        std::fs::write(&file, b"short").unwrap();
        let mut items = drain(Streamer::start(Arc::clone(&cat), vec![b], 1 << 20, false).unwrap());
        let e = items.remove(0).err().unwrap();
        assert!(matches!(e, SpectrumError::File { .. }));
        assert!(e.to_string().starts_with(&format!("{}: changed while being read (size ", file.display())), "{e}");
    }

    /// A model of three 64 x 64 F32 layers, and the catalog's layers in file order.
    fn three_layers() -> (TempDir, PathBuf, Arc<Catalog>, Vec<usize>) {
        let w = f32_bytes(&f32_seq(1.0, 64 * 64));
        let (dir, file, cat) = open(&[
            ("a.weight", "F32", &[64, 64], w.clone()),
            ("b.weight", "F32", &[64, 64], w.clone()),
            ("c.weight", "F32", &[64, 64], w),
        ]);
        let layers = ["a", "b", "c"].map(|n| index(&cat, n)).to_vec();
        (dir, file, cat, layers)
    }

    #[test]
    fn a_file_truncated_during_the_stream_ends_it_with_an_error() {
        for raw in [false, true] {
            let (_dir, file, cat, layers) = three_layers();
            let size = std::fs::metadata(&file).unwrap().len();
            // A window of one byte: the reader waits for the first layer to be taken back
            // before it reads the second, which is after the truncation.
            let mut s = Streamer::start(Arc::clone(&cat), layers, 1, raw).unwrap();
            let first = s.next_item().unwrap().unwrap();
            assert_eq!((first.rows, first.cols), (64, 64));
            std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(size / 2).unwrap();
            let e = s.next_item().unwrap().err().unwrap();
            assert!(matches!(e, SpectrumError::File { .. }));
            let start =
                format!("{}: changed while being read (size {size} -> {} bytes, mtime ", file.display(), size / 2);
            assert!(e.to_string().starts_with(&start), "{e}");
            assert!(s.next_item().is_none());
        }
    }

    #[test]
    fn a_file_truncated_and_grown_back_is_not_read_as_zeros() {
        let (_dir, file, cat, layers) = three_layers();
        let size = std::fs::metadata(&file).unwrap().len();
        let mut s = Streamer::start(Arc::clone(&cat), layers, 1, false).unwrap();
        assert!(s.next_item().unwrap().is_ok());
        // Past the file system's timestamp granularity, so the new mtime differs.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(100).unwrap();
        f.set_len(size).unwrap();
        let e = s.next_item().unwrap().err().unwrap().to_string();
        assert!(e.contains(&format!("changed while being read (size {size} -> {size} bytes, mtime ")), "{e}");
    }

    #[test]
    fn allocation_failures_are_memory_errors() {
        assert!(try_zeroed::<f32>(0).unwrap().is_empty());
        assert_eq!(try_zeroed::<u8>(3).unwrap(), [0, 0, 0]);
        assert_eq!(try_zeroed::<f32>(1 << 20).unwrap().iter().filter(|v| **v != 0.0).count(), 0);
        // 4 EiB: more than any address space; and more than a layout can describe.
        assert!(try_zeroed::<f32>(1 << 60).is_none());
        assert!(try_zeroed::<f32>(usize::MAX / 2).is_none());
        let (_dir, file, cat) = model();
        let t = &cat.tensors[0];
        let e = no_memory(&cat, t, "its float32 values", Some(1 << 62));
        assert!(matches!(e, SpectrumError::Memory { .. }));
        assert_eq!(
            e.to_string(),
            format!("{}: cannot allocate 4611686018427387904 bytes for its float32 values of tensor \"b.weight\" of shape [2, 3]", file.display())
        );
        assert!(no_memory(&cat, t, "x", None).to_string().contains("more than the address space"));
    }

    #[test]
    fn a_matrix_its_bytes_do_not_fill_is_refused() {
        // A layer whose rows x cols overflow, or do not match the stored bytes.
        let (_dir, file, cat) = model();
        for (rows, cols, words) in [
            (usize::MAX, 2, "rows x columns overflows"),
            (1usize << 62, 2, "its float32 size overflows"),
            (3, 3, "its 24 bytes do not hold a 3 x 3 matrix"),
        ] {
            let mut layers = cat.layers.clone();
            let b = index(&cat, "b");
            (layers[b].rows, layers[b].cols) = (rows, cols);
            let broken =
                Catalog { layers, shards: cat.shards.clone(), tensors: cat.tensors.clone(), ..Catalog::default() };
            let mut items = drain(Streamer::start(Arc::new(broken), vec![b], 1 << 20, false).unwrap());
            let e = items.remove(0).err().unwrap();
            assert!(matches!(e, SpectrumError::File { .. }), "{e}");
            assert!(
                e.to_string().starts_with(&format!("{}: tensor \"b.weight\" of shape [2, 3]: ", file.display())),
                "{e}"
            );
            assert!(e.to_string().ends_with(words), "{e}");
        }
    }

    #[test]
    fn dropping_a_stream_stops_its_reader() {
        let (_dir, _file, cat) = model();
        let mut s = Streamer::start(Arc::clone(&cat), vec![0, 1, 2], 1, false).unwrap();
        assert!(s.next_item().unwrap().is_ok());
        drop(s); // the reader waits for room in the window: cancelled, joined
        let s = Streamer::start(cat, vec![], 1, false).unwrap();
        assert!(drain(s).is_empty());
    }

    #[test]
    fn a_reader_that_panics_is_an_internal_error() {
        // A layer pointing at a tensor that does not exist makes the part read panic.
        let layer = Layer {
            name: "x".into(),
            kind: "x".into(),
            weight: Part { tensor: 7, expert: None },
            scale: None,
            rows: 1,
            cols: 1,
            split: None,
        };
        let cat = Arc::new(Catalog { layers: vec![layer], ..Catalog::default() });
        let items = drain(Streamer::start(cat, vec![0], 1, false).unwrap());
        assert_eq!(items.len(), 1);
        let e = items.into_iter().next().unwrap().err().unwrap();
        assert!(matches!(&e, SpectrumError::Internal(_)));
        assert_eq!(
            e.to_string(),
            "internal error: the reader thread panicked: index out of bounds: the len is 0 but the index is 7"
        );
    }
}
