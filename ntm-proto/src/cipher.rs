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
//! outside the datagram and the overhead is 32 bytes for both.
//! [`Cipher::seal_many`], [`Cipher::open_many`] and [`Cipher::verify_many`] do
//! the same to many datagrams, with the suite-1 tags of up to
//! [`crate::TAG_BATCH`] of them computed side by side
//! ([`Authenticator::tag_many`]); suite 2 goes through ring one by one. Tunnel
//! messages use the tunnel's suite with a direction key
//! ([`crate::DirectionKeys`]); signaling always uses suite 1 through
//! [`crate::Authenticator`].

use core::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::auth::tag_eq;
use crate::wire::{Suite, HEADER_LEN, OVERHEAD, TAG_LEN};
use crate::{Authenticator, Error, Key, Result, TAG_BATCH};

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

/// The many-datagram forms: each gives, item by item, exactly what the
/// one-datagram form gives (bytes and result), without allocating.
impl Cipher {
    /// The suite-1 authenticator of this key; `None` with suite 2.
    #[inline]
    pub fn authenticator(&self) -> Option<&Authenticator> {
        match &self.imp {
            Imp::Hmac(a) => Some(a),
            Imp::Gcm(_) => None,
        }
    }

    /// [`Cipher::seal`] of each `items[i].1` with `items[i].0`: `out[i]` is
    /// its result. Keys and suites may differ from item to item.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than `items`.
    pub fn seal_many(items: &mut [(&Cipher, &mut [u8])], out: &mut [Result<()>]) {
        assert!(out.len() >= items.len(), "one result per item");
        for (items, out) in items.chunks_mut(TAG_BATCH).zip(out.chunks_mut(TAG_BATCH)) {
            let mut want = [false; TAG_BATCH];
            for ((c, d), (o, w)) in items.iter_mut().zip(out.iter_mut().zip(&mut want)) {
                *o = match c.imp {
                    Imp::Hmac(_) if d.len() >= OVERHEAD => {
                        d[SUITE_AT] = c.suite().into();
                        *w = true;
                        Ok(())
                    }
                    _ => c.seal(d),
                };
            }
            let mut tags = [[0u8; TAG_LEN]; TAG_BATCH];
            let view = &*items;
            hmac_tags(view.len(), |i| (view[i].0, &*view[i].1), &want, &mut tags);
            for (((_, d), w), t) in items.iter_mut().zip(&want).zip(&tags) {
                if *w {
                    let at = d.len() - TAG_LEN;
                    d[at..].copy_from_slice(t);
                }
            }
        }
    }

    /// [`Cipher::open`] of each `items[i].1` with `items[i].0`: `out[i]` is
    /// its result (suite 2 decrypts in place).
    ///
    /// # Panics
    ///
    /// If `out` is shorter than `items`.
    pub fn open_many(items: &mut [(&Cipher, &mut [u8])], out: &mut [Result<()>]) {
        assert!(out.len() >= items.len(), "one result per item");
        for (items, out) in items.chunks_mut(TAG_BATCH).zip(out.chunks_mut(TAG_BATCH)) {
            let mut checked = [None; TAG_BATCH];
            let view = &*items;
            verify_chunk(view.len(), |i| (view[i].0, &*view[i].1), &mut checked);
            for ((c, d), (o, v)) in items.iter_mut().zip(out.iter_mut().zip(checked)) {
                *o = v.unwrap_or_else(|| c.open(d));
            }
        }
    }

    /// What [`Cipher::open`] says of each suite-1 datagram, which it does not
    /// change: `out[i]` is `Some` of that result when `items[i].0` is a
    /// suite-1 key, `None` when it is suite 2 (whose opening decrypts in
    /// place: open those one by one). Tags are compared in constant time.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than `items`.
    pub fn verify_many(items: &[(&Cipher, &[u8])], out: &mut [Option<Result<()>>]) {
        assert!(out.len() >= items.len(), "one result per item");
        for (items, out) in items.chunks(TAG_BATCH).zip(out.chunks_mut(TAG_BATCH)) {
            let mut checked = [None; TAG_BATCH];
            verify_chunk(items.len(), |i| items[i], &mut checked);
            out.copy_from_slice(&checked[..out.len()]);
        }
    }
}

/// [`Cipher::verify_many`] of the `n` (at most [`TAG_BATCH`]) items `item`
/// gives.
#[inline]
fn verify_chunk<'d>(
    n: usize,
    item: impl Fn(usize) -> (&'d Cipher, &'d [u8]),
    out: &mut [Option<Result<()>>; TAG_BATCH],
) {
    let mut want = [false; TAG_BATCH];
    for i in 0..n {
        let (c, d) = item(i);
        out[i] = match c.imp {
            Imp::Gcm(_) => None,
            Imp::Hmac(_) if d.len() < OVERHEAD => Some(Err(Error::Truncated)),
            Imp::Hmac(_) if Suite::from(d[SUITE_AT]) != c.suite() => {
                Some(Err(Error::UnsupportedSuite))
            }
            Imp::Hmac(_) => {
                want[i] = true;
                None
            }
        };
    }
    let mut tags = [[0u8; TAG_LEN]; TAG_BATCH];
    hmac_tags(n, &item, &want, &mut tags);
    for i in (0..n).filter(|&i| want[i]) {
        let d = item(i).1;
        let ok = tag_eq(&tags[i], &d[d.len() - TAG_LEN..]);
        out[i] = Some(if ok { Ok(()) } else { Err(Error::BadTag) });
    }
}

