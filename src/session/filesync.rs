//! The session's FileSync service: the sending side of fsutil's DiffCopy protocol, by which
//! BuildKit syncs the build context and the Dockerfile's directory from the client into its own
//! copy, kept between builds under the session's shared key. Only what changed crosses the wire.
//!
//! The protocol (tonistiigi/fsutil `send.go`): the sender walks the directory in a fixed order
//! (each directory's entries sorted by name, depth first) and sends one STAT packet per entry,
//! then an empty STAT; the receiver compares with its copy and asks for the files it lacks with
//! REQ packets naming an entry by its index in the walk; the sender answers each with DATA
//! packets and an empty DATA to end the file; the receiver ends with FIN, answered with FIN.
//! ERR carries a failure either way. Modes are Go's `os.FileMode` bits.
//!
//! Hand-written: no Rust crate speaks fsutil's protocol.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::fsutil::types::Packet;
use bollard::fsutil::types::Stat;
use bollard::fsutil::types::packet::PacketType;
use bollard::moby::filesync::packet::file_sync_server::{FileSync, FileSyncServer};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::git_times::GitIndex;
use crate::session::dockerignore::DockerIgnore;

/// Bytes of a file in one DATA packet (fsutil sends 32 KiB; fewer, larger messages cost less).
const DATA_CHUNK: usize = 256 * 1024;
/// Packets queued toward the daemon.
const QUEUE: usize = 16;
/// Files read at once (fsutil's sender runs four).
const READERS: usize = 4;
/// The largest packet the daemon may send: its packets are REQ, FIN and ERR, a few bytes each
/// (an ERR a line of text); a larger one fails the call rather than filling the agent's memory.
const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// Requests queued beyond the walk's files: a receiver asks for each file once, so the queue never
/// needs more than the files (it must not block the receiver while it still reads STATs).
const EXTRA_REQUESTS: usize = 64;
/// The most include patterns and follow paths one call may name, and the longest of them: a
/// Dockerfile's COPY sources are far fewer and shorter; a host that sends more gets an error.
const MAX_PATTERNS: usize = 4096;
const MAX_PATTERN_BYTES: usize = 4096;

/// Go's `os.FileMode` type and permission bits, as fsutil puts them in a STAT.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const STICKY: u32 = 1 << 20;
}

/// One directory the daemon may sync, under the name it asks for (`dir-name`).
#[derive(Clone)]
pub struct SyncedDir {
    pub root: PathBuf,
    /// The client's own excludes (the context's `.dockerignore`, as the docker CLI applies it).
    pub excludes: Option<DockerIgnore>,
    /// Whether what is sent from it counts in [`Counters`] (the context does, the Dockerfile's
    /// directory does not).
    pub counted: bool,
    /// The names BuildKit must read, which the client's excludes do not hide (`.dockerignore`,
    /// the Dockerfile and its own `.dockerignore`, when they are in the directory).
    pub exempt: Vec<String>,
    /// When set, the only names the directory serves, whatever the daemon asks: the Dockerfile's
    /// directory serves the Dockerfile and the two ignore files, nothing else of what is beside it.
    pub only: Option<Vec<String>>,
    /// With `--stable-mtimes`: git's index of the checkout, and the directory's path in it.
    pub git: Option<(Arc<GitIndex>, String)>,
}

/// The two directories of a build, as BuildKit asks for them: `context` (counted, its
/// .dockerignore always applied but to the names BuildKit must read) and `dockerfile` (the
/// Dockerfile's directory, which serves only the Dockerfile and the ignore files).
pub fn build_dirs(
    context: &Path,
    dockerfile: &Path,
    excludes: DockerIgnore,
    git: Option<(Arc<GitIndex>, String)>,
) -> HashMap<String, SyncedDir> {
    let dockerfile_dir = dockerfile.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = dockerfile.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    // `.dockerignore`, and the Dockerfile with its own ignore file when it is in the context (as
    // the docker CLI sends them whatever .dockerignore says).
    let mut exempt = vec![".dockerignore".to_string()];
    if let Ok(inside) = dockerfile.strip_prefix(context) {
        let inside = inside.to_string_lossy().into_owned();
        exempt.push(format!("{inside}.dockerignore"));
        exempt.push(inside);
    }
    let context_dir =
        SyncedDir { root: context.to_path_buf(), excludes: Some(excludes), counted: true, git, exempt, only: None };
    let only = vec![name.clone(), format!("{name}.dockerignore"), ".dockerignore".to_string()];
    let dockerfile_dir = SyncedDir {
        root: dockerfile_dir,
        excludes: None,
        counted: false,
        git: None,
        exempt: Vec::new(),
        only: Some(only),
    };
    HashMap::from([("context".to_string(), context_dir), ("dockerfile".to_string(), dockerfile_dir)])
}

