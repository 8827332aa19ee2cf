//! Issue 26: the session's FileSync against a hostile daemon — one played by this test, speaking
//! FileSync's gRPC to the agent's own service as BuildKit does, but asking for what BuildKit never
//! asks: every file (`followpaths=**`), the whole directory above the context through the
//! Dockerfile's directory, a file swapped for a symlink after the walk, far too many patterns.
//! A real daemon cannot be made to misbehave this way.

use std::collections::HashMap;
use std::path::Path;

use agent::session::dockerignore::DockerIgnore;
use agent::session::filesync::{FileSyncer, build_dirs};
use bollard::fsutil::types::Packet;
use bollard::fsutil::types::packet::PacketType;
use bollard::moby::filesync::packet::file_sync_client::FileSyncClient;
use futures_util::StreamExt;

/// The agent's FileSync service for a build of `context` with `dockerfile`, on a loopback port.
async fn serve(context: &Path, dockerfile: &Path) -> String {
    let ignore = DockerIgnore::parse(&std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default());
    let (service, _) = FileSyncer::new(build_dirs(context, dockerfile, ignore, None)).service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

/// One DiffCopy call as a daemon makes it: the directory and its metadata; the paths of the STATs
/// the agent sends, then (after asking for each file in `fetch`, by its index) what each held.
async fn sync(
    address: &str,
    dir: &str,
    metadata: &[(&str, &str)],
    fetch: &[&str],
) -> Result<(Vec<String>, HashMap<String, Vec<u8>>), tonic::Status> {
    let mut client = FileSyncClient::connect(address.to_string()).await.unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::channel::<Packet>(16);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert("dir-name", dir.parse().unwrap());
    for (key, value) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()).unwrap();
        request.metadata_mut().append(key, value.parse().unwrap());
    }
    let mut incoming = client.diff_copy(request).await?.into_inner();
    let mut paths = Vec::new();
    let mut ids = HashMap::new();
    let mut index = 0u32;
    while let Some(packet) = incoming.next().await {
        let packet = packet?;
        match packet.stat {
            Some(stat) => {
                ids.insert(index, stat.path.clone());
                paths.push(stat.path);
                index += 1;
            }
            None => break,
        }
    }
    let mut contents = HashMap::new();
    for wanted in fetch {
        let Some((id, _)) = ids.iter().find(|(_, path)| path == wanted) else { continue };
        let req = Packet { r#type: PacketType::PacketReq as i32, stat: None, id: *id, data: Vec::new() };
        requests.send(req).await.unwrap();
        let mut data = Vec::new();
        while let Some(packet) = incoming.next().await {
            let packet = packet?;
            if packet.r#type == PacketType::PacketErr as i32 {
                return Err(tonic::Status::aborted(String::from_utf8_lossy(&packet.data).into_owned()));
            }
            if packet.data.is_empty() {
                break;
            }
            data.extend(packet.data);
        }
        contents.insert(wanted.to_string(), data);
    }
    let fin = Packet { r#type: PacketType::PacketFin as i32, stat: None, id: 0, data: Vec::new() };
    let _ = requests.send(fin).await;
    Ok((paths, contents))
}

/// checkout/secret-above.txt, checkout/Dockerfile.outside, checkout/app/{Dockerfile, .dockerignore,
/// app.txt, secret.env, private/key}: `.dockerignore` leaves out `secret.env` and `private`.
fn checkout(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let app = dir.join("app");
    std::fs::create_dir_all(app.join("private")).unwrap();
    std::fs::write(dir.join("secret-above.txt"), "above").unwrap();
    std::fs::write(dir.join("Dockerfile.outside"), "FROM scratch\n").unwrap();
    std::fs::write(app.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    std::fs::write(app.join(".dockerignore"), "secret.env\nprivate\n").unwrap();
    std::fs::write(app.join("app.txt"), "app").unwrap();
    std::fs::write(app.join("secret.env"), "TOKEN=hunter2").unwrap();
    std::fs::write(app.join("private/key"), "key").unwrap();
    (app.clone(), app.join("Dockerfile"))
}

#[tokio::test]
async fn an_ignored_file_is_never_served_whatever_the_daemon_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (context, dockerfile) = checkout(dir.path());
    let address = serve(&context, &dockerfile).await;
    for metadata in [
        vec![("followpaths", "**")],
        vec![("followpaths", "secret.env"), ("followpaths", "private/key")],
        vec![("include-patterns", "**")],
        vec![],
    ] {
        let (paths, _) = sync(&address, "context", &metadata, &[]).await.unwrap();
        assert!(
            !paths.iter().any(|path| path == "secret.env" || path.starts_with("private")),
            "{metadata:?}: {paths:?}"
        );
    }
    // The names BuildKit must read pass the excludes, and followpaths narrow the rest.
    let (paths, contents) =
        sync(&address, "context", &[("followpaths", ".dockerignore")], &[".dockerignore"]).await.unwrap();
    assert_eq!(paths, [".dockerignore"]);
    assert_eq!(contents[".dockerignore"], b"secret.env\nprivate\n");
    let (paths, _) = sync(&address, "context", &[], &[]).await.unwrap();
    assert!(paths.contains(&"app.txt".to_string()), "{paths:?}");
}

