//! Snapshots of k3s's SQLite datastore, for rollbacks across k3s versions (k3s does not
//! support downgrades: an older k3s must get the datastore as it was before the newer one
//! touched it).
//!
//! A snapshot is a folder `<root>/<name>/` (name: `<slot>-<k3s version>`, the slot and k3s that
//! last wrote the datastore) holding copies of `state.db`, `state.db-wal` and `state.db-shm`
//! (those that exist) taken while k3s is stopped, so the three are one consistent state, and
//! `manifest.json` listing each file's size and sha256.
//!
//! The one idea: a folder named `<name>` is complete or absent. It is built as `.tmp-<name>`
//! (every file and the folder fsynced, the manifest written last), then renamed into place; a
//! snapshot it replaces is first renamed to `.old-<name>` and removed only after the new one is
//! in place. A power cut at any step leaves the previous complete snapshot (as `<name>` or
//! `.old-<name>`) or the new one, never a mix; [`restore`] checks every file against the
//! manifest and refuses anything else in one line. A restore is itself resumable: it leaves
//! a marker naming the snapshot until every file is in place, and [`resume`] finishes it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// The datastore's files, in the order they are copied; `state.db` must exist.
pub const FILES: [&str; 3] = ["state.db", "state.db-wal", "state.db-shm"];
const MANIFEST: &str = "manifest.json";
/// In the datastore folder while a restore runs: the snapshot folder being restored.
const RESTORING: &str = ".cairn-restoring";

/// The points a snapshot passes, where a test can cut the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One more file of the datastore is copied and fsynced into the temporary folder.
    Copied(&'static str),
    /// Every file is there; the manifest is next.
    BeforeManifest,
    /// The manifest is written; the temporary folder is renamed next.
    BeforeRename,
    /// A previous snapshot of the same name was moved aside; the new one goes in next.
    OldMovedAside,
}

/// Takes a snapshot of the datastore in `db_dir` as `<root>/<name>`, replacing one of that name.
/// k3s must not be running.
pub fn take(db_dir: &Path, root: &Path, name: &str) -> Result<PathBuf, String> {
    take_with(db_dir, root, name, &mut |_| true)
}

/// [`take`], calling `go` at every [`Step`]; `go` returning false stops there (a power cut).
pub fn take_with(
    db_dir: &Path,
    root: &Path,
    name: &str,
    go: &mut dyn FnMut(Step) -> bool,
) -> Result<PathBuf, String> {
    check_name(name)?;
    let cut = || Err("stopped".to_string());
    if !db_dir.join(FILES[0]).exists() {
        return Err(format!(
            "{} has no {}: nothing to snapshot",
            db_dir.display(),
            FILES[0]
        ));
    }
    fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| format!("removing {}: {e}", tmp.display()))?;
    }
    fs::create_dir(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut listed = Vec::new();
    for file in FILES {
        let from = db_dir.join(file);
        if !from.exists() {
            continue;
        }
        let (size, sha) = copy_synced(&from, &tmp.join(file))
            .map_err(|e| format!("copying {}: {e}", from.display()))?;
        listed.push(json!({"name": file, "size": size, "sha256": sha}));
        if !go(Step::Copied(file)) {
            return cut();
        }
    }
    if !go(Step::BeforeManifest) {
        return cut();
    }
    let manifest = json!({"format": 1, "name": name, "files": listed});
    let text = serde_json::to_vec_pretty(&manifest).expect("JSON");
    write_synced(&tmp.join(MANIFEST), &text).map_err(|e| format!("writing the manifest: {e}"))?;
    sync_dir(&tmp).map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    if !go(Step::BeforeRename) {
        return cut();
    }
    let dest = root.join(name);
    let old = root.join(format!(".old-{name}"));
    if dest.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| format!("removing {}: {e}", old.display()))?;
        }
        fs::rename(&dest, &old).map_err(|e| format!("moving {} aside: {e}", dest.display()))?;
        sync_dir(root).map_err(|e| format!("syncing {}: {e}", root.display()))?;
        if !go(Step::OldMovedAside) {
            return cut();
        }
    }
    fs::rename(&tmp, &dest).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    sync_dir(root).map_err(|e| format!("syncing {}: {e}", root.display()))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| format!("removing {}: {e}", old.display()))?;
    }
    Ok(dest)
}

