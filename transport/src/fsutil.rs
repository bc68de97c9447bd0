//! Writing and reading the small PEM and token files in a node's data directory. Writes
//! go to a temporary file that is synced and renamed into place, so a crash never leaves
//! a half-written key; secret files are created with mode 0600 from the start.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use crate::TransportError;

fn err(action: &'static str, path: &Path, source: std::io::Error) -> TransportError {
    TransportError::File {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `dir/name` atomically; `secret` files are readable by the owner only.
pub(crate) fn write(
    dir: &Path,
    name: &str,
    contents: &[u8],
    secret: bool,
) -> Result<PathBuf, TransportError> {
    fs::create_dir_all(dir).map_err(|e| err("creating directory", dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        if secret {
            // The file may have existed with wider permissions; `mode` applies only on create.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err("writing", &tmp, e));
    }
    fs::rename(&tmp, &path).map_err(|e| err("renaming into place", &path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Reads `dir/name` as UTF-8; for `secret` files, warns when group or others can read it.
pub(crate) fn read(dir: &Path, name: &str, secret: bool) -> Result<String, TransportError> {
    let path = dir.join(name);
    let text = fs::read_to_string(&path).map_err(|e| err("reading", &path, e))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "secret file is readable by group or others; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(text)
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
