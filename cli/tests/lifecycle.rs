//! The model lifecycle through the real binary: `tessera serve
//! --initial-model`, `tessera model get` and `tessera join --model-out`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{Server, scratch_dir, serve_args};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// A safetensors file at `path` of `(name, dtype, shape, bytes)` tensors.
fn write_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The tensors of a small network, named and laid out as PyTorch's
/// `state_dict` has them, in a non-alphabetical file order; values from
/// `base` up.
fn net(base: f32) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
    let values =
        |n: usize, from: f32| f32s(&(0..n).map(|i| from + i as f32 / 8.0).collect::<Vec<_>>());
    vec![
        ("fc2.weight", Dtype::F32, vec![2, 3], values(6, base)),
        ("fc1.weight", Dtype::F32, vec![3, 4], values(12, base + 1.0)),
        ("fc1.bias", Dtype::F32, vec![3], values(3, base + 2.0)),
        ("fc2.bias", Dtype::F32, vec![2], values(2, base + 3.0)),
    ]
}

/// `tessera serve` on `dir` that must fail at start; its output.
fn serve_fails(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(serve_args(dir, args))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    out
}

#[test]
fn an_initial_model_with_a_float64_tensor_is_refused_naming_it() {
    let dir = scratch_dir("initial-f64");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.safetensors");
    let mut tensors = net(0.0);
    tensors.push((
        "bn.running_var",
        Dtype::F64,
        vec![1],
        1.0f64.to_le_bytes().to_vec(),
    ));
    write_file(&file, &tensors);
    let out = serve_fails(
        &dir.join("data"),
        &["--initial-model", file.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"bn.running_var\" is F64") && err.contains("float32"),
        "{err}"
    );
    assert!(!dir.join("data").exists(), "no data directory is made");
}

