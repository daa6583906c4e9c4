//! `wechat-api keygen`: a fresh callback Token and EncodingAESKey.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use rand::distr::{Alphanumeric, SampleString};

use super::CommandError;

/// A random Token: 32 letters and digits, the most the WeCom console accepts.
pub fn token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// A random EncodingAESKey: 32 random bytes as 43 characters of base64.
pub fn encoding_aes_key() -> String {
    STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>())
}

pub fn run() -> Result<(), CommandError> {
    println!("# Paste both into the app's 接收消息 → API接收 settings and into your .env");
    println!("WECOM_TOKEN={}", token());
    println!("WECOM_ENCODING_AES_KEY={}", encoding_aes_key());
    println!("# A bearer token for the admin endpoints, if you want them:");
    println!("ADMIN_TOKEN={}", token());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_pass_validation() {
        for _ in 0..50 {
            assert!(crate::crypto::AesKey::parse(&encoding_aes_key()).is_ok());
            assert!(crate::config::Token::parse(&token()).is_ok());
        }
        assert_ne!(token(), token());
    }
}
