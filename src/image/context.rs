//! The build context: the files of the context directory that `.dockerignore` keeps, streamed to
//! the daemon as a tar built on the fly — a bounded queue of chunks, never the whole tar in memory.
//! Entries are deterministic (sorted paths, owner 0:0, no user names; modes and mtimes from the
//! files, as the docker CLI sends them), so an unchanged context hits the daemon's cache.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::session::dockerignore::DockerIgnore;

/// The name under which a Dockerfile from outside the context travels in the tar.
const OUTSIDE_DOCKERFILE: &str = ".dockerfile.agent";
/// Size of one chunk of the tar stream.
const CHUNK: usize = 256 * 1024;
/// Chunks queued between the tar writer and the upload: 8 × 256 KiB of memory at most.
const QUEUE: usize = 8;

/// One file, directory or link to send.
#[derive(Debug, Clone)]
struct Entry {
    /// The path in the tar, `/`-separated, relative to the context.
    name: String,
    /// The path on disk.
    path: PathBuf,
    /// Content to send instead of the file's (the `.dockerignore` that hides an outside
    /// Dockerfile), with the file's metadata if it exists.
    replaced: Option<Vec<u8>>,
}

impl Entry {
    fn from_disk(name: String, path: PathBuf) -> Entry {
        Entry { name, path, replaced: None }
    }
}

/// A file that could not be sent as it was stated in its tar header, kept for the error report
/// (the daemon only sees the upload end early).
pub type SendFailure = Arc<Mutex<Option<(PathBuf, io::Error)>>>;

/// The context, scanned: what will be sent, before anything is read.
#[derive(Debug, Clone)]
pub struct Context {
    entries: Vec<Entry>,
    /// Set by the tar writer when a file could not be sent (it changed, or could not be read).
    failure: SendFailure,
    /// The Dockerfile's path inside the tar, for the build's `dockerfile` parameter.
    pub dockerfile: String,
    /// Regular files sent, and their total size.
    pub files: usize,
    pub bytes: u64,
}

fn read_error(path: &Path, source: io::Error) -> Error {
    Error::LocalFile { action: "read", path: path.to_path_buf(), source, hint: None }
}

