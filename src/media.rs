//! Downloaded media on disk: `UPLOAD_DIR/<yyyy>/<mm>/<dd>/<name>`.
//!
//! Owns: the file naming (nothing from the wire becomes a path: the name is built
//! from the record id and an extension chosen from a fixed list) and the atomic
//! write (temporary file, then rename). Deliberately not here: the download.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The largest file kept (WeCom's own limit for files is 20 MB).
pub(crate) const MAX_MEDIA_BYTES: usize = 25 * 1024 * 1024;

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

/// Writes `bytes` under `upload_dir/yyyy/mm/dd/` and returns the path.
pub(crate) fn save(
    upload_dir: &Path,
    record_id: &str,
    msgtype: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    bytes: &[u8],
    at: time::OffsetDateTime,
) -> Result<PathBuf, MediaError> {
    let dir = upload_dir
        .join(format!("{:04}", at.year()))
        .join(format!("{:02}", u8::from(at.month())))
        .join(format!("{:02}", at.day()));
    let name = format!("{}.{}", safe_stem(record_id), extension(content_type, filename, msgtype));
    let error = |reason: String| MediaError { dir: upload_dir.to_owned(), name: name.clone(), reason };
    std::fs::create_dir_all(&dir).map_err(|e| error(hint(&e)))?;
    let path = dir.join(&name);
    let temporary = dir.join(format!(".{name}.part"));
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temporary, &path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error(hint(&e)));
    }
    Ok(path)
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

    #[test]
    fn names_come_from_the_record_not_the_wire() {
        let dir = tempfile::tempdir().expect("dir");
        let at = time::macros::datetime!(2026-11-21 08:00 UTC);
        let path =
            save(dir.path(), "kf:msg:../../etc/passwd", "file", None, Some("../../evil.sh"), b"x", at).expect("saves");
        assert_eq!(path, dir.path().join("2026/11/21/kf_msg_______etc_passwd.bin"));
        let path = save(dir.path(), "app:msg:1", "image", Some("image/png"), None, b"png", at).expect("saves");
        assert!(path.ends_with("2026/11/21/app_msg_1.png"));
        assert_eq!(std::fs::read(path).expect("read"), b"png");
        let path =
            save(dir.path(), "app:msg:2", "file", Some("application/octet-stream"), Some("报价单.xlsx"), b"x", at)
                .expect("saves");
        assert!(path.ends_with("app_msg_2.xlsx"));
    }

    #[test]
    fn an_unwritable_directory_says_what_to_do() {
        let dir = tempfile::tempdir().expect("dir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").expect("write");
        let err =
            save(&blocker, "app:msg:1", "image", None, None, b"x", time::OffsetDateTime::now_utc()).expect_err("fails");
        assert!(err.to_string().starts_with("UPLOAD_DIR"), "{err}");
    }
}
