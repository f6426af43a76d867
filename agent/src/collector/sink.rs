//! Rotated JSON-lines files: one line per record, a new file when the current one would pass
//! `max_file_size` or is older than `max_file_age`, and at most `max_files` files of a kind (the
//! oldest are deleted), so the disk used stays under `max_files × max_file_size` (plus one line).
use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use time::OffsetDateTime;

/// Rotation limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_file_size: u64,
    pub max_file_age: Duration,
    pub max_files: usize,
}

/// Files `<dir>/<prefix>-<UTC time>-<n>.jsonl`, whose names sort in creation order.
#[derive(Debug)]
pub struct RotatingWriter {
    dir: PathBuf,
    prefix: String,
    rotation: Rotation,
    current: Option<Current>,
    counter: u64,
}

#[derive(Debug)]
struct Current {
    file: BufWriter<File>,
    size: u64,
    opened: Instant,
}

impl RotatingWriter {
    /// Creates `dir` if missing. No file is opened before the first line.
    pub fn new(dir: &Path, prefix: &str, rotation: Rotation) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            rotation: Rotation {
                max_files: rotation.max_files.max(1),
                ..rotation
            },
            current: None,
            counter: 0,
        })
    }

    /// Appends one line per item of `lines` (each without its newline) and flushes, so a
    /// killed collector loses nothing it acknowledged.
    pub fn write_lines<'a>(&mut self, lines: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        for line in lines {
            let len = line.len() as u64 + 1;
            let rotate = match &self.current {
                None => true,
                Some(current) => {
                    (current.size > 0 && current.size + len > self.rotation.max_file_size)
                        || current.opened.elapsed() >= self.rotation.max_file_age
                }
            };
            if rotate {
                self.rotate()?;
            }
            if let Some(current) = &mut self.current {
                current.file.write_all(line.as_bytes())?;
                current.file.write_all(b"\n")?;
                current.size += len;
            }
        }
        if let Some(current) = &mut self.current {
            current.file.flush()?;
        }
        Ok(())
    }

    /// The files of this writer's kind, oldest first.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        list(&self.dir, &self.prefix)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut current) = self.current.take() {
            current.file.flush()?;
        }
        let now = OffsetDateTime::now_utc();
        self.counter += 1;
        let name = format!(
            "{}-{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z-{:06}.jsonl",
            self.prefix,
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.nanosecond(),
            self.counter,
        );
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))?;
        self.current = Some(Current {
            file: BufWriter::new(file),
            size: 0,
            opened: Instant::now(),
        });
        let files = self.files()?;
        let excess = files.len().saturating_sub(self.rotation.max_files);
        for old in &files[..excess] {
            match std::fs::remove_file(old) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

fn list(dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
    let start = format!("{prefix}-");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&start) && name.ends_with(".jsonl")
        })
        .map(|entry| entry.path())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rotation_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_file_size: 100,
            max_file_age: Duration::from_secs(3600),
            max_files: 3,
        };
        let mut writer = RotatingWriter::new(dir.path(), "flows", rotation).unwrap();
        let line = "x".repeat(29); // 30 bytes with the newline: 3 lines per file
        for _ in 0..40 {
            writer.write_lines([line.as_str()]).unwrap();
        }
        let files = writer.files().unwrap();
        assert_eq!(files.len(), 3);
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .collect();
        // 40 lines = 13 full files + 1 line; the last three: full, full, 1 line.
        assert_eq!(sizes, [90, 90, 30]);
    }

    #[test]
    fn age_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_file_size: 1 << 20,
            max_file_age: Duration::from_millis(50),
            max_files: 10,
        };
        let mut writer = RotatingWriter::new(dir.path(), "flows", rotation).unwrap();
        writer.write_lines(["a"]).unwrap();
        writer.write_lines(["b"]).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        writer.write_lines(["c"]).unwrap();
        assert_eq!(writer.files().unwrap().len(), 2);
    }
}