/// What the session sent from the counted directories, over all the daemon's calls: the bytes
/// of every DATA packet, and the distinct files (BuildKit may ask for the same one in two calls,
/// e.g. `.dockerignore` alone first, then with the whole context), in the order they were asked
/// for. BuildKit asks only for the files whose size, mode or mtime differ from its copy: these
/// are the files that changed since the last build under the same shared key.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes: AtomicU64,
    files: std::sync::Mutex<SentFiles>,
    /// Whether a sync of the build asked for every file it listed, two or more: the host had no
    /// copy of them (or every one changed, as a fresh clone's new mtimes do).
    every_file: std::sync::atomic::AtomicBool,
    /// The time the build's syncs took, from the daemon's call to its FIN, in nanoseconds.
    sync_nanos: AtomicU64,
}

#[derive(Debug, Default)]
struct SentFiles {
    seen: std::collections::HashSet<String>,
    /// Each path once, in the order asked; with whether only the frontend asked for it (reading
    /// `.dockerignore` before the build: Docker 26 and 28 ask for it on every build).
    paths: Vec<(String, bool)>,
}

impl Counters {
    /// Distinct files sent.
    pub fn files(&self) -> u64 {
        self.files.lock().map(|files| files.paths.len() as u64).unwrap_or_default()
    }

    /// Every path sent, relative to its directory, in the order asked for.
    pub fn paths(&self) -> Vec<String> {
        self.files.lock().map(|files| files.paths.iter().map(|(path, _)| path.clone()).collect()).unwrap_or_default()
    }

    /// The paths sent for the build's own sync of the directory (not only to the frontend, which
    /// reads `.dockerignore` by name).
    pub fn synced_paths(&self) -> Vec<String> {
        let files = self.files.lock();
        files
            .map(|files| files.paths.iter().filter(|(_, named)| !named).map(|(path, _)| path.clone()).collect())
            .unwrap_or_default()
    }

    /// The time the build's syncs of the directory took (from the daemon's call to its FIN).
    pub fn sync_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.sync_nanos.load(Ordering::Relaxed))
    }

    /// Whether a sync of the build asked for every file it listed.
    pub fn every_file_asked(&self) -> bool {
        self.every_file.load(Ordering::Relaxed)
    }

    fn sent(&self, path: &str, named: bool) {
        if let Ok(mut files) = self.files.lock() {
            if files.seen.insert(path.to_string()) {
                files.paths.push((path.to_string(), named));
            } else if !named {
                // Asked by name first, then by the build's sync: the build reads it too.
                if let Some(entry) = files.paths.iter_mut().find(|(seen, _)| seen == path) {
                    entry.1 = false;
                }
            }
        }
    }
}

/// The FileSync service over a few named directories.
#[derive(Clone)]
pub struct FileSyncer {
    dirs: Arc<HashMap<String, SyncedDir>>,
    counters: Arc<Counters>,
}

impl FileSyncer {
    pub fn new(dirs: HashMap<String, SyncedDir>) -> FileSyncer {
        FileSyncer { dirs: Arc::new(dirs), counters: Arc::default() }
    }

    /// The counters of what was sent as DATA, shared with the service.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The service, and the methods to announce.
    pub fn service(self) -> (FileSyncServer<FileSyncer>, &'static [&'static str]) {
        let server = FileSyncServer::new(self)
            .max_decoding_message_size(MAX_INCOMING_PACKET)
            .max_encoding_message_size(16 << 20);
        (server, &["DiffCopy"])
    }
}