/// Suite-1 tags over the covered bytes (all but the last 16) of the datagrams
/// of the `n` (at most [`TAG_BATCH`]) items `item` gives that `want` picks,
/// which the caller checked to have suite-1 keys and [`OVERHEAD`] bytes:
/// `tags[i]` for item `i`, all in one [`Authenticator::tag_many`].
#[inline]
fn hmac_tags<'d>(
    n: usize,
    item: impl Fn(usize) -> (&'d Cipher, &'d [u8]),
    want: &[bool; TAG_BATCH],
    tags: &mut [[u8; TAG_LEN]; TAG_BATCH],
) {
    let Some(first) = (0..n).find(|&i| want[i]) else {
        return;
    };
    let Some(a0) = item(first).0.authenticator() else {
        return;
    };
    let mut batch: [(&Authenticator, &[u8]); TAG_BATCH] = [(a0, &[]); TAG_BATCH];
    let mut at = [0usize; TAG_BATCH];
    let mut m = 0;
    for i in (first..n).filter(|&i| want[i]) {
        let (c, d) = item(i);
        if let (Some(a), Some(covered)) = (c.authenticator(), d.len().checked_sub(TAG_LEN)) {
            batch[m] = (a, &d[..covered]);
            at[m] = i;
            m += 1;
        }
    }
    let mut got = [[0u8; TAG_LEN]; TAG_BATCH];
    Authenticator::tag_many(&batch[..m], &mut got[..m]);
    for (&i, t) in at[..m].iter().zip(&got) {
        tags[i] = *t;
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

    /// Datagrams of mixed lengths (empty body up to 1400 bytes) and keys of
    /// both suites, each sealed alone with its key.
    fn mixed() -> (Vec<Cipher>, Vec<(usize, Vec<u8>)>) {
        let ciphers: Vec<Cipher> = (0..6u8)
            .map(|k| {
                let suite = if k % 3 == 2 {
                    Suite::Aes256Gcm
                } else {
                    Suite::HmacSha256_128
                };
                Cipher::new(suite, &Key::from_bytes([k + 1; 32])).unwrap()
            })
            .collect();
        let lens = [
            0, 1, 63, 64, 65, 1400, 15, 16, 17, 47, 48, 49, 111, 112, 113, 550,
        ];
        let items = (0..150)
            .map(|i| {
                let body: Vec<u8> = (0..lens[i % lens.len()])
                    .map(|b| (b * 7 + i) as u8)
                    .collect();
                let mut d = datagram(&body);
                d[15] = i as u8;
                ((i * 5) % ciphers.len(), d)
            })
            .collect();
        (ciphers, items)
    }

    #[test]
    fn seal_many_is_seal_one_by_one() {
        let (ciphers, plain) = mixed();
        let mut one = plain.clone();
        for (k, d) in &mut one {
            ciphers[*k].seal(d).unwrap();
        }
        let mut many = plain.clone();
        // plus one too short, which fails alone
        many.push((0, vec![2; OVERHEAD - 1]));
        let mut items: Vec<(&Cipher, &mut [u8])> = many
            .iter_mut()
            .map(|(k, d)| (&ciphers[*k], &mut d[..]))
            .collect();
        let mut out = vec![Ok(()); items.len()];
        Cipher::seal_many(&mut items, &mut out);
        assert_eq!(out.pop(), Some(Err(Error::Truncated)));
        assert!(out.iter().all(|r| r.is_ok()));
        many.pop();
        assert_eq!(many, one);
    }

    #[test]
    fn open_and_verify_many_are_open_one_by_one() {
        let (ciphers, mut sealed) = mixed();
        for (k, d) in &mut sealed {
            ciphers[*k].seal(d).unwrap();
        }
        // Bad tags, a changed header, a wrong suite byte and a too short one
        // among good ones: each fails alone, for open's reason.
        for i in [3, 40, 64, 65, 100] {
            let d = &mut sealed[i].1;
            let at = [d.len() - 1, 0, 5, d.len() - TAG_LEN, HEADER_LEN][i % 5];
            d[at] ^= 0x40;
        }
        sealed[70].1[SUITE_AT] ^= 3;
        sealed[71].1.truncate(OVERHEAD - 1);
        let mut want = sealed.clone();
        let expect: Vec<Result<()>> = want.iter_mut().map(|(k, d)| ciphers[*k].open(d)).collect();
        assert!(expect.iter().filter(|r| r.is_err()).count() >= 7);

        let view: Vec<(&Cipher, &[u8])> =
            sealed.iter().map(|(k, d)| (&ciphers[*k], &d[..])).collect();
        let mut checked = vec![None; view.len()];
        Cipher::verify_many(&view, &mut checked);
        for (i, (c, e)) in checked.iter().zip(&expect).enumerate() {
            match ciphers[sealed[i].0].suite() {
                Suite::HmacSha256_128 => assert_eq!(c.as_ref(), Some(e), "item {i}"),
                _ => assert_eq!(*c, None, "item {i}"),
            }
        }

        let mut got = sealed.clone();
        let mut items: Vec<(&Cipher, &mut [u8])> = got
            .iter_mut()
            .map(|(k, d)| (&ciphers[*k], &mut d[..]))
            .collect();
        let mut out = vec![Ok(()); items.len()];
        Cipher::open_many(&mut items, &mut out);
        assert_eq!(out, expect);
        for (i, ((g, w), r)) in got.iter().zip(&want).zip(&expect).enumerate() {
            if r.is_ok() {
                assert_eq!(g, w, "item {i} opened alike");
            }
        }
    }
}
