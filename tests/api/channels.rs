//! Channels (SPEC §12): several apps, corps and kf accounts in one appliance.
//! The configuration of `[channels.<name>]` tables as an operator writes it
//! (the real binary, exit 64 with one line per problem), and the channels
//! served: each on its own path, the shared paths routing by Token, receive id
//! and AgentID, dedup per channel.

use std::path::{Path, PathBuf};

use crate::helpers::*;

/// A second corp's app channel: its own corp id, Token and key.
const HR_CORP: &str = "wwhr0123456789abcd";
const HR_TOKEN: &str = "hrToken42";
const HR_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const HR_AGENT: i64 = 1_000_005;

/// The `[channels.hr]` table, with `extra` lines appended.
fn hr_table(extra: &str) -> String {
    format!(
        "[channels.hr]\nkind = \"app\"\ncorp_id = \"{HR_CORP}\"\nagent_id = {HR_AGENT}\nsecret = \"hr-secret-value\"\n\
         token = \"{HR_TOKEN}\"\nencoding_aes_key = \"{HR_KEY}\"\n{extra}"
    )
}

/// Writes `text` as the TOML file in `dir`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("wechat-api.toml");
    std::fs::write(&file, text).expect("write the config file");
    file
}

/// `serve --config <text>` with no `WECOM_*` variable: the exit code and the
/// lines of stderr that report configuration errors.
fn serve_with_file(text: &str) -> (Option<i32>, Vec<String>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let file = write_config(dir.path(), text);
    let env = test_env(dir.path(), &[("WECOM_CORP_ID", ""), ("WECOM_TOKEN", ""), ("WECOM_ENCODING_AES_KEY", "")]);
    let out = wechat_api(dir.path())
        .args(["serve", "--config", &file.display().to_string()])
        .envs(env)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = stderr.lines().filter(|l| l.starts_with("configuration error:")).map(str::to_owned).collect();
    (out.status.code(), lines, stderr)
}

#[test]
fn every_channel_configuration_problem_exits_64_with_one_line_naming_the_channel_and_key() {
    let cases: Vec<(String, &str)> = vec![
        (hr_table("tokne = \"x\"\n"), "channels.hr.tokne is not a channel setting"),
        (hr_table("").replace("token = ", "# token = "), "channels.hr.token is required but not set"),
        (hr_table("").replace("[channels.hr]", "[channels.HR]"), "channels.HR is not a channel name"),
        (format!("{}\n{}", hr_table(""), hr_table("")), "channels.hr is used twice"),
        (
            hr_table("").replace("secret = \"hr-secret-value\"", "secret_file = \"/nonexistent/hr\""),
            "channels.hr.secret_file cannot be read: /nonexistent/hr",
        ),
        (
            hr_table("").replace(HR_KEY, &HR_KEY[..42]),
            "channels.hr.encoding_aes_key must be 43 characters of base64, got 42",
        ),
        (hr_table("").replace("\"app\"", "\"aibot\""), "channels.hr.kind aibot is not yet supported"),
    ];
    for (text, expected) in cases {
        let (code, lines, stderr) = serve_with_file(&text);
        assert_eq!(code, Some(64), "{expected}: {stderr}");
        assert_eq!(lines.len(), 1, "{expected}: {stderr}");
        assert!(lines[0].starts_with(&format!("configuration error: {expected}")), "{expected}: {stderr}");
        assert!(!stderr.contains("hr-secret-value") && !stderr.contains(&HR_KEY[..42]), "a secret leaked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_secret_file_with_a_trailing_blank_line_is_refused_without_showing_the_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("hr-secret");
    std::fs::write(&secret, "FileS3cr3tValue\n\n").expect("write the secret");
    let text = hr_table("")
        .replace("secret = \"hr-secret-value\"", &format!("secret_file = {:?}", secret.display().to_string()));
    let (code, lines, stderr) = serve_with_file(&text);
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(
        lines,
        ["configuration error: channels.hr.secret_file has leading or trailing white space (a copy-paste slip?)"]
    );
    assert!(!stderr.contains("FileS3cr3t"), "{stderr}");
}
