//! What reading a request's model and `stream` out of its buffered JSON body costs the
//! gateway (`stream_deadline_gateway::request_fields::read`, once per request), on chat
//! completion bodies of about 1 KB and 100 KB, against only skipping through the same JSON
//! (`serde::de::IgnoredAny`: what any reader of a field after the messages must do).
//!
//! `cargo bench -p tower-stream-deadline-benches --bench request_fields`
//!
//! The bodies are laid out as the `openai` SDK sends them: `messages` first, then `model`,
//! `stream` and the sampling options, so the model is found only after the whole
//! conversation; message texts carry newlines, quotes and a non-ASCII character, which a JSON
//! reader must unescape or step over.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::de::IgnoredAny;
use stream_deadline_gateway::request_fields;

const SENTENCE: &str = "Summarise the report below in three bullet points, and quote the \
    \"key figure\" exactly.\nThe café's revenue grew 12% while costs fell; ";

/// A chat completion body with `turns` messages of `sentences_per_turn` sentences each,
/// its fields in the `openai` SDK's order.
fn chat_body(turns: usize, sentences_per_turn: usize) -> Vec<u8> {
    let mut messages = vec![serde_json::json!({
        "role": "system",
        "content": "You are a helpful assistant. Answer briefly.",
    })];
    for turn in 0..turns {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({
            "role": role,
            "content": SENTENCE.repeat(sentences_per_turn),
        }));
    }
    let messages = serde_json::to_string(&messages).expect("a JSON value serialises");
    format!(
        r#"{{"messages":{messages},"model":"llama-3.1-70b-instruct","stream":true,"stream_options":{{"include_usage":true}},"temperature":0.7,"max_tokens":1024}}"#
    )
    .into_bytes()
}

fn request_fields(c: &mut Criterion) {
    let bodies = [("1KB", chat_body(2, 3)), ("100KB", chat_body(40, 18))];
    let mut group = c.benchmark_group("request_fields");
    for (name, body) in &bodies {
        let fields = request_fields::read(body);
        assert_eq!(fields.model.as_deref(), Some("llama-3.1-70b-instruct"));
        assert!(fields.stream, "the body asks for a stream");
        eprintln!("{name}: {} bytes", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("read/{name}"), |b| {
            b.iter(|| request_fields::read(black_box(body)))
        });
        group.bench_function(format!("skip_only/{name}"), |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)).expect("valid JSON"))
        });
    }
    group.finish();
}

criterion_group!(benches, request_fields);
criterion_main!(benches);
