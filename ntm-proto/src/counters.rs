//! Drop counters by reason: one `u64` per reason in a fixed array, shared by
//! the protocol endpoint ([`crate::DropCounters`]), the DC and the RS, whose
//! reason enums extend [`crate::Error`] with their own.

use core::fmt;
use core::marker::PhantomData;

/// Declares a counter-reason enum: every drop reason (and every activity
/// counter) of the project is declared with it, so that `ALL`, `COUNT`,
/// `index`, `name`, `message`, `Display` and [`Reason`] are derived and never
/// typed by hand (a typed count goes stale when a variant is added).
///
/// Each variant gives its stable name (metrics label, status text) and,
/// optionally after `:`, the sentence `Display` prints (the name otherwise):
///
/// ```
/// ntm_proto::reasons! {
///     /// Why the example drops.
///     pub enum ExampleDrop {
///         /// Too short.
///         Short => "short": "datagram too short",
///         Late => "late",
///     }
/// }
/// assert_eq!(ExampleDrop::COUNT, 2);
/// assert_eq!(ExampleDrop::Late.index(), 1);
/// assert_eq!(ExampleDrop::Short.to_string(), "datagram too short");
/// ```
///
/// A party whose reasons extend another enum's (the DC's extend
/// [`crate::Error`]) writes `enum Name extends Variant(Base) { … }`: the first
/// variant wraps `Base`, whose reasons come first in the index order, and
/// `From<Base>` is implemented.
///
/// ```
/// ntm_proto::reasons! {
///     pub enum PartyDrop extends Proto(ntm_proto::Error) {
///         UnknownPeer => "unknown_peer": "datagram from an unknown peer",
///     }
/// }
/// assert_eq!(PartyDrop::COUNT, ntm_proto::Error::COUNT + 1);
/// assert_eq!(PartyDrop::from(ntm_proto::Error::Replay).to_string(), "replayed or too old sequence number");
/// ```
#[macro_export]
macro_rules! reasons {
    (
        $(#[$m:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $d:literal])* $v:ident => $s:literal $(: $msg:literal)? ),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name { $( $(#[doc = $d])* $v, )+ }

        impl $name {
            /// Number of variants: the length of a per-reason counter array.
            pub const COUNT: usize = 0 $( + $crate::reasons!(@one $v) )+;
            /// Every variant, in index order.
            pub const ALL: [$name; Self::COUNT] = [$($name::$v,)+];

            /// Dense index in `0..COUNT`, for counter arrays.
            pub const fn index(self) -> usize {
                self as usize
            }

            /// Stable name, for status text and metrics labels.
            pub const fn name(self) -> &'static str {
                match self { $($name::$v => $s,)+ }
            }

            /// What `Display` prints: a sentence for operators.
            pub const fn message(self) -> &'static str {
                match self { $($name::$v => $crate::reasons!(@msg $s $(, $msg)?),)+ }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.message())
            }
        }

        $crate::reasons!(@reason $name, $name::ALL.into_iter());
    };
    (
        $(#[$m:meta])*
        $vis:vis enum $name:ident extends $inner:ident($base:ty) {
            $( $(#[doc = $d:literal])* $v:ident => $s:literal $(: $msg:literal)? ),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            #[doc = concat!("A reason of [`", stringify!($base), "`].")]
            $inner($base),
            $( $(#[doc = $d])* $v, )+
        }

        impl $name {
            /// This enum's own reasons, in index order after the base's.
            pub const OWN: [$name; 0 $( + $crate::reasons!(@one $v) )+] = [$($name::$v,)+];
            /// Number of reasons, the base's included.
            pub const COUNT: usize = <$base as $crate::counters::Reason>::COUNT + Self::OWN.len();

            /// Dense index in `0..COUNT`: the base's reasons first.
            pub fn index(self) -> usize {
                $crate::reasons!(@own_index self, $name, $inner,
                    <$base as $crate::counters::Reason>::COUNT; $($v)+)
            }

            /// Stable name, for status text and metrics labels.
            pub fn name(self) -> &'static str {
                match self {
                    $name::$inner(e) => $crate::counters::Reason::name(e),
                    $($name::$v => $s,)+
                }
            }
        }

        impl From<$base> for $name {
            fn from(e: $base) -> Self {
                $name::$inner(e)
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match self {
                    $name::$inner(e) => ::core::fmt::Display::fmt(e, f),
                    $($name::$v => f.write_str($crate::reasons!(@msg $s $(, $msg)?)),)+
                }
            }
        }

        $crate::reasons!(@reason $name,
            <$base as $crate::counters::Reason>::all().map($name::$inner).chain($name::OWN));
    };
    (@reason $name:ident, $all:expr) => {
        impl ::core::error::Error for $name {}

        impl $crate::counters::Reason for $name {
            const COUNT: usize = $name::COUNT;
            fn index(self) -> usize {
                $name::index(self)
            }
            fn name(self) -> &'static str {
                $name::name(self)
            }
            fn all() -> impl Iterator<Item = Self> {
                $all
            }
        }
    };
    (@one $v:ident) => { 1 };
    (@msg $s:literal) => { $s };
    (@msg $s:literal, $msg:literal) => { $msg };
    // The own variants' indices, as an if-chain: the last one needs no test,
    // so the chain is exhaustive without a fallback.
    (@own_index $self:ident, $name:ident, $inner:ident, $i:expr; $v:ident) => {
        match $self {
            $name::$inner(e) => $crate::counters::Reason::index(e),
            _ => $i,
        }
    };
    (@own_index $self:ident, $name:ident, $inner:ident, $i:expr; $v:ident $($rest:ident)+) => {
        if matches!($self, $name::$v) {
            $i
        } else {
            $crate::reasons!(@own_index $self, $name, $inner, $i + 1; $($rest)+)
        }
    };
}

/// A fieldless reason with a dense index, for [`Counters`].
pub trait Reason: Copy + 'static {
    /// Number of distinct reasons.
    const COUNT: usize;

    /// Dense index in `0..COUNT`.
    fn index(self) -> usize;

    /// Short stable name, for logs and metrics.
    fn name(self) -> &'static str;

    /// Every reason, in index order.
    fn all() -> impl Iterator<Item = Self>;
}

/// Counts per reason `R`; `N` must be `R::COUNT` (checked at compile
/// time), since stable Rust cannot size an array by `R::COUNT` directly:
/// name it through an alias such as `Counters<Error, { Error::COUNT }>`.
pub struct Counters<R, const N: usize> {
    counts: [u64; N],
    _reason: PhantomData<fn() -> R>,
}

impl<R: Reason, const N: usize> Default for Counters<R, N> {
    fn default() -> Self {
        const { assert!(N == R::COUNT, "Counters<R, N> needs N == R::COUNT") };
        Counters {
            counts: [0; N],
            _reason: PhantomData,
        }
    }
}

impl<R, const N: usize> Clone for Counters<R, N> {
    fn clone(&self) -> Self {
        Counters {
            counts: self.counts,
            _reason: PhantomData,
        }
    }
}

impl<R, const N: usize> PartialEq for Counters<R, N> {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
    }
}

