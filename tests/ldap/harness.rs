//! Shared harness of the LDAP tests: a throw-away slapd (`Slapd`, started by
//! `scripts/slapd.sh` in a temp dir on a free loopback port, killed by PID on
//! drop, also on panic), LDIF (`Ldif`, from `tests/support`), and configs for
//! the adapter.

#![allow(dead_code)] // not every test uses every helper

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idsync::source::ldap::{LdapConfig, LdapSettings};

pub use crate::support::ldap::Ldif;
pub use crate::support::process::{Output, free_port, wait_until};
use crate::support::process::{kill, run_bounded};

pub const SUFFIX: &str = "dc=example,dc=com";
pub const PEOPLE: &str = "ou=people,dc=example,dc=com";
pub const GROUPS: &str = "ou=groups,dc=example,dc=com";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
pub const ADMIN_PW: &str = "adminpass";
pub const SYNC_DN: &str = "cn=sync,dc=example,dc=com";
pub const SYNC_PW: &str = "syncpass";
/// An account whose searches stop at 1000 entries, paged or not.
pub const LIMITED_DN: &str = "cn=limited,dc=example,dc=com";
pub const LIMITED_PW: &str = "limitedpass";
/// The service account's size limit for unpaged searches (see scripts/slapd.sh).
pub const SYNC_SIZE_LIMIT: usize = 1000;
/// One LDAP client tool run may take this long.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slapd.sh")
}

/// A running slapd of our own. Dropping it stops it.
pub struct Slapd {
    // Declared first so it is dropped last: the server's files live here.
    dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    /// `ldaps://127.0.0.1:PORT` when started with TLS.
    pub ldaps_url: Option<String>,
}

impl Slapd {
    /// Starts a server with the base entries plus `ldif` (loaded offline with
    /// slapadd, so no overlays run on it).
    pub fn start(ldif: &str) -> Slapd {
        Slapd::start_with(ldif, false)
    }

    /// Like `start`, with TLS: LDAPS on a second port and StartTLS on the first,
    /// with a certificate from a throw-away CA (`ca_file()`).
    pub fn start_tls(ldif: &str) -> Slapd {
        Slapd::start_with(ldif, true)
    }

    fn start_with(ldif: &str, tls: bool) -> Slapd {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data.ldif");
        std::fs::write(&data, ldif).expect("write LDIF");
        // A port picked free can be taken before slapd binds it: try a few.
        let mut last = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let ldaps_port = free_port();
            let server_dir = dir.path().join(format!("slapd-{attempt}"));
            let mut command = Command::new("bash");
            command
                .arg(script())
                .arg("start")
                .arg(&server_dir)
                .arg(port.to_string());
            if tls {
                command.arg("--ldaps-port").arg(ldaps_port.to_string());
            }
            let out = command
                .arg(&data)
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/slapd.sh");
            if out.status.success() {
                let slapd = Slapd {
                    dir,
                    port,
                    url: format!("ldap://127.0.0.1:{port}"),
                    ldaps_url: tls.then(|| format!("ldaps://127.0.0.1:{ldaps_port}")),
                };
                // The server directory is the attempt's; remember it for stop.
                std::fs::write(
                    slapd.dir.path().join("server-dir"),
                    server_dir.as_os_str().as_encoded_bytes(),
                )
                .expect("note server dir");
                return slapd;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        panic!("slapd did not start:\n{last}");
    }

    fn server_dir(&self) -> PathBuf {
        PathBuf::from(
            std::fs::read_to_string(self.dir.path().join("server-dir")).expect("server dir"),
        )
    }

    /// slapd's process id.
    pub fn pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.server_dir().join("slapd.pid")).expect("pid file");
        text.trim().parse().expect("a pid")
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to this slapd.
    /// `STOP` returns once every thread of it has stopped (a stop is delivered
    /// asynchronously), `CONT` once it runs again; both wait at most 5 s.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = kill(signal, pid).expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let want_stopped = match signal {
            "STOP" => true,
            "CONT" => false,
            _ => return,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat"))
                            .ok()
                            .and_then(|stat| {
                                stat.rsplit_once(") ")
                                    .and_then(|(_, rest)| rest.chars().next())
                            })
                            .is_some_and(|state| state == 'T')
                    })
                })
                .unwrap_or(false);
            if stopped == want_stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slapd {pid} did not {} within 5 s",
                if want_stopped { "stop" } else { "resume" }
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The PEM file of the CA that signed the server's certificate (TLS only).
    pub fn ca_file(&self) -> PathBuf {
        self.server_dir().join("tls/ca.pem")
    }

    /// A password file with the sync account's password.
    pub fn sync_password_file(&self) -> PathBuf {
        self.password_file("sync.pw", SYNC_PW)
    }

    /// A file holding `password`, readable by the owner only.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{password}\n")).expect("write password file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Settings for the adapter: the sync account, plus `extra` YAML lines.
    pub fn settings(&self, extra: &str) -> LdapSettings {
        let pw = self.password_file("sync.pw", SYNC_PW);
        settings_for(&self.url, &pw, extra)
    }

    /// Settings for the adapter that bind as `bind_dn` with `password`.
    pub fn settings_as(&self, bind_dn: &str, password: &str, extra: &str) -> LdapSettings {
        let pw = self.password_file("other.pw", password);
        settings_for(&self.url, &pw, &format!("bind_dn: {bind_dn}\n{extra}"))
    }

    /// Runs an OpenLDAP client tool against this server (bounded: 60 s);
    /// returns its output.
    pub fn tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = crate::support::ldap::client(tool, &self.url, 10);
        cmd.args(args);
        run_bounded(cmd, TOOL_TIMEOUT, stdin)
    }

    /// A plain (unpaged) search of every person under `PEOPLE`, as the sync
    /// account: it stops at the size limit.
    pub fn plain_search_as_sync(&self) -> Output {
        let args = [
            "-D",
            SYNC_DN,
            "-w",
            SYNC_PW,
            "-b",
            PEOPLE,
            "(objectClass=inetOrgPerson)",
            "1.1",
        ];
        self.tool("ldapsearch", &args, None)
    }

    /// Applies an LDIF change (add/modify/modrdn) as the rootdn.
    pub fn modify(&self, ldif: &str) {
        let out = self.tool("ldapmodify", &["-D", ADMIN_DN, "-w", ADMIN_PW], Some(ldif));
        assert_eq!(out.code, 0, "ldapmodify failed: {}", out.stderr);
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let server_dir = self.server_dir();
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&server_dir)
            .stdin(Stdio::null())
            .output();
        // Belt and braces: if the script could not run, kill by the PID it recorded.
        if let Ok(pid) = std::fs::read_to_string(server_dir.join("slapd.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            let _ = kill("KILL", pid);
        }
    }
}

