//! MessagePack encoding of envelopes, with the checks every receiver needs.
//!
//! `decode` refuses oversize frames before touching their contents, tells an unsupported
//! protocol version apart from a malformed frame, and carries the message id whenever it could
//! be read so the receiver can answer the sender. It never panics (see the proptests below).

use serde::Deserialize;

use crate::envelope::{Envelope, MessageId, PROTOCOL_VERSION};

/// Default largest frame accepted: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Nesting depth allowed in a frame; inventories nest a handful of levels, and a bound keeps a
/// hostile frame from exhausting the decoder's stack.
const MAX_DEPTH: usize = 64;

/// Most MessagePack values (maps, arrays, scalars) one frame may hold. The frame limit bounds
/// bytes on the wire, not what decoding makes of them: one byte per zero in an array becomes
/// tens of bytes each once decoded. Real inventories hold a few thousand values.
pub const DEFAULT_MAX_VALUES: usize = 250_000;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame exceeds the configured limit and was not decoded.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    Oversize {
        /// Frame length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The frame is not an envelope at all.
    #[error("frame is not a MessagePack envelope")]
    Malformed(#[source] rmp_serde::decode::Error),
    /// The envelope speaks a protocol version this build does not.
    #[error("protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// Version the sender used.
        version: u16,
        /// The message id, to answer it.
        id: MessageId,
    },
    /// The envelope holds more values than any real message; it was not decoded.
    #[error("message {id} holds more than {limit} values")]
    TooManyValues {
        /// The message id, to answer it.
        id: MessageId,
        /// The limit.
        limit: usize,
    },
    /// The envelope is readable but its body is not a known, well-formed message.
    #[error("message {id} has an unknown or malformed body")]
    BadBody {
        /// The message id, to answer it.
        id: MessageId,
        /// What the decoder reported.
        #[source]
        source: rmp_serde::decode::Error,
    },
}

impl DecodeError {
    /// The id of the offending message, when it could be read (so the receiver can reply).
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            DecodeError::UnsupportedVersion { id, .. }
            | DecodeError::BadBody { id, .. }
            | DecodeError::TooManyValues { id, .. } => Some(*id),
            DecodeError::Oversize { .. } | DecodeError::Malformed(_) => None,
        }
    }

    /// A short, stable label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::TooManyValues { .. } => "too_many_values",
            DecodeError::BadBody { .. } => "bad_body",
        }
    }
}

/// Why an envelope could not be encoded (only possible for values serde cannot represent).
#[derive(Debug, thiserror::Error)]
#[error("could not encode envelope")]
pub struct EncodeError(#[source] rmp_serde::encode::Error);

/// The fields every version must keep, read before the body so errors can name the message.
#[derive(Deserialize)]
struct Head {
    v: u16,
    id: MessageId,
}

/// Encodes an envelope as MessagePack with named fields.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    rmp_serde::to_vec_named(envelope).map_err(EncodeError)
}

/// Decodes one frame, refusing frames over `max_frame` bytes before looking inside.
pub fn decode(frame: &[u8], max_frame: usize) -> Result<Envelope, DecodeError> {
    if frame.len() > max_frame {
        return Err(DecodeError::Oversize {
            len: frame.len(),
            limit: max_frame,
        });
    }
    // Before anything walks the body: a frame of millions of tiny values is refused here.
    if too_many_values(frame, DEFAULT_MAX_VALUES) {
        return match quick_id(frame) {
            Some(id) => Err(DecodeError::TooManyValues {
                id,
                limit: DEFAULT_MAX_VALUES,
            }),
            None => Err(DecodeError::Oversize {
                len: frame.len(),
                limit: max_frame,
            }),
        };
    }
    let head: Head = from_slice(frame).map_err(DecodeError::Malformed)?;
    if head.v != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version: head.v,
            id: head.id,
        });
    }
    from_slice(frame).map_err(|source| DecodeError::BadBody {
        id: head.id,
        source,
    })
}

/// How a bounded walk over MessagePack values ended.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Every value was read.
    Done,
    /// More values than the budget allowed.
    OverBudget,
    /// The bytes are not well-formed MessagePack (the decoder reports it).
    Malformed,
}

