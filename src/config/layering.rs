//! Raw settings from the layers, later wins: built-in defaults < TOML file
//! (`--config` or `WECHAT_API_CONFIG`) < `.env` in the working directory < process
//! environment. The TOML file uses the variable names in lower case
//! (`wecom_corp_id = "…"`). `WEWORK_*` aliases are resolved here, with a warning.
//!
//! Owns: [`Sources`] (the only reader of the process environment), [`Settings`]
//! (variable → raw text) and the wording of file and alias problems. Deliberately
//! not here: what a value must look like (`validation.rs`); which variables exist
//! (`variables.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::variables::{Var, VARIABLES};
use super::{ConfigErrors, Secret};

/// Names the environment variable that points at the TOML file.
pub const CONFIG_FILE_VARIABLE: &str = "WECHAT_API_CONFIG";

/// Where the raw settings come from. Tests build this directly; `main` uses
/// [`Sources::from_process`].
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// The `.env` file, if any.
    pub dotenv: Option<PathBuf>,
    /// The process environment (only our variables are read from it).
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The process environment, `.env` in the working directory if present, and the
    /// TOML file named by `--config` or `WECHAT_API_CONFIG`. The only place that
    /// reads the environment.
    pub fn from_process(config_flag: Option<PathBuf>) -> Self {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .collect();
        let file = config_flag.or_else(|| env.get(CONFIG_FILE_VARIABLE).filter(|p| !p.is_empty()).map(PathBuf::from));
        let dotenv = Path::new(".env").is_file().then(|| PathBuf::from(".env"));
        Self { file, dotenv, env }
    }
}

/// Merged raw settings: variable → value, aliases resolved. A variable no layer
/// set reads as its default from the table.
#[derive(Clone, Default)]
pub(crate) struct Settings {
    values: HashMap<&'static str, String>,
    /// The TOML file's `[channels.<name>]` tables, as read (validated later).
    pub(crate) channel_tables: Vec<(String, toml::Value)>,
    /// Non-fatal findings to log at start-up (aliases, identical secrets, …).
    pub warnings: Vec<String>,
}

impl Settings {
    /// The value of `var` (its default when no layer set it), treating an empty
    /// string as unset.
    pub(crate) fn get(&self, var: Var) -> Option<&str> {
        self.values.get(var.name).map(String::as_str).or(var.default).filter(|v| !v.is_empty())
    }

    /// Sets `var` above every layer; for tests and demo mode.
    pub(crate) fn set(&mut self, var: Var, value: impl Into<String>) {
        self.values.insert(var.name, value.into());
    }

    /// The layered settings from `sources`, without validating their values.
    pub(crate) fn read(sources: &Sources) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut builder = config::Config::builder();
        let mut channel_tables = Vec::new();
        if let Some(path) = &sources.file {
            match read_toml(path) {
                Ok((text, tables)) => {
                    builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
                    channel_tables = tables;
                }
                Err(problems) => errors.extend(problems),
            }
        }
        if let Some(path) = &sources.dotenv {
            match read_dotenv(path) {
                Ok(map) => builder = builder.add_source(config::Environment::default().source(Some(map))),
                Err(problem) => errors.push(problem),
            }
        }
        builder = builder.add_source(config::Environment::default().source(Some(known_variables(&sources.env))));
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let merged = builder
            .build()
            .and_then(|c| c.try_deserialize::<HashMap<String, config::Value>>())
            .map_err(|e| ConfigErrors(vec![format!("configuration could not be merged: {e}")]))?;
        let mut settings = Settings { channel_tables, ..Settings::default() };
        for var in VARIABLES {
            if let Some(value) = merged.get(&var.key()) {
                match value.clone().into_string() {
                    Ok(text) => settings.set(*var, text),
                    Err(_) => errors.push(format!("{var} must be a single value, not a table or list")),
                }
            }
        }
        settings.resolve_aliases(&merged, &mut errors);
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn resolve_aliases(&mut self, merged: &HashMap<String, config::Value>, errors: &mut Vec<String>) {
        for var in VARIABLES {
            let Some(old) = var.alias else { continue };
            let Some(old_value) = merged.get(&old.to_ascii_lowercase()).and_then(|v| v.clone().into_string().ok())
            else {
                continue;
            };
            if old_value.is_empty() {
                continue;
            }
            match self.get(*var) {
                None => {
                    self.warnings.push(format!("{old} is deprecated: rename it to {var} (its value is used for now)"));
                    self.set(*var, old_value);
                }
                Some(current) if current == old_value => {
                    self.warnings.push(format!("{old} is deprecated and duplicates {var}: remove it"));
                }
                Some(_) => errors.push(format!("{old} and {var} are both set and differ: keep only {var}")),
            }
        }
    }
}