/// The context's `.dockerignore`, or none.
pub fn read_dockerignore(root: &Path) -> Result<DockerIgnore, Error> {
    let ignore_path = root.join(".dockerignore");
    match fs::read(&ignore_path) {
        Ok(bytes) => {
            let ignore = DockerIgnore::parse(&String::from_utf8_lossy(&bytes));
            match ignore.bad_pattern() {
                None => Ok(ignore),
                Some((line, pattern)) => Err(Error::LocalFile {
                    action: "read",
                    path: ignore_path,
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line {line}: {pattern:?} is no valid pattern (syntax error in pattern)"),
                    ),
                    hint: Some(
                        "a `[` opens a character class that needs its `]` (and may not start with `]` or `-`), and a \
                         `\\` escapes the next character (write `\\[` for a bracket); the docker CLI and BuildKit \
                         refuse this file too"
                            .to_string(),
                    ),
                }),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
        Err(error) => Err(read_error(&ignore_path, error)),
    }
}

impl Context {
    /// Walks the context directory in sorted order, applying `.dockerignore`. The Dockerfile and
    /// `.dockerignore` are always sent; a Dockerfile outside the context is added under its own name.
    pub fn scan(root: &Path, dockerfile: &Path) -> Result<Context, Error> {
        let ignore_path = root.join(".dockerignore");
        let ignore = read_dockerignore(root)?;
        // Where the Dockerfile is, with `..` and symlinks resolved in both paths (as the docker
        // CLI does): `ctx/../Dockerfile` is outside the context, not a path the daemon refuses.
        let real_root = fs::canonicalize(root).map_err(|error| read_error(root, error))?;
        let real_dockerfile = fs::canonicalize(dockerfile).map_err(|error| read_error(dockerfile, error))?;
        let inside = real_dockerfile.strip_prefix(&real_root).ok().map(|relative| {
            relative.components().map(|component| component.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
        });
        let mut context = Context {
            entries: Vec::new(),
            failure: SendFailure::default(),
            dockerfile: String::new(),
            files: 0,
            bytes: 0,
        };
        // The Dockerfile and .dockerignore travel whatever .dockerignore says, as with the docker
        // CLI (the daemon reads them, then drops those that .dockerignore excludes).
        let always: Vec<&str> = [Some(".dockerignore"), inside.as_deref()].into_iter().flatten().collect();
        context.walk(root, "", &ignore, &always)?;
        match inside {
            Some(name) => context.dockerfile = name,
            None => {
                // A Dockerfile from outside travels under a name of its own, and that name is
                // added to the .dockerignore sent, so the daemon drops it after reading it and
                // `COPY . …` does not copy it into the image (the docker CLI does the same).
                let meta = fs::metadata(dockerfile).map_err(|error| read_error(dockerfile, error))?;
                context.files += 1;
                context.bytes += meta.len();
                context.entries.push(Entry::from_disk(OUTSIDE_DOCKERFILE.to_string(), dockerfile.to_path_buf()));
                context.dockerfile = OUTSIDE_DOCKERFILE.to_string();
                // With no .dockerignore of the user's, the one made lists itself too, so the
                // daemon drops it as well and the image gets neither (as with the docker CLI).
                let mut hiding = match fs::read(&ignore_path) {
                    Ok(bytes) => bytes,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => b".dockerignore".to_vec(),
                    Err(error) => return Err(read_error(&ignore_path, error)),
                };
                hiding.extend_from_slice(format!("\n{OUTSIDE_DOCKERFILE}\n").as_bytes());
                match context.entries.iter_mut().find(|entry| entry.name == ".dockerignore") {
                    Some(entry) => entry.replaced = Some(hiding),
                    None => {
                        context.files += 1;
                        context.entries.push(Entry {
                            name: ".dockerignore".to_string(),
                            path: ignore_path.clone(),
                            replaced: Some(hiding),
                        });
                    }
                }
            }
        }
        Ok(context)
    }

    /// [`Context::scan`] on a blocking thread: the scan reads and stats the whole context, which
    /// must not stall the runtime's other tasks (SSH keepalives, the progress of other steps).
    pub async fn scan_off_runtime(root: &Path, dockerfile: &Path) -> Result<Context, Error> {
        let (root, dockerfile) = (root.to_path_buf(), dockerfile.to_path_buf());
        tokio::task::spawn_blocking(move || Context::scan(&root, &dockerfile))
            .await
            .map_err(|error| Error::Internal(format!("the scan of the build context stopped: {error}")))?
    }

    fn walk(&mut self, dir: &Path, prefix: &str, ignore: &DockerIgnore, always: &[&str]) -> Result<(), Error> {
        let mut children: Vec<(String, PathBuf)> = fs::read_dir(dir)
            .map_err(|error| read_error(dir, error))?
            .map(|entry| entry.map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.path())))
            .collect::<Result<_, _>>()
            .map_err(|error| read_error(dir, error))?;
        children.sort();
        for (name, path) in children {
            let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let meta = fs::symlink_metadata(&path).map_err(|error| read_error(&path, error))?;
            let excluded = ignore.excludes(&relative) && !always.contains(&relative.as_str());
            if meta.is_dir() {
                // An excluded directory is still walked when an exception may bring back a file
                // in it, or when the Dockerfile is in it; it is not sent itself.
                let dir_slash = format!("{relative}/");
                if excluded
                    && !ignore.may_reinclude_under(&relative)
                    && !always.iter().any(|name| name.starts_with(&dir_slash))
                {
                    continue;
                }
                if !excluded {
                    self.entries.push(Entry::from_disk(relative.clone(), path.clone()));
                }
                self.walk(&path, &relative, ignore, always)?;
            } else if !excluded {
                if meta.is_file() {
                    self.files += 1;
                    self.bytes += meta.len();
                }
                self.entries.push(Entry::from_disk(relative, path));
            }
        }
        Ok(())
    }

    /// Whether the context sends this path (for tests and the dry run).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|entry| entry.name == name)
    }

    /// Where the tar writer leaves the file it failed on; take it after a failed upload with
    /// [`send_failure`].
    pub fn failure_slot(&self) -> SendFailure {
        self.failure.clone()
    }

    /// Starts writing the tar on a blocking thread; returns the stream of its chunks. A read
    /// error ends the stream with that error (the daemon then sees a truncated upload), and the
    /// file and the error are kept in [`Context::failure_slot`].
    pub fn stream(self) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(QUEUE);
        tokio::task::spawn_blocking(move || {
            let error_sender = sender.clone();
            let writer = ChunkWriter { buffer: Vec::with_capacity(CHUNK), sender };
            if let Err((path, error)) = write_tar(&self.entries, writer) {
                let message = io::Error::new(error.kind(), format!("{}: {error}", path.display()));
                *self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((path, error));
                let _ = error_sender.blocking_send(Err(message));
            }
        });
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
    }
}

