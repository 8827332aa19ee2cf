//! The account the agent runs as, from /etc/passwd: its name (the SSH user when `DOCKER_HOST`
//! names none) and its home (where OpenSSH looks for `~/.ssh`, whatever `$HOME` says).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The current account's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub home: PathBuf,
}

/// The entry of the user running this process, if /etc/passwd has one (a `FROM scratch` image may not).
pub fn current() -> Option<Account> {
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    find(&passwd, uid)
}

/// The entry for `uid` in passwd-format text.
pub fn find(passwd: &str, uid: u32) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[2].parse::<u32>().ok()? != uid {
            return None;
        }
        Some(Account { name: fields[0].to_string(), home: PathBuf::from(fields[5]) })
    })
}

/// The user name for SSH when the URL names none: the account's, else `$USER`.
pub fn user_name() -> Option<String> {
    current().map(|account| account.name).or_else(|| std::env::var("USER").ok().filter(|user| !user.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_entry_for_a_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nbroken\nci:x:1000:1000::/home/ci:/bin/sh\n";
        assert_eq!(find(passwd, 1000), Some(Account { name: "ci".into(), home: "/home/ci".into() }));
        assert_eq!(find(passwd, 0).unwrap().home, PathBuf::from("/root"));
        assert_eq!(find(passwd, 5), None);
    }
}
