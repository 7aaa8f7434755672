//! The generated wire types and service of `taskqueue.TaskQueue`; nothing else lives here.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("taskqueue");

/// The compiled descriptor set of proto/taskqueue.proto (with its imports): served by reflection and
/// checked against the reference document by the conformance test.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskqueue_descriptor");
