//! The compiled proto must match the reference document (tests/fixtures/taskqueue-proto.md, a copy
//! of the original's generated documentation) field by field and RPC by RPC: existing scitq workers
//! and clients depend on every name, type, label and number.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

const DOC: &str = include_str!("../fixtures/taskqueue-proto.md");

#[derive(Debug)]
struct DocField {
    name: String,
    ty: String,
    label: String,
}

struct DocRpc {
    name: String,
    request: String,
    request_stream: bool,
    response: String,
    response_stream: bool,
}

/// Messages (by full dotted name, e.g. `Worker` or `RcloneRemote.OptionsEntry`) and RPCs of the doc.
fn parse_doc() -> (BTreeMap<String, Vec<DocField>>, Vec<DocRpc>) {
    let mut messages = BTreeMap::new();
    let mut rpcs = Vec::new();
    let mut current: Option<String> = None;
    let mut in_service = false;
    for line in DOC.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            let title = title.trim().to_string();
            in_service = title == "TaskQueue";
            current = (!in_service).then(|| title.clone());
            if let Some(t) = &current {
                messages.insert(t.clone(), Vec::new());
            }
            continue;
        }
        if line.starts_with("## ") && !line.contains("taskqueue.proto") {
            current = None;
            in_service = false;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !line.starts_with("| ") {
            continue;
        }
        let link_target = |cell: &str| -> Option<String> {
            let start = cell.find('[')? + 1;
            let end = cell.find(']')?;
            Some(cell[start..end].to_string())
        };
        if in_service {
            if let (Some(req), Some(resp)) = (link_target(cells[2]), link_target(cells[3])) {
                rpcs.push(DocRpc {
                    name: cells[1].to_string(),
                    request: req,
                    request_stream: cells[2].ends_with("stream"),
                    response: resp,
                    response_stream: cells[3].ends_with("stream"),
                });
            }
        } else if let Some(msg) = &current
            && let Some(ty) = link_target(cells[2])
            && cells[1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            messages.get_mut(msg).unwrap().push(DocField {
                name: cells[1].to_string(),
                ty,
                label: cells[3].to_string(),
            });
        }
    }
    (messages, rpcs)
}

fn descriptor() -> prost_types::FileDescriptorProto {
    let set = FileDescriptorSet::decode(taskqueue::proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .into_iter()
        .find(|f| f.package() == "taskqueue")
        .expect("taskqueue file in the descriptor set")
}

fn find_message<'a>(
    file: &'a prost_types::FileDescriptorProto,
    dotted: &str,
) -> Option<&'a DescriptorProto> {
    let mut parts = dotted.split('.');
    let first = parts.next()?;
    let mut msg = file.message_type.iter().find(|m| m.name() == first)?;
    for part in parts {
        msg = msg.nested_type.iter().find(|m| m.name() == part)?;
    }
    Some(msg)
}

fn scalar(ty: &str) -> Option<Type> {
    Some(match ty {
        "double" => Type::Double,
        "float" => Type::Float,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        "uint32" => Type::Uint32,
        "uint64" => Type::Uint64,
        "bool" => Type::Bool,
        "string" => Type::String,
        "bytes" => Type::Bytes,
        _ => return None,
    })
}

