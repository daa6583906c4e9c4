//! `wechat-api keygen`: a fresh callback Token and EncodingAESKey, and an admin
//! bearer token, ready to paste.
//!
//! Deliberately not here: how they are generated (`config::secret`, which also
//! serves the demo).

use super::CommandError;
use crate::config::{generate_encoding_aes_key, Token};

/// Prints the values as `.env` lines.
pub(crate) fn run() -> Result<(), CommandError> {
    println!("# Paste both into the app's 接收消息 → API接收 settings and into your .env");
    println!("WECOM_TOKEN={}", Token::generate().expose());
    println!("WECOM_ENCODING_AES_KEY={}", generate_encoding_aes_key().expose());
    println!("# A bearer token for the admin endpoints, if you want them:");
    println!("ADMIN_TOKEN={}", Token::generate().expose());
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{generate_encoding_aes_key, Token};

    #[test]
    fn generated_values_pass_validation() {
        for _ in 0..50 {
            assert!(crate::crypto::AesKey::parse(generate_encoding_aes_key().expose()).is_ok());
            assert!(Token::parse(Token::generate().expose()).is_ok());
        }
        assert_ne!(Token::generate().expose(), Token::generate().expose());
    }

    /// Regression: keygen printed base64 of 32 random bytes, which has `+` or `/`
    /// in about three keys of four; the WeCom console may refuse such a key.
    #[test]
    fn keygen_keys_are_43_letters_and_digits_the_console_accepts() {
        for _ in 0..2000 {
            let key = generate_encoding_aes_key();
            let key = key.expose();
            assert_eq!(key.len(), 43, "{key}");
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
            assert!(crate::crypto::AesKey::parse(key).is_ok(), "{key}");
        }
    }
}