#[test]
fn a_restart_takes_the_same_initial_model_and_refuses_another() {
    let dir = scratch_dir("initial-restart");
    std::fs::create_dir_all(&dir).unwrap();
    let (file, other) = (dir.join("m.safetensors"), dir.join("other.safetensors"));
    write_file(&file, &net(0.0));
    write_file(&other, &net(0.5));
    let data = dir.join("data");
    let args = ["--initial-model", file.to_str().unwrap(), "--log", "info"];
    for _ in 0..2 {
        // The first start publishes version 1 from the file; the second
        // finds it stored and starts.
        let mut server = Server::start(&data, &args);
        server.wait_for("serving");
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
    let out = serve_fails(&data, &["--initial-model", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    for what in ["already holds models", "other.safetensors", "--data-dir"] {
        assert!(err.contains(what), "{what}: {err}");
    }
    // A --dim the file disagrees with is a usage error.
    let out = serve_fails(
        &dir.join("data2"),
        &["--initial-model", file.to_str().unwrap(), "--dim", "7"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("23 values"), "{err}");
}

/// Reads a safetensors file's tensors: name to (shape, values).
fn read_file(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// The safetensors file's metadata.
fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// A float32 .npy file of `values` (one dimension).
fn write_npy(path: &Path, values: &[f32]) {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    while (10 + header.len() + 1) % 16 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(f32s(values));
    std::fs::write(path, bytes).unwrap();
}

/// `tessera token` for `name` into `tokens`, written to `NAME.token`
/// beside it; that file.
fn make_token(tokens: &Path, name: &str) -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["token", "--tokens-file"])
        .arg(tokens)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = tokens.with_file_name(format!("{name}.token"));
    std::fs::write(&file, out.stdout).unwrap();
    file
}

/// A TLS deployment under `dir`: `tls/cert.pem`, `tls/key.pem` for
/// localhost, and a tokens file.
struct Deployment {
    dir: std::path::PathBuf,
}

impl Deployment {
    fn new(name: &str) -> Deployment {
        let dir = scratch_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["cert", "--host", "localhost", "--out"])
            .arg(dir.join("tls"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Deployment { dir }
    }

    fn tokens(&self) -> std::path::PathBuf {
        self.dir.join("tokens.txt")
    }

    /// `tessera serve` over TLS with the tokens file, and `extra`.
    fn serve(&self, extra: &[&std::ffi::OsStr]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--log", "info"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--tls-cert")
            .arg(self.dir.join("tls/cert.pem"))
            .arg("--tls-key")
            .arg(self.dir.join("tls/key.pem"))
            .arg("--tokens-file")
            .arg(self.tokens())
            .args(extra);
        Server::spawn(command)
    }

    /// A client command (`join`, `model get`) to `addr` over TLS with
    /// `token`.
    fn client(&self, args: &[&str], addr: &str, token: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(args)
            .args([
                "--server",
                &format!("https://{addr}"),
                "--tls-domain",
                "localhost",
            ])
            .arg("--ca-cert")
            .arg(self.dir.join("tls/cert.pem"))
            .arg("--token-file")
            .arg(token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// `values` of each tensor, flattened in name order (the documented flat
/// order).
fn flat_in_name_order(tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<f32> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    names.iter().flat_map(|n| tensors[*n].1.clone()).collect()
}

/// Serve an initial model of several named tensors over TLS with tokens;
/// three clients run a round (one writing the model it trained from with
/// --model-out); `tessera model get` returns the file's names and shapes
/// with the FedAvg of the updates, each value under its own name, and
/// names what is wrong when the version, the token or the server is.
#[test]
fn an_initial_model_trains_over_tls_and_model_get_returns_its_names_with_fedavg_values() {
    let d = Deployment::new("lifecycle-e2e");
    let initial = d.dir.join("initial.safetensors");
    write_file(&initial, &net(0.0));
    let start = read_file(&initial);
    let names = ["alice", "bob", "carol"];
    let tokens: Vec<_> = names.iter().map(|n| make_token(&d.tokens(), n)).collect();
    let observer = make_token(&d.tokens(), "observer");
    let mut server = d.serve(&[
        "--initial-model".as_ref(),
        initial.as_os_str(),
        "--min-clients".as_ref(),
        "3".as_ref(),
    ]);

    // Client k's update: every value of tensor t is (k + 1) * 0.01 * (t + 1)
    // for the t-th name in name order, so a value under the wrong name
    // shows.
    let mut sorted: Vec<&String> = start.keys().collect();
    sorted.sort();
    let update = |k: usize| -> Vec<f32> {
        sorted
            .iter()
            .enumerate()
            .flat_map(|(t, n)| vec![(k + 1) as f32 * 0.01 * (t + 1) as f32; start[*n].1.len()])
            .collect()
    };
    let model_out = d.dir.join("trained-from.safetensors");
    let joins: Vec<Child> = tokens
        .iter()
        .enumerate()
        .map(|(k, token)| {
            let npy = d.dir.join(format!("update-{k}.npy"));
            write_npy(&npy, &update(k));
            let mut join = d.client(
                &["join", "--update", npy.to_str().unwrap()],
                &server.addr,
                token,
            );
            if k == 0 {
                join.arg("--model-out").arg(&model_out);
            }
            join.spawn().unwrap()
        })
        .collect();
    for join in joins {
        let out = join.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("model version 2 published"),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The model client 0 trained from: the initial one, names, shapes and
    // values.
    assert_eq!(read_file(&model_out), start);
    assert_eq!(metadata(&model_out)["version"], "1");

    let got_file = d.dir.join("got.safetensors");
    let get = |extra: &[&str], token: &Path| {
        let mut args = vec!["model", "get", "--out", got_file.to_str().unwrap()];
        args.extend_from_slice(extra);
        d.client(&args, &server.addr, token).output().unwrap()
    };
    let out = get(&[], &observer);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("model version 2"));
    let got = read_file(&got_file);
    assert_eq!(metadata(&got_file)["version"], "2");
    let mean: Vec<f32> = (0..3).map(update).fold(vec![0.0; 23], |acc, u| {
        acc.iter().zip(&u).map(|(a, b)| a + b / 3.0).collect()
    });
    let want: Vec<f32> = flat_in_name_order(&start)
        .iter()
        .zip(&mean)
        .map(|(w, m)| w + m)
        .collect();
    let mut shapes: Vec<(&String, &Vec<usize>)> = got.iter().map(|(n, (s, _))| (n, s)).collect();
    let mut start_shapes: Vec<(&String, &Vec<usize>)> =
        start.iter().map(|(n, (s, _))| (n, s)).collect();
    shapes.sort();
    start_shapes.sort();
    assert_eq!(shapes, start_shapes, "the file's names and shapes");
    for (g, w) in flat_in_name_order(&got).iter().zip(&want) {
        // Fixed point at 2^-16 with randomized rounding, three clients.
        assert!((g - w).abs() < 1e-3, "{g} vs {w}");
    }
    assert!(
        !std::fs::read_dir(&d.dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temporary file is left"
    );

    // An older version, by number: the initial model, unchanged.
    assert!(get(&["--version", "1"], &observer).status.success());
    assert_eq!(read_file(&got_file), start);

    // A symlink planted at the output path and at its temporary file (a
    // shared directory): the model replaces the link, and the file it
    // pointed to is never written.
    #[cfg(unix)]
    {
        let victim = d.dir.join("victim.txt");
        std::fs::write(&victim, "not a model").unwrap();
        std::fs::remove_file(&got_file).unwrap();
        std::os::unix::fs::symlink(&victim, &got_file).unwrap();
        let tmp = d.dir.join("got.safetensors.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        assert!(get(&["--version", "1"], &observer).status.success());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not a model");
        let meta = std::fs::symlink_metadata(&got_file).unwrap();
        assert!(meta.file_type().is_file(), "the link was replaced");
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "no temporary left"
        );
        assert_eq!(read_file(&got_file), start);
    }

    // No such version; a refused token; an unreachable server.
    let out = get(&["--version", "9"], &observer);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no model version 9"), "{err}");
    assert_eq!(read_file(&got_file), start, "a failed get leaves the file");
    let forged = d.dir.join("forged.token");
    std::fs::write(&forged, "tsr_not-a-token").unwrap();
    let out = get(&[], &forged);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused the client's credentials"), "{err}");
    assert!(
        !err.contains("tsr_not-a-token"),
        "no token in errors: {err}"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let out = get(&[], &observer);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach the server"), "{err}");
}

/// `join --model-out` replaces the file each round with the model that
/// round trains from: after two rounds it holds version 2.
#[test]
fn join_model_out_is_replaced_each_round() {
    let dir = scratch_dir("model-out");
    std::fs::create_dir_all(&dir).unwrap();
    let initial = dir.join("initial.safetensors");
    write_file(&initial, &net(0.0));
    let mut server = Server::start(
        &dir.join("data"),
        &[
            "--initial-model",
            initial.to_str().unwrap(),
            "--min-clients",
            "3",
            "--rounds",
            "2",
        ],
    );
    let out = dir.join("global.safetensors");
    let joins: Vec<Child> = (0..3)
        .map(|k| {
            let mut join = Command::new(env!("CARGO_BIN_EXE_tessera"));
            join.args(["join", "--server", &format!("http://{}", server.addr)])
                .args(["--random", "23", "--rounds", "2"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if k == 0 {
                join.arg("--model-out").arg(&out);
            }
            join.spawn().unwrap()
        })
        .collect();
    for join in joins {
        let done = join.wait_with_output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    assert!(server.child.wait().unwrap().success());
    assert_eq!(metadata(&out)["version"], "2", "the second round's model");
    let got = read_file(&out);
    let start = read_file(&initial);
    assert_eq!(
        got.iter()
            .map(|(n, (s, _))| (n, s))
            .collect::<HashMap<_, _>>(),
        start
            .iter()
            .map(|(n, (s, _))| (n, s))
            .collect::<HashMap<_, _>>()
    );
    assert_ne!(got, start, "round 1's update is in it");
    assert!(!dir.join("global.safetensors.tmp").exists());
}
