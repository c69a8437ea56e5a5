//! Checks of connector settings shared by several connectors.

use dab_api::BuildError;

/// `host:port` with a port number; the host is resolved when binding.
pub(crate) fn check_listen(listen: &str) -> Result<(), String> {
    match listen.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("`listen` must be host:port, not `{listen}`")),
    }
}

pub(crate) fn build_error(name: &str, reason: impl Into<String>) -> BuildError {
    BuildError {
        name: name.to_owned(),
        reason: reason.into(),
    }
}