#[test]
fn every_message_and_field_matches_the_reference() {
    let (doc, _) = parse_doc();
    let file = descriptor();
    let top_level: Vec<_> = doc.keys().filter(|k| !k.contains('.')).collect();
    assert_eq!(top_level.len(), 109, "the reference lists 109 messages");
    assert_eq!(
        file.message_type.len(),
        109,
        "the proto defines exactly the reference's messages"
    );

    for (name, fields) in &doc {
        let msg = find_message(&file, name)
            .unwrap_or_else(|| panic!("message {name} missing from the proto"));
        assert_eq!(msg.field.len(), fields.len(), "{name}: field count");
        let mut expected_number = 1;
        for (doc_field, field) in fields.iter().zip(&msg.field) {
            let ctx = format!("{name}.{}", doc_field.name);
            if name == "Workflow" && expected_number == 3 {
                expected_number = 4; // Workflow: 3 is reserved (docs/architecture.md#proto).
            }
            assert_eq!(field.name(), doc_field.name, "{ctx}: name/order");
            assert_eq!(field.number(), expected_number, "{ctx}: number");
            expected_number += 1;
            match scalar(&doc_field.ty) {
                Some(t) => assert_eq!(field.r#type(), t, "{ctx}: type"),
                None => {
                    assert_eq!(field.r#type(), Type::Message, "{ctx}: type");
                    let expected = if doc_field.ty.starts_with(".google") {
                        doc_field.ty.clone()
                    } else {
                        format!(".taskqueue.{}", doc_field.ty)
                    };
                    assert_eq!(field.type_name(), expected, "{ctx}: message type");
                }
            }
            match doc_field.label.as_str() {
                "repeated" => assert_eq!(field.label(), Label::Repeated, "{ctx}: label"),
                "optional" => {
                    assert_eq!(field.label(), Label::Optional, "{ctx}: label");
                    assert!(field.proto3_optional(), "{ctx}: must be proto3 `optional`");
                }
                "" => {
                    assert_eq!(field.label(), Label::Optional, "{ctx}: label");
                    assert!(!field.proto3_optional(), "{ctx}: must not be `optional`");
                }
                other => panic!("{ctx}: unknown label {other:?} in the reference"),
            }
        }
        if name.ends_with("Entry") {
            assert!(
                msg.options.as_ref().is_some_and(|o| o.map_entry()),
                "{name} must be a map entry"
            );
        }
    }
    let workflow = find_message(&file, "Workflow").unwrap();
    assert!(
        workflow.reserved_range.iter().any(|r| r.start() == 3),
        "Workflow reserves number 3"
    );
}

#[test]
fn every_rpc_matches_the_reference() {
    let (_, rpcs) = parse_doc();
    let file = descriptor();
    assert_eq!(file.service.len(), 1);
    let service = &file.service[0];
    assert_eq!(service.name(), "TaskQueue");
    assert_eq!(rpcs.len(), 59, "the reference lists 59 RPCs");
    assert_eq!(service.method.len(), 59);
    for (doc, method) in rpcs.iter().zip(&service.method) {
        assert_eq!(method.name(), doc.name, "RPC order/name");
        let qualify = |t: &str| {
            if t.starts_with('.') {
                t.to_string()
            } else {
                format!(".taskqueue.{t}")
            }
        };
        assert_eq!(
            method.input_type(),
            qualify(&doc.request),
            "{}: request",
            doc.name
        );
        assert_eq!(
            method.output_type(),
            qualify(&doc.response),
            "{}: response",
            doc.name
        );
        assert_eq!(
            method.client_streaming(),
            doc.request_stream,
            "{}: client streaming",
            doc.name
        );
        assert_eq!(
            method.server_streaming(),
            doc.response_stream,
            "{}: server streaming",
            doc.name
        );
    }
    let streams: Vec<_> = rpcs
        .iter()
        .filter(|r| r.request_stream || r.response_stream)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        streams,
        ["SendTaskLogs", "StreamTaskLogsOutput", "StreamTaskLogsErr"]
    );
}

#[test]
fn the_access_table_covers_exactly_the_service() {
    let file = descriptor();
    let names: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    let table: Vec<&str> = taskqueue::api::rpcs::RPCS.iter().map(|r| r.name).collect();
    assert_eq!(names, table);
    for (rpc, method) in taskqueue::api::rpcs::RPCS
        .iter()
        .zip(&file.service[0].method)
    {
        use taskqueue::api::rpcs::Kind;
        let kind = match (method.client_streaming(), method.server_streaming()) {
            (false, false) => Kind::Unary,
            (true, false) => Kind::ClientStream,
            (false, true) => Kind::ServerStream,
            (true, true) => panic!("no bidi RPC expected"),
        };
        assert_eq!(rpc.kind, kind, "{}", rpc.name);
    }
}

#[test]
fn the_fixture_is_the_shared_reference() {
    // When the shared spec is present (developer machines), the fixture must be an exact copy.
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/taskqueue-proto.md");
    if let Ok(text) = std::fs::read_to_string(shared) {
        assert_eq!(
            text, DOC,
            "tests/fixtures/taskqueue-proto.md differs from ../shared/spec/taskqueue-proto.md"
        );
    }
}
