//! Downloaded media on disk: `UPLOAD_DIR/<yyyy>/<mm>/<dd>/<name>`.
//!
//! Owns: the file naming (nothing from the wire becomes a path: the name is built
//! from the record id and an extension chosen from a fixed list); the streamed,
//! atomic write ([`Part`]: chunks into a temporary file in the day directory, then
//! fsync and rename); the modes (files 0640, directories 0750, whatever the
//! process umask: readable by the upload directory's group, e.g. a web server,
//! and by no one else); the free-space floor below which nothing is downloaded
//! ([`Floor`], also the store volume's floor for the send API), so that media
//! and sends never fill a volume the journal may share; and
//! retention ([`prune`]: old files and the empty day directories they leave).
//! Deliberately not here: the download (`wecom`) and when to prune
//! (`housekeeping`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The largest file kept (WeCom's own limit for files is 20 MB).
pub(crate) const MAX_MEDIA_BYTES: usize = 25 * 1024 * 1024;

/// Mode of a saved file: owner read-write, group read.
const FILE_MODE: u32 = 0o640;
/// Mode of a directory this module creates: owner all, group read and enter.
const DIR_MODE: u32 = 0o750;

/// Why a file could not be written; names `UPLOAD_DIR` and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("UPLOAD_DIR {dir}: cannot write {name}: {reason}")]
pub(crate) struct MediaError {
    pub dir: PathBuf,
    pub name: String,
    pub reason: String,
}

/// The extension for a file: from its content type, else from the WeCom msgtype.
fn extension(content_type: Option<&str>, filename: Option<&str>, msgtype: &str) -> &'static str {
    let by_type =
        match content_type.map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()).as_deref() {
            Some("image/jpeg" | "image/jpg") => Some("jpg"),
            Some("image/png") => Some("png"),
            Some("image/gif") => Some("gif"),
            Some("image/webp") => Some("webp"),
            Some("audio/amr") => Some("amr"),
            Some("audio/silk") => Some("silk"),
            Some("audio/mpeg") => Some("mp3"),
            Some("video/mp4") => Some("mp4"),
            Some("application/pdf") => Some("pdf"),
            Some("application/zip") => Some("zip"),
            _ => None,
        };
    // A file's own extension is kept only when it is one of a known few.
    let by_name = filename.and_then(|f| f.rsplit_once('.')).map(|(_, ext)| ext.to_ascii_lowercase()).and_then(|ext| {
        [
            "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "txt", "csv", "zip", "rar", "7z", "jpg", "jpeg", "png",
            "gif", "mp3", "mp4", "amr",
        ]
        .into_iter()
        .find(|known| *known == ext)
    });
    by_name.or(by_type).unwrap_or(match msgtype {
        "image" => "jpg",
        "voice" => "amr",
        "video" => "mp4",
        _ => "bin",
    })
}

/// A file-system-safe name derived from the record id.
fn safe_stem(record_id: &str) -> String {
    let stem: String =
        record_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(120).collect();
    if stem.is_empty() {
        "media".to_owned()
    } else {
        stem
    }
}

/// A file being written: chunks go into a hidden temporary file in its day
/// directory; [`Part::finish`] makes it durable and renames it into place.
/// Dropped unfinished (an error, a download over the limit), the temporary file
/// is removed.
#[derive(Debug)]
pub(crate) struct Part {
    file: std::fs::File,
    temporary: PathBuf,
    path: PathBuf,
    upload_dir: PathBuf,
    name: String,
    finished: bool,
}

impl Part {
    /// Starts the file for record `record_id` under `upload_dir/yyyy/mm/dd/` of `at`.
    pub(crate) fn create(
        upload_dir: &Path,
        record_id: &str,
        msgtype: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        at: time::OffsetDateTime,
    ) -> Result<Self, MediaError> {
        let name = format!("{}.{}", safe_stem(record_id), extension(content_type, filename, msgtype));
        let error = |e: std::io::Error| MediaError { dir: upload_dir.to_owned(), name: name.clone(), reason: hint(&e) };
        let dir = day_dir(upload_dir, at).map_err(error)?;
        let path = dir.join(&name);
        let temporary = dir.join(format!(".{name}.part"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&temporary)
            .and_then(|file| {
                // The umask may have taken the group's read away; set it exactly.
                file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
                Ok(file)
            })
            .map_err(error)?;
        Ok(Self { file, temporary, path, upload_dir: upload_dir.to_owned(), name, finished: false })
    }

    /// Appends `chunk`.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        self.file.write_all(chunk).map_err(|e| self.error(&e))
    }

    /// Makes the file durable and gives it its name; returns its path.
    pub(crate) fn finish(mut self) -> Result<PathBuf, MediaError> {
        self.file.sync_all().and_then(|()| std::fs::rename(&self.temporary, &self.path)).map_err(|e| self.error(&e))?;
        self.finished = true;
        Ok(self.path.clone())
    }

