//! The state directory (`[switch] state_dir`, default `/var/lib/tapswitch`): what outlives the
//! process.
//!
//! - `running.json`: the running configuration (the file plus every runtime change) and the
//!   file as it was last applied (the base of the merge in [`crate::config::merge`]). Written
//!   before a change is acknowledged: a change that cannot be written is refused.
//! - `checkpoint.bin`: learned and connection state (see [`crate::checkpoint`]), written on a
//!   planned stop and every `[switch] checkpoint_secs`.
//! - `lock`: held (`flock`) by the running tapswitch, so two never share a directory.
//!
//! Every file is written the durable way ([`write_atomic`]): a new file, fsync, the current one
//! kept as `NAME.prev`, rename, fsync the directory. A crash at any instant leaves either the
//! old or the new file. A loader that finds a file it cannot read falls back to `NAME.prev`
//! with a warning; when neither is good it refuses with both files named, and a file written
//! by a newer tapswitch (a higher format version) is refused outright: it is never silently
//! replaced by an empty state.
//!
//! Threads: the control thread owns the [`StateStore`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where the state lives unless `[switch] state_dir` or `run --state-dir` say otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tapswitch";
/// The running configuration's file.
pub const RUNNING_FILE: &str = "running.json";
/// What `running.json` says it is.
const RUNNING_FORMAT: &str = "tapswitch-running-config";
/// The format version this tapswitch writes and reads.
pub const RUNNING_VERSION: u32 = 1;
const LOCK_FILE: &str = "lock";

