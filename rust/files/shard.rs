//! One safetensors file of a model, as the catalog opened it (`Shard`: its path, size,
//! modification time and header hash), and reading its bytes later (`ShardReader`).
//!
//! Tensor bytes are read with positioned reads (`pread`) into buffers the caller owns,
//! never through a memory map: a file that another process truncates while it is read
//! then gives a short read, not a SIGBUS that kills the interpreter. Every read checks,
//! before and after, that the file still has the size and modification time it had
//! when the catalog opened it, so a file truncated (or truncated and grown back, which
//! reads as zeros) or rewritten during a scan is an error naming the file, never a
//! silently wrong number. Pages read stay in the page cache, as they did with the map:
//! the process never maps them, so they do not count towards its resident size.

use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, SpectrumError};
use crate::files::header::{self, Header};

/// What identifies the contents of a file without reading them: its size, its
/// modification time and (on Unix) its device and inode, so that a file replaced by
/// another one under the same name is noticed too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub modified: Option<SystemTime>,
    pub file_id: Option<(u64, u64)>,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Stamp {
        #[cfg(unix)]
        let file_id = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let file_id = None;
        Stamp { size: meta.len(), modified: meta.modified().ok(), file_id }
    }
}

/// One safetensors file of the model.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    /// The file's size when the catalog opened it (the same as `stamp.size`).
    pub size: u64,
    /// FNV-1a 64 of the header bytes: identifies the file's layout cheaply.
    pub header_hash: u64,
    /// The file as the catalog opened it; every later read checks it still is.
    pub stamp: Stamp,
}

impl Shard {
    /// Opens one file: reads and checks its header (`header::read`) and notes its size
    /// and modification time, which must be the same after the header was read as before.
    pub fn open(path: &Path) -> Result<(Shard, Header)> {
        let (file, before, header) = header::read_open(path)?;
        let stamp = Stamp::of(&before);
        let after = file.metadata().map_err(|e| SpectrumError::file(path, format!("cannot stat: {e}")))?;
        if Stamp::of(&after) != stamp {
            return Err(changed(path, &stamp, &Stamp::of(&after)));
        }
        Ok((Shard { path: path.to_path_buf(), size: stamp.size, header_hash: header.hash, stamp }, header))
    }
}

fn seconds(t: Option<SystemTime>) -> String {
    match t.map(|t| t.duration_since(UNIX_EPOCH)) {
        Some(Ok(d)) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Some(Err(_)) => "before 1970".into(),
        None => "unknown".into(),
    }
}

/// The error for a file that is no longer the one the catalog opened.
fn changed(path: &Path, then: &Stamp, now: &Stamp) -> SpectrumError {
    let replaced = if then.file_id != now.file_id { ", replaced by another file" } else { "" };
    SpectrumError::file(
        path,
        format!(
            "changed while being read (size {} -> {} bytes, mtime {} -> {}{replaced}); its tensors cannot be trusted",
            then.size,
            now.size,
            seconds(then.modified),
            seconds(now.modified)
        ),
    )
}

/// An open shard file whose byte ranges are read into owned buffers, each read checked
/// against the shard's stamp.
pub struct ShardReader<'a> {
    shard: &'a Shard,
    file: File,
}

impl<'a> ShardReader<'a> {
    /// Opens the file for reading; fails when it changed since the catalog opened it.
    pub fn open(shard: &'a Shard) -> Result<ShardReader<'a>> {
        let file =
            File::open(&shard.path).map_err(|e| SpectrumError::file(&shard.path, format!("cannot open: {e}")))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: a plain system call on a file descriptor this function owns; the
            // advice only tunes read-ahead (a failure is harmless and ignored).
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        }
        let reader = ShardReader { shard, file };
        reader.check()?;
        Ok(reader)
    }

    pub fn path(&self) -> &Path {
        &self.shard.path
    }

    /// Fails when the open file is no longer the one the catalog opened (another size,
    /// another modification time, another file).
    pub fn check(&self) -> Result<()> {
        let meta =
            self.file.metadata().map_err(|e| SpectrumError::file(&self.shard.path, format!("cannot stat: {e}")))?;
        let now = Stamp::of(&meta);
        // The file id is that of the file opened by name, which may differ from the one
        // the catalog opened: compare it too.
        if now != self.shard.stamp {
            return Err(changed(&self.shard.path, &self.shard.stamp, &now));
        }
        Ok(())
    }

