//! The session serving calls, end to end in one process: the real session code against a
//! scripted controller (a ROUTER socket with the controller's side of the Noise handshake)
//! on loopback, with the real `run` capability and a gate the test opens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use qs_capabilities::{CallContext, Capability, CapabilityError, Registry, Run};
use qs_noise::{KeyPair, Opener, Sealer};
use qs_proto::codec::{self, DEFAULT_MAX_FRAME};
use qs_proto::{
    ArgInfo, Body, CallOutcome, CallStage, CancelCall, CapabilityCall, CapabilityInfo, Envelope,
    ErrorCode, Heartbeat, MessageId, OutputStream, Register, Registered,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::session::{serve_controller, Agent, SessionConfig, SessionEnd, SessionObserver};

const WAIT: Duration = Duration::from_secs(20);

/// Blocks until the test sends on its channel (or the call is cancelled), then succeeds.
struct Gate(StdMutex<std_mpsc::Receiver<()>>);

impl Capability for Gate {
    fn info(&self) -> CapabilityInfo {
        CapabilityInfo {
            name: "gate".into(),
            doc: "wait for the test".into(),
            args: vec![ArgInfo {
                name: "label".into(),
                kind: "string".into(),
                required: false,
                doc: String::new(),
                default: Some(json!("none")),
                choices: None,
            }],
            exclusive: true,
            destructive: false,
            default_timeout: 0,
        }
    }

    fn call(&self, args: &Value, ctx: &CallContext) -> Result<Value, CapabilityError> {
        let gate = self.0.lock().unwrap();
        loop {
            if ctx.is_cancelled() {
                return Err(CapabilityError::Cancelled {
                    output: Value::Null,
                });
            }
            match gate.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(json!({"opened": args["label"]})),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CapabilityError::Cancelled {
                        output: Value::Null,
                    })
                }
            }
        }
    }
}

#[derive(Default)]
struct Ends(Notify);

impl SessionObserver for Ends {
    fn session_ended(&self, _end: &SessionEnd) {
        self.0.notify_one();
    }
}

/// The controller's side of one agent connection, driven by the test.
struct Controller {
    socket: RouterSocket,
    key: KeyPair,
    peer: Option<(Bytes, Sealer, Opener)>,
    next: u64,
}

