//! WXBizMsgCrypt, the callback cryptography of WeCom and WeChat Customer Service.
//!
//! Owns: the message signature (SHA-1 over the sorted Token, timestamp, nonce and
//! ciphertext), its constant-time verification, and AES-256-CBC with WeCom's
//! 32-byte PKCS#7 padding around the `random(16) | len(4, BE) | message | receive id`
//! plaintext layout.
//!
//! Deliberately not here: any I/O, any notion of which corp id is expected (the
//! caller compares [`Plaintext::receive_id`]), and any knowledge of XML.

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// WeCom pads to 32-byte blocks, not AES's 16: pad values run 1..=32.
const PAD_BLOCK: usize = 32;
const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// Length of an EncodingAESKey as the WeCom admin console shows it.
pub(crate) const ENCODING_AES_KEY_LEN: usize = 43;

/// Many real EncodingAESKeys carry non-zero trailing bits in their 43rd character;
/// the official SDKs accept them, so we must too.
const LENIENT_KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an EncodingAESKey was refused. Never carries the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must be {ENCODING_AES_KEY_LEN} characters of base64, got {0}")]
    Length(usize),
    #[error("must be {ENCODING_AES_KEY_LEN} characters of base64; character {0} is not in the base64 alphabet (A-Z a-z 0-9 + /)")]
    Alphabet(usize),
}

/// The 32-byte AES key derived from an EncodingAESKey. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl PartialEq for AesKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for AesKey {}

impl AesKey {
    /// Parses a 43-character EncodingAESKey (base64 without its final `=`).
    pub fn parse(encoding_aes_key: &str) -> Result<Self, KeyError> {
        let chars = encoding_aes_key.chars().count();
        if chars != ENCODING_AES_KEY_LEN {
            return Err(KeyError::Length(chars));
        }
        if let Some(position) =
            encoding_aes_key.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/'))
        {
            return Err(KeyError::Alphabet(position + 1));
        }
        let mut key = [0u8; 32];
        // 43 base64 characters always decode to exactly 32 bytes once the alphabet
        // is right, so this cannot fail; map it anyway rather than panic.
        let written = LENIENT_KEY_ENGINE
            .decode_slice(encoding_aes_key, &mut key)
            .map_err(|_| KeyError::Alphabet(ENCODING_AES_KEY_LEN))?;
        if written != key.len() {
            return Err(KeyError::Length(chars));
        }
        Ok(Self(key))
    }

