//! STUB (replaced by the wire-openai branch)
#![allow(unused_variables, clippy::new_without_default)]
use crate::chat::{self, WireError};
use serde_json::Value;
pub fn decode_request(body: &Value) -> Result<chat::Request, WireError> {
    todo!()
}
pub fn encode_request(req: &chat::Request, upstream_model: &str) -> Value {
    todo!()
}
pub fn decode_response(body: &[u8]) -> Result<chat::Response, WireError> {
    todo!()
}
pub fn encode_response(resp: &chat::Response) -> Value {
    todo!()
}
pub fn decode_error(body: &[u8]) -> Option<chat::UpstreamErrorBody> {
    todo!()
}
pub fn encode_error(err: &chat::ClientError) -> Value {
    todo!()
}
pub fn include_usage(body: &Value) -> bool {
    todo!()
}
pub struct StreamDecoder;
impl StreamDecoder {
    pub fn new() -> Self {
        todo!()
    }
    pub fn push(&mut self, ev: &crate::sse::SseEvent) -> Result<Vec<chat::StreamEvent>, WireError> {
        todo!()
    }
}
pub struct StreamEncoder;
impl StreamEncoder {
    pub fn new(include_usage: bool) -> Self {
        todo!()
    }
    pub fn encode(&mut self, ev: &chat::StreamEvent, out: &mut Vec<u8>) {
        todo!()
    }
    pub fn encode_error(&mut self, err: &chat::ClientError, out: &mut Vec<u8>) {
        todo!()
    }
}
