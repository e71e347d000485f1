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
        Self::connect_with_token(endpoint, id, server_key, key, "").await
    }

    /// As [`SecurePeer::connect_with`], presenting an enrollment `token` in the handshake
    /// (as `qs-agent --boot-token` does).
    pub async fn connect_with_token(
        endpoint: &str,
        id: &str,
        server_key: &PublicKey,
        key: KeyPair,
        token: &str,
    ) -> anyhow::Result<Self> {
        let mut options = SocketOptions::default();
        options.peer_identity(
            id.as_bytes()
                .try_into()
                .map_err(|e| anyhow!("bad routing id: {e}"))?,
        );
        let mut socket = DealerSocket::with_options(options);
        socket.connect(endpoint).await.context("cannot connect")?;
        let (initiator, first) = Initiator::with_payload(&key, server_key, token.as_bytes())?;
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

/// The bytes a ZeroMQ DEALER named `identity` opens a connection with: the ZMTP 3.0 greeting
/// (NULL mechanism) and its READY command. Tests that speak raw TCP start with these.
pub fn zmtp_hello(identity: &[u8]) -> Vec<u8> {
    let mut hello = vec![0u8; 64];
    hello[0] = 0xff;
    hello[9] = 0x7f;
    hello[10] = 3;
    hello[12..16].copy_from_slice(b"NULL");
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    for (k, v) in [
        (b"Socket-Type".as_slice(), b"DEALER".as_slice()),
        (b"Identity", identity),
    ] {
        body.push(k.len() as u8);
        body.extend_from_slice(k);
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    hello.extend([0x04, body.len() as u8]);
    hello.extend(body);
    hello
}
