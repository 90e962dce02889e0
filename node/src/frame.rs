//! Frames on a QUIC stream (`maki_protocol::rpc`): a little-endian `u32`
//! length, then that many postcard bytes. The one place the node reads
//! and writes them (admin, join, sync); gossip carries bare bodies.

use iroh::endpoint::{ReadExactError, RecvStream, SendStream, WriteError};
use maki_protocol::rpc;
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("read: {0}")]
    Read(#[from] ReadExactError),
    #[error("write: {0}")]
    Write(#[from] WriteError),
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error(transparent)]
    Decode(#[from] rpc::FrameError),
}

/// Reads a frame's length; one over `limit` (at most `rpc::MAX_FRAME`) is
/// refused before anything is allocated or read for its body.
pub async fn read_len(recv: &mut RecvStream, limit: usize) -> Result<usize, FrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = u32::from_le_bytes(prefix) as usize;
    let limit = limit.min(rpc::MAX_FRAME);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Reads a body of `len` bytes (as [`read_len`] gave) and decodes it whole.
pub async fn read_body<T: DeserializeOwned>(
    recv: &mut RecvStream,
    len: usize,
) -> Result<T, FrameError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(rpc::decode_body(&body)?)
}

/// Reads one frame of at most `limit` bytes.
pub async fn read<T: DeserializeOwned>(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<T, FrameError> {
    let len = read_len(recv, limit).await?;
    read_body(recv, len).await
}

/// Writes one frame; returns its length, prefix included.
pub async fn write<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<usize, FrameError> {
    let frame = rpc::encode_frame(msg);
    send.write_all(&frame).await?;
    Ok(frame.len())
}