#[tokio::test]
async fn the_dockerfiles_directory_serves_only_the_dockerfile_and_its_ignore_files() {
    let dir = tempfile::tempdir().unwrap();
    let (context, _) = checkout(dir.path());
    // `-f ../Dockerfile.outside`: the Dockerfile's directory is the checkout above the context.
    let dockerfile = dir.path().join("Dockerfile.outside");
    let address = serve(&context, &dockerfile).await;
    for metadata in [vec![("followpaths", "**")], vec![], vec![("include-patterns", "*")]] {
        let (paths, _) = sync(&address, "dockerfile", &metadata, &[]).await.unwrap();
        assert_eq!(paths, ["Dockerfile.outside"], "{metadata:?}");
    }
}

#[tokio::test]
async fn a_file_swapped_for_a_symlink_after_the_walk_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (context, dockerfile) = checkout(dir.path());
    let address = serve(&context, &dockerfile).await;
    let mut client = FileSyncClient::connect(address.clone()).await.unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::channel::<Packet>(16);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert("dir-name", "context".parse().unwrap());
    let mut incoming = client.diff_copy(request).await.unwrap().into_inner();
    let mut id = None;
    let mut index = 0u32;
    while let Some(packet) = incoming.next().await {
        let Some(stat) = packet.unwrap().stat else { break };
        if stat.path == "app.txt" {
            id = Some(index);
        }
        index += 1;
    }
    // Between the walk and the request: app.txt becomes a link to the secret above the context.
    std::fs::remove_file(context.join("app.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret-above.txt"), context.join("app.txt")).unwrap();
    let req = Packet { r#type: PacketType::PacketReq as i32, stat: None, id: id.unwrap(), data: Vec::new() };
    requests.send(req).await.unwrap();
    let answer = incoming.next().await.unwrap().unwrap();
    assert_eq!(answer.r#type, PacketType::PacketErr as i32, "not served: {answer:?}");
    assert!(!String::from_utf8_lossy(&answer.data).contains("above"));
}

#[tokio::test]
async fn too_many_patterns_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (context, dockerfile) = checkout(dir.path());
    let address = serve(&context, &dockerfile).await;
    // Thousands of patterns do not even reach the service: the HTTP/2 server refuses their headers.
    let patterns: Vec<String> = (0..5000).map(|n| format!("dir{n}/**")).collect();
    let metadata: Vec<(&str, &str)> = patterns.iter().map(|pattern| ("include-patterns", pattern.as_str())).collect();
    assert!(sync(&address, "context", &metadata, &[]).await.is_err());
    // One pattern longer than the agent takes: a clear error.
    let long = "a".repeat(5000);
    let error = sync(&address, "context", &[("include-patterns", long.as_str())], &[]).await.unwrap_err();
    assert!(error.message().contains("the agent takes at most 4096"), "{error:?}");
    // Many `**` in one pattern cost steps, not time.
    let deep = format!("{}x", "**/".repeat(16));
    let started = std::time::Instant::now();
    sync(&address, "context", &[("include-patterns", deep.as_str())], &[]).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
}

/// This test process's resident memory, in bytes (nextest runs each test in a process of its own).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A daemon that asks for every file and then stops reading: the agent's sender waits within its
/// bounded queues (a few packets, four files read at once), and the requests it holds carry no
/// data, so that its memory stays flat however long the daemon stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_stops_reading_keeps_the_agent_under_64_mb() {
    let dir = tempfile::tempdir().unwrap();
    let (context, dockerfile) = checkout(dir.path());
    let blob = vec![7u8; 1024 * 1024];
    for n in 0..200 {
        std::fs::write(context.join(format!("blob{n:03}")), &blob).unwrap();
    }
    let address = serve(&context, &dockerfile).await;
    let before = resident();
    let mut client = FileSyncClient::connect(address).await.unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::channel::<Packet>(1024);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert("dir-name", "context".parse().unwrap());
    let mut incoming = client.diff_copy(request).await.unwrap().into_inner();
    let mut files = Vec::new();
    let mut index = 0u32;
    while let Some(packet) = incoming.next().await {
        let Some(stat) = packet.unwrap().stat else { break };
        if stat.path.starts_with("blob") {
            files.push(index);
        }
        index += 1;
    }
    // Every file asked for, each request padded as a hostile receiver may pad it; then silence.
    for id in files {
        let req = Packet { r#type: PacketType::PacketReq as i32, stat: None, id, data: vec![0; 60 * 1024] };
        requests.send(req).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let grown = resident().saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "the agent grew by {} MB", grown / (1024 * 1024));
}