/// Errors of the state directory. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or a file in it could not be read or written.
    #[error("state {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Another tapswitch holds the directory.
    #[error(
        "state directory {path} is in use by another tapswitch (pid {pid}); give this one \
             another `[switch] state_dir` or `--state-dir`"
    )]
    InUse { path: String, pid: String },
    /// A file is not what it should be, and no good earlier copy exists.
    #[error("state {path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// A file was written by a newer tapswitch.
    #[error(
        "state {path}: written by a newer tapswitch (format version {found}; this one \
             reads up to {supported}); upgrade, or move the file away to start from the \
             configuration file alone"
    )]
    FutureVersion {
        path: String,
        found: u64,
        supported: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What `running.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningState {
    /// The configuration file as it was last applied (at start or reload).
    pub base: Config,
    /// The running configuration: `base` plus every runtime change.
    pub running: Config,
    /// TAPs whose removal was saved but may not have happened yet (a crash in between): the
    /// next start deletes those that are still there.
    pub deleting: Vec<TapRef>,
}

/// A TAP device by name and network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

#[derive(Serialize)]
struct RunningOut<'a> {
    format: &'static str,
    version: u32,
    base: &'a Config,
    running: &'a Config,
    #[serde(skip_serializing_if = "<[TapRef]>::is_empty")]
    deleting: &'a [TapRef],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunningIn {
    format: String,
    version: u64,
    base: Config,
    running: Config,
    #[serde(default)]
    deleting: Vec<TapRef>,
}

/// Parses the bytes of a `running.json`; the error says what is wrong (for the loader, the
/// fuzz target and tests).
pub fn parse_running(bytes: &[u8]) -> Result<RunningState, ParseError> {
    let head: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ParseError::Bad(format!("not JSON: {e}")))?;
    if head.get("format").and_then(|f| f.as_str()) != Some(RUNNING_FORMAT) {
        return Err(ParseError::Bad(format!(
            "not a tapswitch running configuration (no \"format\": \"{RUNNING_FORMAT}\")"
        )));
    }
    match head.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v > u64::from(RUNNING_VERSION) => return Err(ParseError::Future(v)),
        Some(v) if v == u64::from(RUNNING_VERSION) => {}
        _ => return Err(ParseError::Bad("no known \"version\"".into())),
    }
    let file: RunningIn =
        serde_json::from_value(head).map_err(|e| ParseError::Bad(e.to_string()))?;
    debug_assert_eq!(file.format, RUNNING_FORMAT);
    debug_assert_eq!(file.version, u64::from(RUNNING_VERSION));
    for (what, config) in [("base", &file.base), ("running", &file.running)] {
        config
            .validate()
            .map_err(|e| ParseError::Bad(format!("{what} configuration: {e}")))?;
    }
    Ok(RunningState {
        base: file.base,
        running: file.running,
        deleting: file.deleting,
    })
}

/// Why the bytes of a state file were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Truncated, garbage, or not valid.
    Bad(String),
    /// Written by a newer tapswitch: this version.
    Future(u64),
}

/// The serialized form of a running state (what [`StateStore::save_running`] writes).
pub fn running_bytes(base: &Config, running: &Config, deleting: &[TapRef]) -> Vec<u8> {
    let out = RunningOut {
        format: RUNNING_FORMAT,
        version: RUNNING_VERSION,
        base,
        running,
        deleting,
    };
    let mut bytes = serde_json::to_vec_pretty(&out).expect("a configuration serializes");
    bytes.push(b'\n');
    bytes
}

/// The state directory of a running tapswitch, locked for it.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    /// Holds the `flock`; dropped (closed) when the process is done with the directory.
    lock: File,
    /// What `running.json` holds now, to skip writes that change nothing.
    running_written: Vec<u8>,
}

impl StateStore {
    /// Opens (creating it, mode 0700) and locks the directory `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(StateError::InUse {
                    path: dir.display().to_string(),
                    pid: pid.trim().to_string(),
                });
            }
            return Err(io_err(&path)(e));
        }
        Self::from_handed_lock(dir, lock)
    }

    /// The directory `dir` with its lock held: by [`open`](Self::open), or by another process
    /// that handed its open lock file over (a takeover), so the lock is held without a gap.
    /// Writes this process's id into the lock file.
    pub fn from_handed_lock(dir: &Path, mut lock: File) -> Result<StateStore, StateError> {
        let path = dir.join(LOCK_FILE);
        lock.set_len(0).map_err(io_err(&path))?;
        write!(lock, "{}", std::process::id()).map_err(io_err(&path))?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
            lock,
            running_written: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file's descriptor (handed to the process that takes over).
    pub fn lock_file(&self) -> &File {
        &self.lock
    }

    /// The saved running configuration, `None` when there is none (a first start, or after a
    /// purge). A bad `running.json` falls back to `running.json.prev` with a warning.
    pub fn load_running(&mut self) -> Result<Option<RunningState>, StateError> {
        let loaded = load_with_fallback(&self.dir, RUNNING_FILE, parse_running)?;
        if let Some((state, bytes)) = &loaded {
            self.running_written = bytes.clone();
            return Ok(Some(state.clone()));
        }
        Ok(None)
    }

    /// Writes the running configuration durably, unless it is what the file holds already.
    pub fn save_running(
        &mut self,
        base: &Config,
        running: &Config,
        deleting: &[TapRef],
    ) -> Result<(), StateError> {
        let bytes = running_bytes(base, running, deleting);
        if bytes == self.running_written {
            return Ok(());
        }
        write_atomic(&self.dir, RUNNING_FILE, &bytes)?;
        self.running_written = bytes;
        Ok(())
    }

    /// Writes `bytes` as the file `name` of the directory, durably.
    pub fn save(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.dir, name, bytes)
    }

    /// Loads the file `name` with `parse`, falling back to `NAME.prev`; see [`load_running`].
    ///
    /// [`load_running`]: Self::load_running
    pub fn load<T>(
        &self,
        name: &str,
        parse: impl Fn(&[u8]) -> Result<T, ParseError>,
    ) -> Result<Option<T>, StateError> {
        Ok(load_with_fallback(&self.dir, name, parse)?.map(|(t, _)| t))
    }

    /// Removes every state file (not the directory, nor the lock): the next start begins from
    /// the configuration file alone.
    pub fn purge(&mut self) -> Result<(), StateError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == LOCK_FILE {
                continue;
            }
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        fsync_dir(&self.dir)?;
        self.running_written.clear();
        Ok(())
    }
}

/// Reads `dir/name` with `parse`; on a bad file, warns and tries `dir/name.prev`. Returns the
/// parsed value and the bytes it came from.
fn load_with_fallback<T>(
    dir: &Path,
    name: &str,
    parse: impl Fn(&[u8]) -> Result<T, ParseError>,
) -> Result<Option<(T, Vec<u8>)>, StateError> {
    let path = dir.join(name);
    let prev = dir.join(format!("{name}.prev"));
    let read = |p: &Path| -> Result<Option<Vec<u8>>, StateError> {
        match std::fs::read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(p)(e)),
        }
    };
    let Some(bytes) = read(&path)? else {
        // Only a crash in the middle of the first write leaves no file but a .prev; a .prev
        // alone is never taken silently as the state.
        if prev.exists() {
            return Err(StateError::Corrupt {
                path: path.display().to_string(),
                reason: format!(
                    "missing, but {} exists; restore it by renaming it, or remove it",
                    prev.display()
                ),
            });
        }
        return Ok(None);
    };
    let reason = match parse(&bytes) {
        Ok(t) => return Ok(Some((t, bytes))),
        Err(ParseError::Future(found)) => {
            return Err(StateError::FutureVersion {
                path: path.display().to_string(),
                found,
                supported: RUNNING_VERSION,
            })
        }
        Err(ParseError::Bad(reason)) => reason,
    };
    match read(&prev)?.map(|b| (parse(&b), b)) {
        Some((Ok(t), b)) => {
            log::warn!(
                "state {}: {reason}; using the last good copy {} instead",
                path.display(),
                prev.display()
            );
            Ok(Some((t, b)))
        }
        Some((Err(e), _)) => Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "{reason}; and the last good copy {} is bad too ({}); move both away to start \
                 from the configuration file alone",
                prev.display(),
                match e {
                    ParseError::Bad(r) => r,
                    ParseError::Future(v) => format!("format version {v}"),
                }
            ),
        }),
        None => Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "{reason}; no earlier copy exists; move it away to start from the \
                 configuration file alone"
            ),
        }),
    }
}

