//! `agent host idle-stop`: run on the Docker host by a systemd timer (examples/host/), it runs a
//! command (`systemctl poweroff`: an EBS-backed instance stops on an OS shutdown, so the host needs
//! no AWS permission) once the host has been idle for the given time, and never while a build runs.
//!
//! Idle means no client: no established TCP connection to the sshd's port(s) and no connection to
//! the daemon's socket but from a process of `--ignore-client` (a monitoring agent that holds the
//! socket open). Every build has one for its whole length — the agent's SSH connection, the
//! docker CLI's `ssh` or its socket connection — since BuildKit and the classic builder both cancel
//! a build whose client goes away; so a host with no client for 30 minutes has run no build for 30
//! minutes. The connections are read from the kernel's tables (`/proc/net/tcp`, `tcp6`; the socket's
//! through sock_diag, which also says which process holds each client's end: [`crate::host::sock_diag`]),
//! asking nothing of the daemon (which may be the thing that hangs).
//!
//! Each look is one run of `agent host idle-stop`: when anything is connected, the time is written to the
//! state file; otherwise the time since the one written is the idle time. The state file holds the
//! boot's id with the time, so that a boot starts the idle clock again wherever the file lives.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// What is connected to the host now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    /// Established TCP connections to one of the watched local ports (sshd's).
    pub ssh: usize,
    /// Connections to the daemon's socket, each with the process at its other end when known.
    pub daemon: Vec<SocketClient>,
    /// Connections to the daemon's socket from a process of `--ignore-client`: not counted.
    pub ignored: Vec<SocketClient>,
}

/// The client end of a connection to the daemon's socket: the process that holds it (its pid and
/// name), when the kernel's tables say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketClient {
    pub process: Option<(u32, String)>,
}

impl std::fmt::Display for SocketClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.process {
            Some((pid, name)) => write!(f, "{} (pid {pid})", crate::output::escape_controls(name)),
            None => f.write_str("a process not known"),
        }
    }
}

impl Clients {
    pub fn any(&self) -> bool {
        self.ssh + self.daemon.len() > 0
    }

    pub fn describe(&self) -> String {
        let plural = |count: usize, one: &str, many: &str| format!("{count} {}", if count == 1 { one } else { many });
        let mut text = format!(
            "{}, {}",
            plural(self.ssh, "SSH connection", "SSH connections"),
            plural(self.daemon.len(), "client of the daemon's socket", "clients of the daemon's socket")
        );
        if !self.daemon.is_empty() {
            text.push_str(&format!(" ({})", list(&self.daemon)));
        }
        text
    }
}

/// `a (pid 1), b (pid 2) ×3`: each process once, with its number of connections when more than one.
pub fn list(clients: &[SocketClient]) -> String {
    let mut counted: Vec<(&SocketClient, usize)> = Vec::new();
    for client in clients {
        match counted.iter_mut().find(|(seen, _)| *seen == client) {
            Some((_, count)) => *count += 1,
            None => counted.push((client, 1)),
        }
    }
    let shown = counted.iter().map(|(client, count)| match count {
        1 => client.to_string(),
        count => format!("{client} ×{count}"),
    });
    shown.collect::<Vec<_>>().join(", ")
}

/// Whether a process named `name` (`/proc/PID/comm`: at most 15 bytes, longer names cut) is one of
/// `ignored` (as given: a longer name matches its first 15 bytes).
fn is_ignored(name: &str, ignored: &[String]) -> bool {
    ignored.iter().any(|each| {
        each == name || (name.len() == 15 && each.len() > 15 && each.as_bytes().starts_with(name.as_bytes()))
    })
}

