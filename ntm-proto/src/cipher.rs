//! The two suites of §2.1 behind one type: a [`Cipher`] is one key prepared
//! once for its suite (HMAC state after the key blocks, or the AES-256 key
//! schedule and GHASH table), and seals or opens whole datagrams in place.
//!
//! | suite | [`Cipher::seal`] | [`Cipher::open`] |
//! |---|---|---|
//! | 1 HMAC-SHA256-128 | writes the tag | checks the tag (constant time) |
//! | 2 AES-256-GCM | encrypts the body, writes the GCM tag | checks the tag and decrypts the body |
//!
//! Suite 2 takes its 12-byte nonce from the header (`id || seq`) and
//! authenticates the 16-byte header as AAD, so neither suite needs a byte
//! outside the datagram and the overhead is 32 bytes for both. Tunnel
//! messages use the tunnel's suite with a direction key
//! ([`crate::DirectionKeys`]); signaling always uses suite 1 through
//! [`crate::Authenticator`].

use core::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::wire::{Suite, HEADER_LEN, OVERHEAD, TAG_LEN};
use crate::{Authenticator, Error, Key, Result};

/// Header byte that names the suite.
const SUITE_AT: usize = 3;
/// The nonce is the header's id and seq (bytes 4..16).
const NONCE_AT: usize = HEADER_LEN - NONCE_LEN;

// Inline, not boxed: the key schedule lives in the tunnel entry a worker
// already has in cache, without one more pointer to chase per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Imp {
    Hmac(Authenticator),
    Gcm(LessSafeKey),
}

/// One key prepared for one suite. Build it once per tunnel and direction,
/// never per datagram.
#[derive(Clone)]
pub struct Cipher {
    imp: Imp,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher({:?})", self.suite())
    }
}

impl Cipher {
    /// Prepare `key` for `suite`; [`Error::UnsupportedSuite`] for a suite
    /// other than 1 and 2.
    pub fn new(suite: Suite, key: &Key) -> Result<Cipher> {
        let imp = match suite {
            Suite::HmacSha256_128 => Imp::Hmac(Authenticator::new(key)),
            Suite::Aes256Gcm => {
                let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes())
                    .map_err(|_| Error::UnsupportedSuite)?;
                Imp::Gcm(LessSafeKey::new(unbound))
            }
            Suite::Unknown(_) => return Err(Error::UnsupportedSuite),
        };
        Ok(Cipher { imp })
    }

    /// The suite this key seals and opens.
    pub fn suite(&self) -> Suite {
        match self.imp {
            Imp::Hmac(_) => Suite::HmacSha256_128,
            Imp::Gcm(_) => Suite::Aes256Gcm,
        }
    }

    /// Seal a datagram whose header and plaintext body are written and whose
    /// last 16 bytes are room for the tag: set the header's suite byte, then
    /// (suite 2) encrypt the body, and write the tag.
    #[inline]
    pub fn seal(&self, datagram: &mut [u8]) -> Result<()> {
        if datagram.len() < OVERHEAD {
            return Err(Error::Truncated);
        }
        datagram[SUITE_AT] = self.suite().into();
        match &self.imp {
            Imp::Hmac(auth) => auth.seal(datagram),
            Imp::Gcm(key) => {
                let (header, rest) = datagram.split_at_mut(HEADER_LEN);
                let body_len = rest.len() - TAG_LEN;
                let (body, tag_out) = rest.split_at_mut(body_len);
                let nonce = nonce_of(header);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*header), body)
                    .map_err(|_| Error::TooLong)?;
                tag_out.copy_from_slice(tag.as_ref());
                Ok(())
            }
        }
    }

    /// Open a datagram in place: check that its suite byte is this key's
    /// ([`Error::UnsupportedSuite`] otherwise), then verify the tag
    /// ([`Error::BadTag`]); with suite 2 the body is decrypted in place. On
    /// an error the body's contents are unspecified.
    #[inline]
    pub fn open(&self, datagram: &mut [u8]) -> Result<()> {
        if datagram.len() < OVERHEAD {
            return Err(Error::Truncated);
        }
        if Suite::from(datagram[SUITE_AT]) != self.suite() {
            return Err(Error::UnsupportedSuite);
        }
        match &self.imp {
            Imp::Hmac(auth) => auth.verify(datagram),
            Imp::Gcm(key) => {
                let (header, rest) = datagram.split_at_mut(HEADER_LEN);
                let body_len = rest.len() - TAG_LEN;
                let (body, tag) = rest.split_at_mut(body_len);
                let tag = Tag::try_from(&*tag).map_err(|_| Error::BadTag)?;
                let nonce = nonce_of(header);
                key.open_in_place_separate_tag(nonce, Aad::from(&*header), tag, body, 0..)
                    .map(|_| ())
                    .map_err(|_| Error::BadTag)
            }
        }
    }
}

fn nonce_of(header: &[u8]) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&header[NONCE_AT..HEADER_LEN]);
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(body: &[u8]) -> Vec<u8> {
        let mut d = vec![2, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        d.extend_from_slice(body);
        d.extend_from_slice(&[0; TAG_LEN]);
        d
    }

    #[test]
    fn both_suites_round_trip() {
        for suite in [Suite::HmacSha256_128, Suite::Aes256Gcm] {
            let c = Cipher::new(suite, &Key::from_bytes([9; 32])).unwrap();
            assert_eq!(c.suite(), suite);
            let plain = datagram(b"hello ntmobile");
            let mut d = plain.clone();
            c.seal(&mut d).unwrap();
            assert_eq!(d[3], u8::from(suite));
            let encrypted =
                d[HEADER_LEN..d.len() - TAG_LEN] != plain[HEADER_LEN..plain.len() - TAG_LEN];
            assert_eq!(encrypted, suite == Suite::Aes256Gcm);
            c.open(&mut d).unwrap();
            assert_eq!(
                d[HEADER_LEN..d.len() - TAG_LEN],
                plain[HEADER_LEN..plain.len() - TAG_LEN]
            );
        }
    }

    #[test]
    fn wrong_key_suite_or_bit_is_refused() {
        let a = Cipher::new(Suite::Aes256Gcm, &Key::from_bytes([1; 32])).unwrap();
        let b = Cipher::new(Suite::Aes256Gcm, &Key::from_bytes([2; 32])).unwrap();
        let h = Cipher::new(Suite::HmacSha256_128, &Key::from_bytes([1; 32])).unwrap();
        let mut d = datagram(&[0x45; 40]);
        a.seal(&mut d).unwrap();
        assert_eq!(b.open(&mut d.clone()), Err(Error::BadTag));
        assert_eq!(h.open(&mut d.clone()), Err(Error::UnsupportedSuite));
        for i in [0, 5, 15, 16, 30, d.len() - 1] {
            let mut f = d.clone();
            f[i] ^= 0x10;
            assert!(a.open(&mut f).is_err(), "flipped byte {i}");
        }
        assert_eq!(a.open(&mut [0u8; 31]), Err(Error::Truncated));
        assert_eq!(
            Cipher::new(Suite::Unknown(3), &Key::from_bytes([1; 32])).unwrap_err(),
            Error::UnsupportedSuite
        );
    }
}