/// Writes `bytes` as `dir/name` so that a crash at any instant leaves the old file or the new
/// one: a new file written and fsynced, the current file kept as `name.prev` (a hard link),
/// the new one renamed over it, and the directory fsynced.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.new"));
    let prev = dir.join(format!("{name}.prev"));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    if path.exists() {
        let _ = std::fs::remove_file(&prev);
        std::fs::hard_link(&path, &prev).map_err(io_err(&prev))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl StateStore {
        fn save_running_state(&mut self, s: &RunningState) -> Result<(), StateError> {
            self.save_running(&s.base, &s.running, &s.deleting)
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tapswitch-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn state(ports: &[&str]) -> RunningState {
        let mut running = Config::default();
        for p in ports {
            running.ports.push(crate::config::PortConfig {
                name: p.to_string(),
                ..Default::default()
            });
        }
        RunningState {
            base: Config::default(),
            running,
            deleting: Vec::new(),
        }
    }

    #[test]
    fn saves_and_loads_and_keeps_the_last_good_copy() {
        let dir = tmpdir("rt");
        let mut store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load_running().unwrap(), None);
        store.save_running_state(&state(&["a"])).unwrap();
        store.save_running_state(&state(&["a", "b"])).unwrap();
        assert_eq!(store.load_running().unwrap(), Some(state(&["a", "b"])));
        // A torn newest file: the last good copy, with a warning.
        let bytes = std::fs::read(dir.join(RUNNING_FILE)).unwrap();
        std::fs::write(dir.join(RUNNING_FILE), &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(store.load_running().unwrap(), Some(state(&["a"])));
        // Both bad: an error naming the file, never an empty state.
        std::fs::write(dir.join("running.json.prev"), b"\x00garbage").unwrap();
        let err = store.load_running().unwrap_err().to_string();
        assert!(
            err.contains("running.json") && err.contains("not JSON"),
            "{err}"
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_store_on_one_directory_is_refused() {
        let dir = tmpdir("lock");
        let store = StateStore::open(&dir).unwrap();
        let err = StateStore::open(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another tapswitch"), "{err}");
        drop(store);
        StateStore::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn future_and_foreign_files_are_refused() {
        let good = running_bytes(&Config::default(), &state(&["a"]).running, &[]);
        assert!(parse_running(&good).is_ok());
        let text = String::from_utf8(good).unwrap();
        let future = text.replace("\"version\": 1", "\"version\": 7");
        assert_eq!(
            parse_running(future.as_bytes()).unwrap_err(),
            ParseError::Future(7)
        );
        let foreign = text.replace(RUNNING_FORMAT, "something-else");
        assert!(matches!(
            parse_running(foreign.as_bytes()),
            Err(ParseError::Bad(_))
        ));
        let invalid = text.replace("\"name\": \"a\"", "\"name\": \"a/b\"");
        let Err(ParseError::Bad(reason)) = parse_running(invalid.as_bytes()) else {
            panic!("an invalid port name was accepted");
        };
        assert!(
            reason.contains("running configuration: port[0]"),
            "{reason}"
        );
        let dir = tmpdir("future");
        let mut store = StateStore::open(&dir).unwrap();
        std::fs::write(dir.join(RUNNING_FILE), future).unwrap();
        let err = store.load_running().unwrap_err().to_string();
        assert!(err.contains("newer tapswitch"), "{err}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn purge_leaves_nothing_to_restore() {
        let dir = tmpdir("purge");
        let mut store = StateStore::open(&dir).unwrap();
        store.save_running_state(&state(&["a"])).unwrap();
        store.save_running_state(&state(&["b"])).unwrap();
        store.purge().unwrap();
        assert_eq!(store.load_running().unwrap(), None);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