/// The connections to the watched ports and sockets, as the kernel lists them; connections to a
/// socket from a process named in `ignored` are listed apart.
pub fn clients(ports: &[u16], sockets: &[PathBuf], ignored: &[String]) -> Result<Clients, Error> {
    let mut found = Clients::default();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => found.ssh += established_to(&text, ports),
            // No IPv6 in this kernel: no tcp6 table.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(source) => {
                return Err(Error::LocalFile { action: "read", path: PathBuf::from(table), source, hint: None });
            }
        }
    }
    // The socket as bound: `/var/run/docker.sock` is `/run/docker.sock` through the usual symlink.
    let mut names: Vec<PathBuf> = Vec::new();
    for socket in sockets {
        names.push(socket.clone());
        if let Ok(real) = std::fs::canonicalize(socket) {
            names.push(real);
        }
    }
    // Who is at the other end: the kernel's sock_diag, then /proc/PID/fd. Without sock_diag (a
    // kernel without unix_diag), /proc/net/unix counts the connections, their processes unknown.
    let connections = match crate::host::sock_diag::connections(&names) {
        Ok(connections) => connections,
        Err(error) => {
            let why = format!("the kernel's sock_diag for Unix sockets answered {error}");
            if ignored.is_empty() {
                tracing::debug!("{why}; counting the daemon's socket's clients in /proc/net/unix");
            } else {
                tracing::warn!(
                    "{why}: the processes behind the daemon's socket's clients are not known, so --ignore-client \
                     leaves none out (load the unix_diag module: modprobe unix_diag)"
                );
            }
            let table = "/proc/net/unix";
            let text = std::fs::read_to_string(table).map_err(|source| Error::LocalFile {
                action: "read",
                path: PathBuf::from(table),
                source,
                hint: None,
            })?;
            let count = connected_to(&text, &names);
            found.daemon = vec![SocketClient { process: None }; count];
            return Ok(found);
        }
    };
    let peers: Vec<u32> = connections.iter().filter_map(|connection| connection.peer).collect();
    let owners = crate::host::sock_diag::owners(&peers);
    for connection in connections {
        let process = connection.peer.and_then(|peer| owners.get(&peer).cloned());
        let client = SocketClient { process };
        match &client.process {
            Some((_, name)) if is_ignored(name, ignored) => found.ignored.push(client),
            _ => found.daemon.push(client),
        }
    }
    Ok(found)
}

/// How many lines of a `/proc/net/tcp` table are established connections to a local port of `ports`.
pub fn established_to(table: &str, ports: &[u16]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            // 01: TCP_ESTABLISHED.
            fields.get(3) == Some(&"01") && local_port.is_some_and(|port| ports.contains(&port))
        })
        .count()
}

/// How many lines of `/proc/net/unix` are connected sockets bound to one of `paths`: the daemon's
/// side of each client's connection (it carries the listening socket's name; the listener itself
/// is unconnected, state 01).
pub fn connected_to(table: &str, paths: &[PathBuf]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 8 && fields[5] == "03" && paths.iter().any(|path| Path::new(fields[7]) == path.as_path())
        })
        .count()
}

/// The state file's record: the boot it was written in, and the last time a client was seen (in
/// milliseconds since the epoch).
fn read_state(path: &Path, boot: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (written_boot, seen) = text.trim().split_once(' ')?;
    (written_boot == boot).then(|| seen.parse().ok()).flatten()
}

fn write_state(path: &Path, boot: &str, seen: u64) -> Result<(), Error> {
    let failed = |source| Error::LocalFile { action: "write", path: path.to_path_buf(), source, hint: None };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    // Whole or not at all: written beside it, then renamed over it.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{boot} {seen}\n")).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
}

/// Milliseconds since the epoch: a look a second apart must not count as two seconds of idle.
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or_default()
}

/// What one look decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Something is connected: the idle clock starts again.
    Busy(Clients),
    /// Idle for this long, less than the limit.
    Idle(Duration),
    /// Idle for this long, at least the limit: the command is due.
    Due(Duration),
}

/// One look at `clients` (what is connected now): reads the state file, and writes it unless `dry`.
pub fn look(clients: Clients, boot: &str, state: &Path, after: Duration, dry: bool) -> Result<Verdict, Error> {
    let now = now();
    let write = |seen| if dry { Ok(()) } else { write_state(state, boot, seen) };
    if clients.any() {
        write(now)?;
        return Ok(Verdict::Busy(clients));
    }
    let Some(seen) = read_state(state, boot) else {
        // The first look of this boot: the idle clock starts now.
        write(now)?;
        return Ok(Verdict::Idle(Duration::ZERO));
    };
    let idle = Duration::from_millis(now.saturating_sub(seen));
    Ok(if idle >= after { Verdict::Due(idle) } else { Verdict::Idle(idle) })
}