/// The failure of a context upload as the run reports it: the file, and what happened to it.
/// An upload the daemon stopped reading (a broken pipe: it answered, e.g. that its disk is full)
/// is no failure of the file's: the daemon's answer is the run's error.
pub fn send_failure(slot: &SendFailure) -> Option<Error> {
    let (path, source) = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()?;
    if source.kind() == io::ErrorKind::BrokenPipe {
        return None;
    }
    let changed = source.kind() == io::ErrorKind::InvalidData;
    Some(Error::LocalFile {
        action: "send",
        path,
        source,
        hint: Some(if changed {
            "something wrote to the file while the build context was sent: keep build outputs and logs \
             outside the context (or list them in .dockerignore), then run again"
                .to_string()
        } else {
            "check that the file is readable by the agent's user".to_string()
        }),
    })
}

/// Writes the tar of the entries; on failure, the file it failed on (a broken pipe, when the
/// upload stopped, names no file of ours but the last one written).
fn write_tar(entries: &[Entry], writer: ChunkWriter) -> Result<(), (PathBuf, io::Error)> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    let mut last = PathBuf::new();
    for entry in entries {
        append_entry(&mut builder, entry).map_err(|error| (entry.path.clone(), error))?;
        last.clone_from(&entry.path);
    }
    builder.into_inner().and_then(ChunkWriter::finish).map_err(|error| (last, error))
}

fn append_entry(builder: &mut tar::Builder<ChunkWriter>, entry: &Entry) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    if let Some(content) = &entry.replaced {
        // The file's mode and mtime if it exists (a fixed time otherwise, for the cache).
        let meta = fs::metadata(&entry.path).ok();
        header.set_mode(meta.as_ref().map_or(0o644, |meta| meta.mode() & 0o7777));
        header.set_mtime(meta.as_ref().map_or(0, |meta| meta.mtime().max(0) as u64));
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        return builder.append_data(&mut header, &entry.name, content.as_slice());
    }
    let meta = fs::symlink_metadata(&entry.path)?;
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(meta.mtime().max(0) as u64);
    let kind = meta.file_type();
    if kind.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder.append_data(&mut header, format!("{}/", entry.name), io::empty())?;
    } else if kind.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        let target = fs::read_link(&entry.path)?;
        builder.append_link(&mut header, &entry.name, target)?;
    } else if kind.is_file() {
        // The size in the header and the body must agree, or the rest of the tar is garbage: the
        // size comes from the open file, and exactly that many bytes are sent (see ExactLength).
        let file = fs::File::open(&entry.path)?;
        let size = file.metadata()?.len();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        builder.append_data(&mut header, &entry.name, ExactLength { file, size, remaining: size })?;
    }
    // Sockets, FIFOs and devices are not sent, as the docker CLI does not send them.
    Ok(())
}

/// A file's body for the tar: exactly the `size` its header states. A file that got shorter or
/// longer while it was read is an error (`InvalidData`) rather than a corrupt tar — as the docker
/// CLI's tar writer refuses a body longer than its header.
struct ExactLength {
    file: fs::File,
    size: u64,
    remaining: u64,
}

