//! Property tests of the parser: every valid frame survives [`ClientFrame::encode`] and
//! [`parse_client_frame`] unchanged, and no input — any text, any JSON value, a valid frame with
//! bytes changed — makes the parser panic; it answers with a frame or an error code.

use chat_protocol::client::{
    AckStream, HistoryRequest, Limits, LoginRequest, PostRequest, Target, parse_client_frame,
};
use chat_protocol::{ClientFrame, RoomId, UserId};
use proptest::prelude::*;
use serde_json::Value;

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,64}"
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_ ]{0,30}[A-Za-z0-9_]"
}

fn content() -> impl Strategy<Value = String> {
    "\\PC{1,200}".prop_filter("not blank", |s| !s.trim().is_empty() && s.len() <= 4096)
}

fn room() -> impl Strategy<Value = RoomId> {
    id().prop_map(|s| RoomId::new(s).expect("valid room id"))
}

fn user() -> impl Strategy<Value = UserId> {
    id().prop_map(|s| UserId::new(s).expect("valid user id"))
}

fn frame() -> impl Strategy<Value = ClientFrame> {
    let epoch = prop::option::of("[0-9a-f]{1,16}");
    prop_oneof![
        (
            room(),
            user(),
            name(),
            prop::option::of(name()),
            prop::option::of(any::<u64>()),
            epoch.clone()
        )
            .prop_map(|(room_id, user_id, user_name, room_name, since, epoch)| {
                ClientFrame::Login(LoginRequest {
                    room_id,
                    user_id,
                    user_name,
                    room_name,
                    since,
                    epoch,
                })
            }),
        room().prop_map(|room_id| ClientFrame::Logout { room_id }),
        (
            prop_oneof![room().prop_map(Target::Room), user().prop_map(Target::User)],
            content(),
            prop::option::of(name())
        )
            .prop_map(|(target, content, client_msg_id)| {
                ClientFrame::Message(PostRequest {
                    target,
                    content,
                    client_msg_id,
                })
            }),
        (
            prop_oneof![room().prop_map(AckStream::Room), Just(AckStream::Direct)],
            any::<u64>(),
            epoch
        )
            .prop_map(|(stream, seq, epoch)| ClientFrame::Ack { stream, seq, epoch }),
        (room(), prop::option::of(any::<u64>()), 1u32..=200).prop_map(
            |(room_id, before, limit)| ClientFrame::History(HistoryRequest {
                room_id,
                before,
                limit
            })
        ),
        Just(ClientFrame::HeartBeat),
        "[A-Za-z0-9._-]{1,200}".prop_map(|token| ClientFrame::Auth { token }),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
        prop::sample::select(vec![
            "login",
            "logout",
            "message",
            "ack",
            "history",
            "heartBeat",
            "auth"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "event",
                    "roomId",
                    "userId",
                    "userName",
                    "roomName",
                    "since",
                    "epoch",
                    "content",
                    "toUserId",
                    "clientMsgId",
                    "seq",
                    "direct",
                    "before",
                    "limit",
                    "token",
                    "other",
                ])
                .prop_map(str::to_owned),
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_frame_round_trips(frame in frame()) {
        let text = frame.encode();
        let parsed = parse_client_frame(&text, &Limits::default());
        prop_assert_eq!(parsed, Ok(frame), "{}", text);
    }

    #[test]
    fn any_text_gets_a_frame_or_an_error(text in ".{0,300}") {
        let _ = parse_client_frame(&text, &Limits::default());
    }

    #[test]
    fn any_json_gets_a_frame_or_an_error(value in json()) {
        let text = value.to_string();
        if let Ok(frame) = parse_client_frame(&text, &Limits::default()) {
            // What the parser accepts, it can write back and read again as the same frame.
            prop_assert_eq!(parse_client_frame(&frame.encode(), &Limits::default()), Ok(frame));
        }
    }

    #[test]
    fn a_valid_frame_with_bytes_changed_gets_a_frame_or_an_error(
        frame in frame(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = frame.encode().into_bytes();
        for (at, byte) in changes {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = parse_client_frame(&String::from_utf8_lossy(&bytes), &Limits::default());
    }
}