/// The complete snapshot called `name`: `<root>/<name>`, or the one a cut-short replacement
/// left aside.
pub fn find(root: &Path, name: &str) -> Option<PathBuf> {
    [root.join(name), root.join(format!(".old-{name}"))]
        .into_iter()
        .find(|p| p.join(MANIFEST).exists())
}

/// Checks a snapshot folder against its manifest; returns the files it holds.
pub fn verify(snapshot: &Path) -> Result<Vec<String>, String> {
    let at = snapshot.display();
    let text = fs::read(snapshot.join(MANIFEST))
        .map_err(|e| format!("snapshot {at} is incomplete: no manifest ({e})"))?;
    let manifest: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("snapshot {at} is incomplete: its manifest is not JSON ({e})"))?;
    let files = manifest
        .get("files")
        .and_then(|f| f.as_array())
        .ok_or_else(|| format!("snapshot {at} is incomplete: its manifest lists no files"))?;
    let mut names = Vec::new();
    for f in files {
        let name = f.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if !FILES.contains(&name) {
            return Err(format!("snapshot {at}: its manifest names {name:?}"));
        }
        let (size, sha) = hash_file(&snapshot.join(name))
            .map_err(|e| format!("snapshot {at} is incomplete: {name}: {e}"))?;
        if Some(size) != f.get("size").and_then(|s| s.as_u64())
            || Some(sha.as_str()) != f.get("sha256").and_then(|s| s.as_str())
        {
            return Err(format!(
                "snapshot {at} is incomplete: {name} does not match its manifest"
            ));
        }
        names.push(name.to_string());
    }
    if !names.iter().any(|n| n == FILES[0]) {
        return Err(format!(
            "snapshot {at} is incomplete: it has no {}",
            FILES[0]
        ));
    }
    Ok(names)
}

/// Puts the datastore in `db_dir` back as `snapshot` holds it. k3s must not be running. The
/// snapshot is checked first; nothing in `db_dir` changes when it is refused.
pub fn restore(snapshot: &Path, db_dir: &Path) -> Result<(), String> {
    let names = verify(snapshot)?;
    fs::create_dir_all(db_dir).map_err(|e| format!("creating {}: {e}", db_dir.display()))?;
    let marker = db_dir.join(RESTORING);
    write_synced(&marker, snapshot.as_os_str().as_encoded_bytes())
        .map_err(|e| format!("writing {}: {e}", marker.display()))?;
    sync_dir(db_dir).map_err(|e| format!("syncing {}: {e}", db_dir.display()))?;
    finish_restore(snapshot, &names, db_dir)
}

/// Finishes a restore that a power cut interrupted (the marker names its snapshot). Returns
/// whether there was one.
pub fn resume(db_dir: &Path) -> Result<bool, String> {
    let marker = db_dir.join(RESTORING);
    let Ok(text) = fs::read(&marker) else {
        return Ok(false);
    };
    let snapshot = PathBuf::from(String::from_utf8_lossy(&text).into_owned());
    let names = verify(&snapshot)?;
    finish_restore(&snapshot, &names, db_dir)?;
    Ok(true)
}

fn finish_restore(snapshot: &Path, names: &[String], db_dir: &Path) -> Result<(), String> {
    let failed = |what: &str, e: io::Error| format!("restoring {}: {what}: {e}", db_dir.display());
    // Copies beside the live files first, so the live set changes only by renames.
    for name in names {
        copy_synced(
            &snapshot.join(name),
            &db_dir.join(format!("{name}.restore")),
        )
        .map_err(|e| failed(name, e))?;
    }
    // A WAL or shm of the newer datastore must not be applied to the older state.db.
    for file in FILES {
        if !names.iter().any(|n| n == file) {
            match fs::remove_file(db_dir.join(file)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(file, e)),
                _ => {}
            }
        }
    }
    for name in names {
        fs::rename(db_dir.join(format!("{name}.restore")), db_dir.join(name))
            .map_err(|e| failed(name, e))?;
    }
    sync_dir(db_dir).map_err(|e| failed("sync", e))?;
    fs::remove_file(db_dir.join(RESTORING)).map_err(|e| failed(RESTORING, e))?;
    sync_dir(db_dir).map_err(|e| failed("sync", e))?;
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!("{name:?} cannot name a snapshot")),
    }
}

