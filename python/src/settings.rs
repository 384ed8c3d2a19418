//! Keyword arguments of `tessera.Server` as server settings, through the
//! server's one settings source (`tessera_server::config::ServerOverrides`):
//! each keyword is the TOML file's key (the flag's name with underscores),
//! so the keywords are parsed, checked and documented exactly as the file
//! and `tessera serve`'s flags are, and unknown ones are refused with the
//! list of known keys.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};
use tessera_server::config::ServerOverrides;

use crate::errors::raise;

/// The settings given as keywords, as one TOML document parsed by the
/// server's own table.
pub(crate) fn from_kwargs(settings: &Bound<'_, PyDict>) -> PyResult<ServerOverrides> {
    let mut table = toml::Table::new();
    for (key, value) in settings.iter() {
        let key: String = key.extract()?;
        table.insert(key.clone(), toml_value(&key, &value)?);
    }
    let text = toml::to_string(&table)
        .map_err(|e| raise("InvalidInput", format!("server settings: {e}")))?;
    ServerOverrides::from_toml(&text).map_err(|e| {
        raise(
            "InvalidInput",
            // The file's wording ("unknown field") names keywords here.
            format!("server settings (keyword arguments): {e}"),
        )
    })
}

/// A keyword's value as TOML: booleans, integers, floats and strings (paths
/// arrive as strings: `tessera.Server` applies `os.fspath`).
fn toml_value(key: &str, value: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    if value.is_instance_of::<PyBool>() {
        Ok(toml::Value::Boolean(value.extract()?))
    } else if value.is_instance_of::<PyInt>() {
        let v: i64 = value.extract().map_err(|_| {
            raise(
                "InvalidInput",
                format!("server setting {key}: {value} is out of range"),
            )
        })?;
        Ok(toml::Value::Integer(v))
    } else if value.is_instance_of::<PyFloat>() {
        Ok(toml::Value::Float(value.extract()?))
    } else if value.is_instance_of::<PyString>() {
        Ok(toml::Value::String(value.extract()?))
    } else {
        Err(raise(
            "InvalidInput",
            format!(
                "server setting {key}: {} values are not settings (give a bool, int, float, str or path)",
                value.get_type().name()?
            ),
        ))
    }
}
