//! The parts of the OpenAI API that both the router and the simulated engine must read
//! the same way: request validation, prompt rendering (so both count the same tokens),
//! and the error body.
//!
//! Parsing is lenient about fields it does not use (tools, temperature, …) so that a
//! router can front real engines, and strict about the ones it does.

mod embeddings;
mod responses;

pub use embeddings::{parse_embeddings, EmbeddingsRequest, Encoding, MAX_INPUTS};
use responses::{check as check_responses, messages as responses_messages};
use serde::Serialize;
use serde_json::{Map, Value};

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
    /// OpenAI's Responses API, stateless: `input` and `instructions` are a chat.
    Responses,
    /// Embeddings: prompts only, no output.
    Embeddings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Chat,
        Endpoint::Completion,
        Endpoint::Responses,
        Endpoint::Embeddings,
    ];

    /// Where the endpoint is served.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completion => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
        }
    }

    /// The body field that bounds the answer's tokens, by precedence.
    pub(crate) fn limit_fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
            Endpoint::Completion => &["max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
            Endpoint::Embeddings => &[],
        }
    }
}

/// What the router and engine need to know about a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub endpoint: Endpoint,
    pub model: String,
    /// The prompt as the engine sees it: chat messages rendered through the template.
    pub prompt: PromptInput,
    /// Number of images attached to chat messages.
    pub images: u32,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    /// vLLM's scheduling priority: lower is served first.
    pub priority: i64,
    /// vLLM's `ignore_eos`: generate exactly `max_tokens`.
    pub ignore_eos: bool,
    pub n: u32,
    /// vLLM's `cache_salt`: prefix-cache isolation between requests that differ in it.
    pub cache_salt: Option<String>,
    /// OpenAI's `seed`: the simulated engine's words then depend on it alone, so that
    /// the same request gives the same answer on any replica.
    pub seed: Option<u64>,
    /// Output tokens already in the final assistant message being continued
    /// (`continue_final_message`): the answer goes on from there.
    pub continued_tokens: u32,
}

/// A prompt is text, or pre-tokenized ids (completions only).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptInput {
    pub fn token_count(&self) -> usize {
        match self {
            PromptInput::Text(t) => crate::tokenizer::count_tokens(t),
            PromptInput::Tokens(t) => t.len(),
        }
    }

    pub fn tokens(&self) -> Vec<u32> {
        match self {
            PromptInput::Text(t) => crate::tokenizer::tokenize(t),
            PromptInput::Tokens(t) => t.clone(),
        }
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The event that ends a stream of `endpoint` with this error: for the Responses
    /// API an `error` event (numbered `sequence_number`), else a chunk holding the error
    /// body (OpenAI's client raises it) and `[DONE]`.
    pub fn stream_event(&self, endpoint: Endpoint, sequence_number: u32) -> String {
        if endpoint != Endpoint::Responses {
            return format!("data: {}\n\ndata: [DONE]\n\n", self.body());
        }
        let data = serde_json::json!({
            "type": "error",
            "code": self.code.unwrap_or(self.kind),
            "message": self.message,
            "param": self.param,
            "sequence_number": sequence_number,
        });
        format!("event: error\ndata: {data}\n\n")
    }

    /// The JSON body OpenAI clients parse.
    pub fn body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: ErrorInner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_else(|_| String::from("{\"error\":{\"message\":\"error\"}}"))
    }
}

/// The body as a JSON object, and the model it names: what every reader needs.
fn object_with_model(body: &[u8]) -> Result<(Map<String, Value>, String), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}"), None))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(
            "request body must be a JSON object",
            None,
        ));
    };
    let model = model_field(&obj)?
        .ok_or_else(|| ApiError::invalid("'model' is required", Some("model")))?;
    Ok((obj, model))
}

/// The body's `model`, if it names one: a non-empty string.
fn model_field(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            "'model' must be a non-empty string",
            Some("model"),
        )),
    }
}

