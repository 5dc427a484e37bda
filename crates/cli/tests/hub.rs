//! Models from the Hub against a local stand-in for its file endpoint
//! (tests/support/hf_mock.py, reached through HF_ENDPOINT): `bora pull` lays files out in the
//! Hugging Face cache as the Python tools do, a partial download resumes where it stopped, a
//! file whose SHA-256 disagrees with the Hub's is refused and removed, a cached model runs with
//! no network, `bora list` and `bora rm` see and remove it, and an unreachable Hub is one
//! clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::*;

struct Mock {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn mock(dir: &Path, repos: &[(&str, PathBuf, bool)]) -> Mock {
    let port_file = dir.join("port");
    let log = dir.join("requests.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/hf_mock.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(&port_file).arg(&log);
    for (repo, d, bad) in repos {
        cmd.arg(format!(
            "{repo}={}{}",
            d.display(),
            if *bad { ":bad" } else { "" }
        ));
    }
    let child = cmd.spawn().expect("python3 runs the Hub stand-in");
    let t = Instant::now();
    while !port_file.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the Hub stand-in did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Mock { child, port, log }
}

fn bora(hf_home: &Path, endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pull_resume_checksum_offline_list_and_rm() {
    let dir = std::env::temp_dir().join(format!("bora-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hf_home = dir.join("hf");
    let gguf_dir = fixtures().join("tiny");
    let m = mock(
        &dir,
        &[
            ("test/tiny", tiny("mistral_swa"), false),
            ("test/gguf", gguf_dir.clone(), false),
            ("test/corrupt", gguf_dir.clone(), true),
        ],
    );
    let endpoint = format!("http://127.0.0.1:{}", m.port);

    // A partial blob from an interrupted download: the pull resumes it.
    let weights = std::fs::read(tiny("mistral_swa").join("model.safetensors")).unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&weights)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let blobs = hf_home.join("hub/models--test--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.part")), &weights[..100_000]).unwrap();
    let snapshot = PathBuf::from(ok(&bora(&hf_home, &endpoint, &["pull", "hf:test/tiny"])).trim());
    assert!(snapshot.starts_with(hf_home.join("hub/models--test--tiny/snapshots")));
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read_to_string(hf_home.join("hub/models--test--tiny/refs/main"))
            .unwrap()
            .trim(),
        "0123456789abcdef0123456789abcdef01234567"
    );
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("model.safetensors bytes=100000-")),
        "no resumed request:\n{log}"
    );

    // A GGUF file by name; then both run from the cache with the Hub out of reach.
    ok(&bora(
        &hf_home,
        &endpoint,
        &["pull", "hf:test/gguf:mistral_swa.q8_0.gguf"],
    ));
    let offline = "http://127.0.0.1:1";
    let run = |model: &str| {
        ok(&bora(
            &hf_home,
            offline,
            &[
                "run",
                model,
                "--ids",
                "1,5,9",
                "-n",
                "4",
                "--temp",
                "0",
                "--print-ids",
            ],
        ))
    };
    let local = |p: &Path| {
        ok(&Command::new(env!("CARGO_BIN_EXE_bora"))
            .arg("run")
            .arg(p)
            .args(["--ids", "1,5,9", "-n", "4", "--temp", "0", "--print-ids"])
            .output()
            .unwrap())
    };
    assert_eq!(run("hf:test/tiny"), local(&tiny("mistral_swa")));
    assert_eq!(
        run("hf:test/gguf:mistral_swa.q8_0.gguf"),
        local(&tiny("mistral_swa.q8_0.gguf"))
    );

    // A download whose content disagrees with the Hub's SHA-256 is refused and not kept.
    let out = bora(
        &hf_home,
        &endpoint,
        &["pull", "hf:test/corrupt:mistral_swa.q4_0.gguf"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        bora(
            &hf_home,
            offline,
            &["inspect", "hf:test/corrupt:mistral_swa.q4_0.gguf"]
        )
        .status
        .code()
            == Some(1),
        "the corrupt file is still in the cache"
    );

    // No network at all: one line that says so.
    let out = bora(&hf_home, offline, &["pull", "hf:test/absent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the Hugging Face Hub"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The cache, listed and cleaned.
    let list = ok(&bora(&hf_home, offline, &["list"]));
    assert!(
        list.contains("test/tiny") && list.contains("hf:test/gguf:mistral_swa.q8_0.gguf"),
        "{list}"
    );
    ok(&bora(
        &hf_home,
        offline,
        &["rm", "hf:test/gguf:mistral_swa.q8_0.gguf"],
    ));
    assert!(!ok(&bora(&hf_home, offline, &["list"])).contains("mistral_swa.q8_0.gguf"));
    ok(&bora(&hf_home, offline, &["rm", "hf:test/tiny"]));
    assert!(!hf_home.join("hub/models--test--tiny").exists());
    drop(m);
    std::fs::remove_dir_all(&dir).ok();
}
