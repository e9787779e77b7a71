//! Repository URLs: `file:///abs/path` (or the bare `/abs/path`),
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a repository lives. Carries no secrets, so it can be printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// A local (or mounted) directory.
    File(PathBuf),
    /// An S3 or S3-compatible bucket.
    S3 { bucket: String, prefix: String },
    /// A Google Cloud Storage bucket.
    Gcs { bucket: String, prefix: String },
    /// An Azure Blob Storage container.
    Azure { container: String, prefix: String },
}

/// Why a string is not a repository URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository URL '{url}': {reason}")]
pub struct RepoUrlError {
    /// The offending URL.
    pub url: String,
    /// What is wrong.
    pub reason: String,
}

/// The schemes pgwal knows, as the error messages list them.
pub const KNOWN_SCHEMES: &str = "file://, s3://, gs:// or az://";

impl FromStr for RepoUrl {
    type Err = RepoUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| RepoUrlError { url: s.to_string(), reason: reason.to_string() };
        let local = |path: &str| {
            if path.split('/').any(|c| c == "..") {
                return Err(err("the path must not contain '..'"));
            }
            Ok(RepoUrl::File(PathBuf::from(path)))
        };
        if s.starts_with('/') {
            // A bare absolute path is the obvious spelling of a local repository.
            return local(s);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            if s.is_empty() {
                return Err(err(&format!("the URL is empty; use {KNOWN_SCHEMES}")));
            }
            if let Some((scheme, _)) = s.split_once(':').filter(|(p, _)| !p.contains('/')) {
                return Err(err(&format!("'{scheme}:' is not a repository URL; use {KNOWN_SCHEMES}")));
            }
            return Err(err(
                "a relative path is not a repository; give an absolute path (/var/lib/pgwal or file:///var/lib/pgwal)",
            ));
        };
        if !matches!(scheme, "file" | "s3" | "gs" | "gcs" | "az" | "azure") {
            return Err(err(&format!("unknown scheme '{scheme}'; use {KNOWN_SCHEMES}")));
        }
        if scheme == "file" {
            if !rest.starts_with('/') {
                return Err(err("a file:// repository needs an absolute path (file:///var/lib/pgwal)"));
            }
            return local(rest);
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err("the bucket or container name is missing"));
        }
        if rest.contains('?') || rest.contains('#') || bucket.contains('@') {
            return Err(err("put credentials and options in the config file or environment, not in the URL"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(err("the prefix must not contain '.' or '..' components"));
        }
        let bucket = bucket.to_string();
        match scheme {
            "s3" => Ok(RepoUrl::S3 { bucket, prefix }),
            "gs" | "gcs" => Ok(RepoUrl::Gcs { bucket, prefix }),
            "az" | "azure" => Ok(RepoUrl::Azure { container: bucket, prefix }),
            _ => Err(err(&format!("unknown scheme '{scheme}'; use {KNOWN_SCHEMES}"))),
        }
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            RepoUrl::File(p) => return write!(f, "file://{}", p.display()),
            RepoUrl::S3 { bucket, prefix } => ("s3", bucket, prefix),
            RepoUrl::Gcs { bucket, prefix } => ("gs", bucket, prefix),
            RepoUrl::Azure { container, prefix } => ("az", container, prefix),
        };
        if prefix.is_empty() {
            write!(f, "{scheme}://{bucket}")
        } else {
            write!(f, "{scheme}://{bucket}/{prefix}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!("file:///var/lib/pgwal".parse(), Ok(RepoUrl::File("/var/lib/pgwal".into())));
        assert_eq!("/var/lib/pgwal".parse(), Ok(RepoUrl::File("/var/lib/pgwal".into())));
        assert_eq!("s3://b/main/db1/".parse(), Ok(RepoUrl::S3 { bucket: "b".into(), prefix: "main/db1".into() }));
        assert_eq!("s3://b".parse(), Ok(RepoUrl::S3 { bucket: "b".into(), prefix: String::new() }));
        assert_eq!("gs://b/p".parse(), Ok(RepoUrl::Gcs { bucket: "b".into(), prefix: "p".into() }));
        assert_eq!("az://c/p".parse(), Ok(RepoUrl::Azure { container: "c".into(), prefix: "p".into() }));
    }

    #[test]
    fn round_trips_through_display() {
        for s in ["file:///var/lib/pgwal", "s3://b/main/db1", "s3://b", "gs://b/p", "az://c/p"] {
            assert_eq!(s.parse::<RepoUrl>().map(|u| u.to_string()).as_deref(), Ok(s));
        }
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "",
            "relative/path",
            "file://relative",
            "file:///a/../b",
            "s3://",
            "s3:///prefix",
            "ftp://host/x",
            "s3://b/p?secret=1",
            "s3://key:secret@b/p",
            "s3://b/../x",
            "/a/../b",
            "fille:///x",
        ] {
            assert!(bad.parse::<RepoUrl>().is_err(), "{bad:?} must be refused");
        }
    }

    /// Each refusal names its own cause: a typo in the scheme is not "the
    /// bucket name is missing", a relative path says so.
    #[test]
    fn refusals_name_the_cause() {
        let reason = |s: &str| s.parse::<RepoUrl>().expect_err("refused").to_string();
        let typo = reason("fille:///x");
        assert!(typo.contains("unknown scheme 'fille'") && typo.contains("s3://"), "{typo}");
        assert!(reason("ftp://host/x").contains("unknown scheme 'ftp'"));
        assert!(reason("relative/path").contains("relative path"));
        assert!(reason("./repo").contains("relative path"));
        assert!(reason("s3:bucket").contains("'s3:' is not a repository URL"));
        assert!(reason("s3:///prefix").contains("bucket or container name is missing"));
    }
}
