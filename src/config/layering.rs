//! Raw settings from the layers, later wins: built-in defaults < TOML file
//! (`--config` or `WECHAT_API_CONFIG`) < `.env` in the working directory < process
//! environment. The TOML file uses the variable names in lower case
//! (`wecom_corp_id = "…"`). `WEWORK_*` aliases are resolved here, with a warning,
//! within each layer: a higher layer wins whichever of the two names it uses. An
//! empty value sets nothing (a lower layer's value, else the default shows).
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
    /// The value of `var`: its default when no layer set it. An empty value is
    /// unset too (`.env.example` promises it), except where the table says an
    /// empty value means something ([`super::variables::EMPTY_IS_A_VALUE`]).
    pub(crate) fn get(&self, var: Var) -> Option<&str> {
        match self.values.get(var.name) {
            Some(value) if var.is_set_by(value) => Some(value),
            _ => var.default,
        }
    }

    /// Sets `var` above every layer; for tests and demo mode.
    pub(crate) fn set(&mut self, var: Var, value: impl Into<String>) {
        self.values.insert(var.name, value.into());
    }

    /// The layered settings from `sources`, without validating their values.
    pub(crate) fn read(sources: &Sources) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut settings = Settings::default();
        let mut raw: Vec<(String, HashMap<String, String>)> = Vec::new();
        if let Some(path) = &sources.file {
            match read_toml(path) {
                Ok((values, tables)) => {
                    raw.push((format!("config file {}", path.display()), values));
                    settings.channel_tables = tables;
                }
                Err(problems) => errors.extend(problems),
            }
        }
        if let Some(path) = &sources.dotenv {
            match read_dotenv(path) {
                Ok(values) => raw.push((path.display().to_string(), values)),
                Err(problem) => errors.push(problem),
            }
        }
        raw.push(("the environment".to_owned(), known_variables(&sources.env)));
        // Each layer on its own first: an old name in a higher layer must beat the
        // new name in a lower one, and an empty value must let the lower show through.
        let layers: Vec<Layer> =
            raw.into_iter().map(|(name, values)| Layer::resolve(name, values, &mut errors)).collect();
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        settings.warnings = alias_warnings(&layers);
        let mut builder = config::Config::builder();
        for layer in layers {
            builder = builder.add_source(config::Environment::default().source(Some(layer.values)));
        }
        let mut merged = builder
            .build()
            .and_then(|c| c.try_deserialize::<HashMap<String, String>>())
            .map_err(|e| ConfigErrors(vec![format!("configuration could not be merged: {e}")]))?;
        for var in VARIABLES {
            if let Some(value) = merged.remove(&var.key()) {
                settings.set(*var, value);
            }
        }
        Ok(settings)
    }
}