/// Parses and validates a request body for `endpoint`.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest, ApiError> {
    let (obj, model) = object_with_model(body)?;
    let (prompt, images) = match endpoint {
        Endpoint::Chat => {
            let r = render_chat(&obj)?;
            (PromptInput::Text(r.text), r.images)
        }
        Endpoint::Completion => (parse_prompt(&obj)?, 0),
        Endpoint::Responses => {
            check_responses(&obj)?;
            let r = render_messages(&responses_messages(&obj), Ending::default());
            (PromptInput::Text(r.text), r.images)
        }
        Endpoint::Embeddings => {
            return Err(ApiError::invalid(
                "an embeddings request generates nothing: read it with parse_embeddings",
                None,
            ))
        }
    };
    let continued_tokens = match endpoint {
        Endpoint::Chat => continued_tokens(&obj),
        _ => 0,
    };
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|v| v as u64))
                .ok_or_else(|| ApiError::invalid("'seed' must be an integer", Some("seed")))?,
        ),
        Some(_) => return Err(ApiError::invalid("'seed' must be an integer", Some("seed"))),
    };
    let max_tokens = max_tokens(endpoint, &obj)?;
    if max_tokens == Some(0) {
        let field = endpoint
            .limit_fields()
            .last()
            .copied()
            .unwrap_or("max_tokens");
        return Err(ApiError::invalid(
            format!("'{field}' must be at least 1"),
            Some(field),
        ));
    }
    let stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = include_usage(&obj)?;
    let user = match obj.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("'user' must be a string", Some("user"))),
    };
    let (priority, cache_salt) = scheduling(&obj)?;
    let ignore_eos = opt_bool(&obj, "ignore_eos")?.unwrap_or(false);
    let n = opt_u32(&obj, "n")?.unwrap_or(1);
    if n == 0 {
        return Err(ApiError::invalid("'n' must be at least 1", Some("n")));
    }
    Ok(ParsedRequest {
        endpoint,
        model,
        prompt,
        images,
        max_tokens,
        stream,
        include_usage,
        user,
        priority,
        ignore_eos,
        n,
        cache_salt,
        seed,
        continued_tokens,
    })
}

/// vLLM's `priority` (lower first; 0 if unset) and `cache_salt`.
fn scheduling(obj: &Map<String, Value>) -> Result<(i64, Option<String>), ApiError> {
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::invalid("'priority' must be an integer", Some("priority")))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "'priority' must be an integer",
                Some("priority"),
            ))
        }
    };
    let cache_salt = match obj.get("cache_salt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                "'cache_salt' must be a non-empty string",
                Some("cache_salt"),
            ))
        }
    };
    Ok((priority, cache_salt))
}

/// The request's bound on its answer's tokens: the first of its endpoint's limit
/// fields that is set.
fn max_tokens(endpoint: Endpoint, obj: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    for key in endpoint.limit_fields() {
        if let Some(v) = opt_u32(obj, key)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Tokens of the final assistant message a chat asks to continue (0 if none).
fn continued_tokens(obj: &Map<String, Value>) -> u32 {
    if !Ending::of(obj).continue_final {
        return 0;
    }
    let Some(Value::Array(messages)) = obj.get("messages") else {
        return 0;
    };
    let text = match messages.last().and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    u32::try_from(crate::tokenizer::count_tokens(&text)).unwrap_or(u32::MAX)
}

fn opt_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= u64::from(u32::MAX) => Ok(Some(v as u32)),
            _ => Err(ApiError::invalid(
                format!("'{key}' must be a non-negative integer"),
                Some(key),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be an integer"),
            Some(key),
        )),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be a boolean"),
            Some(key),
        )),
    }
}

fn parse_prompt(obj: &Map<String, Value>) -> Result<PromptInput, ApiError> {
    let bad = || {
        ApiError::invalid(
            "'prompt' must be a string, a list of one string, or a list of token ids",
            Some("prompt"),
        )
    };
    match obj.get("prompt") {
        None => Err(ApiError::invalid("'prompt' is required", Some("prompt"))),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(items)) => {
            if items.len() == 1 {
                if let Value::String(s) = &items[0] {
                    return Ok(PromptInput::Text(s.clone()));
                }
                if let Value::Array(ids) = &items[0] {
                    return token_ids(ids).ok_or_else(bad);
                }
            }
            if items.iter().all(Value::is_number) && !items.is_empty() {
                return token_ids(items).ok_or_else(bad);
            }
            if items.len() > 1 {
                return Err(ApiError::invalid(
                    "batched prompts are not supported: send one prompt per request",
                    Some("prompt"),
                ));
            }
            Err(bad())
        }
        Some(_) => Err(bad()),
    }
}