impl io::Read for ExactLength {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.file.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the file grew while it was sent (it had {} bytes when its header was written)", self.size),
                )),
            };
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.file.read(&mut buf[..want])?;
        if read == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the file got shorter while it was sent ({} of the {} bytes stated in its header)",
                    self.size - self.remaining,
                    self.size
                ),
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Collects the tar's bytes into chunks and hands each to the upload, waiting when the queue is
/// full: this is what bounds the memory.
struct ChunkWriter {
    buffer: Vec<u8>,
    sender: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.sender
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload of the build context stopped"))
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let take = room.min(data.len());
        self.buffer.extend_from_slice(&data[..take]);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    #[test]
    fn dockerignore_is_applied_but_the_dockerfile_always_travels() {
        let dir = tree(&[
            ("Dockerfile", "FROM scratch"),
            (".dockerignore", "*\n!src\n"),
            ("src/main.rs", "fn main() {}"),
            ("target/big.bin", "x"),
        ]);
        let context = Context::scan(dir.path(), &dir.path().join("Dockerfile")).unwrap();
        assert!(context.contains("Dockerfile") && context.contains(".dockerignore"));
        assert!(context.contains("src/main.rs"));
        assert!(!context.contains("target/big.bin") && !context.contains("target"));
        assert_eq!(context.dockerfile, "Dockerfile");
        assert_eq!(context.files, 3);
    }

    #[test]
    fn a_dockerfile_outside_the_context_is_added() {
        let dir = tree(&[("ctx/a", "a"), ("docker/Dockerfile.prod", "FROM scratch")]);
        let context = Context::scan(&dir.path().join("ctx"), &dir.path().join("docker/Dockerfile.prod")).unwrap();
        assert_eq!(context.dockerfile, OUTSIDE_DOCKERFILE);
        assert!(context.contains("a"));
    }

