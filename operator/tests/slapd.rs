//! The test harness itself: it must come up, take LDIF, report failures
//! with their cause and leave nothing behind.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use mailvault_testkit::slapd::{Slapd, SUFFIX};

fn whoami(slapd: &Slapd, dn: &str, password: &str) -> std::process::Output {
    Command::new("ldapwhoami")
        .args(["-x", "-H", &slapd.url(), "-D", dn, "-w", password])
        .output()
        .unwrap()
}

#[test]
fn starts_and_accepts_the_root_bind() {
    let started = Instant::now();
    let slapd = Slapd::start().unwrap();
    eprintln!("slapd up in {:?}", started.elapsed());
    assert!(slapd.url().starts_with("ldap://127.0.0.1:"));
    assert_eq!(slapd.root_dn(), "cn=admin,dc=example,dc=org");
    assert!(slapd.root_password().len() >= 16);
    assert!(whoami(&slapd, slapd.root_dn(), slapd.root_password())
        .status
        .success());
    assert!(!whoami(&slapd, slapd.root_dn(), "wrong").status.success());
}

#[test]
fn two_servers_do_not_share_anything() {
    let a = Slapd::start().unwrap();
    let b = Slapd::start().unwrap();
    assert_ne!(a.url(), b.url());
    assert_ne!(a.root_password(), b.root_password());
    a.add_ldif(&format!(
        "dn: ou=only-a,{SUFFIX}\nobjectClass: organizationalUnit\nou: only-a\n"
    ))
    .unwrap();
    let search = |s: &Slapd| {
        Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &s.url(),
                "-b",
                SUFFIX,
                "(ou=only-a)",
                "dn",
            ])
            .output()
            .unwrap()
    };
    assert!(String::from_utf8_lossy(&search(&a).stdout).contains("ou=only-a"));
    assert!(!String::from_utf8_lossy(&search(&b).stdout).contains("ou=only-a"));
}

#[test]
fn schemas_for_people_and_posix_groups_are_loaded() {
    let slapd = Slapd::start().unwrap();
    slapd
        .add_ldif(&format!(
            "dn: uid=alice,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\nsn: A\n\
             mail: alice@example.org\n\n\
             dn: cn=ops,{SUFFIX}\nobjectClass: posixGroup\ncn: ops\ngidNumber: 1000\nmemberUid: alice\n"
        ))
        .unwrap();
}

#[test]
fn bad_ldif_is_reported_with_the_servers_reason() {
    let slapd = Slapd::start().unwrap();
    let error = slapd
        .add_ldif(&format!(
            "dn: uid=x,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: x\ncn: X\n"
        ))
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("ldapmodify"), "{message}");
    assert!(message.contains("requires attribute 'sn'"), "{message}");
}

#[test]
fn stop_closes_the_port() {
    let mut slapd = Slapd::start().unwrap();
    let address = slapd.url().trim_start_matches("ldap://").to_owned();
    slapd.stop();
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(&address).is_ok() {
        assert!(Instant::now() < deadline, "still listening after stop");
    }
}