/// Carries out `agent host idle-stop`.
pub fn run(args: &crate::cli::IdleStopArgs) -> Result<(), Error> {
    let after = args.after;
    let boot = boot_id();
    let now_connected = clients(&args.port, &args.socket, &args.ignore_client)?;
    if !now_connected.ignored.is_empty() {
        tracing::info!("not counted (--ignore-client): {}", list(&now_connected.ignored));
    }
    let verdict = look(now_connected, &boot, &args.state, after, args.dry)?;
    // Whole seconds: `12m 3s`, not `12m 3s 412ms`.
    let shown = |duration: Duration| humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string();
    match verdict {
        Verdict::Busy(clients) => {
            tracing::info!("busy: {}; the idle clock starts again", clients.describe());
            Ok(())
        }
        Verdict::Idle(idle) => {
            tracing::info!("idle for {} of {}: nothing to do yet", shown(idle), shown(after));
            Ok(())
        }
        Verdict::Due(idle) => {
            if args.dry {
                tracing::info!(
                    "idle for {} (at least {}): dry run, would run {:?}",
                    shown(idle),
                    shown(after),
                    args.command
                );
                return Ok(());
            }
            // A client that came in since the look keeps the host: looked at once more, right before.
            let clients = clients(&args.port, &args.socket, &args.ignore_client)?;
            if clients.any() {
                write_state(&args.state, &boot, now())?;
                tracing::info!("busy after all: {}; the idle clock starts again", clients.describe());
                return Ok(());
            }
            // Run once per idle period: the clock starts again from now, whatever the command does.
            write_state(&args.state, &boot, now())?;
            tracing::warn!("idle for {} (at least {}): running {:?}", shown(idle), shown(after), args.command);
            let status =
                std::process::Command::new("/bin/sh").arg("-c").arg(&args.command).status().map_err(|source| {
                    Error::LocalFile {
                        action: "run",
                        path: PathBuf::from("/bin/sh"),
                        source,
                        hint: Some("the command runs with /bin/sh -c".to_string()),
                    }
                })?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::IdleCommand { command: args.command.clone(), status: status.to_string() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0016 0100007F:D2F0 01 00000000:00000000 02:000A5E3B 00000000     0        0 2 4 0 20 4 30 10 -1
   2: 0100007F:D2F0 0100007F:0016 01 00000000:00000000 02:000A5E3B 00000000  1000        0 3 2 0 20 4 30 10 -1
   3: 0100007F:0016 0100007F:D2F2 06 00000000:00000000 03:00001688 00000000     0        0 0 3 0
";

    #[test]
    fn only_established_connections_to_a_watched_port_count() {
        // The listener (0A), the client's own side (local port D2F0) and one in TIME_WAIT (06) do not.
        assert_eq!(established_to(TCP, &[22]), 1);
        assert_eq!(established_to(TCP, &[2222]), 0);
    }

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 21040 /run/docker.sock
0000000000000000: 00000003 00000000 00000000 0001 03 98765 /run/docker.sock
0000000000000000: 00000003 00000000 00000000 0001 03 98764
0000000000000000: 00000003 00000000 00000000 0001 03 55555 /run/containerd/containerd.sock
";

    #[test]
    fn connected_sockets_bound_to_the_daemons_socket_count_and_its_listener_does_not() {
        assert_eq!(connected_to(UNIX, &[PathBuf::from("/run/docker.sock")]), 1);
        assert_eq!(connected_to(UNIX, &[PathBuf::from("/var/run/docker.sock")]), 0);
    }

    #[test]
    fn clients_are_listed_once_per_process() {
        let client = |pid: u32, name: &str| SocketClient { process: Some((pid, name.to_string())) };
        let clients = [client(7, "agent"), client(9, "docker"), client(7, "agent"), SocketClient { process: None }];
        assert_eq!(list(&clients), "agent (pid 7) ×2, docker (pid 9), a process not known");
    }

    #[test]
    fn an_ignored_name_matches_as_comm_cuts_it() {
        let ignored = ["datadog-agent".to_string(), "cloudwatch-agent-ctl".to_string()];
        assert!(is_ignored("datadog-agent", &ignored));
        assert!(!is_ignored("datadog", &ignored));
        assert!(is_ignored("cloudwatch-agen", &ignored), "comm keeps 15 bytes");
        assert!(!is_ignored("sshd", &ignored));
    }

    #[test]
    fn a_state_file_of_another_boot_starts_the_clock_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("idle");
        write_state(&state, "boot-a", 100).unwrap();
        assert_eq!(read_state(&state, "boot-a"), Some(100));
        assert_eq!(read_state(&state, "boot-b"), None);
        std::fs::write(&state, "garbage").unwrap();
        assert_eq!(read_state(&state, "boot-a"), None);
    }
}