/// One layer's settings, keyed as the `config` crate wants them (the variable's
/// name in lower case): values that set nothing dropped, `WEWORK_*` aliases
/// under their new names.
struct Layer {
    /// Where the values come from, for messages: `.env`, `the environment`, ….
    name: String,
    values: HashMap<String, String>,
    /// The variables this layer set by their old name, and that name.
    renamed: Vec<(Var, &'static str)>,
    /// The variables this layer set by both names, to the same value.
    duplicated: Vec<(Var, &'static str)>,
}

impl Layer {
    /// `values` of the layer called `name`; both names of a variable with
    /// different values is an error naming both.
    fn resolve(name: String, mut values: HashMap<String, String>, errors: &mut Vec<String>) -> Self {
        values.retain(|key, value| Var::named(&key.to_ascii_uppercase()).is_some_and(|var| var.is_set_by(value)));
        let (mut renamed, mut duplicated) = (Vec::new(), Vec::new());
        for var in VARIABLES {
            let Some(old) = var.alias else { continue };
            let Some(old_value) = values.remove(&old.to_ascii_lowercase()) else { continue };
            match values.get(&var.key()) {
                None => {
                    values.insert(var.key(), old_value);
                    renamed.push((*var, old));
                }
                Some(current) if *current == old_value => duplicated.push((*var, old)),
                Some(_) => errors.push(format!("{old} and {var} are both set in {name} and differ: keep only {var}")),
            }
        }
        Self { name, values, renamed, duplicated }
    }
}

/// One warning per old name a layer used, naming the new variable, and saying
/// whether a higher layer's value wins over it.
fn alias_warnings(layers: &[Layer]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let place = &layer.name;
        for (var, old) in &layer.renamed {
            let winner = layers[index + 1..].iter().rev().find(|higher| higher.values.contains_key(&var.key()));
            warnings.push(match winner {
                None => format!("{old} is deprecated: rename it to {var} (in {place}; its value is used for now)"),
                Some(higher) => format!(
                    "{old} is deprecated: rename it to {var} (in {place}; the value in {} wins over it)",
                    higher.name
                ),
            });
        }
        for (var, old) in &layer.duplicated {
            warnings.push(format!("{old} is deprecated and duplicates {var} (in {place}): remove it"));
        }
    }
    warnings
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

/// The TOML file's settings (variable key → value as text) and its
/// `[channels.*]` tables.
type TomlFile = (HashMap<String, String>, Vec<(String, toml::Value)>);

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
    let mut problems = Vec::new();
    let mut values = HashMap::new();
    for (key, value) in table {
        let name = key.to_ascii_uppercase();
        if Var::named(&name).is_none() {
            problems.push(format!(
                "config file {shown}: unknown setting `{key}` (settings are the variable names in lower case)"
            ));
            continue;
        }
        // A TOML number or boolean is read as its text (`https_port = 9443`).
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                problems.push(format!("{name} must be a single value, not a table or list"));
                continue;
            }
        };
        values.insert(key.to_ascii_lowercase(), text);
    }
    if problems.is_empty() {
        Ok((values, channels))
    } else {
        Err(problems)
    }
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
    use super::super::variables::{
        DATA_DIR, HTTPS_PORT, RETENTION_SECS, TRUSTED_NETWORKS, WECOM_CORP_ID, WECOM_SECRET, WECOM_TOKEN,
    };
    use super::*;

    #[test]
    fn unset_and_empty_both_read_as_the_default() {
        let mut settings = Settings::default();
        assert_eq!(settings.get(HTTPS_PORT), Some("8092"));
        settings.set(HTTPS_PORT, "");
        assert_eq!(settings.get(HTTPS_PORT), Some("8092"), "empty is unset: the default");
        settings.set(WECOM_SECRET, "");
        assert_eq!(settings.get(WECOM_SECRET), None, "no default: still unset");
        settings.set(TRUSTED_NETWORKS, "");
        assert_eq!(settings.get(TRUSTED_NETWORKS), Some(""), "empty trusts no network (SECURITY.md)");
    }

    fn environment(pairs: &[(&str, &str)]) -> Sources {
        Sources { env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Sources::default() }
    }

    #[test]
    fn an_empty_value_in_a_higher_layer_lets_the_lower_layer_show_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dotenv = dir.path().join(".env");
        std::fs::write(&dotenv, "HTTPS_PORT=9443\nRETENTION_SECS=\n").expect("write");
        let sources = Sources { dotenv: Some(dotenv), ..environment(&[("HTTPS_PORT", ""), ("DATA_DIR", "")]) };
        let settings = Settings::read(&sources).expect("readable");
        assert_eq!(settings.get(HTTPS_PORT), Some("9443"), "the environment's empty value sets nothing");
        assert_eq!(settings.get(RETENTION_SECS), Some("604800"));
        assert_eq!(settings.get(DATA_DIR), Some("/app/data"));
    }

    #[test]
    fn an_old_name_in_a_higher_layer_wins_over_the_new_name_in_a_lower_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dotenv = dir.path().join(".env");
        std::fs::write(&dotenv, "WECOM_TOKEN=dotenvToken\nWEWORK_CORP_ID=wwdotenv\n").expect("write");
        let sources = Sources {
            dotenv: Some(dotenv),
            ..environment(&[("WEWORK_TOKEN", "envToken"), ("WECOM_CORP_ID", "wwenv")])
        };
        let settings = Settings::read(&sources).expect("layers, not a conflict");
        assert_eq!(settings.get(WECOM_TOKEN), Some("envToken"));
        assert_eq!(settings.get(WECOM_CORP_ID), Some("wwenv"));
        let warnings = settings.warnings.join("\n");
        assert!(
            warnings.contains(
                "WEWORK_TOKEN is deprecated: rename it to WECOM_TOKEN (in the environment; its value is used for now)"
            ),
            "{warnings}"
        );
        assert!(
            warnings.contains(&format!(
                "WEWORK_CORP_ID is deprecated: rename it to WECOM_CORP_ID (in {}; the value in the environment wins over it)",
                dir.path().join(".env").display()
            )),
            "{warnings}"
        );
        assert!(!warnings.contains("envToken") && !warnings.contains("dotenvToken"), "{warnings}");
    }

    #[test]
    fn both_names_in_one_layer_with_different_values_is_one_line_naming_both() {
        let errors = Settings::read(&environment(&[("WEWORK_TOKEN", "oldToken"), ("WECOM_TOKEN", "newToken")]))
            .expect_err("a conflict")
            .0;
        assert_eq!(
            errors,
            ["WEWORK_TOKEN and WECOM_TOKEN are both set in the environment and differ: keep only WECOM_TOKEN"]
        );
        let same = Settings::read(&environment(&[("WEWORK_TOKEN", "oneToken"), ("WECOM_TOKEN", "oneToken")]))
            .expect("the same value twice");
        assert_eq!(
            same.warnings,
            ["WEWORK_TOKEN is deprecated and duplicates WECOM_TOKEN (in the environment): remove it"]
        );
        let empty_old = Settings::read(&environment(&[("WEWORK_TOKEN", ""), ("WECOM_TOKEN", "newToken")]))
            .expect("an empty old name sets nothing");
        assert_eq!((empty_old.get(WECOM_TOKEN), empty_old.warnings.len()), (Some("newToken"), 0));
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