    /// Reads the bytes at `offset..offset + buf.len()` into `buf`, checking the file
    /// before and after.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check()?;
        let read = read_at(&self.file, buf, offset);
        // A short read or a failure after the file changed is reported as the change.
        self.check()?;
        read.map_err(|e| {
            SpectrumError::file(
                &self.shard.path,
                format!("cannot read bytes {offset}..{}: {e}", offset.saturating_add(buf.len() as u64)),
            )
        })
    }

    /// Reads `begin..end` in pieces of at most `chunk.len()` bytes (a multiple of
    /// `align`, so no element is split), handing each piece to `each` in order; checks
    /// the file before the first piece and after the last.
    pub fn read_chunks(
        &self,
        begin: u64,
        end: u64,
        chunk: &mut [u8],
        align: usize,
        mut each: impl FnMut(&[u8]),
    ) -> Result<()> {
        let step = (chunk.len() / align.max(1) * align.max(1)).max(align.max(1));
        if chunk.len() < step {
            return Err(SpectrumError::internal("internal error: read buffer smaller than one element"));
        }
        self.check()?;
        let mut at = begin;
        while at < end {
            let n = usize::try_from(end - at).map_or(step, |left| left.min(step));
            let piece = &mut chunk[..n];
            if let Err(e) = read_at(&self.file, piece, at) {
                self.check()?;
                return Err(SpectrumError::file(
                    &self.shard.path,
                    format!("cannot read bytes {at}..{}: {e}", at + n as u64),
                ));
            }
            each(piece);
            at += n as u64;
        }
        self.check()
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::testing::{f32_bytes, safetensors, TempDir};

    fn model(dir: &TempDir) -> (PathBuf, Vec<u8>) {
        let bytes = safetensors(&[("w.weight", "F32", &[2, 4], f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]))]);
        (dir.write("model.safetensors", &bytes), bytes)
    }

    #[test]
    fn reads_ranges_and_pieces() {
        let dir = TempDir::new();
        let (path, bytes) = model(&dir);
        let (shard, header) = Shard::open(&path).unwrap();
        assert_eq!((shard.size, shard.stamp.size), (bytes.len() as u64, bytes.len() as u64));
        assert_eq!(shard.header_hash, header.hash);
        let r = ShardReader::open(&shard).unwrap();
        let start = header.data_start();
        let mut buf = [0u8; 8];
        r.read_exact_at(&mut buf, start as u64 + 4).unwrap();
        assert_eq!(buf[..], f32_bytes(&[2.0, 3.0])[..]);
        // Pieces of 12 bytes aligned to 8: 8, 8, 8, 8.
        let mut seen = Vec::new();
        let mut chunk = [0u8; 12];
        r.read_chunks(start as u64, bytes.len() as u64, &mut chunk, 8, |p| seen.push(p.to_vec())).unwrap();
        assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), [8, 8, 8, 8]);
        assert_eq!(seen.concat(), bytes[start..]);
        // Past the end: a read error naming the range, the file being unchanged.
        let e = r.read_exact_at(&mut buf, bytes.len() as u64 - 4).unwrap_err();
        assert!(matches!(e, SpectrumError::File { .. }));
        assert!(e.to_string().starts_with(&format!("{}: cannot read bytes", path.display())), "{e}");
    }

    #[test]
    fn a_file_that_changes_is_an_error_naming_it() {
        let dir = TempDir::new();
        let (path, bytes) = model(&dir);
        let (shard, header) = Shard::open(&path).unwrap();
        let r = ShardReader::open(&shard).unwrap();
        let start = header.data_start() as u64;
        let mut buf = [0u8; 4];
        // Truncated under an open reader.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(start + 4).unwrap();
        let e = r.read_exact_at(&mut buf, start + 8).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SpectrumError::File { .. }));
        let prefix = format!(
            "{}: changed while being read (size {} -> {} bytes, mtime ",
            path.display(),
            bytes.len(),
            start + 4
        );
        assert!(msg.starts_with(&prefix), "{msg}");
        // Grown back to its size: still refused (the modification time differs).
        f.set_len(bytes.len() as u64).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        f.set_modified(mtime + std::time::Duration::from_secs(1)).unwrap();
        let e = r.read_chunks(start, start + 8, &mut [0u8; 8], 4, |_| {}).unwrap_err().to_string();
        assert!(e.contains(&format!("changed while being read (size {0} -> {0} bytes", bytes.len())), "{e}");
        assert!(ShardReader::open(&shard).is_err());
        // Replaced by another file of the same size and time.
        std::fs::remove_file(&path).unwrap();
        let again = dir.write("model.safetensors", &bytes);
        let g = std::fs::OpenOptions::new().write(true).open(&again).unwrap();
        g.set_modified(shard.stamp.modified.unwrap()).unwrap();
        let e = ShardReader::open(&shard).err().unwrap().to_string();
        assert!(e.contains("replaced by another file"), "{e}");
    }
}