/// The daemon's filter for one call: from the call's metadata, within the client's own bounds.
#[derive(Debug, Default)]
struct Filter {
    /// The client's excludes: they always apply (the daemon's patterns narrow, never widen).
    client: Option<DockerIgnore>,
    /// Names the client's excludes do not hide (see [`SyncedDir::exempt`]).
    exempt: Vec<String>,
    /// The only names served, when set (see [`SyncedDir::only`]).
    only: Option<Vec<String>>,
    excludes: Option<DockerIgnore>,
    /// Include patterns and follow paths, as cleaned segment lists: an entry is sent if one
    /// matches it or one of its parents, and directories on the way to one are sent too.
    includes: Vec<Vec<String>>,
}

impl Filter {
    fn excluded(&self, path: &str) -> bool {
        if self.only.as_ref().is_some_and(|only| !only.iter().any(|name| name == path)) {
            return true;
        }
        let client = self.client.as_ref().is_some_and(|ignore| ignore.excludes(path))
            && !self.exempt.iter().any(|name| name == path);
        client || self.excludes.as_ref().is_some_and(|ignore| ignore.excludes(path))
    }

    fn walk_excluded_dir(&self, path: &str) -> bool {
        if self.only.is_some() {
            return false;
        }
        // An excluded directory is still walked when an exception may bring back a file in it.
        let hopeless = |ignore: &Option<DockerIgnore>| {
            ignore.as_ref().is_some_and(|ignore| ignore.excludes(path) && !ignore.has_exceptions())
        };
        !(hopeless(&self.client) || hopeless(&self.excludes))
    }

    /// Whether the entry itself is selected by the includes (or there are none).
    fn selected(&self, segments: &[&str]) -> bool {
        self.includes.is_empty()
            || self.includes.iter().any(|pattern| (1..=segments.len()).any(|len| matches(pattern, &segments[..len])))
    }

    /// Whether something under this directory may be selected: the directory is on the way to an
    /// include, or is itself (or is under) a selected path — `COPY dir/ /` follows `dir`, and
    /// everything below it must be sent.
    fn may_select_below(&self, segments: &[&str]) -> bool {
        self.selected(segments) || self.includes.iter().any(|pattern| prefix_matches(pattern, segments))
    }
}

fn pattern_segments(pattern: &str) -> Vec<String> {
    let mut segments: Vec<String> =
        pattern.split('/').filter(|segment| !segment.is_empty() && *segment != ".").map(str::to_string).collect();
    // `**/**` means what `**` means; collapsed, a run of them costs one step.
    segments.dedup_by(|next, previous| next == "**" && previous == "**");
    segments
}

/// Whether all of `path` matches all of `pattern` (`**` any number of segments).
fn matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                crate::session::dockerignore::glob(first, segment) && matches(rest, path_rest)
            }
            None => false,
        },
    }
}

/// Whether `dir` could be a parent of a path `pattern` matches.
fn prefix_matches(pattern: &[String], dir: &[&str]) -> bool {
    match (pattern.split_first(), dir.split_first()) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some((first, _)), Some(_)) if first == "**" => true,
        (Some((first, rest)), Some((segment, dir_rest))) => {
            crate::session::dockerignore::glob(first, segment) && prefix_matches(rest, dir_rest)
        }
    }
}

/// One entry of the walk: its STAT, where to read it, and which file the walk saw there.
#[derive(Debug)]
struct Entry {
    stat: Stat,
    path: PathBuf,
    /// Its device and inode: a file swapped for another (or for a symlink) between the walk and
    /// the daemon's request is not served.
    identity: (u64, u64),
}

/// Walks `root` as fsutil does: each directory's entries sorted by name, depth first, a
/// directory before what it holds; sockets, FIFOs and devices left out (as the docker CLI's tar).
fn walk(root: &Path, filter: &Filter, git: Option<&(Arc<GitIndex>, String)>) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    walk_dir(root, &mut Vec::new(), filter, git, &mut entries)?;
    Ok(entries)
}