pub fn settings_for(url: &str, password_file: &Path, extra: &str) -> LdapSettings {
    let mut yaml = format!(
        "url: {url}\nbind_password_file: {}\nbase_dn: {SUFFIX}\n{extra}",
        password_file.display()
    );
    // Defaults for what `extra` leaves out.
    if !extra.contains("bind_dn:") {
        yaml.push_str(&format!("bind_dn: {SYNC_DN}\n"));
    }
    if !extra.contains("timeout:") {
        yaml.push_str("timeout: 10s\n");
    }
    let config: LdapConfig = serde_saphyr::from_str(&yaml).expect("test config parses");
    config
        .compile(Path::new("/"))
        .expect("test config compiles")
}

/// First and last names that exercise UTF-8 handling.
pub const NAMES: [(&str, &str); 5] = [
    ("Jörg", "Müller"),
    ("Inés", "Nuñez"),
    ("Søren", "Østergaard"),
    ("Ann", "Smith"),
    ("Zoë", "Łukasiewicz"),
];

/// One generated person.
pub struct Person {
    pub dn: String,
    pub uid: String,
    pub given: &'static str,
    pub family: &'static str,
    pub mail: Option<String>,
}

/// Users 1..=n: every 10th has no mail, users 2 and 3 share one mail address,
/// and every 500th has a non-ASCII DN (`cn=…`) instead of `uid=…`.
pub fn people(n: usize) -> Vec<Person> {
    (1..=n)
        .map(|i| {
            let (given, family) = NAMES[i % NAMES.len()];
            let uid = format!("user{i:05}");
            let dn = if i % 500 == 0 {
                format!("cn={given} {family} {i},{PEOPLE}")
            } else {
                format!("uid={uid},{PEOPLE}")
            };
            let mail = match i {
                2 | 3 => Some("shared@example.com".to_string()),
                _ if i % 10 == 0 => None,
                _ => Some(format!("{uid}@example.com")),
            };
            Person {
                dn,
                uid,
                given,
                family,
                mail,
            }
        })
        .collect()
}

pub fn add_people(ldif: &mut Ldif, people: &[Person]) {
    for p in people {
        let cn = format!(
            "{} {} {}",
            p.given,
            p.family,
            &p.uid[4..].trim_start_matches('0')
        );
        let mut attrs = vec![
            ("objectClass", "inetOrgPerson"),
            ("uid", p.uid.as_str()),
            ("cn", cn.as_str()),
            ("givenName", p.given),
            ("sn", p.family),
            ("title", "Engineer"),
        ];
        if let Some(mail) = &p.mail {
            attrs.push(("mail", mail.as_str()));
        }
        ldif.entry(&p.dn, &attrs);
    }
}