/// Token ids of the vocabulary, at least one.
fn token_ids(items: &[Value]) -> Option<PromptInput> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&t| t < u64::from(crate::tokenizer::VOCAB))
                .map(|t| t as u32)
        })
        .collect::<Option<Vec<u32>>>()
        .filter(|v| !v.is_empty())
        .map(PromptInput::Tokens)
}

/// Roles the simulated engine accepts (vLLM's: OpenAI's, plus the legacy `function`).
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Checks chat messages as the simulated engine does, then renders them. A router does
/// not call this: it passes whatever the engine accepts (see [`read_for_routing`]).
fn render_chat(obj: &Map<String, Value>) -> Result<RenderedChat, ApiError> {
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "'messages' must not be empty",
                Some("messages"),
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'messages' must be an array",
                Some("messages"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "'messages' is required",
                Some("messages"),
            ))
        }
    };
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::invalid(
                format!("messages[{i}] must be an object"),
                Some("messages"),
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role must be one of {}", ROLES.join(", ")),
                    Some("messages"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role is required"),
                    Some("messages"),
                ))
            }
        };
        match m.get("content") {
            Some(Value::String(_)) => {}
            None | Some(Value::Null) if role == "assistant" => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") if part.get("text").is_some_and(Value::is_string) => {}
                        Some("text") => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].text must be a string"),
                                Some("messages"),
                            ))
                        }
                        Some(t) if is_image_part(t) => {}
                        _ => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}] has an unknown type"),
                                Some("messages"),
                            ))
                        }
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content must be a string or an array of parts"),
                    Some("messages"),
                ))
            }
        }
    }
    let ending = Ending::of(obj);
    for key in ["add_generation_prompt", "continue_final_message"] {
        if obj
            .get(key)
            .is_some_and(|v| !v.is_boolean() && !v.is_null())
        {
            return Err(ApiError::invalid(
                format!("'{key}' must be a boolean"),
                Some(key),
            ));
        }
    }
    if ending.continue_final {
        // As vLLM: `add_generation_prompt` defaults to true and must be turned off.
        if ending.generation_prompt {
            return Err(ApiError::invalid(
                "'continue_final_message' and 'add_generation_prompt' cannot both be true",
                Some("continue_final_message"),
            ));
        }
        if messages
            .last()
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
            != Some("assistant")
        {
            return Err(ApiError::invalid(
                "'continue_final_message' needs the last message to be the assistant's",
                Some("continue_final_message"),
            ));
        }
    }
    Ok(render_messages(messages, ending))
}

fn is_image_part(kind: &str) -> bool {
    matches!(kind, "image_url" | "input_image" | "image")
}

/// Chat messages as a Llama-3-style template renders them, so that the router and the
/// simulated engine count the same prompt tokens and equal conversation prefixes share
/// tokens. Takes anything: roles and part types it does not know are rendered or
/// skipped, never refused, because a real engine may accept them.
struct RenderedChat {
    text: String,
    images: u32,
}

/// How the chat template ends the prompt (vLLM's `add_generation_prompt` and
/// `continue_final_message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    /// Open an assistant turn for the model to write (the default).
    generation_prompt: bool,
    /// Leave the final (assistant) message open, for the model to go on writing it.
    continue_final: bool,
}

impl Default for Ending {
    /// An assistant turn opened after the conversation.
    fn default() -> Self {
        Self {
            generation_prompt: true,
            continue_final: false,
        }
    }
}

impl Ending {
    fn of(obj: &Map<String, Value>) -> Self {
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool);
        Self {
            generation_prompt: flag("add_generation_prompt").unwrap_or(true),
            continue_final: flag("continue_final_message").unwrap_or(false),
        }
    }
}

