//! The model lifecycle through the real binary: `tessera serve
//! --initial-model`, `tessera model get` and `tessera join --model-out`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Server, scratch_dir, serve_args};
use safetensors::tensor::{Dtype, TensorView};

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