    fn iv(&self) -> &[u8] {
        &self.0[..16]
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`: the one hex encoder (signatures, dedup keys,
/// fingerprints, HMACs).
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// A hex SHA-1 signature: 40 lowercase ASCII hex digits.
#[derive(Clone, Copy)]
pub struct Signature([u8; 40]);

/// Constant time like [`Signature::matches`]: a derived `==` would stop at the
/// first differing byte, a timing oracle for forging signatures.
impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for Signature {}

impl Signature {
    /// The signature as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into the array, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Compares against a signature received on the wire, in constant time.
    /// Upper-case hex is accepted: some proxies and SDKs normalise it.
    pub fn matches(&self, received: &str) -> bool {
        let received = received.as_bytes();
        if received.len() != self.0.len() {
            return false;
        }
        let mut lowered = [0u8; 40];
        for (out, byte) in lowered.iter_mut().zip(received) {
            *out = byte.to_ascii_lowercase();
        }
        bool::from(self.0.ct_eq(&lowered))
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `msg_signature`: SHA-1 over the byte-wise sorted concatenation of the four parts.
pub fn sign(token: &str, timestamp: &str, nonce: &str, encrypted: &str) -> Signature {
    let mut parts = [token, timestamp, nonce, encrypted];
    parts.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    // Into a fixed array, not a `String`: this runs on every callback.
    let mut out = [0u8; 40];
    for (i, byte) in digest.iter().enumerate() {
        out[2 * i] = HEX_DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX_DIGITS[usize::from(byte & 0x0f)];
    }
    Signature(out)
}

/// Why a ciphertext could not be opened. Each names the official SDK's error case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("ciphertext is not valid base64")]
    Base64,
    #[error("ciphertext length {0} is not a positive multiple of the AES block size")]
    BlockLength(usize),
    #[error("PKCS#7 padding is invalid (wrong EncodingAESKey?)")]
    Padding,
    #[error("length field {declared} points past the end of the {available}-byte plaintext")]
    LengthField { declared: u32, available: usize },
    #[error("decrypted message or receive id is not UTF-8")]
    Utf8,
}

/// A decrypted callback: the message followed by the receive id, in one string.
#[derive(Debug, Clone)]
pub struct Plaintext {
    /// Message and receive id; `message_len` is a character boundary within it.
    text: String,
    message_len: usize,
}

impl Plaintext {
    /// The message: XML for app callbacks, the echo string for URL verification
    /// (the pipeline reads it through `into_message`; tests look at it here).
    #[cfg(any(test, feature = "testing"))]
    pub fn message(&self) -> &str {
        // `decrypt` checked that `message_len` is a character boundary.
        &self.text[..self.message_len]
    }

    /// The receive id that followed the message (the corp id for internal apps).
    pub fn receive_id(&self) -> &str {
        &self.text[self.message_len..]
    }

    /// Takes the message out, reusing the buffer instead of allocating.
    pub(crate) fn into_message(mut self) -> String {
        self.text.truncate(self.message_len);
        self.text
    }
}

/// Decrypts the base64 `Encrypt` field (or `echostr`) with `key`.
pub fn decrypt(key: &AesKey, encrypted: &str) -> Result<Plaintext, DecryptError> {
    let mut buffer = STANDARD.decode(encrypted.as_bytes()).map_err(|_| DecryptError::Base64)?;
    let unpadded = decrypt_in_place(key, &mut buffer)?;
    if unpadded < HEADER_LEN {
        return Err(DecryptError::LengthField { declared: 0, available: unpadded });
    }
    let declared = u32::from_be_bytes([
        buffer[RANDOM_LEN],
        buffer[RANDOM_LEN + 1],
        buffer[RANDOM_LEN + 2],
        buffer[RANDOM_LEN + 3],
    ]);
    let message_end = usize::try_from(declared)
        .ok()
        .and_then(|len| HEADER_LEN.checked_add(len))
        .filter(|&end| end <= unpadded)
        .ok_or(DecryptError::LengthField { declared, available: unpadded - HEADER_LEN })?;
    buffer.truncate(unpadded);
    buffer.drain(..HEADER_LEN);
    let text = String::from_utf8(buffer).map_err(|_| DecryptError::Utf8)?;
    let message_len = message_end - HEADER_LEN;
    // The split between message and receive id must not cut a character.
    if !text.is_char_boundary(message_len) {
        return Err(DecryptError::Utf8);
    }
    Ok(Plaintext { text, message_len })
}

/// Encrypts `message` for `receive_id` with caller-supplied randomness.
///
/// Taking the 16 random bytes as an argument keeps this pure and lets the
/// official deterministic vectors be reproduced; use [`encrypt`] normally.
pub fn encrypt_with_random(key: &AesKey, random: [u8; 16], message: &[u8], receive_id: &[u8]) -> String {
    let content_len = HEADER_LEN + message.len() + receive_id.len();
    let mut buffer = Vec::with_capacity(content_len + PAD_BLOCK);
    buffer.extend_from_slice(&random);
    // Messages over 4 GiB cannot arrive: callers hold them in memory under a body limit.
    buffer.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    buffer.extend_from_slice(message);
    buffer.extend_from_slice(receive_id);
    encrypt_in_place(key, &mut buffer);
    STANDARD.encode(&buffer)
}

/// Pads `buffer` with WeCom's 32-byte PKCS#7 and encrypts it in place:
/// AES-256-CBC with the callback key, IV = key[..16].
fn encrypt_in_place(key: &AesKey, buffer: &mut Vec<u8>) {
    let pad = PAD_BLOCK - buffer.len() % PAD_BLOCK;
    buffer.resize(buffer.len() + pad, pad as u8);
    let len = buffer.len();
    if let Ok(encryptor) = Aes256CbcEnc::new_from_slices(&key.0, key.iv()) {
        // The buffer is a whole number of blocks, so NoPadding cannot fail.
        let _ = encryptor.encrypt_padded_mut::<NoPadding>(buffer, len);
    }
}

/// Decrypts `buffer` in place (the inverse of [`encrypt_in_place`]) and checks
/// its padding: the length of what it held before it was padded.
fn decrypt_in_place(key: &AesKey, buffer: &mut [u8]) -> Result<usize, DecryptError> {
    if buffer.is_empty() || !buffer.len().is_multiple_of(16) {
        return Err(DecryptError::BlockLength(buffer.len()));
    }
    let decryptor = Aes256CbcDec::new_from_slices(&key.0, key.iv()).map_err(|_| DecryptError::Padding)?;
    let cipher_len = buffer.len();
    let plain_len =
        decryptor.decrypt_padded_mut::<NoPadding>(buffer).map_err(|_| DecryptError::BlockLength(cipher_len))?.len();
    let pad = usize::from(buffer[plain_len - 1]);
    if !(1..=PAD_BLOCK).contains(&pad)
        || pad > plain_len
        || buffer[plain_len - pad..plain_len].iter().any(|&b| usize::from(b) != pad)
    {
        return Err(DecryptError::Padding);
    }
    Ok(plain_len - pad)
}

/// An AI bot's media file (SPEC §13): the raw bytes, AES-256-CBC with the
/// callback key, IV = key[..16], 32-byte PKCS#7, no header and no receive id.
pub fn decrypt_media(key: &AesKey, mut buffer: Vec<u8>) -> Result<Vec<u8>, DecryptError> {
    let unpadded = decrypt_in_place(key, &mut buffer)?;
    buffer.truncate(unpadded);
    Ok(buffer)
}

/// `bytes` encrypted as WeCom encrypts an AI bot's media (the inverse of [`decrypt_media`]).
#[cfg(any(test, feature = "testing"))]
pub fn encrypt_media(key: &AesKey, bytes: &[u8]) -> Vec<u8> {
    let mut buffer = bytes.to_vec();
    encrypt_in_place(key, &mut buffer);
    buffer
}

/// Encrypts `message` for `receive_id` with fresh random bytes.
pub fn encrypt(key: &AesKey, message: &[u8], receive_id: &[u8]) -> String {
    encrypt_with_random(key, rand::random(), message, receive_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[test]
    fn ai_bot_media_round_trips_and_a_wrong_key_is_refused() {
        let key = AesKey::parse("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").expect("key");
        for len in [0, 1, 31, 32, 33, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = encrypt_media(&key, &bytes);
            assert_eq!(sealed.len() % 32, 0);
            assert_eq!(decrypt_media(&key, sealed).expect("opens"), bytes);
        }
        let other = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").expect("key");
        assert!(decrypt_media(&other, encrypt_media(&key, b"secret image")).is_err());
        assert_eq!(decrypt_media(&key, vec![1; 17]), Err(DecryptError::BlockLength(17)));
    }

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        name: String,
        kind: String,
        token: String,
        encoding_aes_key: String,
        receiveid: String,
        msg_signature: String,
        timestamp: String,
        nonce: String,
        echostr: Option<String>,
        encrypt: Option<String>,
        reply: Option<String>,
        plaintext: Option<String>,
        plaintext_contains: Option<Vec<String>>,
        random16: Option<String>,
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../tests/fixtures/official.json");
        serde_json::from_str::<Vectors>(text).expect("fixture is valid JSON").vectors
    }

    #[test]
    fn every_official_vector_verifies_and_decrypts() {
        let all = vectors();
        assert!(all.len() >= 8, "fixture lost vectors");
        for v in all {
            let key = AesKey::parse(&v.encoding_aes_key).expect(&v.name);
            let ciphertext = v.echostr.as_deref().or(v.encrypt.as_deref()).expect(&v.name);
            let sig = sign(&v.token, &v.timestamp, &v.nonce, ciphertext);
            assert!(sig.matches(&v.msg_signature), "{}: signature {sig}", v.name);
            let plain = decrypt(&key, ciphertext).expect(&v.name);
            assert_eq!(plain.receive_id(), v.receiveid, "{}", v.name);
            match v.kind.as_str() {
                "verify_url" => assert_eq!(Some(plain.message()), v.reply.as_deref(), "{}", v.name),
                "decrypt" => {
                    if let Some(expected) = &v.plaintext {
                        assert_eq!(plain.message(), expected, "{}", v.name);
                    }
                    for part in v.plaintext_contains.iter().flatten() {
                        assert!(plain.message().contains(part.as_str()), "{}: {part}", v.name);
                    }
                }
                "encrypt" => {
                    let random: [u8; 16] =
                        v.random16.as_deref().expect("random16").as_bytes().try_into().expect("16 bytes");
                    let plaintext = v.plaintext.as_deref().expect("plaintext");
                    let produced = encrypt_with_random(&key, random, plaintext.as_bytes(), v.receiveid.as_bytes());
                    assert_eq!(Some(produced.as_str()), v.encrypt.as_deref(), "{}", v.name);
                    assert_eq!(plain.message(), plaintext);
                }
                other => panic!("unknown vector kind {other}"),
            }
        }
    }

    #[test]
    fn wechatpy_vector_with_another_nonce_is_rejected() {
        let v = vectors().into_iter().find(|v| v.name == "wechatpy-verify-url").expect("vector");
        let sig = sign(&v.token, &v.timestamp, "437374424", v.echostr.as_deref().expect("echostr"));
        assert!(!sig.matches(&v.msg_signature));
    }

    #[test]
    fn non_canonical_key_is_accepted() {
        // The PHP sample's key has trailing bits in its last character.
        assert!(AesKey::parse("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").is_ok());
    }

    #[test]
    fn key_of_wrong_length_names_the_length() {
        let err = AesKey::parse(&"a".repeat(42)).expect_err("42 chars");
        assert_eq!(err.to_string(), "must be 43 characters of base64, got 42");
    }

    #[test]
    fn key_outside_the_alphabet_names_the_position() {
        let mut key = "a".repeat(43);
        key.replace_range(6..7, "-");
        assert_eq!(AesKey::parse(&key).expect_err("bad char"), KeyError::Alphabet(7));
    }

    #[test]
    fn message_length_multiple_of_32_gets_a_full_pad_block() {
        let key = AesKey::parse(&"A".repeat(43)).expect("key");
        // 20 header + 8 message + 4 receive id = 32: a full block of padding follows.
        let ciphertext = encrypt(&key, b"12345678", b"corp");
        let raw = STANDARD.decode(ciphertext.as_bytes()).expect("base64");
        assert_eq!(raw.len(), 64);
        let plain = decrypt(&key, &ciphertext).expect("decrypts");
        assert_eq!(plain.message(), "12345678");
        assert_eq!(plain.receive_id(), "corp");
    }

    #[test]
    fn length_field_past_the_end_is_rejected() {
        let key = AesKey::parse(&"A".repeat(43)).expect("key");
        let mut block = vec![0u8; 64];
        block[16..20].copy_from_slice(&1000u32.to_be_bytes());
        block[32..].fill(32);
        let len = block.len();
        let enc = Aes256CbcEnc::new_from_slices(&key.0, key.iv()).expect("sizes");
        enc.encrypt_padded_mut::<NoPadding>(&mut block, len).expect("whole blocks");
        let err = decrypt(&key, &STANDARD.encode(&block)).expect_err("length past end");
        assert!(matches!(err, DecryptError::LengthField { declared: 1000, .. }), "{err:?}");
    }

    #[test]
    fn uppercase_signature_is_accepted_and_wrong_length_is_not() {
        let sig = sign("t", "1", "2", "x");
        assert!(sig.matches(&sig.as_str().to_ascii_uppercase()));
        assert!(!sig.matches(&sig.as_str()[..39]));
    }

    #[test]
    fn signatures_compare_by_value_in_constant_time() {
        assert_eq!(sign("t", "1", "2", "x"), sign("2", "t", "1", "x"), "the parts are sorted");
        assert_ne!(sign("t", "1", "2", "x"), sign("t", "1", "2", "y"));
    }

    fn test_key() -> AesKey {
        AesKey::parse("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").expect("key")
    }

    #[test]
    fn round_trips_every_message_length_up_to_300() {
        let key = test_key();
        for len in 0..=300usize {
            let message: String = "x".repeat(len);
            let ciphertext = encrypt(&key, message.as_bytes(), b"ww1436e0e65a779aee");
            let plain = decrypt(&key, &ciphertext).expect("round trip");
            assert_eq!(plain.message(), message);
            assert_eq!(plain.receive_id(), "ww1436e0e65a779aee");
        }
    }

    proptest! {
        #[test]
        fn round_trips_random_unicode(message in "\\PC{0,200}", receive_id in "[a-z0-9]{0,24}") {
            let key = test_key();
            let ciphertext = encrypt(&key, message.as_bytes(), receive_id.as_bytes());
            let plain = decrypt(&key, &ciphertext).expect("round trip");
            prop_assert_eq!(plain.message(), message.as_str());
            prop_assert_eq!(plain.receive_id(), receive_id.as_str());
        }

        #[test]
        fn a_flipped_ciphertext_byte_never_yields_the_original(message in "\\PC{1,120}", index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = test_key();
            let ciphertext = encrypt(&key, message.as_bytes(), b"corp");
            let mut raw = STANDARD.decode(ciphertext.as_bytes()).expect("base64");
            let i = index.index(raw.len());
            raw[i] ^= 1 << bit;
            // CBC is malleable: a flip may still decrypt, but never to the same
            // message and receive id; the signature is what rejects it on the wire.
            let tampered = STANDARD.encode(&raw);
            if let Ok(plain) = decrypt(&key, &tampered) {
                prop_assert!(plain.message() != message || plain.receive_id() != "corp");
            }
            let sig = sign("token", "1", "2", &ciphertext);
            prop_assert!(!sign("token", "1", "2", &tampered).matches(sig.as_str()));
        }

        #[test]
        fn a_flipped_signature_character_is_rejected(index in 0usize..40, replacement in "[0-9a-f]") {
            let sig = sign("token", "1409659589", "263014780", "ciphertext");
            let mut text = sig.as_str().to_owned();
            let original = &text[index..=index];
            prop_assume!(original != replacement);
            text.replace_range(index..=index, &replacement);
            prop_assert!(!sig.matches(&text));
        }

        #[test]
        fn arbitrary_ciphertext_never_panics(input in "[A-Za-z0-9+/=]{0,200}") {
            let _ = decrypt(&test_key(), &input);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decrypt(&test_key(), &STANDARD.encode(&raw));
        }
    }
}