fn render_messages(messages: &[Value], ending: Ending) -> RenderedChat {
    let mut text = String::from("<|begin_of_text|>");
    let mut images = 0u32;
    let last = messages.len().saturating_sub(1);
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            continue;
        };
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        text.push_str("<|start_header_id|>");
        text.push_str(role);
        text.push_str("<|end_header_id|>\n\n");
        match m.get("content") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some(t) if is_image_part(t) => {
                            images += 1;
                            text.push_str("<|image|>");
                        }
                        _ => {
                            if let Some(Value::String(s)) = part.get("text") {
                                text.push_str(s);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        // Tool calls an assistant made are part of the prompt the engine renders.
        if let Some(calls @ Value::Array(_)) = m.get("tool_calls") {
            text.push_str(&calls.to_string());
        }
        if ending.continue_final && i == last {
            return RenderedChat { text, images };
        }
        text.push_str("<|eot_id|>");
    }
    if ending.generation_prompt {
        text.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    RenderedChat { text, images }
}

/// What a router must read of a request, and nothing more: everything else (roles,
/// content parts, sampling extras) is the engine's to accept or refuse, and its own
/// error goes back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingView {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    pub max_tokens: Option<u32>,
    /// Completions per prompt (`n`).
    pub n: u32,
    /// Prompts in the request: a batched completions prompt has several.
    pub prompts: u32,
    /// Prompt tokens over all prompts, by Sluice's stand-in tokenizer (or the ids'
    /// count for pre-tokenized prompts).
    pub prompt_tokens: usize,
    pub images: u32,
    /// The prompt as the router sees its content, for prefix hashing: chat's tools and
    /// rendered messages, a completion's text, or its token ids' little-endian bytes
    /// (the first prompt of a batch).
    pub content: Vec<u8>,
}

/// Reads what a router needs: the model, whether to stream, the fields it prices and
/// keys on. Refuses only what it cannot read those from.
pub fn read_for_routing(endpoint: Endpoint, body: &[u8]) -> Result<RoutingView, ApiError> {
    let (obj, model) = object_with_model(body)?;
    let mut content = Vec::new();
    let (prompt_tokens, prompts, images) = match endpoint {
        Endpoint::Chat => {
            let mut tokens = 0;
            let mut images = 0;
            // Tool definitions are rendered into the prompt by the engine's template,
            // ahead of the conversation.
            if let Some(tools @ Value::Array(_)) = obj.get("tools") {
                let tools = tools.to_string();
                tokens += crate::tokenizer::count_tokens(&tools);
                content.extend_from_slice(tools.as_bytes());
            }
            if let Some(Value::Array(messages)) = obj.get("messages") {
                let r = render_messages(messages, Ending::of(&obj));
                tokens += crate::tokenizer::count_tokens(&r.text);
                images = r.images;
                content.extend_from_slice(r.text.as_bytes());
            }
            (tokens, 1, images)
        }
        Endpoint::Completion | Endpoint::Embeddings => {
            let field = if endpoint == Endpoint::Completion {
                "prompt"
            } else {
                "input"
            };
            let prompt = obj.get(field);
            let (tokens, prompts) = count_prompts(prompt);
            content = prompt_content(prompt);
            (tokens, prompts, 0)
        }
        Endpoint::Responses => {
            let r = render_messages(&responses_messages(&obj), Ending::default());
            let tokens = crate::tokenizer::count_tokens(&r.text);
            content = r.text.into_bytes();
            (tokens, 1, r.images)
        }
    };
    let (max_tokens, stream) = match endpoint {
        // Nothing is generated, and nothing streams.
        Endpoint::Embeddings => (Some(0), false),
        _ => (
            max_tokens(endpoint, &obj)?,
            opt_bool(&obj, "stream")?.unwrap_or(false),
        ),
    };
    Ok(RoutingView {
        model,
        stream,
        include_usage: include_usage(&obj)?,
        user: match obj.get("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::invalid("'user' must be a string", Some("user"))),
        },
        max_tokens,
        n: opt_u32(&obj, "n")?.unwrap_or(1).max(1),
        prompts,
        prompt_tokens,
        images,
        content,
    })
}

