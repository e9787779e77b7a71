//! `[encryption] key_file` / `PGWAL_ENCRYPTION_KEY_FILE` /
//! `--encryption-key-file`: reading the repository key file. The key is
//! 32 random bytes, in the file as 64 hex digits or as base64 (e.g.
//! `head -c 32 /dev/urandom | base64`); the file must be a regular file
//! that only its owner can read (mode 0600 or stricter). No message names
//! the key itself, only the file.

use std::path::Path;

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::repo::keyring::RepositoryKey;

/// The `[encryption]` section.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// The repository key file.
    pub key_file: Option<std::path::PathBuf>,
}

fn refused(path: &Path, why: &str, hint: &str) -> Error {
    Error::Key { message: format!("encryption key file '{}' {why}", path.display()), hint: Some(hint.into()) }
}

const MAKE_ONE: &str = "make a key with: (umask 077; head -c 32 /dev/urandom | base64 > KEYFILE) (and keep a \
                        copy: without the key the repository cannot be read)";

/// Reads and checks the repository key file.
pub fn load_key(path: &Path) -> Result<RepositoryKey> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut file = std::fs::File::open(path).map_err(|e| {
        refused(path, &format!("cannot be read: {e}"), "check the path and that this user may read the file")
    })?;
    let meta = file.metadata().map_err(Error::io("cannot stat", path))?;
    if !meta.is_file() {
        return Err(refused(path, "is not a regular file", MAKE_ONE));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refused(
            path,
            &format!("is readable by other users (mode {mode:o}); it must be 0600 or stricter"),
            &format!("chmod 600 '{}' (owner {})", path.display(), meta.uid()),
        ));
    }
    // A key file is a line; anything much longer is not one (and is not read whole).
    let mut text = Zeroizing::new(Vec::with_capacity(128));
    file.by_ref().take(1024).read_to_end(&mut text).map_err(Error::io("cannot read", path))?;
    let bytes = parse_key(&text).ok_or_else(|| {
        refused(path, "does not hold a key: expected 32 bytes as 64 hex digits or as base64", MAKE_ONE)
    })?;
    Ok(RepositoryKey::new(*bytes, path.display().to_string()))
}

/// 32 bytes from 64 hex digits or base64, surrounding whitespace ignored.
fn parse_key(text: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let mut out = Zeroizing::new([0u8; 32]);
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(out);
    }
    let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text).ok()?);
    if decoded.len() != 32 {
        return None;
    }
    out.copy_from_slice(&decoded);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(f.path(), text).expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        f
    }

    #[test]
    fn hex_and_base64_keys_load() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        assert!(load_key(key_file(hex, 0o600).path()).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(load_key(key_file(&format!("{b64}\n"), 0o400).path()).is_ok());
    }

    #[test]
    fn bad_files_are_refused_in_one_line_without_the_key() {
        let secret = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        for (text, mode) in [(&secret[..], 0o644), (&secret[..], 0o640), ("short", 0o600), ("", 0o600)] {
            let f = key_file(text, mode);
            let e = load_key(f.path()).expect_err("refused");
            let line = e.one_line();
            assert!(matches!(e, Error::Key { .. }), "{line}");
            assert!(!line.contains('\n') && !line.contains(&secret), "{line}");
            assert!(line.contains(&f.path().display().to_string()), "{line}");
        }
        assert!(load_key(Path::new("/nonexistent/key")).is_err());
        let dir = tempfile::tempdir().expect("dir");
        assert!(load_key(dir.path()).is_err());
    }
}