/// Walks `values` consecutive MessagePack values (and everything inside them) from `rest`
/// without decoding or allocating for them, spending one unit of `budget` per value. A hostile
/// announced length is only a number here.
fn skip_values(rest: &mut &[u8], values: u64, budget: &mut usize) -> Walk {
    let take = |rest: &mut &[u8], n: usize| -> Option<u64> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let skip = |rest: &mut &[u8], n: u64| -> Option<()> {
        let n = usize::try_from(n).ok()?;
        *rest = rest.get(n..)?;
        Some(())
    };
    // Values still to read at each open level.
    let mut pending: Vec<u64> = vec![values];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let Some((&marker, tail)) = rest.split_first() else {
            return Walk::Malformed;
        };
        *rest = tail;
        if *budget == 0 {
            return Walk::OverBudget;
        }
        *budget -= 1;
        let ok = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Some(()),
            0x80..=0x8f => {
                pending.push(2 * u64::from(marker & 0x0f));
                Some(())
            }
            0x90..=0x9f => {
                pending.push(u64::from(marker & 0x0f));
                Some(())
            }
            0xa0..=0xbf => skip(rest, u64::from(marker & 0x1f)),
            0xc4 | 0xd9 => take(rest, 1).and_then(|n| skip(rest, n)),
            0xc5 | 0xda => take(rest, 2).and_then(|n| skip(rest, n)),
            0xc6 | 0xdb => take(rest, 4).and_then(|n| skip(rest, n)),
            0xc7 => take(rest, 1).and_then(|n| skip(rest, n + 1)),
            0xc8 => take(rest, 2).and_then(|n| skip(rest, n + 1)),
            0xc9 => take(rest, 4).and_then(|n| skip(rest, n + 1)),
            0xca | 0xce | 0xd2 => skip(rest, 4),
            0xcb | 0xcf | 0xd3 => skip(rest, 8),
            0xcc | 0xd0 => skip(rest, 1),
            0xcd | 0xd1 => skip(rest, 2),
            0xd4 => skip(rest, 2),
            0xd5 => skip(rest, 3),
            0xd6 => skip(rest, 5),
            0xd7 => skip(rest, 9),
            0xd8 => skip(rest, 17),
            0xdc => take(rest, 2).map(|n| pending.push(n)),
            0xdd => take(rest, 4).map(|n| pending.push(n)),
            0xde => take(rest, 2).map(|n| pending.push(2 * n)),
            0xdf => take(rest, 4).map(|n| pending.push(2 * n)),
            0xc1 => None,
        };
        if ok.is_none() {
            return Walk::Malformed;
        }
    }
    Walk::Done
}

/// Whether `frame` holds more than `limit` values (counted without decoding them).
fn too_many_values(frame: &[u8], limit: usize) -> bool {
    let mut rest = frame;
    let mut budget = limit;
    skip_values(&mut rest, 1, &mut budget) == Walk::OverBudget
}

/// The envelope's `id`, read without walking its body (which may be huge): the encoder
/// writes `v` and `id` before `body`.
fn quick_id(frame: &[u8]) -> Option<MessageId> {
    let (&marker, mut rest) = frame.split_first()?;
    let fields = match marker {
        0x80..=0x8f => u64::from(marker & 0x0f),
        _ => return None,
    };
    for _ in 0..fields {
        let (&key_marker, tail) = rest.split_first()?;
        let key_len = match key_marker {
            0xa0..=0xbf => usize::from(key_marker & 0x1f),
            _ => return None,
        };
        let key = tail.get(..key_len)?;
        rest = tail.get(key_len..)?;
        if key == b"id" {
            let (&m, tail) = rest.split_first()?;
            let width = match m {
                0x00..=0x7f => return Some(MessageId(u64::from(m))),
                0xcc => 1,
                0xcd => 2,
                0xce => 4,
                0xcf => 8,
                _ => return None,
            };
            let bytes = tail.get(..width)?;
            return Some(MessageId(
                bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            ));
        }
        // Small fields only (v, re) may come before the id.
        let mut budget = 16;
        if skip_values(&mut rest, 1, &mut budget) != Walk::Done {
            return None;
        }
    }
    None
}