/// Reads a request to an endpoint Sluice does not know (passed through to the engine as
/// it came): its `model` if it names one (`""` if not), whether it streams, its
/// `max_tokens` if set, and its whole body as the prompt — so that it is priced by its
/// size and keyed by its content.
pub fn read_for_passthrough(body: &[u8]) -> Result<RoutingView, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("request body is not valid JSON (only JSON bodies are passed through): {e}"),
            None,
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(
            "request body must be a JSON object",
            None,
        ));
    };
    let model = model_field(&obj)?.unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    Ok(RoutingView {
        model,
        stream: opt_bool(&obj, "stream")?.unwrap_or(false),
        include_usage: false,
        user: obj.get("user").and_then(Value::as_str).map(str::to_owned),
        max_tokens: max_tokens(Endpoint::Chat, &obj)?,
        n: 1,
        prompts: 1,
        prompt_tokens: crate::tokenizer::count_tokens(&text),
        images: 0,
        content: body.to_vec(),
    })
}

/// A completions prompt's content: its text or its ids' bytes (of the first prompt of
/// a batch).
fn prompt_content(prompt: Option<&Value>) -> Vec<u8> {
    let ids = |items: &[Value]| -> Vec<u8> {
        items
            .iter()
            .filter_map(Value::as_u64)
            .flat_map(|id| (id as u32).to_le_bytes())
            .collect()
    };
    match prompt {
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => ids(items),
        Some(Value::Array(items)) => match items.first() {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(Value::Array(first)) => ids(first),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Tokens and prompts of a completions `prompt` of any accepted shape: a string, token
/// ids (any id: the engine's vocabulary is not ours to know), or a batch of either.
fn count_prompts(prompt: Option<&Value>) -> (usize, u32) {
    match prompt {
        Some(Value::String(s)) => (crate::tokenizer::count_tokens(s), 1),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => (items.len(), 1),
        Some(Value::Array(items)) => items.iter().fold((0, 0), |(t, n), item| match item {
            Value::String(s) => (t + crate::tokenizer::count_tokens(s), n + 1),
            Value::Array(ids) => (t + ids.len(), n + 1),
            _ => (t, n + 1),
        }),
        _ => (0, 1),
    }
}

fn include_usage(obj: &Map<String, Value>) -> Result<bool, ApiError> {
    match obj.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::invalid(
                "'stream_options.include_usage' must be a boolean",
                Some("stream_options"),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "'stream_options' must be an object",
            Some("stream_options"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ParsedRequest, ApiError> {
        parse_request(Endpoint::Chat, body.as_bytes())
    }

    #[test]
    fn parses_a_streaming_chat_request() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
            "stream_options":{"include_usage":true},"max_tokens":5,"user":"u1","priority":-3,"temperature":0.2}"#)
        .unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.user.as_deref(), Some("u1"));
        assert_eq!(r.priority, -3);
        assert!(r.prompt.token_count() > 5);
    }

    #[test]
    fn rejects_bad_fields_with_the_param_named() {
        for (body, param) in [
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "model"),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
                "messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        assert!(chat("{not json")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(chat("[1,2]").is_err());
    }

    #[test]
    fn completion_prompts() {
        let p = |b: &str| parse_request(Endpoint::Completion, b.as_bytes());
        assert_eq!(
            p(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap().prompt,
            PromptInput::Tokens(vec![1, 2, 3])
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":["ab"]}"#).unwrap().prompt,
            PromptInput::Text("ab".into())
        );
        assert!(p(r#"{"model":"m","prompt":["a","b"]}"#)
            .unwrap_err()
            .message
            .contains("batched"));
        assert!(p(r#"{"model":"m","prompt":{}}"#).is_err());
        assert!(p(r#"{"model":"m"}"#).is_err());
    }

    #[test]
    fn chat_prefixes_share_tokens_and_images_count() {
        let a = chat(r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"one"}]}"#).unwrap();
        let b = chat(r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"two"}]}"#).unwrap();
        let (ta, tb) = (a.prompt.tokens(), b.prompt.tokens());
        assert!(ta.iter().zip(&tb).take_while(|(x, y)| x == y).count() >= 8);
        let img = chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#).unwrap();
        assert_eq!(img.images, 1);
    }

    #[test]
    fn the_routing_view_takes_what_an_engine_may_accept() {
        let route = |e, b: &str| read_for_routing(e, b.as_bytes());
        // Roles and parts the simulated engine does not know are still priced.
        let r = route(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"function","name":"f","content":"result"},
                {"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x","format":"wav"}},
                {"type":"text","text":"hello there"},{"type":"image_url","image_url":{"url":"u"}}]}],
                "top_k":5,"repetition_penalty":1.1,"max_completion_tokens":7}"#,
        )
        .unwrap();
        assert_eq!((r.images, r.max_tokens, r.prompts), (1, Some(7), 1));
        assert!(r.prompt_tokens > 5);
        // Batched and token-id prompts of any id.
        let b = route(
            Endpoint::Completion,
            r#"{"model":"m","prompt":["a b","c"],"n":2}"#,
        )
        .unwrap();
        assert_eq!((b.prompts, b.n), (2, 2));
        let ids = route(
            Endpoint::Completion,
            r#"{"model":"m","prompt":[1,150000,4000000]}"#,
        )
        .unwrap();
        assert_eq!((ids.prompt_tokens, ids.prompts), (3, 1));
        let batch = route(
            Endpoint::Completion,
            r#"{"model":"m","prompt":[[1,2],[300000]]}"#,
        )
        .unwrap();
        assert_eq!((batch.prompt_tokens, batch.prompts), (3, 2));
        // Content for prefix hashing: ids as their bytes, the first prompt of a batch.
        assert_eq!(ids.content.len(), 12);
        assert_eq!(
            batch.content,
            [1u32, 2]
                .iter()
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<_>>()
        );
        assert_eq!(b.content, b"a b");
        // A request the engine will refuse is the engine's to refuse.
        assert!(route(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"wizard"}]}"#
        )
        .is_ok());
        assert!(route(Endpoint::Chat, r#"{"model":"m"}"#).is_ok());
        // What Sluice reads itself must be readable.
        for (body, param) in [
            (r#"{"messages":[]}"#, Some("model")),
            (r#"{"model":"m","stream":"yes"}"#, Some("stream")),
            (r#"{"model":"m","max_tokens":-1}"#, Some("max_tokens")),
            (r#"{"model":"m","user":3}"#, Some("user")),
            (
                r#"{"model":"m","stream_options":1}"#,
                Some("stream_options"),
            ),
            ("[1]", None),
        ] {
            let e = route(Endpoint::Chat, body).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, param), "{body}");
        }
    }

    #[test]
    fn router_and_engine_count_the_same_chat_tokens() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let engine = chat(body).unwrap();
        let router = read_for_routing(Endpoint::Chat, body.as_bytes()).unwrap();
        assert_eq!(engine.prompt.token_count(), router.prompt_tokens);
        assert_eq!(engine.images, router.images);
        // A later turn's content extends an earlier one's.
        let longer = body.replace("]}]}", r#"]},{"role":"assistant","content":"ok"}]}"#);
        let next = read_for_routing(Endpoint::Chat, longer.as_bytes()).unwrap();
        assert!(
            next.content.starts_with(&router.content) && next.content.len() > router.content.len()
        );
        // The simulated engine takes the legacy function role, as vLLM does.
        assert!(
            chat(r#"{"model":"m","messages":[{"role":"function","name":"f","content":"x"}]}"#)
                .is_ok()
        );
    }

    #[test]
    fn a_response_is_priced_and_rendered_as_the_chat_it_is() {
        let chat_body = r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":"hi"},{"role":"assistant","content":"hello"},
            {"role":"user","content":[{"type":"text","text":"and?"}]}],"max_tokens":9}"#;
        let response_body = r#"{"model":"m","instructions":"Be brief.","input":[
            {"role":"user","content":"hi"},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"hello"}]},
            {"role":"user","content":[{"type":"input_text","text":"and?"}]}],"max_output_tokens":9}"#;
        let chat = parse_request(Endpoint::Chat, chat_body.as_bytes()).unwrap();
        let response = parse_request(Endpoint::Responses, response_body.as_bytes()).unwrap();
        assert_eq!(response.prompt, chat.prompt);
        assert_eq!(response.max_tokens, Some(9));
        let routed = read_for_routing(Endpoint::Responses, response_body.as_bytes()).unwrap();
        let routed_chat = read_for_routing(Endpoint::Chat, chat_body.as_bytes()).unwrap();
        assert_eq!(routed.content, routed_chat.content);
        assert_eq!(
            (routed.prompt_tokens, routed.max_tokens),
            (response.prompt.token_count(), Some(9))
        );
        // A plain string is one user message; an image part counts.
        let text = parse_request(Endpoint::Responses, br#"{"model":"m","input":"hi"}"#).unwrap();
        assert!(
            matches!(text.prompt, PromptInput::Text(t) if t.contains("user<|end_header_id|>\n\nhi"))
        );
        let image = read_for_routing(
            Endpoint::Responses,
            br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}"#,
        )
        .unwrap();
        assert_eq!(image.images, 1);
    }

    #[test]
    fn responses_the_engine_cannot_take_are_refused_naming_the_field() {
        for (body, param) in [
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":7}"#, "input"),
            (
                r#"{"model":"m","input":[{"role":"wizard","content":"x"}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":[{"type":"reasoning","summary":[]}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":"x","instructions":3}"#,
                "instructions",
            ),
            (
                r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#,
                "previous_response_id",
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
        ] {
            let e = parse_request(Endpoint::Responses, body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
        // The router reads what it prices and leaves the rest to the engine.
        assert!(read_for_routing(
            Endpoint::Responses,
            br#"{"model":"m","input":[{"type":"reasoning","summary":[]}],"previous_response_id":"r"}"#
        )
        .is_ok());
    }

    #[test]
    fn embeddings_take_texts_and_token_ids_and_write_nothing() {
        let e = |b: &str| parse_embeddings(b.as_bytes());
        let one = e(r#"{"model":"m","input":"the cat"}"#).unwrap();
        assert_eq!(one.inputs, vec![PromptInput::Text("the cat".into())]);
        assert_eq!((one.encoding, one.dimensions), (Encoding::Float, None));
        let many = e(r#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":8,"priority":-2}"#).unwrap();
        assert_eq!(
            (
                many.inputs.len(),
                many.encoding,
                many.dimensions,
                many.priority
            ),
            (2, Encoding::Base64, Some(8), -2)
        );
        assert_eq!(
            e(r#"{"model":"m","input":[[1,2],[3]]}"#).unwrap().inputs,
            vec![
                PromptInput::Tokens(vec![1, 2]),
                PromptInput::Tokens(vec![3])
            ]
        );
        assert_eq!(
            e(r#"{"model":"m","input":[4,5]}"#).unwrap().inputs,
            vec![PromptInput::Tokens(vec![4, 5])]
        );
        for (body, param) in [
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":[""]}"#, "input"),
            (r#"{"model":"m","input":[{"a":1}]}"#, "input"),
            (
                r#"{"model":"m","input":"x","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"model":"m","input":"x","dimensions":0}"#, "dimensions"),
        ] {
            let err = e(body).unwrap_err();
            assert_eq!(
                (err.status, err.param.as_deref()),
                (400, Some(param)),
                "{body}"
            );
        }
        let routed = read_for_routing(
            Endpoint::Embeddings,
            br#"{"model":"m","input":["a b","c"],"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            (routed.prompts, routed.max_tokens, routed.stream),
            (2, Some(0), false)
        );
        assert_eq!(routed.content, b"a b");
    }

    #[test]
    fn endpoints_are_listed_in_their_own_order() {
        // Routers index per-endpoint tables by `endpoint as usize`.
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?}");
        }
    }

    #[test]
    fn error_body_is_openai_shaped() {
        let body: Value =
            serde_json::from_str(&ApiError::invalid("bad", Some("model")).body()).unwrap();
        assert_eq!(body["error"]["message"], "bad");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "model");
    }
}