fn walk_dir(
    dir: &Path,
    prefix: &mut Vec<String>,
    filter: &Filter,
    git: Option<&(Arc<GitIndex>, String)>,
    out: &mut Vec<Entry>,
) -> std::io::Result<bool> {
    let mut children: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(dir)?
        .map(|entry| {
            entry.map(|entry| {
                (std::os::unix::ffi::OsStrExt::as_bytes(entry.file_name().as_os_str()).to_vec(), entry.path())
            })
        })
        .collect::<Result<_, _>>()?;
    // Go sorts names as bytes.
    children.sort();
    let mut any = false;
    for (name, path) in children {
        prefix.push(String::from_utf8_lossy(&name).into_owned());
        let relative = prefix.join("/");
        let segments: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        let excluded = filter.excluded(&relative);
        if kind.is_dir() {
            if (!excluded || filter.walk_excluded_dir(&relative)) && filter.may_select_below(&segments) {
                let mark = out.len();
                let keep_self = !excluded && filter.selected(&segments);
                out.push(Entry {
                    stat: stat(&relative, &meta, None),
                    path: path.clone(),
                    identity: (meta.dev(), meta.ino()),
                });
                let below = walk_dir(&path, prefix, filter, git, out)?;
                if keep_self || below {
                    any = true;
                } else {
                    out.truncate(mark);
                }
            }
        } else if (kind.is_file() || kind.is_symlink()) && !excluded && filter.selected(&segments) {
            let link = if kind.is_symlink() { Some(std::fs::read_link(&path)?) } else { None };
            let mut stat = stat(&relative, &meta, link.as_deref());
            if let Some((index, dir_in_checkout)) = git.filter(|_| kind.is_file()) {
                let in_checkout =
                    if dir_in_checkout.is_empty() { relative.clone() } else { format!("{dir_in_checkout}/{relative}") };
                if let Some(mtime) = index.stable_mtime(&in_checkout, &meta) {
                    stat.mod_time = mtime;
                }
            }
            out.push(Entry { stat, path, identity: (meta.dev(), meta.ino()) });
            any = true;
        }
        prefix.pop();
    }
    Ok(any)
}

/// The special permission bits of a Unix mode (`S_ISUID`, `S_ISGID`, `S_ISVTX`; POSIX fixes their values).
const SET_UID_BIT: u32 = 0o4000;
const SET_GID_BIT: u32 = 0o2000;
const STICKY_BIT: u32 = 0o1000;

/// The STAT of one entry, as fsutil makes it for the docker CLI (owner reset to 0:0).
fn stat(relative: &str, meta: &std::fs::Metadata, link: Option<&Path>) -> Stat {
    let kind = meta.file_type();
    let mode = meta.mode();
    let mut go = mode & 0o777;
    if kind.is_dir() {
        go |= go_mode::DIR;
    }
    if kind.is_symlink() {
        go |= go_mode::SYMLINK;
    }
    if mode & SET_UID_BIT != 0 {
        go |= go_mode::SETUID;
    }
    if mode & SET_GID_BIT != 0 {
        go |= go_mode::SETGID;
    }
    if mode & STICKY_BIT != 0 {
        go |= go_mode::STICKY;
    }
    Stat {
        path: relative.to_string(),
        mode: go,
        uid: 0,
        gid: 0,
        size: if kind.is_dir() { 0 } else { meta.len() as i64 },
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        linkname: link.map(|link| link.to_string_lossy().into_owned()).unwrap_or_default(),
        devmajor: 0,
        devminor: 0,
        xattrs: HashMap::new(),
    }
}

