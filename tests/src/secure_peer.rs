//! A hand-driven agent connection for tests that speak the protocol as hostile or scripted
//! peers: a `zeromq` DEALER with the agent's Noise handshake, sealing what it sends and opening
//! what it receives, but sending whatever bytes the test chooses as envelopes.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use qs_noise::{Initiator, KeyPair, Opener, PublicKey, Sealer};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// An authenticated session to a controller, driven by hand.
pub struct SecurePeer {
    socket: DealerSocket,
    sealer: Sealer,
    opener: Opener,
    key: KeyPair,
}

impl SecurePeer {
    /// Dials `endpoint` (`tcp://…`) as `id` and completes the handshake with the controller
    /// key the harness knows for that endpoint.
    pub async fn connect(endpoint: &str, id: &str) -> anyhow::Result<Self> {
        let server_key: PublicKey = crate::server_key(endpoint)?.parse()?;
        Self::connect_with(endpoint, id, &server_key, KeyPair::generate()?).await
    }

    /// Dials `endpoint` as `id` pinning `server_key`, with the agent key `key`.
    pub async fn connect_with(
        endpoint: &str,
        id: &str,
        server_key: &PublicKey,
        key: KeyPair,
    ) -> anyhow::Result<Self> {
        let mut options = SocketOptions::default();
        options.peer_identity(
            id.as_bytes()
                .try_into()
                .map_err(|e| anyhow!("bad routing id: {e}"))?,
        );
        let mut socket = DealerSocket::with_options(options);
        socket.connect(endpoint).await.context("cannot connect")?;
        let (initiator, first) = Initiator::new(&key, server_key)?;
        socket.send(ZmqMessage::from(Bytes::from(first))).await?;
        let reply = tokio::time::timeout(std::time::Duration::from_secs(20), socket.recv())
            .await
            .context("no handshake reply")??;
        let reply = reply.get(0).cloned().unwrap_or_default();
        let (sealer, opener) = initiator.finish(&reply)?.split();
        Ok(Self {
            socket,
            sealer,
            opener,
            key,
        })
    }

    /// This peer's public key.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public()
    }

    /// Seals and sends one message (any bytes).
    pub async fn send(&mut self, plain: &[u8]) -> anyhow::Result<()> {
        let sealed = self.sealer.seal(plain)?;
        self.socket
            .send(ZmqMessage::from(Bytes::from(sealed)))
            .await?;
        Ok(())
    }

    /// Sends raw bytes as a message, unsealed (to test what the controller does with them).
    pub async fn send_raw(&mut self, raw: Vec<u8>) -> anyhow::Result<()> {
        self.socket.send(ZmqMessage::from(Bytes::from(raw))).await?;
        Ok(())
    }

    /// Receives and opens one message.
    pub async fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        let message = self.socket.recv().await?;
        let sealed = message.get(0).cloned().unwrap_or_default();
        Ok(self.opener.open(&sealed, 64 << 20)?)
    }
}