impl<R, const N: usize> Eq for Counters<R, N> {}

impl<R: Reason, const N: usize> Counters<R, N> {
    /// Count one drop.
    pub fn count(&mut self, reason: R) {
        self.counts[reason.index()] += 1;
    }

    /// Drops counted for `reason`.
    pub fn get(&self, reason: R) -> u64 {
        self.counts[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason with a non-zero count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::all()
            .map(|r| (r, self.counts[r.index()]))
            .filter(|&(_, n)| n != 0)
    }
}

impl<R, const N: usize> fmt::Debug for Counters<R, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters")
            .field("counts", &self.counts)
            .finish()
    }
}

impl<R: Reason, const N: usize> fmt::Display for Counters<R, N> {
    /// `name=count` pairs, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (r, n) in self.iter() {
            if any {
                f.write_str(" ")?;
            }
            write!(f, "{}={n}", r.name())?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{DropCounters, Error};

    #[test]
    fn counts_and_displays_in_index_order() {
        let mut c = DropCounters::default();
        assert_eq!(c.to_string(), "none");
        c.count(Error::Replay);
        c.count(Error::Truncated);
        c.count(Error::Replay);
        assert_eq!(c.total(), 3);
        assert_eq!(c.to_string(), "truncated=1 replay=2");
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            [(Error::Truncated, 1), (Error::Replay, 2)]
        );
    }
}