/// The values of one metadata key, decoded as buildkit encodes non-ASCII ones (`KEY-encoded: 1`,
/// then each value query-escaped).
fn metadata_values(metadata: &tonic::metadata::MetadataMap, key: &str) -> Vec<String> {
    let encoded = metadata
        .get(format!("{key}-encoded").as_str())
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| matches!(value, "1" | "true" | "t" | "TRUE" | "True"));
    metadata
        .get_all(key)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| if encoded { query_unescape(value) } else { value.to_string() })
        .collect()
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; anything malformed is kept as it is.
fn query_unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = |byte: u8| (byte as char).to_digit(16);
                match (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        index += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a call's `followpaths` name only `.dockerignore` files: the frontend reading them
/// before the build, not the build's own sync (whose `followpaths` are the `COPY` sources).
fn frontend_reads(follow: &[String]) -> bool {
    !follow.is_empty() && follow.iter().all(|path| path.ends_with(".dockerignore"))
}

fn packet(kind: PacketType) -> Packet {
    Packet { r#type: kind as i32, stat: None, id: 0, data: Vec::new() }
}

#[tonic::async_trait]
impl FileSync for FileSyncer {
    type DiffCopyStream = futures_util::stream::BoxStream<'static, Result<Packet, Status>>;
    type TarStreamStream = futures_util::stream::BoxStream<'static, Result<Packet, Status>>;

    async fn diff_copy(&self, request: Request<Streaming<Packet>>) -> Result<Response<Self::DiffCopyStream>, Status> {
        let called = std::time::Instant::now();
        let metadata = request.metadata();
        let name = metadata_values(metadata, "dir-name").into_iter().next().unwrap_or_default();
        let Some(dir) = self.dirs.get(&name).cloned() else {
            return Err(Status::not_found(format!("no access allowed to dir {name:?}")));
        };
        let excludes = metadata_values(metadata, "exclude-patterns");
        let mut includes = metadata_values(metadata, "include-patterns");
        let follow = metadata_values(metadata, "followpaths");
        includes.extend(follow.iter().cloned());
        let patterns = includes.iter().chain(&excludes);
        if includes.len() + excludes.len() > MAX_PATTERNS || patterns.clone().any(|p| p.len() > MAX_PATTERN_BYTES) {
            return Err(Status::invalid_argument(format!(
                "the host named {} patterns for {name:?}, or one longer than {MAX_PATTERN_BYTES} bytes: the agent takes at \
                 most {MAX_PATTERNS}",
                includes.len() + excludes.len()
            )));
        }
        let filter = Filter {
            // The client's excludes always apply; only the names BuildKit must read pass them.
            client: dir.excludes.clone(),
            exempt: dir.exempt.clone(),
            only: dir.only.clone(),
            excludes: (!excludes.is_empty()).then(|| DockerIgnore::parse(&excludes.join("\n"))),
            includes: includes.iter().map(|pattern| pattern_segments(pattern)).collect(),
        };
        tracing::debug!(
            "BuildKit syncs {name:?}: excludes {excludes:?}, includes {:?}, followpaths {follow:?}",
            includes.len() - follow.len()
        );
        let root = dir.root.clone();
        let git = dir.git.clone();
        let entries = tokio::task::spawn_blocking(move || walk(&root, &filter, git.as_ref()))
            .await
            .map_err(|error| Status::internal(format!("the walk of {name:?} failed: {error}")))?
            .map_err(|error| Status::internal(format!("cannot read the directory {name:?}: {error}")))?;

        let (sender, receiver) = mpsc::channel::<Result<Packet, Status>>(QUEUE);
        let mut incoming = request.into_inner();
        // The receiver's requests are read at once, whatever the sender is doing: a receiver
        // blocked on sending REQs must never block the STATs it has yet to read.
        // Bounded by the files of the walk (each may be asked for once), each request kept without
        // its data, so that a host that stops reading while it sends cannot grow the agent's memory.
        let (requests_in, mut requests) = mpsc::channel::<Result<Packet, Status>>(entries.len() + EXTRA_REQUESTS);
        tokio::spawn(async move {
            while let Some(mut message) = incoming.next().await {
                let end = message.is_err();
                if let Ok(packet) = &mut message {
                    if packet.r#type != PacketType::PacketErr as i32 {
                        packet.data = Vec::new();
                    }
                    packet.stat = None;
                }
                if requests_in.send(message).await.is_err() || end {
                    break;
                }
            }
        });
        let counters = dir.counted.then(|| self.counters.clone());
        let named = frontend_reads(&follow);
        tokio::spawn(async move {
            let files: Vec<Option<(PathBuf, String, (u64, u64))>> = entries
                .iter()
                .map(|entry| {
                    (entry.stat.mode & (go_mode::DIR | go_mode::SYMLINK) == 0)
                        .then(|| (entry.path.clone(), entry.stat.path.clone(), entry.identity))
                })
                .collect();
            for entry in entries {
                let mut stat = packet(PacketType::PacketStat);
                stat.stat = Some(entry.stat);
                if sender.send(Ok(stat)).await.is_err() {
                    return;
                }
            }
            if sender.send(Ok(packet(PacketType::PacketStat))).await.is_err() {
                return;
            }
            let mut served = vec![false; files.len()];
            let readers = Arc::new(tokio::sync::Semaphore::new(READERS));
            while let Some(message) = requests.recv().await {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => {
                        tracing::debug!("the daemon's side of the sync ended: {status}");
                        return;
                    }
                };
                match PacketType::try_from(message.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let id = message.id as usize;
                        let Some(Some((path, relative, identity))) = files.get(id) else {
                            let _ = sender.send(Err(Status::invalid_argument(format!("invalid file id {id}")))).await;
                            return;
                        };
                        if std::mem::replace(&mut served[id], true) {
                            let _ =
                                sender.send(Err(Status::invalid_argument(format!("file id {id} asked twice")))).await;
                            return;
                        }
                        if let Some(counters) = &counters {
                            counters.sent(relative, named);
                        }
                        // Files are read on blocking threads, a few at a time, their packets
                        // interleaved (the receiver sorts them out by id), as fsutil's sender does.
                        let Ok(permit) = readers.clone().acquire_owned().await else { return };
                        let (sender, path, counters, id) = (sender.clone(), path.clone(), counters.clone(), message.id);
                        let identity = *identity;
                        tokio::task::spawn_blocking(move || {
                            if let Err(error) = send_file(&sender, id, &path, identity, counters.as_deref()) {
                                let mut failure = packet(PacketType::PacketErr);
                                failure.data = format!("cannot read {}: {error}", path.display()).into_bytes();
                                let _ = sender.blocking_send(Ok(failure));
                            }
                            drop(permit);
                        });
                    }
                    Ok(PacketType::PacketFin) => {
                        let listed = files.iter().flatten().count();
                        if let Some(counters) = counters.as_ref().filter(|_| !named && listed > 1) {
                            if served.iter().filter(|served| **served).count() == listed {
                                counters.every_file.store(true, Ordering::Relaxed);
                            }
                        }
                        // Every file asked for is sent before FIN (the receiver waits for them).
                        let _ = readers.acquire_many(READERS as u32).await;
                        if let Some(counters) = counters.as_ref().filter(|_| !named) {
                            let nanos = u64::try_from(called.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            counters.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
                        }
                        let _ = sender.send(Ok(packet(PacketType::PacketFin))).await;
                        return;
                    }
                    Ok(PacketType::PacketErr) => {
                        let text = String::from_utf8_lossy(&message.data).into_owned();
                        tracing::debug!("BuildKit's receiver failed: {text}");
                        let _ = sender.send(Err(Status::aborted(format!("error from receiver: {text}")))).await;
                        return;
                    }
                    _ => {}
                }
            }
        });
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn tar_stream(&self, _: Request<Streaming<Packet>>) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("the agent syncs by DiffCopy only"))
    }
}

