//! Streaming layers off disk: a background thread memory-maps each shard, reads the
//! chosen layers in file order, decodes them to float32 (or hands over raw bytes), and
//! queues them for the SVD worker inside a bounded window of bytes. Pages of a tensor
//! are released (`MADV_DONTNEED`) as soon as it is decoded, and a shard's map is
//! dropped when the reader moves past it, so resident memory does not grow with the
//! model.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use safetensors::tensor::Dtype;

use crate::catalog::{Catalog, Part};
use crate::decode::{apply_scale, decode_into, element_size, scale_blocks};
use crate::error::{Result, SpectrumError};

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
            .map_err(|e| SpectrumError::input(format!("cannot start the reader thread: {e}")))?;
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
                Some(Err(SpectrumError::input(format!(
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

/// Byte range of a part inside its shard.
fn part_range(cat: &Catalog, part: Part) -> (usize, usize) {
    let t = &cat.tensors[part.tensor];
    match part.expert {
        Some(e) => {
            let each = (t.end - t.begin) / t.shape[0].max(1);
            (t.begin + e * each, t.begin + (e + 1) * each)
        }
        None => (t.begin, t.end),
    }
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
    let (begin, end) = part_range(cat, part);
    let path = &cat.shards[t.shard].path;
    let bytes = map
        .get(begin..end)
        .ok_or_else(|| SpectrumError::file(path, format!("tensor {:?} lies past the end of the file", t.name)))?;
    let size = element_size(t.dtype)
        .ok_or_else(|| SpectrumError::file(path, format!("tensor {:?}: dtype {:?} cannot be decoded", t.name, t.dtype)))?;
    let mut out = vec![0f32; bytes.len() / size];
    decode_into(t.dtype, bytes, &mut out);
    Ok(out)
}

fn read_all(cat: &Catalog, mut layers: Vec<usize>, raw: bool, window: &Window, tx: Sender<Result<Item>>) {
    layers.sort_by_key(|&l| {
        let p = cat.layers[l].weight;
        (cat.tensors[p.tensor].shard, part_range(cat, p).0)
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
    if !maps.contains_key(&shard) {
        maps.insert(shard, map_shard(cat, shard)?);
    }
    let n = layer.rows * layer.cols;
    let (begin, end) = part_range(cat, layer.weight);
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
            let st = &cat.tensors[s];
            // One expert of a stacked weight takes the same slice of stacked scales.
            let stacked = st.shape.len() == 3 && layer.weight.expert.is_some();
            if stacked && st.shape[0] != t.shape[0] {
                return Err(SpectrumError::file(
                    &cat.shards[st.shard].path,
                    format!(
                        "scale tensor {:?} of shape {:?} does not stack the {} experts of {:?}",
                        st.name, st.shape, t.shape[0], t.name
                    ),
                ));
            }
            let part = Part { tensor: s, expert: if stacked { layer.weight.expert } else { None } };
            let scale = if st.shard == shard {
                decode_part(cat, map, part)?
            } else {
                let other = map_shard(cat, st.shard)?;
                decode_part(cat, &other, part)?
            };
            let dims = if stacked { &st.shape[1..] } else { &st.shape[..] };
            let (sr, sc) = match dims.len() {
                0 => (1, 1),
                1 => (dims[0], 1),
                _ => (dims[0], dims[1..].iter().product()),
            };
            let blocks = (sr * sc == scale.len())
                .then(|| scale_blocks(layer.rows, layer.cols, sr, sc, cat.scale_block))
                .flatten()
                .ok_or_else(|| {
                    SpectrumError::file(
                        &cat.shards[st.shard].path,
                        format!(
                            "scale tensor {:?} of shape {:?} does not tile weight {:?} of shape {:?}{}",
                            st.name,
                            st.shape,
                            t.name,
                            t.shape,
                            cat.scale_block.map(|b| format!(" in blocks of {b:?}")).unwrap_or_default()
                        ),
                    )
                })?;
            apply_scale(&mut w, layer.rows, layer.cols, &scale, sr, sc, blocks);
        }
        Payload::F32(w)
    };
    release_pages(map, begin, end);
    debug_assert!(n == 0 || matches!(payload, Payload::Raw { .. }) || matches!(&payload, Payload::F32(v) if v.len() == n));
    Ok(Some(Item { layer: l, rows: layer.rows, cols: layer.cols, payload, charge }))
}
