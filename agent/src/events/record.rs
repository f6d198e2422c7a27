//! Recorded captures: raw ring-buffer records, each prefixed with its length (u32, little
//! endian). `tracewire capture --record FILE` writes them; replaying them exercises everything
//! after the ring buffer without a kernel (benchmarks, bug reports).
use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read as _, Write as _},
    path::Path,
};

/// Appends records to a file.
pub struct Recorder {
    out: BufWriter<File>,
}

impl Recorder {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Recorder { out: BufWriter::new(File::create(path)?) })
    }

    /// Writes one record.
    pub fn write(&mut self, record: &[u8]) -> io::Result<()> {
        let len = u32::try_from(record.len()).map_err(|_| io::Error::other("record larger than 4 GiB"))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(record)
    }

    /// Flushes buffered records.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads every record of a recording. A truncated last record is an error.
pub fn read_all(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    let mut len = [0u8; 4];
    loop {
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record of {n} bytes: not a recording"),
            ));
        }
        let mut rec = vec![0u8; n];
        r.read_exact(&mut rec)?;
        out.push(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("tw-rec-{}", std::process::id()));
        let mut rec = Recorder::create(&dir)?;
        rec.write(b"abc")?;
        rec.write(b"")?;
        rec.write(&[7u8; 300])?;
        rec.flush()?;
        drop(rec);
        let all = read_all(&dir)?;
        assert_eq!(all, vec![b"abc".to_vec(), vec![], vec![7u8; 300]]);
        let bytes = std::fs::read(&dir)?;
        std::fs::write(&dir, &bytes[..bytes.len() - 1])?;
        assert!(read_all(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
        Ok(())
    }
}
