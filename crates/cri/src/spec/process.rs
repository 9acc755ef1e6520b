//! args, env and cwd: kubelet's semantics over the image config.

use super::{Result, SpecError};
use berth_cri_api::v1::ContainerConfig;
use berth_image::ImageConfig;

/// The PATH a process gets when neither the image nor the CRI sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `command` replaces the image's ENTRYPOINT (and then its CMD is not used);
/// without a command, ENTRYPOINT + (`args`, else CMD).
pub fn args(cfg: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let v: Vec<String> = if cfg.command.is_empty() {
        let mut v = image.entrypoint.clone().unwrap_or_default();
        if cfg.args.is_empty() {
            v.extend(image.cmd.clone().unwrap_or_default());
        } else {
            v.extend(cfg.args.iter().cloned());
        }
        v
    } else {
        cfg.command.iter().chain(&cfg.args).cloned().collect()
    };
    for (name, list) in [("command", &cfg.command), ("args", &cfg.args)] {
        if let Some((i, _)) = list.iter().enumerate().find(|(_, a)| a.contains('\0')) {
            return Err(SpecError::new(
                format!("config.{name}[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    if v.first().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::new(
            "config.command",
            "no command: the request has neither command nor args and the image neither Entrypoint nor Cmd",
        ));
    }
    Ok(v)
}

/// PATH (default), HOSTNAME, the image's Env, then the CRI's envs; a later
/// value of a key replaces the earlier one in place.
pub fn env(cfg: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Result<Vec<String>> {
    let mut env: Vec<String> = vec![format!("PATH={DEFAULT_PATH}")];
    let set = |env: &mut Vec<String>, kv: String| {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        match env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(i) => env[i] = kv,
            None => env.push(kv),
        }
    };
    if !hostname.is_empty() {
        set(&mut env, format!("HOSTNAME={hostname}"));
    }
    for e in image.env.iter().flatten() {
        // An entry that is not KEY=value cannot be passed on (the runtime
        // refuses it); the image is at fault, not the request: skip it.
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            continue;
        }
        set(&mut env, e.clone());
    }
    for (i, kv) in cfg.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') {
            return Err(SpecError::new(
                format!("config.envs[{i}].key"),
                format!("{:?} is not a valid variable name", kv.key),
            ));
        }
        // Bytes in the CRI; an OCI env entry is a (UTF-8) string.
        let value = std::str::from_utf8(&kv.value)
            .map_err(|_| SpecError::new(format!("config.envs[{i}].value"), "is not valid UTF-8"))?;
        if value.contains('\0') {
            return Err(SpecError::new(
                format!("config.envs[{i}].value"),
                "contains a NUL byte",
            ));
        }
        set(&mut env, format!("{}={value}", kv.key));
    }
    Ok(env)
}

/// The CRI's working_dir, else the image's WorkingDir, else "/".
pub fn cwd(cfg: &ContainerConfig, image: &ImageConfig) -> Result<String> {
    if !cfg.working_dir.is_empty() {
        if !cfg.working_dir.starts_with('/') || cfg.working_dir.contains('\0') {
            return Err(SpecError::new(
                "config.working_dir",
                format!("{:?} is not an absolute path", cfg.working_dir),
            ));
        }
        return Ok(cfg.working_dir.clone());
    }
    match image.working_dir.as_deref() {
        None | Some("") => Ok("/".into()),
        Some(w) if w.contains('\0') => Err(SpecError::new(
            "image.config.WorkingDir",
            "contains a NUL byte",
        )),
        // Docker accepts a relative WorkingDir and treats it from /.
        Some(w) if !w.starts_with('/') => Ok(format!("/{w}")),
        Some(w) => Ok(w.to_string()),
    }
}