impl Controller {
    async fn bind(endpoint: &str, key: KeyPair) -> (Self, String) {
        let mut socket = RouterSocket::new();
        let mut bound = None;
        // Rebinding the port a dropped socket held may take a moment.
        for _ in 0..100 {
            match socket.bind(endpoint).await {
                Ok(at) => {
                    bound = Some(at.to_string());
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let bound = bound.expect("cannot bind the scripted controller");
        let controller = Self {
            socket,
            key,
            peer: None,
            next: 0,
        };
        (controller, bound)
    }

    async fn raw(&mut self) -> (Bytes, Bytes) {
        let message = tokio::time::timeout(WAIT, self.socket.recv())
            .await
            .expect("the agent went quiet")
            .unwrap();
        (
            message.get(0).cloned().unwrap(),
            message.get(1).cloned().unwrap_or_default(),
        )
    }

    async fn accept(&mut self) {
        let (identity, first) = self.raw().await;
        let (reply, session) = qs_noise::respond(&self.key, &first).unwrap();
        let frames = vec![identity.clone(), Bytes::from(reply)];
        self.socket
            .send(ZmqMessage::try_from(frames).unwrap())
            .await
            .unwrap();
        let (sealer, opener) = session.split();
        self.peer = Some((identity, sealer, opener));
    }

    async fn send(&mut self, env: Envelope) {
        let (identity, sealer, _) = self.peer.as_mut().unwrap();
        let sealed = sealer.seal(&codec::encode(&env).unwrap()).unwrap();
        let frames = vec![identity.clone(), Bytes::from(sealed)];
        self.socket
            .send(ZmqMessage::try_from(frames).unwrap())
            .await
            .unwrap();
    }

    fn id(&mut self) -> MessageId {
        self.next += 1;
        MessageId(self.next)
    }

    async fn request(&mut self, id: MessageId, body: Body) {
        self.send(Envelope::new(id, body)).await;
    }

    async fn reply(&mut self, re: MessageId, body: Body) {
        let id = self.id();
        self.send(Envelope::reply(id, re, body)).await;
    }

    /// The next message that is not a heartbeat (heartbeats are echoed).
    async fn recv(&mut self) -> Envelope {
        loop {
            let (_, sealed) = self.raw().await;
            let (_, _, opener) = self.peer.as_mut().unwrap();
            let plain = opener.open(&sealed, DEFAULT_MAX_FRAME).unwrap();
            let env = codec::decode(&plain, DEFAULT_MAX_FRAME).unwrap();
            if let Body::Heartbeat(_) = env.body {
                self.reply(env.id, Body::Heartbeat(Heartbeat {})).await;
                continue;
            }
            return env;
        }
    }

    async fn register(&mut self) -> Register {
        let env = self.recv().await;
        let Body::Register(register) = env.body else {
            panic!("expected register, got {env:?}")
        };
        self.reply(
            env.id,
            Body::Registered(Registered {
                heartbeat_interval_ms: 1000,
            }),
        )
        .await;
        register
    }
}

fn call(capability: &str, args: Value) -> Body {
    Body::CapabilityCall(CapabilityCall {
        capability: capability.into(),
        args,
    })
}

#[tokio::test]
async fn calls_stream_cancel_refuse_duplicates_and_survive_a_reconnect() {
    let controller_key = KeyPair::generate().unwrap();
    let server_key = *controller_key.public();
    let restart_key = controller_key.clone();
    let (mut controller, endpoint) = Controller::bind("tcp://127.0.0.1:0", controller_key).await;
    let (open_gate, gate) = std_mpsc::channel();
    let ends = Arc::new(Ends::default());
    let registry = Registry::empty()
        .with(Box::new(Run::new()))
        .with(Box::new(Gate(StdMutex::new(gate))));
    let agent = Agent::new(
        "013c16030373937262a32e831ff18c941b6481ded8"
            .parse()
            .unwrap(),
        json!({"cpu": {"threads": 2}}),
        registry,
        "boot".into(),
    )
    .unwrap()
    .with_observer(ends.clone());
    let agent = Arc::new(agent);
    let config = SessionConfig::new(
        &endpoint,
        server_key,
        DEFAULT_MAX_FRAME,
        Duration::from_secs(5),
    )
    .unwrap();
    let stop = Arc::new(Notify::new());
    let serving = {
        let (agent, stop) = (agent.clone(), stop.clone());
        tokio::spawn(async move {
            serve_controller(agent, &config, async move { stop.notified().await }).await
        })
    };

    controller.accept().await;
    let register = controller.register().await;
    assert!(register.calls.is_empty());
    let collected = register.collected_at.expect("collected_at");
    assert!(humantime::parse_rfc3339(&collected).is_ok(), "{collected}");
    let run = register
        .capabilities
        .iter()
        .find(|c| c.name == "run")
        .unwrap();
    assert!(run.destructive);

    // A failing command: received, running, both streams, then failed with its output.
    let failing = MessageId(1 << 33);
    controller
        .request(
            failing,
            call(
                "run",
                json!({"shell": "printf hello; printf oops >&2; exit 3"}),
            ),
        )
        .await;
    let mut stages = Vec::new();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let result = loop {
        let env = controller.recv().await;
        assert_eq!(env.re, Some(failing), "{env:?}");
        match env.body {
            Body::CallProgress(p) => stages.extend(p.stage),
            Body::CallOutput(o) => {
                let stream = match o.stream {
                    OutputStream::Stdout => &mut stdout,
                    OutputStream::Stderr => &mut stderr,
                };
                assert_eq!(o.offset as usize, stream.len());
                stream.extend(o.data);
            }
            Body::CallResult(r) => break r,
            other => panic!("unexpected {other:?}"),
        }
    };
    // Not exclusive: `running` at once (it implies `received`).
    assert_eq!(stages, vec![CallStage::Running]);
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice()),
        (&b"hello"[..], &b"oops"[..])
    );
    assert!(
        matches!(&result.outcome, CallOutcome::Failed(e) if e.message == "command exited with status 3")
    );
    let output = result.output.clone().unwrap();
    assert_eq!(output["exit_code"], 3);
    assert_eq!(output["stdout"]["head"], "hello");

    // The same id again is refused, never run twice.
    controller
        .request(failing, call("run", json!({"shell": "exit 0"})))
        .await;
    let env = controller.recv().await;
    assert_eq!(env.re, Some(failing));
    assert!(
        matches!(&env.body, Body::Error(e) if e.code == ErrorCode::DuplicateCall),
        "{env:?}"
    );

    // Arguments outside the schema are refused before anything runs.
    let bad = MessageId((1 << 33) + 1);
    controller
        .request(bad, call("run", json!({"shell": "true", "colour": 1})))
        .await;
    let env = controller.recv().await;
    assert!(
        matches!(&env.body, Body::Error(e) if e.code == ErrorCode::BadArguments && e.message.contains("colour")),
        "{env:?}"
    );

    // A long command, cancelled once it has started (said so on stdout).
    let long = MessageId((1 << 33) + 2);
    controller
        .request(
            long,
            call(
                "run",
                json!({"command": ["sh", "-c", "echo started; exec sleep 30"]}),
            ),
        )
        .await;
    loop {
        let env = controller.recv().await;
        if let Body::CallOutput(o) = &env.body {
            assert_eq!(o.data, b"started\n");
            break;
        }
    }
    let cancel_id = controller.id();
    controller
        .send(Envelope::reply(
            cancel_id,
            long,
            Body::CancelCall(CancelCall {}),
        ))
        .await;
    let env = controller.recv().await;
    assert_eq!(env.re, Some(long));
    let Body::CallResult(cancelled) = env.body else {
        panic!("{env:?}")
    };
    assert!(matches!(cancelled.outcome, CallOutcome::Cancelled(_)));
    assert_eq!(cancelled.output.unwrap()["signal"], 15);

    // Cancelling a call that never ran is refused.
    let cancel_id = controller.id();
    controller
        .send(Envelope::reply(
            cancel_id,
            MessageId(999),
            Body::CancelCall(CancelCall {}),
        ))
        .await;
    let env = controller.recv().await;
    assert_eq!(env.re, Some(cancel_id));
    assert!(matches!(&env.body, Body::Error(e) if e.code == ErrorCode::UnknownCall));

    // A call that finishes while the controller is gone: reported at the next registration.
    let gated = MessageId((1 << 33) + 3);
    controller
        .request(gated, call("gate", json!({"label": "x"})))
        .await;
    let mut stages = Vec::new();
    while stages.last() != Some(&CallStage::Running) {
        let env = controller.recv().await;
        if let Body::CallProgress(p) = env.body {
            stages.extend(p.stage);
        }
    }
    // Exclusive: `received`, then `running` once it holds the lock.
    assert_eq!(stages, vec![CallStage::Received, CallStage::Running]);
    drop(controller);
    tokio::time::timeout(WAIT, ends.0.notified())
        .await
        .expect("the agent never noticed the controller went away");
    open_gate.send(()).unwrap();
    tokio::time::timeout(WAIT, async {
        while agent.calls_running() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the gated call never finished");

    // The same key on the same address: a restarted controller. The agent reports every call
    // it ran, with results, in the order they finished.
    let (mut controller, _) = Controller::bind(&endpoint, restart_key).await;
    controller.accept().await;
    let register = controller.register().await;
    let reported: Vec<(MessageId, &str)> = register
        .calls
        .iter()
        .map(|c| (c.id, c.capability.as_str()))
        .collect();
    assert_eq!(
        reported,
        vec![(failing, "run"), (long, "run"), (gated, "gate")]
    );
    let outcome = |i: usize| register.calls[i].finished.as_ref().unwrap().result.clone();
    assert!(matches!(outcome(0).outcome, CallOutcome::Failed(_)));
    assert_eq!(outcome(0).output.unwrap()["exit_code"], 3);
    assert!(matches!(outcome(1).outcome, CallOutcome::Cancelled(_)));
    assert_eq!(
        outcome(2).outcome,
        CallOutcome::Succeeded(json!({"opened": "x"}))
    );
    // The gated result never reached a registered session: it is also sent on its own.
    let env = controller.recv().await;
    assert_eq!(env.re, Some(gated));
    assert!(matches!(env.body, Body::CallResult(_)), "{env:?}");
    // Still never run twice.
    controller.request(gated, call("gate", json!({}))).await;
    let env = controller.recv().await;
    assert!(matches!(&env.body, Body::Error(e) if e.code == ErrorCode::DuplicateCall));

    stop.notify_one();
    tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
}