fn from_slice<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::capability::CapabilityInfo;
    use crate::error_report::ErrorReport;
    use crate::mercury_id::MercuryId;
    use crate::message::*;
    use proptest::prelude::*;

    fn mercury_id() -> MercuryId {
        "013c16030373937262a32e831ff18c941b6481ded8"
            .parse()
            .unwrap()
    }

    fn every_body() -> Vec<Body> {
        vec![
            Body::Register(Register {
                mercury_id: mercury_id(),
                agent_version: "0.1.0".into(),
                boot_id: "b0".into(),
                capabilities: vec![CapabilityInfo {
                    name: "inspect".into(),
                    doc: "inspect".into(),
                    args: vec![],
                    exclusive: false,
                    destructive: false,
                    default_timeout: 300,
                }],
                inventory: serde_json::json!({"mem": {"total": 1024}}),
                inventory_version: 1,
                image_id: None,
                calls: vec![
                    CallRecord {
                        id: MessageId(1 << 40),
                        capability: "run".into(),
                        started_at: "2026-12-01T10:00:00Z".into(),
                        finished: None,
                    },
                    CallRecord {
                        id: MessageId(77),
                        capability: "run".into(),
                        started_at: "2026-12-01T09:00:00Z".into(),
                        finished: Some(CallFinished {
                            result: CallResult {
                                outcome: CallOutcome::TimedOut(ErrorReport {
                                    message: "timed out after 5s".into(),
                                    causes: vec![],
                                }),
                                output: Some(serde_json::json!({"exit_code": null, "signal": 15})),
                            },
                            finished_at: "2026-12-01T09:00:05Z".into(),
                        }),
                    },
                ],
                collected_at: Some("2026-12-01T08:59:59.5Z".into()),
            }),
            Body::Registered(Registered {
                heartbeat_interval_ms: 5000,
            }),
            Body::Heartbeat(Heartbeat {}),
            Body::InventoryUpdate(InventoryUpdate {
                inventory: serde_json::json!({"cpu": {"threads": 2}}),
                version: 2,
                collected_at: Some("2026-12-01T10:00:00Z".into()),
            }),
            Body::InventoryDelta(InventoryDelta {
                base: 2,
                version: 3,
                patch: json_patch::diff(
                    &serde_json::json!({"cpu": {"threads": 2}, "os_storage": [{"name": "sda"}, {"name": "sdb"}]}),
                    &serde_json::json!({"cpu": {"threads": 4}, "os_storage": [{"name": "sda"}]}),
                ),
                collected_at: None,
            }),
            Body::CapabilityCall(CapabilityCall {
                capability: "inspect".into(),
                args: serde_json::json!({}),
            }),
            Body::CallProgress(CallProgress {
                message: "half".into(),
                percent: Some(50.0),
                stage: None,
            }),
            Body::CallProgress(CallProgress {
                message: "running".into(),
                percent: None,
                stage: Some(crate::CallStage::Running),
            }),
            Body::CallResult(CallResult {
                outcome: CallOutcome::Succeeded(serde_json::json!([1, 2])),
                output: None,
            }),
            Body::CallResult(CallResult {
                outcome: CallOutcome::Failed(ErrorReport {
                    message: "boom".into(),
                    causes: vec!["inner".into()],
                }),
                output: Some(serde_json::json!({"exit_code": 3})),
            }),
            Body::CallResult(CallResult {
                outcome: CallOutcome::Cancelled(ErrorReport {
                    message: "cancelled".into(),
                    causes: vec![],
                }),
                output: None,
            }),
            Body::CallOutput(CallOutput {
                stream: OutputStream::Stderr,
                offset: 65_536,
                data: b"\x00\xffhello\n".to_vec(),
            }),
            Body::CancelCall(CancelCall {}),
            Body::Error(ErrorBody {
                code: ErrorCode::UnknownCapability,
                message: "no such capability: frobnicate".into(),
            }),
            Body::Error(ErrorBody {
                code: ErrorCode::DuplicateCall,
                message: "call 5 already ran".into(),
            }),
            Body::Error(ErrorBody {
                code: ErrorCode::UnknownCall,
                message: "no call 6".into(),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for body in every_body() {
            let env = Envelope::reply(MessageId(9), MessageId(3), body);
            let bytes = encode(&env).unwrap();
            assert_eq!(decode(&bytes, DEFAULT_MAX_FRAME).unwrap(), env);
        }
    }

    // Golden bytes pin the wire format: a change here breaks deployed agents.
    #[test]
    fn golden_heartbeat() {
        let env = Envelope::new(MessageId(1), Body::Heartbeat(Heartbeat {}));
        assert_eq!(
            hex::encode(encode(&env).unwrap()),
            // {v:1, id:1, re:nil, body:{heartbeat:{}}}
            "84a17601a2696401a27265c0a4626f647981a9686561727462656174 80".replace(' ', "")
        );
    }

    #[test]
    fn golden_error_reply() {
        let env = Envelope::reply(
            MessageId(2),
            MessageId(1),
            Body::Error(ErrorBody {
                code: ErrorCode::Malformed,
                message: "x".into(),
            }),
        );
        assert_eq!(
            hex::encode(encode(&env).unwrap()),
            "84a17601a2696402a272650 1a4626f647981a56572726f7282a4636f6465a96d616c666f726d6564a76d657373616765a178"
                .replace(' ', "")
        );
    }

    #[test]
    fn golden_capability_call() {
        let env = Envelope::new(
            MessageId(5),
            Body::CapabilityCall(CapabilityCall {
                capability: "inspect".into(),
                args: serde_json::json!({}),
            }),
        );
        assert_eq!(
            hex::encode(encode(&env).unwrap()),
            "84a17601a26964 05a27265c0a4626f647981af6361706162696c6974795f63616c6c82aa6361706162696c697479a7696e7370656374a46172677380"
                .replace(' ', "")
        );
    }

    #[test]
    fn golden_call_output_and_cancel() {
        let env = Envelope::reply(
            MessageId(5),
            MessageId(3),
            Body::CallOutput(CallOutput {
                stream: OutputStream::Stdout,
                offset: 0,
                data: b"hi".to_vec(),
            }),
        );
        // body: {call_output: {stream: "stdout", offset: 0, data: bin8(2) "hi"}}
        assert_eq!(
            hex::encode(encode(&env).unwrap()),
            "84a17601a2696405a2726503a4626f647981ab63616c6c5f6f757470757483a673747265616da67374646f7574a66f666673657400a464617461c4026869"
        );
        let env = Envelope::reply(MessageId(6), MessageId(3), Body::CancelCall(CancelCall {}));
        assert_eq!(
            hex::encode(encode(&env).unwrap()),
            "84a17601a2696406a2726503a4626f647981ab63616e63656c5f63616c6c80"
        );
    }

    #[test]
    fn a_full_output_chunk_is_one_value_and_fits_a_frame() {
        let env = Envelope::reply(
            MessageId(5),
            MessageId(3),
            Body::CallOutput(CallOutput {
                stream: OutputStream::Stdout,
                offset: u64::MAX,
                data: vec![0xab; 64 * 1024],
            }),
        );
        let bytes = encode(&env).unwrap();
        assert!(bytes.len() < 64 * 1024 + 100, "{}", bytes.len());
        let mut rest = bytes.as_slice();
        let mut budget = 20;
        assert_eq!(skip_values(&mut rest, 1, &mut budget), Walk::Done);
        assert_eq!(decode(&bytes, DEFAULT_MAX_FRAME).unwrap(), env);
    }

    #[test]
    fn older_messages_decode_with_the_new_fields_empty() {
        // A CallResult and an InventoryUpdate as a build before jobs encoded them.
        #[derive(serde::Serialize)]
        struct OldResult {
            outcome: CallOutcome,
        }
        let bytes = rmp_serde::to_vec_named(&OldResult {
            outcome: CallOutcome::Succeeded(serde_json::json!(1)),
        })
        .unwrap();
        let result: CallResult = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(result.output, None);
        #[derive(serde::Serialize)]
        struct OldUpdate {
            inventory: serde_json::Value,
            version: u64,
        }
        let bytes = rmp_serde::to_vec_named(&OldUpdate {
            inventory: serde_json::json!({}),
            version: 4,
        })
        .unwrap();
        let update: InventoryUpdate = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!((update.version, update.collected_at), (4, None));
        // A chunk from a peer that wrote bytes as an array of numbers still reads.
        #[derive(serde::Serialize)]
        struct ArrayChunk {
            stream: OutputStream,
            offset: u64,
            data: Vec<u8>,
        }
        let bytes = rmp_serde::to_vec_named(&ArrayChunk {
            stream: OutputStream::Stderr,
            offset: 1,
            data: vec![1, 2, 3],
        })
        .unwrap();
        let chunk: CallOutput = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(chunk.data, vec![1, 2, 3]);
    }

    #[test]
    fn oversize_is_refused_before_decoding() {
        let frame = vec![0u8; 100];
        assert!(matches!(
            decode(&frame, 99),
            Err(DecodeError::Oversize {
                len: 100,
                limit: 99
            })
        ));
    }

    #[test]
    fn unknown_version_names_the_message() {
        let mut env = Envelope::new(MessageId(42), Body::Heartbeat(Heartbeat {}));
        env.v = 99;
        let err = decode(&encode(&env).unwrap(), DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnsupportedVersion {
                version: 99,
                id: MessageId(42)
            }
        ));
        assert_eq!(err.message_id(), Some(MessageId(42)));
    }

    #[test]
    fn unknown_body_names_the_message() {
        #[derive(serde::Serialize)]
        struct Future {
            v: u16,
            id: u64,
            re: Option<u64>,
            body: std::collections::BTreeMap<&'static str, u8>,
        }
        let frame = rmp_serde::to_vec_named(&Future {
            v: PROTOCOL_VERSION,
            id: 11,
            re: None,
            body: [("teleport", 1)].into_iter().collect(),
        })
        .unwrap();
        let err = decode(&frame, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err.kind(), "bad_body");
        assert_eq!(err.message_id(), Some(MessageId(11)));
    }

    #[test]
    fn unknown_error_code_decodes_as_other() {
        #[derive(serde::Serialize)]
        struct E {
            code: &'static str,
            message: &'static str,
        }
        let bytes = rmp_serde::to_vec_named(&E {
            code: "quota_exceeded",
            message: "m",
        })
        .unwrap();
        let body: ErrorBody = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(body.code, ErrorCode::Other);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // {v:1, id:1, re:nil, body:{inventory_update:{inventory:[[[[…]]]]}}} nested 100k deep.
        let mut frame = hex::decode("84a17601a26964 01a27265c0a4626f647981b0696e76656e746f72795f75706461746581a9696e76656e746f7279".replace(' ', "")).unwrap();
        frame.extend(std::iter::repeat_n(0x91u8, 100_000));
        frame.push(0xc0);
        // Even skipping the body to read the head hits the depth bound, so it is malformed.
        assert_eq!(
            decode(&frame, DEFAULT_MAX_FRAME).unwrap_err().kind(),
            "malformed"
        );
    }

    #[test]
    fn a_small_frame_of_many_values_is_refused_before_decoding() {
        // 300,000 zeros: 300 KB on the wire, tens of MB once decoded into JSON values.
        let env = Envelope::new(
            MessageId(4),
            Body::InventoryUpdate(InventoryUpdate {
                inventory: serde_json::json!({"zeros": vec![0u8; 300_000]}),
                version: 1,
                collected_at: None,
            }),
        );
        let frame = encode(&env).unwrap();
        assert!(frame.len() < 400_000);
        let err = decode(&frame, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooManyValues {
                    id: MessageId(4),
                    ..
                }
            ),
            "{err}"
        );
        // A real message is far below the limit.
        for body in every_body() {
            let bytes = encode(&Envelope::new(MessageId(1), body)).unwrap();
            assert!(!too_many_values(&bytes, DEFAULT_MAX_VALUES));
            assert_eq!(quick_id(&bytes), Some(MessageId(1)));
        }
    }

    #[test]
    fn value_counts_match_what_serde_sees() {
        let doc = serde_json::json!({"a": [1, -2, 3.5, "x", null, true, {"b": []}], "c": "y".repeat(300)});
        let bytes = rmp_serde::to_vec_named(&doc).unwrap();
        // map(2) + "a" + array(7) + 7 items + "b" + [] + "c" + string = 14 values.
        let walk = |limit: usize| {
            let mut rest = bytes.as_slice();
            let mut budget = limit;
            skip_values(&mut rest, 1, &mut budget)
        };
        assert_eq!(walk(14), Walk::Done);
        assert_eq!(walk(13), Walk::OverBudget);
        // A hostile announced length is a number, not an allocation: the bytes run out first.
        let huge = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x00];
        assert!(!too_many_values(&huge, 100));
        let ids = [0u64, 127, 128, 65_535, 1 << 40];
        for id in ids {
            let bytes =
                encode(&Envelope::new(MessageId(id), Body::Heartbeat(Heartbeat {}))).unwrap();
            assert_eq!(quick_id(&bytes), Some(MessageId(id)));
        }
    }

    fn valid_frames() -> Vec<Vec<u8>> {
        every_body()
            .into_iter()
            .map(|b| encode(&Envelope::new(MessageId(1), b)).unwrap())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, DEFAULT_MAX_FRAME);
        }

        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..10,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let frames = valid_frames();
            let mut frame = frames[which % frames.len()].clone();
            for (at, byte) in edits {
                let i = at.index(frame.len());
                frame[i] = byte;
            }
            let keep = cut.index(frame.len() + 1);
            frame.truncate(keep.max(frame.len() / 2));
            let _ = decode(&frame, DEFAULT_MAX_FRAME);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn encode_then_decode_is_identity(id in any::<u64>(), re in any::<Option<u64>>(), msg in ".{0,64}", pct in any::<Option<f32>>().prop_filter("NaN never equals itself", |p| p.is_none_or(|x| !x.is_nan()))) {
            let env = Envelope { v: PROTOCOL_VERSION, id: MessageId(id), re: re.map(MessageId), body: Body::CallProgress(CallProgress { message: msg, percent: pct, stage: None }) };
            let back = decode(&encode(&env).unwrap(), DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(back, env);
        }
    }
}
