//! Dropping a `Slapd` must stop the server and delete every file it made.
//! A binary of its own, because it points the temporary directory at a
//! private folder, which would confuse tests running beside it.

use std::net::TcpStream;

use mailvault_testkit::slapd::Slapd;

#[test]
fn drop_kills_the_server_and_removes_its_directory() {
    let private_tmp = std::env::temp_dir().join(format!("slapd-cleanup-{}", std::process::id()));
    std::fs::create_dir(&private_tmp).unwrap();
    // The only test in this binary, so no other thread reads the environment
    // meanwhile (setting it becomes `unsafe` in edition 2024 for that reason).
    std::env::set_var("TMPDIR", &private_tmp);

    let slapd = Slapd::start().unwrap();
    let address = slapd.url().trim_start_matches("ldap://").to_owned();
    assert_eq!(std::fs::read_dir(&private_tmp).unwrap().count(), 1);
    drop(slapd);

    assert!(TcpStream::connect(&address).is_err(), "still listening");
    let leftovers: Vec<_> = std::fs::read_dir(&private_tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::remove_dir(&private_tmp).unwrap();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