    fn error(&self, error: &std::io::Error) -> MediaError {
        MediaError { dir: self.upload_dir.clone(), name: self.name.clone(), reason: hint(error) }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// `upload_dir/yyyy/mm/dd` of `at`, created (0750) where missing.
fn day_dir(upload_dir: &Path, at: time::OffsetDateTime) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(upload_dir)?;
    let mut dir = upload_dir.to_owned();
    for part in [format!("{:04}", at.year()), format!("{:02}", u8::from(at.month())), format!("{:02}", at.day())] {
        dir.push(part);
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            // Exactly 0750, whatever the umask.
            Ok(()) => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Free space on a volume, as `statvfs` reports it to an unprivileged process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FreeSpace {
    /// Available to us, in per cent of the volume's size, one decimal.
    pub percent: f64,
    pub bytes: u64,
}

/// The free space of the volume `dir` is on (or would be created on: the
/// nearest existing ancestor is measured); `None` when the file system reports
/// no size.
pub(crate) fn free_space(dir: &Path) -> std::io::Result<Option<FreeSpace>> {
    let stat = dir
        .ancestors()
        .find_map(|path| rustix::fs::statvfs(path).ok())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
    if stat.f_blocks == 0 {
        return Ok(None);
    }
    let percent = (stat.f_bavail as f64 / stat.f_blocks as f64 * 1000.0).round() / 10.0;
    Ok(Some(FreeSpace { percent, bytes: stat.f_bavail.saturating_mul(stat.f_frsize) }))
}

/// A free-space floor on a volume: below it, what the volume is kept for takes
/// precedence. `UPLOAD_DIR`'s (`MEDIA_MIN_FREE_PERCENT`): media are not
/// downloaded and the record goes on without them. The store's `DATA_DIR`
/// (`DATA_MIN_FREE_PERCENT`): the send API answers 503, callbacks keep the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Floor {
    /// 0 = no floor.
    pub percent: u8,
    /// The variable naming the volume's directory (`UPLOAD_DIR`, `DATA_DIR`).
    pub volume: &'static str,
    /// The variable that set the floor, named in the reason.
    pub variable: &'static str,
}

impl Floor {
    /// `MEDIA_MIN_FREE_PERCENT` of `UPLOAD_DIR`'s volume.
    pub(crate) fn media(percent: u8) -> Self {
        Self { percent, volume: "UPLOAD_DIR", variable: "MEDIA_MIN_FREE_PERCENT" }
    }

    /// `DATA_MIN_FREE_PERCENT` of `DATA_DIR`'s volume (SPEC §15).
    pub(crate) fn data(percent: u8) -> Self {
        Self { percent, volume: "DATA_DIR", variable: "DATA_MIN_FREE_PERCENT" }
    }

    /// Why a write must not happen with `free` left, if it must not.
    pub(crate) fn refuses(self, free: FreeSpace) -> Option<String> {
        (self.percent > 0 && free.percent < f64::from(self.percent)).then(|| {
            format!(
                "disk below floor: the {} volume has {:.1} % free ({} MiB), {} is {} %",
                self.volume,
                free.percent,
                free.bytes / (1024 * 1024),
                self.variable,
                self.percent
            )
        })
    }

    /// [`Floor::refuses`] on the volume of `dir` now. A volume that cannot be
    /// measured is not refused: the write then fails and says why.
    pub(crate) fn check(self, dir: &Path) -> Option<String> {
        match free_space(dir) {
            Ok(Some(free)) => self.refuses(free),
            Ok(None) | Err(_) => None,
        }
    }
}

/// What one [`prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrunedMedia {
    pub files: u64,
    pub directories: u64,
}

/// Removes files under `upload_dir/yyyy/mm/dd/` last modified before `cutoff`,
/// then the year, month and day directories left empty, except today's (`today`,
/// where new files are being written). Only what this module creates is looked
/// at: directories named by digits, regular files; symbolic links are never
/// followed or removed. Errors on single entries are skipped (another replica
/// may be pruning the same directory); the count says what this call removed.
pub(crate) fn prune(upload_dir: &Path, cutoff: SystemTime, today: time::Date) -> PrunedMedia {
    let mut pruned = PrunedMedia::default();
    let today = [today.year() as u32, u32::from(u8::from(today.month())), u32::from(today.day())];
    prune_level(upload_dir, &mut Vec::new(), cutoff, today, &mut pruned);
    pruned
}

/// Directory names per level: `yyyy`, then `mm`, then `dd`.
const LEVEL_DIGITS: [usize; 3] = [4, 2, 2];

fn prune_level(dir: &Path, date: &mut Vec<u32>, cutoff: SystemTime, today: [u32; 3], pruned: &mut PrunedMedia) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        if let Some(digits) = LEVEL_DIGITS.get(date.len()) {
            let number = entry.file_name().to_str().filter(|n| n.len() == *digits).and_then(|n| n.parse::<u32>().ok());
            let (Some(number), true) = (number, meta.is_dir()) else { continue };
            date.push(number);
            prune_level(&entry.path(), date, cutoff, today, pruned);
            // An empty directory of an earlier day (month, year) goes; today's stays.
            if date.as_slice() < &today[..date.len()] && std::fs::remove_dir(entry.path()).is_ok() {
                pruned.directories += 1;
            }
            date.pop();
        } else if meta.is_file()
            && meta.modified().is_ok_and(|modified| modified < cutoff)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            pruned.files += 1;
        }
    }
}