/// Secret values are redacted, as the table says.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for var in VARIABLES {
            match self.values.get(var.name) {
                Some(value) if var.secret => map.entry(&var.name, &Secret::new(value.as_str())),
                Some(value) => map.entry(&var.name, value),
                None => continue,
            };
        }
        map.finish()?;
        write!(f, " warnings: {:?}", self.warnings)
    }
}

/// Our variables and aliases from `env`, keyed as the `config` crate wants them.
fn known_variables(env: &HashMap<String, String>) -> HashMap<String, String> {
    env.iter().filter(|(k, _)| Var::named(k).is_some()).map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, String> {
    let iter = dotenvy::from_path_iter(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let mut map = HashMap::new();
    for (index, item) in iter.enumerate() {
        // dotenvy's parse errors quote the line, which may hold a secret.
        let (key, value) = item.map_err(|_| format!("{}: entry {} cannot be parsed", path.display(), index + 1))?;
        map.insert(key, value);
    }
    Ok(known_variables(&map))
}

/// The TOML file's text without its `[channels.*]` tables, and those tables.
type TomlFile = (String, Vec<(String, toml::Value)>);

/// Reads the TOML file, reporting syntax errors by line (never quoting it: a
/// secret may stand on that line), unknown keys by name, and a channel defined
/// twice by its name (TOML itself would only say "duplicate key").
fn read_toml(path: &Path) -> Result<TomlFile, Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("config file {shown}: cannot read it: {e}")])?;
    let twice = channels_defined_twice(&text);
    if !twice.is_empty() {
        return Err(twice);
    }
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(1);
        vec![format!("config file {shown}: not valid TOML at line {line}: {}", e.message())]
    })?;
    let channels = match table.remove("channels") {
        None => Vec::new(),
        Some(toml::Value::Table(channels)) => channels.into_iter().collect(),
        Some(_) => return Err(vec![format!("config file {shown}: channels must be tables ([channels.<name>])")]),
    };
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| Var::named(&k.to_ascii_uppercase()).is_none())
        .map(|k| format!("config file {shown}: unknown setting `{k}` (settings are the variable names in lower case)"))
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    // The `config` crate gets the variables only: it would lower-case the channels' names.
    let rest = toml::to_string(&table).map_err(|e| vec![format!("config file {shown}: {e}")])?;
    Ok((rest, channels))
}

/// `[channels.<name>]` headers that appear more than once, one line each.
fn channels_defined_twice(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else { continue };
        let Some(name) = name.trim().strip_prefix("channels.") else { continue };
        let name = name.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
        if name.contains('.') {
            continue;
        }
        if let Some(first) = seen.get(&name) {
            problems.push(format!(
                "channels.{name} is used twice (lines {first} and {}): each channel needs its own name",
                index + 1
            ));
        } else {
            seen.insert(name, index + 1);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::super::variables::{HTTPS_PORT, WECOM_SECRET};
    use super::*;

    #[test]
    fn unset_reads_as_the_default_and_empty_as_unset() {
        let mut settings = Settings::default();
        assert_eq!(settings.get(HTTPS_PORT), Some("8092"));
        settings.set(HTTPS_PORT, "");
        assert_eq!(settings.get(HTTPS_PORT), None);
    }

    #[test]
    fn debug_redacts_secret_values() {
        let mut settings = Settings::default();
        settings.set(WECOM_SECRET, "S3cr3tS3cr3tS3cr3t");
        settings.set(HTTPS_PORT, "9443");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("S3cr3tS3cr3t") && shown.contains("9443"), "{shown}");
    }
}
