//! `tessera._native.Server`: `tessera_server::start` in process, on the
//! server's own runtime, with its settings read through the server's one
//! settings source (see `crate::settings`).

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rand::SeedableRng;
use tessera_server::config::ServerOverrides;
use tessera_server::{RunningServer, ServerConfig, ServerControl, auth};

use crate::errors::raise;

/// A server running in this process (see `tessera.Server`).
#[pyclass(module = "tessera._native", frozen)]
pub(crate) struct Server {
    runtime: tokio::runtime::Runtime,
    /// `None` once stopped.
    running: Mutex<Option<RunningServer>>,
    control: ServerControl,
    url: String,
    tokens_file: Option<PathBuf>,
    data_dir: PathBuf,
    /// The data directory made for a server given none, removed with it.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Why the server could not start or stopped, as `tessera.ServerError`
/// (a configuration error as `tessera.InvalidInput`).
fn serve_error(e: tessera_server::ServeError) -> PyErr {
    match e {
        tessera_server::ServeError::Config(e) => raise("InvalidInput", e.to_string()),
        other => raise("ServerError", other.to_string()),
    }
}

#[pymethods]
impl Server {
    /// Starts a server: `settings` (keywords, TOML keys) over the TOML file
    /// `config` over the defaults; the command-line-only switches as
    /// booleans. Without `listen` it listens on 127.0.0.1 with a free port;
    /// without `data_dir` it keeps its state in a temporary directory
    /// removed when the server is dropped.
    #[new]
    #[pyo3(signature = (config, settings, insecure_dev, raise_budget, recompute_delta))]
    fn new(
        py: Python<'_>,
        config: Option<PathBuf>,
        settings: &Bound<'_, PyDict>,
        insecure_dev: bool,
        raise_budget: bool,
        recompute_delta: bool,
    ) -> PyResult<Self> {
        let file = match &config {
            Some(path) => ServerOverrides::from_file(path)
                .map_err(|e| raise("InvalidInput", e.to_string()))?,
            None => ServerOverrides::default(),
        };
        let mut overrides = crate::settings::from_kwargs(settings)?.or(file);
        overrides.insecure_dev = insecure_dev;
        overrides.raise_budget = raise_budget;
        overrides.recompute_delta = recompute_delta;
        if overrides.listen.is_none() {
            overrides.listen = Some("127.0.0.1:0".parse().expect("an address"));
        }
        let temp = match overrides.data_dir {
            Some(_) => None,
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("tessera-server-")
                    .tempdir()
                    .map_err(|e| {
                        raise("ServerError", format!("cannot make a data directory: {e}"))
                    })?;
                overrides.data_dir = Some(temp.path().join("data"));
                Some(temp)
            }
        };
        let config = ServerConfig::from_overrides(overrides);
        let tls = config.network.tls_cert.is_some();
        let tokens_file = config.network.tokens_file.clone();
        let data_dir = config.data_dir.clone();
        let runtime = crate::runtime("server")?;
        let running = py
            .detach(|| runtime.block_on(tessera_server::start(config)))
            .map_err(serve_error)?;
        let addr = running.local_addr();
        let url = format!("{}://{addr}", if tls { "https" } else { "http" });
        Ok(Server {
            control: running.control(),
            runtime,
            running: Mutex::new(Some(running)),
            url,
            tokens_file,
            data_dir,
            _temp: temp,
        })
    }

    /// The URL clients dial.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// The data directory.
    #[getter]
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// Makes a token for client `name`, appends its hash to the tokens file
    /// and reloads it, and returns the token (shown once, never stored).
    #[pyo3(signature = (name, expires_in=None))]
    fn mint_token(&self, name: &str, expires_in: Option<f64>) -> PyResult<String> {
        let Some(path) = &self.tokens_file else {
            return Err(raise(
                "InvalidInput",
                "this server has no tokens file: start it with tokens_file=PATH (created if missing) to mint tokens",
            ));
        };
        let expiry = expires_in
            .map(|seconds| {
                std::time::Duration::try_from_secs_f64(seconds)
                    .map(|after| auth::Expiry::after(std::time::SystemTime::now(), after))
                    .map_err(|_| {
                        raise(
                            "InvalidInput",
                            format!("expires_in: {seconds} is not a duration in seconds"),
                        )
                    })
            })
            .transpose()?;
        let mut rng = rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng).map_err(|e| {
            raise(
                "TesseraError",
                format!("cannot seed a generator from the operating system: {e}"),
            )
        })?;
        let token = auth::generate_token(&mut rng);
        auth::append_token_expiring(path, name, &token, expiry)
            .map_err(|e| raise("InvalidInput", format!("tokens file: {e}")))?;
        self.control
            .reload_tokens()
            .map_err(|e| raise("ServerError", format!("tokens file not reloaded: {e}")))?;
        Ok(token.expose().to_owned())
    }

    /// Ends the round in flight and stops; idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let running = self.running.lock().expect("server lock").take();
        match running {
            Some(running) => py
                .detach(|| self.runtime.block_on(running.shutdown()))
                .map_err(serve_error),
            None => Ok(()),
        }
    }
}

/// Writes named float32 tensors as a safetensors file (the initial model
/// `tessera.Server` hands to the server).
#[pyfunction]
pub(crate) fn write_safetensors(
    path: PathBuf,
    tensors: Vec<(String, PyReadonlyArrayDyn<'_, f32>)>,
) -> PyResult<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, array) in &tensors {
        let view = array.as_array();
        let shape = view.shape().to_vec();
        let bytes: Vec<u8> = view.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name.clone(), shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| raise("InvalidInput", format!("tensor '{name}': {e}")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| raise("InvalidInput", format!("writing {}: {e}", path.display())))
}
