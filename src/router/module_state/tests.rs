use super::*;

fn store() -> (ModuleStore, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "pronto-module-state-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let _ = std::fs::remove_dir_all(&dir);
    (ModuleStore::new(&dir.join("router.state")), dir)
}

fn read(store: &ModuleStore, name: &str, which: Which) -> Option<Vec<u8>> {
    std::fs::read(store.module_path(name, which).ok()?).ok()
}

#[test]
fn bindings_round_trip_and_absent_means_the_configuration() -> Result<()> {
    let (s, dir) = store();
    assert_eq!(s.bindings()?, None, "no file: the configuration's bindings");
    let kept = vec![
        Binding::new("192.200.1.0/24".parse()?, Role::Policy, "least_load"),
        Binding::new("192.200.2.0/24".parse()?, Role::Cost, "weighted_cost"),
    ];
    s.save_bindings(&kept)?;
    assert_eq!(s.bindings()?, Some(kept));
    // An empty set is kept as empty, not as "use the configuration".
    s.save_bindings(&[])?;
    assert_eq!(s.bindings()?, Some(vec![]));
    // The directory is the router's own.
    let mode = std::fs::metadata(s.dir())?.permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn a_broken_bindings_file_is_an_error_naming_the_entry() -> Result<()> {
    let (s, dir) = store();
    std::fs::create_dir_all(s.dir())?;
    std::fs::write(
        s.dir().join("bindings.toml"),
        "[[binding]]\nmodule = \"a\"\nsubnet = \"192.200.1.0/24\"\nrole = \"shaper\"\n",
    )?;
    let e = format!("{:#}", s.bindings().expect_err("an unknown role was taken"));
    assert!(e.contains("binding[0]") && e.contains("shaper"), "{e}");
    std::fs::write(s.dir().join("bindings.toml"), "[[binding]]\nmodule = 3\n")?;
    assert!(s.bindings().is_err());
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn module_files_follow_load_swap_rollback_and_remove() -> Result<()> {
    let (s, dir) = store();
    // Loaded at runtime: one file.
    s.loaded("m", b"v1")?;
    assert_eq!(read(&s, "m", Which::Active).as_deref(), Some(&b"v1"[..]));
    assert_eq!(read(&s, "m", Which::Previous), None);
    // Swapped: the active one becomes the previous.
    s.swapped("m", b"v2")?;
    assert_eq!(read(&s, "m", Which::Active).as_deref(), Some(&b"v2"[..]));
    assert_eq!(read(&s, "m", Which::Previous).as_deref(), Some(&b"v1"[..]));
    // Rolled back: they change places, twice over.
    assert!(s.rolled_back("m")?);
    assert_eq!(read(&s, "m", Which::Active).as_deref(), Some(&b"v1"[..]));
    assert_eq!(read(&s, "m", Which::Previous).as_deref(), Some(&b"v2"[..]));
    assert_eq!(s.module_names()?, BTreeSet::from(["m".to_owned()]));
    s.removed("m")?;
    assert!(s.module_names()?.is_empty());

    // A module of the configuration swapped at runtime: no previous file (the
    // configuration's version is the previous one); a rollback makes the
    // configuration's version active again, and keeps the swapped-in bytes.
    s.swapped("cfg", b"v2")?;
    assert_eq!(read(&s, "cfg", Which::Previous), None);
    assert!(s.rolled_back("cfg")?);
    assert_eq!(read(&s, "cfg", Which::Active), None);
    assert_eq!(
        read(&s, "cfg", Which::Previous).as_deref(),
        Some(&b"v2"[..])
    );
    // Nothing kept of a module only the configuration installs.
    assert!(!s.rolled_back("other")?);
    // Names that cannot be file names are refused.
    assert!(s.loaded("../x", b"v").is_err());
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
