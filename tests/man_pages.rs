//! The man pages in `man/` for the commands are generated from the clap
//! definitions, so `--help` and `man pgwal-archive` cannot drift apart. This
//! test fails when they are stale; `PGWAL_UPDATE_MAN=1 cargo test --test
//! man_pages` rewrites them.

use std::path::Path;

use clap::CommandFactory;
use pgwal::cli::{Cli, FETCH_EXIT_NOTE};
use pgwal::error::exit;

/// Escapes text for roff: backslashes and dashes, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBPGWAL_CONFIG\fR, \fBPGWAL_REPO\fR, \fBPGDATA\fR, \fBPGWAL_CONNINFO\fR, \fBPGWAL_LOG_LEVEL\fR
Defaults for \-\-config, \-\-repo, \-\-pgdata, \-\-conninfo and \-\-log\-level. A flag beats the
environment, which beats the config file.
.TP
\fBPGWAL_ENCRYPTION_KEY_FILE\fR
Default for \-\-encryption\-key\-file: the repository key file of an encrypted
repository (mode 0600 or stricter; see \fBpgwal\-repository\fR(5), ENCRYPTION).
It overrides [encryption] key_file of the config file.
.TP
\fBPGWAL_PRIMARY_CONNINFO\fR
Default for \-\-primary\-conninfo: of standby (the primary the new standby
streams from) and of backup (the primary on which a backup taken from a standby
switches WAL).
.TP
\fBPGHOST\fR, \fBPGPORT\fR, \fBPGUSER\fR, \fBPGPASSWORD\fR, \fBPGDATABASE\fR, \fBPGCONNECT_TIMEOUT\fR, \fBPGPASSFILE\fR
How backup and check reach PostgreSQL, as for libpq: settings in \-\-conninfo
win over these, which win over ~/.pgpass and the defaults (the Unix socket in
/var/run/postgresql, port 5432, the OS user's name).
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR, \fBAWS_REGION\fR, \fBAWS_ENDPOINT_URL\fR, \fBAWS_ALLOW_HTTP\fR
S3 credentials and endpoint; they override the [s3] section of the config file.
.TP
\fBGOOGLE_SERVICE_ACCOUNT\fR, \fBAZURE_STORAGE_ACCOUNT_NAME\fR, \fBAZURE_STORAGE_ACCOUNT_KEY\fR
Google Cloud Storage and Azure credentials.
.SH FILES
.TP
\fI/etc/pgwal/pgwal.toml\fR
The config file when neither \-\-config nor PGWAL_CONFIG names one; optional.
An annotated example ships as config/pgwal.toml. Unknown keys are refused, and
so is a file holding secrets that every user can read.
.SH "SEE ALSO"
\fBpgwal\fR(1), \fBpgwal\-archive\fR(1), \fBpgwal\-fetch\fR(1), \fBpgwal\-backup\fR(1), \fBpgwal\-list\fR(1), \fBpgwal\-check\fR(1), \fBpgwal\-restore\fR(1), \fBpgwal\-standby\fR(1), \fBpgwal\-verify\fR(1), \fBpgwal\-drill\fR(1), \fBpgwal\-expire\fR(1), \fBpgwal\-rekey\fR(1), \fBpgwal\-daemon\fR(1), \fBpgwal\-repository\fR(5)
"#;

/// The sections clap_mangen renders, then pgwal's own: exit status (from the
/// same table as --help), environment, files, see also.
fn render(cmd: clap::Command) -> Vec<u8> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("pgwal {}", env!("CARGO_PKG_VERSION")))
        .manual("pgwal manual");
    let mut out = Vec::new();
    let io = "render to memory";
    man.render_title(&mut out).expect(io);
    man.render_name_section(&mut out).expect(io);
    man.render_synopsis_section(&mut out).expect(io);
    man.render_description_section(&mut out).expect(io);
    man.render_options_section(&mut out).expect(io);
    if cmd.get_subcommands().next().is_some() {
        man.render_subcommands_section(&mut out).expect(io);
    }
    let mut extra = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit::TABLE {
        extra.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff(meaning)));
    }
    extra.push_str(&format!(".PP\n{}\n", roff(FETCH_EXIT_NOTE)));
    extra.push_str(ENVIRONMENT);
    out.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut out).expect(io);
    out
}

/// (file name, content) of every generated page.
fn pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = Cli::command();
    // Building propagates the global options into each subcommand's page.
    cmd.build();
    let mut pages = vec![("pgwal.1".to_string(), render(cmd.clone()))];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help" && !s.is_hide_set()) {
        // clap takes &'static names; leaking a few bytes in a test is fine.
        let name: &'static str = Box::leak(format!("pgwal-{}", sub.get_name()).into_boxed_str());
        let bin: &'static str = Box::leak(format!("pgwal {}", sub.get_name()).into_boxed_str());
        let page = sub.clone().name(name).display_name(name).bin_name(bin).after_long_help(None::<&str>);
        pages.push((format!("{name}.1"), render(page)));
    }
    pages
}

#[test]
fn man_pages_match_the_cli() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let update = std::env::var_os("PGWAL_UPDATE_MAN").is_some();
    let mut stale = Vec::new();
    for (file, content) in pages() {
        let path = dir.join(&file);
        if update {
            std::fs::write(&path, &content).expect("write man page");
        } else if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
            stale.push(file);
        }
    }
    assert!(stale.is_empty(), "stale man pages {stale:?}: run PGWAL_UPDATE_MAN=1 cargo test --test man_pages");
}

#[test]
fn every_page_documents_exit_status() {
    for (file, page) in pages() {
        let text = String::from_utf8_lossy(&page);
        for code in ["\\fB200\\fR", "\\fB201\\fR", "\\fB202\\fR", "standby"] {
            assert!(text.contains(code), "{file} must document exit status {code}");
        }
    }
}