fn hint(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            format!("{error} (the service runs as uid 1001: chown -R 1001:1001 the upload directory)")
        }
        std::io::ErrorKind::StorageFull => format!("{error} (the upload volume is full)"),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(dir: &Path, id: &str, msgtype: &str, ct: Option<&str>, name: Option<&str>, bytes: &[u8]) -> PathBuf {
        let at = time::macros::datetime!(2026-11-21 08:00 UTC);
        let mut part = Part::create(dir, id, msgtype, ct, name, at).expect("creates");
        for chunk in bytes.chunks(3) {
            part.write(chunk).expect("writes");
        }
        part.finish().expect("saves")
    }

    #[test]
    fn names_come_from_the_record_not_the_wire() {
        let dir = tempfile::tempdir().expect("dir");
        let path = save(dir.path(), "kf:msg:../../etc/passwd", "file", None, Some("../../evil.sh"), b"x");
        assert_eq!(path, dir.path().join("2026/11/21/kf_msg_______etc_passwd.bin"));
        let path = save(dir.path(), "app:msg:1", "image", Some("image/png"), None, b"png bytes");
        assert!(path.ends_with("2026/11/21/app_msg_1.png"));
        assert_eq!(std::fs::read(path).expect("read"), b"png bytes");
        let path = save(dir.path(), "app:msg:2", "file", Some("application/octet-stream"), Some("报价单.xlsx"), b"x");
        assert!(path.ends_with("app_msg_2.xlsx"));
    }

    #[test]
    fn files_are_0640_and_day_directories_0750_and_nothing_is_left_of_an_unfinished_part() {
        let dir = tempfile::tempdir().expect("dir");
        let path = save(dir.path(), "app:msg:1", "image", None, None, b"x");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o640);
        for level in ["2026", "2026/11", "2026/11/21"] {
            assert_eq!(mode(&dir.path().join(level)), 0o750, "{level}");
        }
        let at = time::macros::datetime!(2026-11-21 08:00 UTC);
        let mut part = Part::create(dir.path(), "app:msg:2", "image", None, None, at).expect("creates");
        part.write(b"half").expect("writes");
        drop(part);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("2026/11/21")).expect("dir").flatten().collect();
        assert_eq!(left.len(), 1, "only the finished file: {left:?}");
    }

    #[test]
    fn an_unwritable_directory_says_what_to_do() {
        let dir = tempfile::tempdir().expect("dir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").expect("write");
        let err = Part::create(&blocker, "app:msg:1", "image", None, None, time::OffsetDateTime::now_utc())
            .expect_err("fails");
        assert!(err.to_string().starts_with("UPLOAD_DIR"), "{err}");
    }

    #[test]
    fn the_floor_refuses_below_its_percentage_and_zero_is_no_floor() {
        let free = FreeSpace { percent: 4.9, bytes: 10 * 1024 * 1024 };
        let reason = Floor::media(5).refuses(free).expect("refused");
        assert!(reason.starts_with("disk below floor: the UPLOAD_DIR volume"), "{reason}");
        assert!(reason.contains("4.9 %") && reason.contains("MEDIA_MIN_FREE_PERCENT is 5 %"), "{reason}");
        assert_eq!(Floor::media(4).refuses(free), None);
        assert_eq!(Floor::media(0).refuses(FreeSpace { percent: 0.0, bytes: 0 }), None);
        let data = Floor::data(5).refuses(free).expect("the same decision for the store's volume");
        assert!(data.contains("the DATA_DIR volume") && data.contains("DATA_MIN_FREE_PERCENT is 5 %"), "{data}");
    }

    #[test]
    fn pruning_removes_old_files_and_empty_earlier_days_but_not_today_or_strangers() {
        let dir = tempfile::tempdir().expect("dir");
        let old = save(dir.path(), "app:msg:1", "image", None, None, b"old");
        let today = time::macros::date!(2026 - 11 - 22);
        let todays = dir.path().join("2026/11/22");
        std::fs::create_dir_all(&todays).expect("today");
        let stranger = dir.path().join("notes.txt");
        std::fs::write(&stranger, "operator's").expect("write");
        // Nothing is older than a cutoff in the past.
        let long_ago = SystemTime::UNIX_EPOCH;
        assert_eq!(prune(dir.path(), long_ago, today), PrunedMedia::default());
        assert!(old.exists());
        let pruned = prune(dir.path(), SystemTime::now() + std::time::Duration::from_secs(1), today);
        assert_eq!(pruned, PrunedMedia { files: 1, directories: 1 }, "the file and 2026/11/21");
        assert!(!old.exists() && !dir.path().join("2026/11/21").exists());
        assert!(todays.exists() && stranger.exists());
    }
}