    /// Regression: the scan ran on the async runtime and stalled it (keepalives, other steps).
    /// A `.dockerignore` that is a FIFO holds the scan until someone writes to it; on a
    /// single-threaded runtime, a timer must still fire meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn context_scanning_does_not_block_the_async_runtime() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tree(&[("Dockerfile", "FROM scratch"), ("a.txt", "a")]);
        let fifo = dir.path().join(".dockerignore");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let ticked = Arc::new(AtomicBool::new(false));
        let writer = {
            let (ticked, fifo) = (ticked.clone(), fifo.clone());
            std::thread::spawn(move || {
                // Wait for the runtime's timer (or give up after 5 s), then release the scan.
                let mut seen = false;
                for _ in 0..500 {
                    seen = ticked.load(Ordering::SeqCst);
                    if seen {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                fs::write(&fifo, "a.txt\n").unwrap();
                seen
            })
        };
        let root = dir.path().to_path_buf();
        let scan = tokio::spawn(async move { Context::scan_off_runtime(&root, &root.join("Dockerfile")).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ticked.store(true, Ordering::SeqCst);
        let context = scan.await.unwrap().unwrap();
        assert!(writer.join().unwrap(), "the runtime's timer did not fire while the scan waited");
        assert!(!context.contains("a.txt"), "the ignore file written after the timer was read");
    }

    /// Regression: a file that changed size between its header and its body corrupted the tar.
    #[test]
    fn a_file_that_grows_or_shrinks_while_streamed_is_an_error_naming_it_not_a_corrupt_tar() {
        use std::io::Read;
        let dir = tree(&[("log.txt", "0123456789")]);
        let path = dir.path().join("log.txt");
        let body = |size: u64| {
            let mut sent = Vec::new();
            let file = fs::File::open(&path).unwrap();
            ExactLength { file, size, remaining: size }.read_to_end(&mut sent).map(|_| sent)
        };
        assert_eq!(body(10).unwrap(), b"0123456789");
        let shrunk = body(12).unwrap_err();
        assert_eq!(shrunk.kind(), io::ErrorKind::InvalidData);
        assert!(shrunk.to_string().contains("got shorter"), "{shrunk}");
        let grown = body(4).unwrap_err();
        assert!(grown.to_string().contains("grew"), "{grown}");

        let slot = SendFailure::default();
        *slot.lock().unwrap() = Some((path.clone(), grown));
        let error = send_failure(&slot).unwrap();
        assert_eq!(error.exit_code(), crate::error::exit::LOCAL_FILE);
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        assert!(error.report().contains("keep build outputs and logs outside the context"), "{}", error.report());
        assert!(send_failure(&slot).is_none(), "taken once");
    }

    /// The same through the whole stream: a file that is truncated after the scan is sent as it
    /// is now (its header is written from the open file), and the tar stays well-formed.
    #[tokio::test]
    async fn a_file_changed_after_the_scan_is_sent_as_it_is_when_read() {
        use futures_util::StreamExt;
        let dir = tree(&[("Dockerfile", "FROM scratch"), ("a.txt", "a long first version")]);
        let context = Context::scan(dir.path(), &dir.path().join("Dockerfile")).unwrap();
        fs::write(dir.path().join("a.txt"), "short").unwrap();
        let chunks: Vec<Bytes> = context.stream().map(|chunk| chunk.unwrap()).collect().await;
        let tar = chunks.concat();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
            found.push((entry.path().unwrap().display().to_string(), body));
        }
        assert_eq!(found, [("Dockerfile".to_string(), "FROM scratch".to_string()), ("a.txt".into(), "short".into())]);
    }

    /// Regression: `docker/` in .dockerignore with `-f docker/Dockerfile` left the Dockerfile out.
    #[test]
    fn a_dockerfile_in_an_ignored_directory_still_travels_alone() {
        let dir = tree(&[(".dockerignore", "docker/\n"), ("docker/Dockerfile", "FROM scratch"), ("docker/x", "x")]);
        let context = Context::scan(dir.path(), &dir.path().join("docker/Dockerfile")).unwrap();
        assert_eq!(context.dockerfile, "docker/Dockerfile");
        assert!(context.contains("docker/Dockerfile"));
        assert!(!context.contains("docker") && !context.contains("docker/x"));
    }

    /// Regression: `-f ctx/../Dockerfile` was sent as `../Dockerfile`, which the daemon refuses;
    /// and the outside Dockerfile must be hidden from `COPY .` by the .dockerignore sent.
    #[tokio::test]
    async fn a_dockerfile_given_through_dot_dot_is_outside_and_hidden_by_the_dockerignore_sent() {
        use futures_util::StreamExt;
        let dir = tree(&[("ctx/a", "a"), ("Dockerfile", "FROM scratch")]);
        let root = dir.path().join("ctx");
        let context = Context::scan(&root, &root.join("../Dockerfile")).unwrap();
        assert_eq!(context.dockerfile, OUTSIDE_DOCKERFILE);
        let chunks: Vec<Bytes> = context.stream().map(|chunk| chunk.unwrap()).collect().await;
        let tar = chunks.concat();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut ignore = None;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some(".dockerignore") {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                ignore = Some(text);
            }
        }
        assert_eq!(ignore.as_deref(), Some(".dockerignore\n.dockerfile.agent\n"));
        assert!(fs::read_dir(&root).unwrap().count() == 1, "nothing is written into the context");
    }

    /// As the docker CLI: an excluded directory is walked only for exceptions that start with its
    /// path, so `dir` + `!**/keep.txt` does not bring back `dir/keep.txt`.
    #[test]
    fn an_excluded_directory_is_walked_only_for_exceptions_under_its_path() {
        let dir = tree(&[
            ("Dockerfile", "FROM scratch"),
            (".dockerignore", "dir\n!**/keep.txt\nother\n!other/keep.txt\n"),
            ("dir/keep.txt", "k"),
            ("other/keep.txt", "k"),
            ("keep.txt", "k"),
        ]);
        let context = Context::scan(dir.path(), &dir.path().join("Dockerfile")).unwrap();
        assert!(!context.contains("dir/keep.txt"));
        assert!(context.contains("other/keep.txt") && !context.contains("other"));
        assert!(context.contains("keep.txt"));
    }

    #[tokio::test]
    async fn the_tar_is_deterministic_and_complete() {
        use futures_util::StreamExt;
        let dir = tree(&[("Dockerfile", "FROM scratch"), ("b/c.txt", "hello"), ("a.txt", "world")]);
        let collect = || async {
            let context = Context::scan(dir.path(), &dir.path().join("Dockerfile")).unwrap();
            let chunks: Vec<Bytes> = context.stream().map(|chunk| chunk.unwrap()).collect().await;
            chunks.concat()
        };
        let first = collect().await;
        assert_eq!(first, collect().await);
        let mut archive = tar::Archive::new(first.as_slice());
        let names: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.path().unwrap().display().to_string(), entry.header().uid().unwrap())
            })
            .collect();
        let paths: Vec<&str> = names.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(paths, ["Dockerfile", "a.txt", "b/", "b/c.txt"]);
        assert!(names.iter().all(|(_, uid)| *uid == 0));
    }
}