/// Copies `from` to a new file `to`, fsyncs it; returns its size and sha256.
fn copy_synced(from: &Path, to: &Path) -> io::Result<(u64, String)> {
    let mut src = File::open(from)?;
    let mut dst = File::create(to)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += n as u64;
    }
    dst.sync_all()?;
    Ok((size, hex::encode(hash.finalize())))
}

fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex::encode(hash.finalize())));
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    //! Against real SQLite (Python's sqlite3 module, the library k3s's kine links too) in WAL
    //! mode: the writer exits without closing, as k3s does when stopped, so committed rows are
    //! in `state.db-wal` and not yet in `state.db`.
    use super::*;
    use std::process::Command;

    /// Runs Python with the datastore folder as `d`; prints what it prints.
    fn py(dir: &Path, body: &str) -> String {
        let script = format!(
            "import os, sqlite3, sys\nd = sys.argv[1]\n\
             c = sqlite3.connect(os.path.join(d, 'state.db'), isolation_level=None)\n\
             c.execute('PRAGMA journal_mode=WAL')\nc.execute('PRAGMA wal_autocheckpoint=0')\n{body}\n\
             sys.stdout.flush()\nos._exit(0)\n"
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .arg(dir)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn insert(dir: &Path, names: &[&str]) {
        let rows: Vec<String> = names.iter().map(|n| format!("('{n}')")).collect();
        py(
            dir,
            &format!(
                "c.execute('CREATE TABLE IF NOT EXISTS kine (name TEXT)')\n\
                 c.execute(\"INSERT INTO kine VALUES {}\")",
                rows.join(",")
            ),
        );
    }

    fn names(dir: &Path) -> Vec<String> {
        py(
            dir,
            "print(','.join(r[0] for r in c.execute('SELECT name FROM kine ORDER BY name')))",
        )
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
    }

    fn integrity(dir: &Path) -> String {
        py(
            dir,
            "print(c.execute('PRAGMA integrity_check').fetchone()[0])",
        )
        .trim()
        .to_string()
    }

    #[test]
    fn rows_before_the_snapshot_survive_a_restore_and_rows_after_are_gone() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        let root = t.path().join("snapshots");
        fs::create_dir(&db).unwrap();
        insert(&db, &["configmap-before", "deployment-before"]);
        assert!(db.join("state.db-wal").metadata().unwrap().len() > 0);

        // The rows are only in the WAL: a copy of state.db alone would lose them.
        let alone = t.path().join("alone");
        fs::create_dir(&alone).unwrap();
        fs::copy(db.join("state.db"), alone.join("state.db")).unwrap();
        assert!(py(&alone, "print(c.execute(\"SELECT count(*) FROM sqlite_master WHERE name='kine'\").fetchone()[0])").trim() == "0");

        let snap = take(&db, &root, "a-v1.30.6-k3s1").unwrap();
        assert_eq!(snap, root.join("a-v1.30.6-k3s1"));
        let held = verify(&snap).unwrap();
        assert!(held.contains(&"state.db-wal".to_string()), "{held:?}");

        insert(&db, &["deployment-after"]);
        assert_eq!(
            names(&db),
            ["configmap-before", "deployment-after", "deployment-before"]
        );
        restore(&find(&root, "a-v1.30.6-k3s1").unwrap(), &db).unwrap();
        assert_eq!(names(&db), ["configmap-before", "deployment-before"]);
        assert_eq!(integrity(&db), "ok");
        assert!(!db.join(RESTORING).exists());
        assert!(!resume(&db).unwrap());
    }

    #[test]
    fn a_power_cut_during_a_snapshot_leaves_the_old_or_the_new_one() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        fs::create_dir(&db).unwrap();
        insert(&db, &["one"]);
        // Every step a snapshot passes, where the power goes.
        let mut steps = Vec::new();
        take_with(&db, &t.path().join("count"), "a-v1", &mut |s| {
            steps.push(s);
            true
        })
        .unwrap();
        assert_eq!(
            steps,
            [
                Step::Copied("state.db"),
                Step::Copied("state.db-wal"),
                Step::Copied("state.db-shm"),
                Step::BeforeManifest,
                Step::BeforeRename,
                Step::OldMovedAside,
            ][..5]
        );
        for (i, cut_at) in steps
            .iter()
            .copied()
            .chain([Step::OldMovedAside])
            .enumerate()
        {
            let root = t.path().join(format!("cut{i}"));
            // The previous complete snapshot holds "one"; the new one would hold "two" too.
            take(&db, &root, "a-v1").unwrap();
            insert(&db, &["two"]);
            let e = take_with(&db, &root, "a-v1", &mut |s| s != cut_at).unwrap_err();
            assert_eq!(e, "stopped");
            // Whatever is found is complete, and it is the old one: the new one never made it.
            let found = find(&root, "a-v1").expect("the previous snapshot is still there");
            verify(&found).unwrap();
            let back = t.path().join(format!("back{i}"));
            restore(&found, &back).unwrap();
            assert_eq!(names(&back), ["one"], "cut at {cut_at:?}");
            assert_eq!(integrity(&back), "ok");
            // The half-made folder is refused, in one line.
            let tmp = root.join(".tmp-a-v1");
            // (Cut after its manifest, it is whole, but `find` does not take it: it was never
            // renamed into place, so it is not the snapshot yet.)
            if matches!(cut_at, Step::Copied(_) | Step::BeforeManifest) {
                let e = restore(&tmp, &back).unwrap_err();
                assert!(e.contains("is incomplete"), "{e}");
                assert!(!e.contains('\n'));
                assert_eq!(names(&back), ["one"], "a refused restore changes nothing");
            }
            // Taken again after the cut, the new snapshot replaces the old one.
            take(&db, &root, "a-v1").unwrap();
            let again = t.path().join(format!("again{i}"));
            restore(&find(&root, "a-v1").unwrap(), &again).unwrap();
            assert_eq!(names(&again), ["one", "two"]);
            py(&db, "c.execute(\"DELETE FROM kine WHERE name='two'\")");
        }
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_nothing_changes() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        let root = t.path().join("s");
        fs::create_dir(&db).unwrap();
        insert(&db, &["kept"]);
        let snap = take(&db, &root, "b-v2").unwrap();
        insert(&db, &["newer"]);
        let mut wal = fs::OpenOptions::new()
            .append(true)
            .open(snap.join("state.db-wal"))
            .unwrap();
        wal.write_all(b"x").unwrap();
        let e = restore(&snap, &db).unwrap_err();
        assert!(
            e.ends_with("is incomplete: state.db-wal does not match its manifest"),
            "{e}"
        );
        assert_eq!(names(&db), ["kept", "newer"]);
        fs::remove_file(snap.join(MANIFEST)).unwrap();
        let e = restore(&snap, &db).unwrap_err();
        assert!(e.contains("is incomplete: no manifest"), "{e}");
        assert!(take(&db, &root, "../x").is_err());
    }

    #[test]
    fn a_restore_cut_short_is_finished_by_resume() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        let root = t.path().join("s");
        fs::create_dir(&db).unwrap();
        insert(&db, &["before"]);
        let snap = take(&db, &root, "a-v1").unwrap();
        insert(&db, &["after"]);
        // The power went after the marker and one copy: the live files are still the newer ones.
        fs::write(db.join(RESTORING), snap.as_os_str().as_encoded_bytes()).unwrap();
        fs::copy(snap.join("state.db"), db.join("state.db.restore")).unwrap();
        assert!(resume(&db).unwrap());
        assert_eq!(names(&db), ["before"]);
        assert_eq!(integrity(&db), "ok");
    }
}
