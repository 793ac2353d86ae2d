//! Asking a server for chunks the way an endpoint does, without an endpoint.

use oasis_core::net::{ChunkReply, Client};
use oasis_core::ChunkId;

/// Asks `client`'s server for `ids` in one `GetChunks` request and verifies every chunk that
/// comes back (its hash and length). Returns how many came; a `Missing` answer is an error.
pub async fn get_verified(client: &Client, ids: Vec<ChunkId>) -> anyhow::Result<usize> {
    let mut replies = client.chunks(ids).await?;
    let mut got = 0;
    while let Some(reply) = replies.next().await? {
        match reply {
            ChunkReply::Chunk(c) => {
                c.decode_verified()?;
                got += 1;
            }
            ChunkReply::Missing(id) => {
                anyhow::bail!("{} lacks chunk {id}", client.remote_addr())
            }
        }
    }
    Ok(got)
}