/// A packet larger than any a receiver sends (here 1 MiB) ends the call: the service reads at most
/// 64 KiB of one.
#[tokio::test]
async fn an_oversized_packet_ends_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let (context, dockerfile) = checkout(dir.path());
    let address = serve(&context, &dockerfile).await;
    let mut client = FileSyncClient::connect(address).await.unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::channel::<Packet>(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    request.metadata_mut().insert("dir-name", "context".parse().unwrap());
    let mut incoming = client.diff_copy(request).await.unwrap().into_inner();
    while let Some(packet) = incoming.next().await {
        if packet.unwrap().stat.is_none() {
            break;
        }
    }
    let oversized = Packet { r#type: PacketType::PacketReq as i32, stat: None, id: 0, data: vec![0; 1024 * 1024] };
    let _ = requests.send(oversized).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), incoming.next()).await;
    assert!(matches!(next, Ok(Some(Err(_))) | Ok(None)), "the call must end: {next:?}");
}

/// A Docker daemon played by this test on a unix socket of its own: it answers the check (ping,
/// version, info), opens the BuildKit session, then answers the build with one endless line. The
/// agent must end with a clear error, its memory bounded.
mod endless {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const VERSION: &str =
        r#"{"Version":"26.1.5","ApiVersion":"1.45","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}"#;
    const INFO: &str = r#"{"Driver":"overlay2","Images":1,"OSType":"linux","Architecture":"x86_64"}"#;

    async fn answer(mut stream: tokio::net::UnixStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
        let reply = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nApi-Version: 1.45\r\n\r\n{body}",
                body.len()
            )
        };
        if path.ends_with("/_ping") {
            let _ = stream.write_all(reply("OK").as_bytes()).await;
        } else if path.ends_with("/version") {
            let _ = stream.write_all(reply(VERSION).as_bytes()).await;
        } else if path.ends_with("/info") {
            let _ = stream.write_all(reply(INFO).as_bytes()).await;
        } else if path.contains("/session") {
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                .await;
            // Holds the session open, never speaking.
            let mut sink = vec![0u8; 64 * 1024];
            while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
        } else if path.contains("/build") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 1024 * 1024, "y".repeat(1024 * 1024));
            // An endless line: 1 MiB chunks with no newline, until the agent hangs up.
            for _ in 0..4096 {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        } else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").await;
        }
    }

    pub fn start(socket: &Path) {
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(answer(stream));
                }
            });
        });
    }
}

/// Both builders' streams are read one bounded line at a time (the classic builder's too: its
/// stream is not bollard's to decode).
#[test]
fn an_endless_build_line_ends_with_a_clear_error_and_bounded_memory() {
    crate::world::World::shared();
    for builder in ["buildkit", "classic"] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        endless::start(&socket);
        let agent = crate::agent::Agent::new();
        std::fs::write(agent.work.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
        // GNU time reports the agent's peak resident memory (kB) on its last line.
        let report = dir.path().join("time.txt");
        let work = agent.work.path().to_str().unwrap().to_string();
        let outcome = agent
            .program(Path::new("/usr/bin/time"))
            .args(["-o", report.to_str().unwrap(), "-f", "%M"])
            .args([
                env!("CARGO_BIN_EXE_agent"),
                "run",
                "--image",
                "agent-it/endless",
                "--no-push",
                "--builder",
                builder,
            ])
            .args(["--context", work.as_str()])
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .run();
        outcome.expect_code(30);
        assert!(outcome.stderr.contains("sent a build message longer than"), "{builder}: {}", outcome.stderr);
        let peak_kb: u64 = std::fs::read_to_string(&report).unwrap().trim().lines().last().unwrap().parse().unwrap();
        assert!(peak_kb < 64 * 1024, "{builder}: the agent's peak memory was {} MB", peak_kb / 1024);
    }
}
