//! The canonical encoding: postcard, one way to write each value, so equal
//! values have equal bytes (and hashes and signatures over them agree).

use serde::Serialize;

/// The canonical bytes of `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own types into a Vec cannot fail: no maps with
    // non-string keys restrictions apply to postcard, and no I/O happens.
    postcard::to_stdvec(value).unwrap_or_default()
}
