//! Streaming layers off disk: a background thread memory-maps each shard, reads the
//! chosen layers in file order, decodes them to float32 (or hands over raw bytes), and
//! queues them for the SVD worker inside a bounded window of bytes. Pages of a tensor
//! are released (`MADV_DONTNEED`) as soon as it is decoded, and a shard's map is
//! dropped when the reader moves past it, so resident memory does not grow with the
//! model.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use safetensors::tensor::Dtype;

use crate::decode::{apply_scale, decode_into, dtype_name, element_size};
use crate::error::{Result, SpectrumError};
use crate::layout::{quant, Catalog, Part};

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
        while *used > 0 && *used + n > self.capacity && !self.cancelled.load(Ordering::Relaxed) {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        if self.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        *used += n;
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
            .spawn(move || read_all(&cat, layers, raw, &w, tx))
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
                // The reader ended before sending every layer or an error: it panicked.
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

fn map_shard(cat: &Catalog, shard: usize) -> Result<Mmap> {
    let path = &cat.shards[shard].path;
    let file = File::open(path).map_err(|e| SpectrumError::file(path, format!("cannot open: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len != cat.shards[shard].size {
        return Err(SpectrumError::file(
            path,
            format!("file changed size since it was opened ({} -> {len} bytes)", cat.shards[shard].size),
        ));
    }
    // SAFETY: read-only map of a file we do not write; its size was checked above.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| SpectrumError::file(path, format!("cannot map: {e}")))?;
    #[cfg(unix)]
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

/// Drops the pages of a byte range from this process (they are re-read from the file if
/// ever touched again).
fn release_pages(map: &Mmap, begin: usize, end: usize) {
    #[cfg(unix)]
    if end > begin {
        // SAFETY: the map is a read-only shared file mapping: after MADV_DONTNEED the
        // pages read back from the file with identical contents, and no slice into this
        // range is alive.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, begin, end - begin) };
    }
}

fn decode_part(cat: &Catalog, map: &Mmap, part: Part) -> Result<Vec<f32>> {
    let t = &cat.tensors[part.tensor];
    let (begin, end) = cat.part_range(part);
    let path = &cat.shards[t.shard].path;
    let bytes = map
        .get(begin..end)
        .ok_or_else(|| SpectrumError::file(path, format!("tensor {:?} lies past the end of the file", t.name)))?;
    let size = element_size(t.dtype).ok_or_else(|| {
        SpectrumError::layout(path, format!("tensor {:?}: dtype {} cannot be decoded", t.name, dtype_name(t.dtype)))
    })?;
    let mut out = vec![0f32; bytes.len() / size];
    decode_into(t.dtype, bytes, &mut out);
    Ok(out)
}

fn read_all(cat: &Catalog, mut layers: Vec<usize>, raw: bool, window: &Window, tx: Sender<Result<Item>>) {
    layers.sort_by_key(|&l| {
        let p = cat.layers[l].weight;
        (cat.tensors[p.tensor].shard, cat.part_range(p).0)
    });
    let mut maps: HashMap<usize, Mmap> = HashMap::new();
    for l in layers {
        if window.cancelled.load(Ordering::Relaxed) {
            return;
        }
        let result = read_one(cat, l, raw, window, &mut maps);
        let stop = result.is_err();
        match result {
            Ok(None) => return, // cancelled while waiting for room
            Ok(Some(item)) => {
                if tx.send(Ok(item)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        if stop {
            return;
        }
    }
}

fn read_one(
    cat: &Catalog,
    l: usize,
    raw: bool,
    window: &Window,
    maps: &mut HashMap<usize, Mmap>,
) -> Result<Option<Item>> {
    let layer = &cat.layers[l];
    let t = &cat.tensors[layer.weight.tensor];
    let shard = t.shard;
    // Only the current shard (and a scale's shard) stay mapped.
    maps.retain(|&s, _| s == shard);
    if let Entry::Vacant(e) = maps.entry(shard) {
        e.insert(map_shard(cat, shard)?);
    }
    let n = layer.rows * layer.cols;
    let (begin, end) = cat.part_range(layer.weight);
    let raw_ok = raw && layer.scale.is_none() && matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32);
    let charge = if raw_ok { end - begin } else { n * 4 };
    if !window.take(charge) {
        return Ok(None);
    }
    let map = &maps[&shard];
    let payload = if raw_ok {
        let bytes = map.get(begin..end).ok_or_else(|| {
            SpectrumError::file(&cat.shards[shard].path, format!("tensor {:?} lies past the end of the file", t.name))
        })?;
        Payload::Raw { bytes: bytes.to_vec(), dtype: t.dtype }
    } else {
        let mut w = decode_part(cat, map, layer.weight)?;
        if let Some(s) = layer.scale {
            let grid = quant::scale_grid(cat, layer, s)?;
            let scale = if cat.tensors[s].shard == shard {
                decode_part(cat, map, grid.part)?
            } else {
                let other = map_shard(cat, cat.tensors[s].shard)?;
                decode_part(cat, &other, grid.part)?
            };
            let block = quant::scale_block(cat, layer, s, &grid, scale.len())?;
            apply_scale(&mut w, layer.rows, layer.cols, &scale, grid.rows, grid.cols, block);
        }
        Payload::F32(w)
    };
    release_pages(map, begin, end);
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
                (Payload::Raw { bytes, dtype }, Dtype::BF16 | Dtype::F32) => {
                    assert_eq!(*dtype, t.dtype);
                    assert_eq!(bytes[..], stored[t.begin..t.end]);
                    assert_eq!(item.charge, bytes.len());
                }
                // F64 has no raw form: decoded to float32.
                (Payload::F32(v), Dtype::F64) => assert_eq!(v[..], [0.25, -3.0]),
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
        assert!(e.to_string().contains("file changed size since it was opened"), "{e}");
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
    fn a_reader_that_dies_is_an_internal_error() {
        // A layer pointing at a tensor that does not exist makes the reader panic.
        let layer = Layer {
            name: "x".into(),
            kind: "x".into(),
            weight: Part { tensor: 7, expert: None },
            scale: None,
            rows: 1,
            cols: 1,
        };
        let cat = Arc::new(Catalog { layers: vec![layer], ..Catalog::default() });
        let items = drain(Streamer::start(cat, vec![0], 1, false).unwrap());
        assert_eq!(items.len(), 1);
        let e = items.into_iter().next().unwrap().err().unwrap();
        assert!(
            matches!(&e, SpectrumError::Internal(m) if m == "internal error: the reader thread stopped after 0 of 1 layers")
        );
    }
}