/// The file's bytes as DATA packets, then the empty DATA that ends it (on a blocking thread).
fn send_file(
    sender: &mpsc::Sender<Result<Packet, Status>>,
    id: u32,
    path: &Path,
    identity: (u64, u64),
    counters: Option<&Counters>,
) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the session ended");
    // Not through a symlink, and only the file the walk saw (a file replaced since is not served).
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != identity || !meta.is_file() {
        return Err(std::io::Error::other("it was replaced since the walk listed it"));
    }
    loop {
        let mut data = vec![0u8; DATA_CHUNK];
        let mut filled = 0;
        while filled < DATA_CHUNK {
            let read = file.read(&mut data[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        data.truncate(filled);
        if let Some(counters) = counters {
            counters.bytes.fetch_add(filled as u64, Ordering::Relaxed);
        }
        let mut chunk = packet(PacketType::PacketData);
        chunk.id = id;
        chunk.data = data;
        sender.blocking_send(Ok(chunk)).map_err(|_| gone())?;
        if filled < DATA_CHUNK {
            break;
        }
    }
    let mut end = packet(PacketType::PacketData);
    end.id = id;
    sender.blocking_send(Ok(end)).map_err(|_| gone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_sent_are_kept_in_the_order_asked_and_the_frontends_reads_said_apart() {
        assert!(frontend_reads(&[".dockerignore".to_string()]));
        assert!(frontend_reads(&["Dockerfile.dockerignore".to_string(), ".dockerignore".to_string()]));
        assert!(!frontend_reads(&[]) && !frontend_reads(&["busybox".to_string(), "src".to_string()]));
        let counters = Counters::default();
        counters.sent(".dockerignore", true);
        counters.sent("src/b", false);
        counters.sent("src/a", false);
        counters.sent("src/b", false);
        assert_eq!(counters.files(), 3);
        assert_eq!(counters.paths(), [".dockerignore", "src/b", "src/a"]);
        assert_eq!(counters.synced_paths(), ["src/b", "src/a"]);
        // Asked by the build's sync too (a `COPY . /`): the build reads it.
        counters.sent(".dockerignore", false);
        assert_eq!(counters.synced_paths(), [".dockerignore", "src/b", "src/a"]);
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in files {
            let path = dir.path().join(name);
            if let Some(directory) = name.strip_suffix('/') {
                std::fs::create_dir_all(dir.path().join(directory)).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, name).unwrap();
            }
        }
        dir
    }

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|entry| entry.stat.path.as_str()).collect()
    }

    #[test]
    fn the_walk_is_in_fsutils_order_a_directory_before_its_entries() {
        let dir = tree(&["a.b", "a/b", "a/a", "B", "a-c/x"]);
        let entries = walk(dir.path(), &Filter::default(), None).unwrap();
        // Byte order per directory, depth first: "a" sorts before "a-c" and "a.b", and its
        // entries come right after it (not after "a.b" as a plain sort of paths would put them).
        assert_eq!(paths(&entries), ["B", "a", "a/a", "a/b", "a-c", "a-c/x", "a.b"]);
    }

    #[test]
    fn modes_are_gos_file_mode_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tree(&["run.sh", "sub/"]);
        std::fs::set_permissions(dir.path().join("run.sh"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("run.sh", dir.path().join("link")).unwrap();
        let entries = walk(dir.path(), &Filter::default(), None).unwrap();
        let by_path: HashMap<&str, &Stat> =
            entries.iter().map(|entry| (entry.stat.path.as_str(), &entry.stat)).collect();
        assert_eq!(by_path["run.sh"].mode, 0o755 | go_mode::SETUID);
        assert_eq!(by_path["run.sh"].size, 6);
        assert_eq!(by_path["sub"].mode & go_mode::DIR, go_mode::DIR);
        assert_eq!(by_path["sub"].size, 0);
        assert_eq!(by_path["link"].mode & go_mode::SYMLINK, go_mode::SYMLINK);
        assert_eq!(by_path["link"].linkname, "run.sh");
        assert!(entries.iter().all(|entry| entry.stat.uid == 0 && entry.stat.gid == 0));
        let mtime = std::fs::metadata(dir.path().join("run.sh")).unwrap().modified().unwrap();
        let nanos = mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(by_path["run.sh"].mod_time, nanos);
    }

    #[test]
    fn excludes_hold_and_exceptions_bring_back_files_with_their_directories() {
        let dir = tree(&["Dockerfile", "target/big", "target/keep.txt", "src/main.rs", "node_modules/x/y"]);
        let filter = Filter {
            client: Some(DockerIgnore::parse("target\nnode_modules\n!target/keep.txt\n")),
            ..Filter::default()
        };
        let entries = walk(dir.path(), &filter, None).unwrap();
        assert_eq!(paths(&entries), ["Dockerfile", "src", "src/main.rs", "target", "target/keep.txt"]);
    }

    #[test]
    fn followpaths_send_only_those_files_and_their_parents() {
        let dir = tree(&["docker/Dockerfile", "docker/other", "docker/Dockerfile.dockerignore", "x"]);
        let filter = Filter {
            includes: vec![pattern_segments("docker/Dockerfile"), pattern_segments("docker/Dockerfile.dockerignore")],
            ..Filter::default()
        };
        let entries = walk(dir.path(), &filter, None).unwrap();
        assert_eq!(paths(&entries), ["docker", "docker/Dockerfile", "docker/Dockerfile.dockerignore"]);
    }

    #[test]
    fn the_daemons_excludes_apply_too() {
        let dir = tree(&["a.log", "b.txt"]);
        let filter = Filter { excludes: Some(DockerIgnore::parse("*.log")), ..Filter::default() };
        assert_eq!(paths(&walk(dir.path(), &filter, None).unwrap()), ["b.txt"]);
    }

    #[test]
    fn encoded_metadata_is_unescaped() {
        assert_eq!(query_unescape("caf%C3%A9+bar"), "café bar");
        assert_eq!(query_unescape("100%"), "100%");
        assert_eq!(query_unescape("%zz"), "%zz");
    }
}
